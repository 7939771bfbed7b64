//! Grad-norm clipping and the fused AdamW update against optim::{clip_grad_norm, AdamW}:
//! bit-identical when the clip coefficients agree. The bf16-state update with stochastic
//! rounding (adamw_bf16_sr) against optim::adamw_bf16_stochastic_step: bit-identical, the
//! CPU applying the GPU's own clip coefficient.

use crate::common::gpu::{check, f64s, gpu, Rng};
use half::bf16;
use implicit::backend::cuda::{AdamWStep, CudaBackend, DeviceBuffer};
use implicit::optim::{
    adamw_bf16_stochastic_step, clip_grad_norm, stochastic_rounding_key, AdamW, AdamWConfig,
    ParamMut, ParamRef,
};

/// Bits of a float slice, for exact comparison.
fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn adamw_case(gpu: &CudaBackend, rng: &mut Rng, config: AdamWConfig, clip_at: Option<f32>) {
    // 2_200_003: more than one pass of the capped grid (see adamw_sr_case).
    let sizes = [4096 * 3 + 1, 1000, 7, 2_200_003];
    let names: Vec<String> = (0..sizes.len()).map(|i| format!("p{i}")).collect();
    let mut params: Vec<Vec<bf16>> = sizes
        .iter()
        .map(|&n| rng.vec(n, 1.0).iter().map(|&x| bf16::from_f32(x)).collect())
        .collect();
    let mut cpu = AdamW::new(
        config,
        names
            .iter()
            .cloned()
            .zip(params.iter().map(|p| ParamRef::BF16(p))),
    )
    .unwrap();
    let mut gp: Vec<DeviceBuffer<bf16>> = params.iter().map(|p| gpu.upload(p).unwrap()).collect();
    let mut gmaster: Vec<DeviceBuffer<f32>> = params
        .iter()
        .map(|p| {
            gpu.upload(&p.iter().map(|x| x.to_f32()).collect::<Vec<_>>())
                .unwrap()
        })
        .collect();
    let mut gm: Vec<DeviceBuffer<f32>> = sizes.iter().map(|&n| gpu.zeros(n).unwrap()).collect();
    let mut gv: Vec<DeviceBuffer<f32>> = sizes.iter().map(|&n| gpu.zeros(n).unwrap()).collect();
    let mut clip = gpu.upload(&[f32::NAN; 2]).unwrap();
    for t in 1..=3u64 {
        let lr = 1e-3 * t as f32;
        let mut grads: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.vec(n, 0.1)).collect();
        let ggrads: Vec<DeviceBuffer<f32>> = grads.iter().map(|g| gpu.upload(g).unwrap()).collect();
        let mut exact_coef = true;
        if let Some(max_norm) = clip_at {
            let norm = {
                let mut refs: Vec<&mut [f32]> =
                    grads.iter_mut().map(|g| g.as_mut_slice()).collect();
                clip_grad_norm(&mut refs, max_norm)
            };
            gpu.grad_norm(&ggrads.iter().collect::<Vec<_>>(), max_norm, &mut clip)
                .unwrap();
            let c = gpu.download(&clip).unwrap();
            assert!(
                ((c[0] - norm) / norm).abs() <= 1e-6,
                "grad norm {} vs {norm}",
                c[0]
            );
            exact_coef = c[1] == ((1.0 / (norm + 1e-6)) * max_norm).min(1.0);
        }
        let step = AdamWStep::new(&config, lr, t);
        for i in 0..sizes.len() {
            let c = clip_at.map(|_| &clip);
            gpu.adamw_step_bf16(
                &mut gp[i],
                &mut gmaster[i],
                &ggrads[i],
                &mut gm[i],
                &mut gv[i],
                c,
                &step,
            )
            .unwrap();
        }
        let mut muts: Vec<ParamMut> = params.iter_mut().map(|p| ParamMut::BF16(p)).collect();
        cpu.step(
            &mut muts,
            &grads.iter().map(|g| g.as_slice()).collect::<Vec<_>>(),
            lr,
        );
        let state = cpu.state_tensors();
        let get = |key: String| {
            state
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_vec())
                .unwrap()
        };
        for (i, name) in names.iter().enumerate() {
            let got = [
                gpu.download(&gmaster[i]).unwrap(),
                gpu.download(&gm[i]).unwrap(),
                gpu.download(&gv[i]).unwrap(),
            ];
            let want = [
                get(format!("master.{name}")),
                get(format!("exp_avg.{name}")),
                get(format!("exp_avg_sq.{name}")),
            ];
            for (what, (g, w)) in ["master", "exp_avg", "exp_avg_sq"]
                .iter()
                .zip(got.iter().zip(&want))
            {
                if exact_coef {
                    assert_eq!(
                        bits(g),
                        bits(w),
                        "adamw step {t} {name} {what}: not bit-identical"
                    );
                } else {
                    check(&format!("adamw step {t} {name} {what}"), g, &f64s(w), 1e-6);
                }
            }
            let stored: Vec<u16> = gpu
                .download(&gp[i])
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            let want_stored: Vec<u16> = want[0]
                .iter()
                .map(|&x| bf16::from_f32(x).to_bits())
                .collect();
            assert_eq!(stored, want_stored, "adamw step {t} {name}: bf16 parameter");
        }
    }
}

