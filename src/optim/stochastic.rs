//! AdamW with bf16 moments and no fp32 master, written back with stochastic rounding: the CPU
//! reference of kernels/adamw.cu's `adamw_bf16_sr` (the GPU trainer's `--optimizer-state bf16`),
//! bit for bit.
//!
//! Per element, the update is [`AdamW`](super::AdamW)'s in f32 arithmetic, in the same order
//! (`StepScalars::update`), from the bf16 parameter and bf16 moments widened exactly to f32;
//! the new parameter, m and v are each rounded to bf16 stochastically: up (in magnitude) to the
//! next bf16 with probability equal to the fraction of the way there, down otherwise. Rounding
//! is then unbiased, so updates smaller than half a bf16 step still move the value in
//! expectation (with round-to-nearest, `v·0.999` rounds back to `v` and v never decays, and
//! `p − lr·u` rounds back to `p` once lr·u is below p/512).
//!
//! This changes the numerics: there is no fp32 master, so the parameter carries bf16 noise of
//! up to one bf16 step (2⁻⁸ to 2⁻⁷ relative) per update, and the moments as much each (zero
//! mean).
//! It is not the default: it exists so that a 7B model's full finetuning fits one 80 GB GPU
//! (10 bytes per parameter instead of 18).
//!
//! Randomness is counter-based and deterministic: [`stochastic_rounding_key`] hashes (seed,
//! step, tensor) once per tensor and step, [`stochastic_rounding_bits`] hashes (key, element
//! index) to 64 bits, of which bits 0–15 round the parameter, 16–31 m and 32–47 v.
//! [`stochastic_round_bf16`] adds the 16 bits below the bf16 mantissa and truncates. Both
//! hashes are splitmix64's finalizer (Steele, Lea & Flood 2014), which the GPU computes alike.

use super::adamw::StepScalars;
use super::AdamWConfig;
use crate::bail;
use crate::error::Result;
use half::bf16;

/// splitmix64's increment, 2⁶⁴/φ.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output function: a bijection of u64 whose every output bit depends on every
/// input bit.
#[inline(always)]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The key of one tensor's rounding at one optimizer step (`step` counts from 1, as the bias
/// corrections' t): distinct steps and tensors get unrelated keys, the same ones the same key.
pub fn stochastic_rounding_key(seed: u64, step: u64, tensor: u64) -> u64 {
    let k = mix64(seed.wrapping_add(GAMMA));
    let k = mix64(k ^ step);
    mix64(k ^ tensor)
}

/// The 64 random bits of element `index` under `key`: splitmix64's (index + 1)-th output from
/// state `key`. Bits 0–15 round the parameter, 16–31 the first moment, 32–47 the second.
#[inline(always)]
pub fn stochastic_rounding_bits(key: u64, index: u64) -> u64 {
    mix64(key.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA)))
}

/// `x` rounded to bf16 with the 16 random bits `r`: `bits(x) + r`, keeping the high 16 bits.
/// The carry reaches bf16's last mantissa bit exactly when r ≥ 2¹⁶ − (the 16 bits dropped),
/// so x rounds away from zero with probability (dropped bits)/2¹⁶, the fraction of the way
/// to the next bf16 (exact bf16 values never move). Infinities stay; a NaN stays a NaN
/// (quieted, sign and top payload kept, as `bf16::from_f32`). Past the largest bf16 a value
/// may round to infinity, with the same probability rule.
#[inline(always)]
pub fn stochastic_round_bf16(x: f32, r: u16) -> bf16 {
    let b = x.to_bits();
    if b & 0x7F80_0000 == 0x7F80_0000 {
        let nan_bit = if b & 0x007F_FFFF != 0 { 0x0040 } else { 0 };
        return bf16::from_bits((b >> 16) as u16 | nan_bit);
    }
    bf16::from_bits((b.wrapping_add(r as u32) >> 16) as u16)
}

/// One clipped AdamW step of a bf16 parameter with bf16 moments and stochastic rounding, as
/// kernels/adamw.cu's `adamw_bf16_sr`: `grad` is already clipped (the GPU multiplies by the
/// clip coefficient in f32, as `clip_grad_norm` does), `t` the step (from 1), `key` the
/// tensor's [`stochastic_rounding_key`] at this step. Element i uses
/// `stochastic_rounding_bits(key, i)`.
#[allow(clippy::too_many_arguments)]
pub fn adamw_bf16_stochastic_step(
    config: &AdamWConfig,
    lr: f32,
    t: u64,
    key: u64,
    param: &mut [bf16],
    grad: &[f32],
    exp_avg: &mut [bf16],
    exp_avg_sq: &mut [bf16],
) -> Result<()> {
    let n = param.len();
    for (what, len) in [
        ("grad", grad.len()),
        ("exp_avg", exp_avg.len()),
        ("exp_avg_sq", exp_avg_sq.len()),
    ] {
        if len != n {
            bail!("adamw_bf16_stochastic_step: {what} has {len} elements, the parameter {n}");
        }
    }
    config.validate()?;
    let s = StepScalars::new(config, lr, t);
    for (i, (((p, &g), m), v)) in param
        .iter_mut()
        .zip(grad)
        .zip(exp_avg.iter_mut())
        .zip(exp_avg_sq.iter_mut())
        .enumerate()
    {
        let (mut mf, mut vf) = (m.to_f32(), v.to_f32());
        let pf = s.update(p.to_f32(), g, &mut mf, &mut vf);
        let r = stochastic_rounding_bits(key, i as u64);
        *p = stochastic_round_bf16(pf, r as u16);
        *m = stochastic_round_bf16(mf, (r >> 16) as u16);
        *v = stochastic_round_bf16(vf, (r >> 32) as u16);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bf16 values either side of `x` (x not a bf16, positive or negative).
    fn neighbours(x: f32) -> (f32, f32) {
        let down = f32::from_bits(x.to_bits() & 0xFFFF_0000);
        let up = f32::from_bits((x.to_bits() & 0xFFFF_0000) + 0x1_0000);
        (down, up)
    }

    #[test]
    fn rounding_is_unbiased() {
        let key = stochastic_rounding_key(3, 1, 0);
        let n = 200_000u64;
        for x in [
            1.0f32 + 0.3 / 128.0,
            -3.7e-3,
            0.999,
            1e-20 * std::f32::consts::PI,
        ] {
            let (down, up) = neighbours(x);
            assert!(down.abs() < x.abs() && x.abs() < up.abs(), "{x}");
            let frac = ((x - down) / (up - down)) as f64;
            let mut sum = 0.0f64;
            for i in 0..n {
                let r = stochastic_rounding_bits(key, i);
                for shift in [0, 16, 32] {
                    let y = stochastic_round_bf16(x, (r >> shift) as u16).to_f32();
                    assert!(y == down || y == up, "{x} rounded to {y}");
                    sum += y as f64;
                }
            }
            let mean = sum / (3 * n) as f64;
            // Each rounding is down or up with probabilities (1 − frac, frac).
            let se = (up - down).abs() as f64 * (frac * (1.0 - frac) / (3 * n) as f64).sqrt();
            assert!(
                (mean - x as f64).abs() < 4.0 * se,
                "{x}: mean {mean} vs {x}, standard error {se:e}"
            );
        }
        // Representable values, zero and infinities never move; NaN stays NaN.
        for x in [1.0f32, -2.5, 0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY] {
            for r in [0u16, 1, 0x7FFF, 0xFFFF] {
                assert_eq!(stochastic_round_bf16(x, r).to_f32().to_bits(), x.to_bits());
            }
        }
        assert!(stochastic_round_bf16(f32::NAN, 0xFFFF).is_nan());
        assert_eq!(
            stochastic_round_bf16(-f32::NAN, 0).to_bits(),
            bf16::from_f32(-f32::NAN).to_bits()
        );
    }

    #[test]
    fn second_moment_decays_where_round_to_nearest_sticks() {
        // v = 1 and no gradient: v ← 0.999·v each step. 0.999 is nearer 1 than the bf16 below
        // (1 − 2⁻⁸), so round-to-nearest keeps v = 1 forever.
        let beta2 = 0.999f32;
        let mut nearest = bf16::ONE;
        for _ in 0..1000 {
            nearest = bf16::from_f32(nearest.to_f32() * beta2);
        }
        assert_eq!(nearest, bf16::ONE);

        let config = AdamWConfig {
            beta2,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        };
        let n = 10_000;
        let mut p = vec![bf16::from_f32(0.5); n];
        let mut m = vec![bf16::ZERO; n];
        let mut v = vec![bf16::ONE; n];
        let g = vec![0.0f32; n];
        let steps = 1000;
        for t in 1..=steps {
            let key = stochastic_rounding_key(0, t, 0);
            adamw_bf16_stochastic_step(&config, 1e-3, t, key, &mut p, &g, &mut m, &mut v).unwrap();
        }
        let want = (beta2 as f64).powi(steps as i32); // 0.3677
        let mean = v.iter().map(|x| x.to_f64()).sum::<f64>() / n as f64;
        // Each element is a random walk around the decay: 1000 roundings, each of standard
        // deviation at most half a bf16 step (2⁻⁹ to 2⁻¹⁰ here), spread it by at most ~0.06,
        // so the mean of 10⁴ elements has a standard error below 6e-4 (1.7e-3 relative).
        // Round-to-nearest would be at 1, 170% off.
        assert!(
            ((mean - want) / want).abs() < 1e-2,
            "mean v {mean} after {steps} steps, expected {want}"
        );
        // m = 0 and g = 0: the parameter does not move, and m stays 0.
        assert!(p.iter().all(|&x| x == bf16::from_f32(0.5)));
        assert!(m.iter().all(|&x| x == bf16::ZERO));
    }

    #[test]
    fn small_updates_accumulate_in_expectation() {
        // lr·sign(g) = 1e-4 on p = 1 is 1/40 of a bf16 step down: round-to-nearest never moves
        // p, stochastic rounding moves it by 1e-4 per step on average.
        let config = AdamWConfig {
            weight_decay: 0.0,
            ..AdamWConfig::default()
        };
        let n = 4000;
        let mut p = vec![bf16::ONE; n];
        let (mut m, mut v) = (vec![bf16::ZERO; n], vec![bf16::ZERO; n]);
        let g = vec![0.01f32; n];
        let steps = 200u64;
        for t in 1..=steps {
            let key = stochastic_rounding_key(1, t, 7);
            adamw_bf16_stochastic_step(&config, 1e-4, t, key, &mut p, &g, &mut m, &mut v).unwrap();
        }
        let mean = p.iter().map(|x| x.to_f64()).sum::<f64>() / n as f64;
        let want = 1.0 - 1e-4 * steps as f64;
        assert!((mean - want).abs() < 1e-3, "mean p {mean}, expected {want}");
    }

    #[test]
    fn lengths_are_checked_and_keys_differ() {
        let mut p = vec![bf16::ZERO; 3];
        let (mut m, mut v) = (vec![bf16::ZERO; 3], vec![bf16::ZERO; 2]);
        let e = adamw_bf16_stochastic_step(
            &AdamWConfig::default(),
            1e-3,
            1,
            0,
            &mut p,
            &[0.0; 3],
            &mut m,
            &mut v,
        )
        .unwrap_err();
        assert!(e.to_string().contains("exp_avg_sq has 2 elements"), "{e}");
        let keys = [
            stochastic_rounding_key(0, 1, 0),
            stochastic_rounding_key(0, 2, 0),
            stochastic_rounding_key(0, 1, 1),
            stochastic_rounding_key(1, 1, 0),
        ];
        for i in 0..keys.len() {
            for j in 0..i {
                assert_ne!(keys[i], keys[j]);
            }
        }
    }
}