#[test]
fn adamw_and_clipping_match_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("adamw");
    let paper = AdamWConfig {
        lr: 1e-5,
        weight_decay: 0.0,
        ..AdamWConfig::default()
    };
    adamw_case(gpu, &mut rng, paper, None);
    adamw_case(gpu, &mut rng, AdamWConfig::default(), Some(0.05));
    // β1 ≤ 0.5 takes torch's other lerp form.
    adamw_case(
        gpu,
        &mut rng,
        AdamWConfig {
            beta1: 0.3,
            ..AdamWConfig::default()
        },
        Some(1e3),
    );
}

#[test]
fn adamw_f32_matches_cpu_and_skips_non_finite_norms() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("adamw_f32");
    let config = AdamWConfig::default();
    let mut p = rng.vec(4099, 1.0);
    let g = rng.vec(4099, 0.1);
    let mut cpu = AdamW::new(config, [("w".to_string(), ParamRef::F32(&p))]).unwrap();
    let (mut gp, gg) = (gpu.upload(&p).unwrap(), gpu.upload(&g).unwrap());
    let (mut gm, mut gv) = (gpu.zeros(4099).unwrap(), gpu.zeros(4099).unwrap());
    gpu.adamw_step_f32(
        &mut gp,
        &gg,
        &mut gm,
        &mut gv,
        None,
        &AdamWStep::new(&config, 1e-3, 1),
    )
    .unwrap();
    cpu.step(&mut [ParamMut::F32(&mut p)], &[&g], 1e-3);
    assert_eq!(
        bits(&gpu.download(&gp).unwrap()),
        bits(&p),
        "adamw_f32: not bit-identical"
    );
    // An inf gradient: the norm is inf and the update leaves everything untouched.
    let mut bad = g.clone();
    bad[17] = f32::INFINITY;
    let gbad = gpu.upload(&bad).unwrap();
    let mut clip = gpu.zeros(2).unwrap();
    gpu.grad_norm(&[&gbad], 1.0, &mut clip).unwrap();
    assert!(gpu.download(&clip).unwrap()[0].is_infinite());
    gpu.adamw_step_f32(
        &mut gp,
        &gbad,
        &mut gm,
        &mut gv,
        Some(&clip),
        &AdamWStep::new(&config, 1e-3, 2),
    )
    .unwrap();
    assert_eq!(
        bits(&gpu.download(&gp).unwrap()),
        bits(&p),
        "a non-finite norm must skip the update"
    );
}

fn bf16_bits(v: &[bf16]) -> Vec<u16> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn bf16s(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

/// Three steps of adamw_bf16_sr over tensors of odd and even lengths from random (non-zero)
/// moments, so that an element the kernel failed to write would keep a value the reference
/// moved; `clip_at`: clipped by the GPU's grad_norm (the CPU multiplies by the same
/// coefficient, as the kernel does), or not clipped at all.
fn adamw_sr_case(
    gpu: &CudaBackend,
    rng: &mut Rng,
    config: AdamWConfig,
    lr: f32,
    clip_at: Option<f32>,
) {
    // 2_200_003 is more than one pass of the capped grid (132 SMs × 16 blocks × 256 threads
    // × 4 elements ≈ 2.16M on an H100): its threads take a second grid-stride step, as every
    // thread does on a 7B model's embedding.
    let sizes = [1usize, 3, 7, 1000, 4096 * 3 + 1, 4099, 65_537, 2_200_003];
    let seed = rng.next();
    let mut p: Vec<Vec<bf16>> = sizes.iter().map(|&n| bf16s(&rng.vec(n, 1.0))).collect();
    let mut m: Vec<Vec<bf16>> = sizes.iter().map(|&n| bf16s(&rng.vec(n, 1e-2))).collect();
    let mut v: Vec<Vec<bf16>> = sizes
        .iter()
        .map(|&n| {
            let r = rng.vec(n, 1e-4);
            bf16s(&r.iter().map(|x| x * x + 1e-12).collect::<Vec<_>>())
        })
        .collect();
    let mut gp: Vec<DeviceBuffer<bf16>> = p.iter().map(|x| gpu.upload(x).unwrap()).collect();
    let mut gm: Vec<DeviceBuffer<bf16>> = m.iter().map(|x| gpu.upload(x).unwrap()).collect();
    let mut gv: Vec<DeviceBuffer<bf16>> = v.iter().map(|x| gpu.upload(x).unwrap()).collect();
    let mut clip = gpu.upload(&[f32::NAN; 2]).unwrap();
    for t in 1..=3u64 {
        let mut grads: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.vec(n, 0.1)).collect();
        let ggrads: Vec<DeviceBuffer<f32>> = grads.iter().map(|g| gpu.upload(g).unwrap()).collect();
        if let Some(max_norm) = clip_at {
            gpu.grad_norm(&ggrads.iter().collect::<Vec<_>>(), max_norm, &mut clip)
                .unwrap();
            let c = gpu.download(&clip).unwrap();
            let cpu_norm = {
                let mut copy = grads.clone();
                let mut refs: Vec<&mut [f32]> = copy.iter_mut().map(|g| g.as_mut_slice()).collect();
                clip_grad_norm(&mut refs, max_norm)
            };
            assert!(
                ((c[0] - cpu_norm) / cpu_norm).abs() <= 1e-6,
                "grad norm {} vs {cpu_norm}",
                c[0]
            );
            for g in grads.iter_mut().flatten() {
                *g *= c[1];
            }
        }
        let step = AdamWStep::new(&config, lr, t);
        for (i, &n) in sizes.iter().enumerate() {
            let key = stochastic_rounding_key(seed, t, i as u64);
            gpu.adamw_step_bf16_stochastic(
                &mut gp[i],
                &ggrads[i],
                &mut gm[i],
                &mut gv[i],
                clip_at.map(|_| &clip),
                &step,
                key,
            )
            .unwrap();
            adamw_bf16_stochastic_step(
                &config, lr, t, key, &mut p[i], &grads[i], &mut m[i], &mut v[i],
            )
            .unwrap();
            for (what, got, want) in [
                ("param", &gp[i], &p[i]),
                ("exp_avg", &gm[i], &m[i]),
                ("exp_avg_sq", &gv[i], &v[i]),
            ] {
                let got = gpu.download(got).unwrap();
                let differ = got
                    .iter()
                    .zip(want)
                    .filter(|(a, b)| a.to_bits() != b.to_bits());
                assert_eq!(
                    bf16_bits(&got),
                    bf16_bits(want),
                    "adamw_bf16_sr step {t}, tensor {i} (n {n}) {what}: {} elements differ",
                    differ.count()
                );
            }
        }
    }
}

#[test]
fn adamw_bf16_stochastic_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("adamw_bf16_stochastic");
    let paper = AdamWConfig {
        lr: 1e-5,
        weight_decay: 0.0,
        ..AdamWConfig::default()
    };
    adamw_sr_case(gpu, &mut rng, paper, 1e-5, None);
    // Clipped (the coefficient below 1), with decay, and a learning rate that moves most
    // parameters by a bf16 step.
    adamw_sr_case(gpu, &mut rng, AdamWConfig::default(), 1e-2, Some(0.05));
    // β1 ≤ 0.5 takes torch's other lerp form; the clip is on but its coefficient is 1.
    let other_lerp = AdamWConfig {
        beta1: 0.3,
        ..AdamWConfig::default()
    };
    adamw_sr_case(gpu, &mut rng, other_lerp, 1e-3, Some(1e3));

    // Lengths are checked; a non-finite norm leaves everything untouched.
    let (mut p, g) = (
        gpu.upload(&bf16s(&rng.vec(33, 1.0))).unwrap(),
        rng.vec(33, 0.1),
    );
    let (mut m, mut v) = (
        gpu.zeros::<bf16>(33).unwrap(),
        gpu.zeros::<bf16>(32).unwrap(),
    );
    let step = AdamWStep::new(&AdamWConfig::default(), 1e-2, 1);
    let gg = gpu.upload(&g).unwrap();
    let e = gpu
        .adamw_step_bf16_stochastic(&mut p, &gg, &mut m, &mut v, None, &step, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("exp_avg_sq"), "{e}");
    let mut v = gpu.zeros::<bf16>(33).unwrap();
    let before = gpu.download(&p).unwrap();
    let mut bad = g.clone();
    bad[5] = f32::NAN;
    let gbad = gpu.upload(&bad).unwrap();
    let mut clip = gpu.zeros(2).unwrap();
    gpu.grad_norm(&[&gbad], 1.0, &mut clip).unwrap();
    gpu.adamw_step_bf16_stochastic(&mut p, &gbad, &mut m, &mut v, Some(&clip), &step, 0)
        .unwrap();
    assert_eq!(
        gpu.download(&p).unwrap(),
        before,
        "a NaN norm must skip the update"
    );
    assert!(gpu.download(&v).unwrap().iter().all(|x| x.to_bits() == 0));
}
