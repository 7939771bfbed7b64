//! The element-wise helpers (kernels/elementwise.cu) against their CPU references, bit for bit
//! (each is one correctly rounded operation per element, so nothing looser is right): the
//! conversions against `half::bf16`, the add against f32 addition, clamp's backward against
//! `backend::cpu::backward::clamp_backward`. Fresh random inputs with special values planted
//! (NaN, ±inf, ±0, rounding ties, the clamp's bounds), lengths 0, 1, under and over one vector,
//! not multiples of 4 or 8, and over a grid's stride. Outputs are poisoned first with a
//! sentinel no input produces.

use crate::common::gpu::{gpu, Rng};
use half::bf16;
use implicit::backend::cpu::backward::clamp_backward;
use implicit::backend::cuda::CudaBackend;

const LENGTHS: [usize; 9] = [0, 1, 3, 7, 8, 9, 1000, 4099, (1 << 21) + 5];
/// Bits of bf16 −7777 (≈ −7776): poison for the conversions' outputs, never a result here.
const SENTINEL: f32 = -7777.0;

/// `n` random f32 values over a wide range (random exponents), with specials planted at the
/// start and at random places.
fn wide(rng: &mut Rng, n: usize) -> Vec<f32> {
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        // Halfway between two bf16 values: ties round to the even neighbour.
        f32::from_bits(0x3f80_8000),
        f32::from_bits(0x3f81_8000),
        f32::from_bits(0xc0a0_8000),
        f32::MAX,
        f32::MIN_POSITIVE / 4.0,
    ];
    let mut v: Vec<f32> = rng
        .vec(n, 1.0)
        .iter()
        .map(|&u| u * 2f32.powi(rng.below(60) as i32 - 30))
        .collect();
    for (i, &s) in specials.iter().enumerate() {
        if i < n {
            v[i] = s;
        }
        if n > 0 {
            let at = rng.below(n);
            v[at] = s;
        }
    }
    v
}

/// Same bits, or both NaN.
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn assert_all(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<usize> = (0..got.len()).filter(|&i| !same(got[i], want[i])).collect();
    eprintln!("{what}: {} of {} differ", bad.len(), got.len());
    if let Some(&i) = bad.first() {
        panic!(
            "{what}: {} elements differ; first at {i}: {} vs {}",
            bad.len(),
            got[i],
            want[i]
        );
    }
}

#[test]
fn conversions_round_as_half() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("conversions");
    for n in LENGTHS {
        let x = wide(&mut rng, n);
        let gx = gpu.upload(&x).unwrap();
        let mut gy = gpu.upload(&vec![bf16::from_f32(SENTINEL); n]).unwrap();
        gpu.convert_to_bf16(&gx, &mut gy).unwrap();
        let got: Vec<f32> = gpu
            .download(&gy)
            .unwrap()
            .iter()
            .map(|v| v.to_f32())
            .collect();
        let want: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        assert_all(&format!("convert_to_bf16 n {n}"), &got, &want);

        // And back: bf16 → f32 is exact.
        let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let mut gf = gpu.upload(&vec![SENTINEL; n]).unwrap();
        gpu.convert_to_f32(&gpu.upload(&xb).unwrap(), &mut gf)
            .unwrap();
        assert_all(
            &format!("convert_to_f32 n {n}"),
            &gpu.download(&gf).unwrap(),
            &want,
        );
    }
}

#[test]
fn add_in_place_matches_f32_addition() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("add_in_place");
    for n in LENGTHS {
        // x is never 0 (Rng::vec), so an element left unwritten shows.
        let (y, x) = (rng.vec(n, 3.0), rng.vec(n, 1.0));
        let mut gy = gpu.upload(&y).unwrap();
        gpu.add_in_place(&mut gy, &gpu.upload(&x).unwrap()).unwrap();
        let want: Vec<f32> = y.iter().zip(&x).map(|(a, b)| a + b).collect();
        assert_all(
            &format!("add_in_place n {n}"),
            &gpu.download(&gy).unwrap(),
            &want,
        );
    }
}

fn clamp_case(gpu: &CudaBackend, rng: &mut Rng, n: usize, limit: f32) {
    // x over [−3, 3] with the bounds themselves (as bf16 rounds them), NaN and ±inf planted.
    let mut x: Vec<f32> = rng.vec(n, 3.0);
    let lb = bf16::from_f32(limit).to_f32();
    for (i, s) in [lb, -lb, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0]
        .into_iter()
        .enumerate()
    {
        if n > 0 {
            x[(i * 7919 + rng.below(n)) % n] = s;
        }
    }
    let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    let dyb: Vec<bf16> = rng.vec(n, 1.0).iter().map(|&v| bf16::from_f32(v)).collect();
    let (xf, dyf): (Vec<f32>, Vec<f32>) = (
        xb.iter().map(|v| v.to_f32()).collect(),
        dyb.iter().map(|v| v.to_f32()).collect(),
    );
    let mut want = vec![f32::NAN; n];
    clamp_backward(&xf, limit, &dyf, &mut want);
    let mut gdy = gpu.upload(&dyb).unwrap();
    gpu.clamp_backward_bf16(&gpu.upload(&xb).unwrap(), limit, &mut gdy)
        .unwrap();
    let got: Vec<f32> = gpu
        .download(&gdy)
        .unwrap()
        .iter()
        .map(|v| v.to_f32())
        .collect();
    // Bit for bit: a zeroed gradient is +0, as the reference's.
    assert_all(
        &format!("clamp_backward_bf16 n {n} limit {limit}"),
        &got,
        &want,
    );
}

#[test]
fn clamp_backward_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("clamp_backward");
    for n in LENGTHS {
        // 1.5 is a bf16 value; 1.3 is not (x = bf16(1.3) > 1.3 lies outside); 0 passes only ±0;
        // a NaN limit passes nothing, as the reference.
        for limit in [1.5, 1.3, 0.0, f32::NAN] {
            clamp_case(gpu, &mut rng, n, limit);
        }
    }
}

#[test]
fn elementwise_rejects_bad_lengths() {
    let Some(gpu) = gpu() else { return };
    let f = gpu.zeros::<f32>(10).unwrap();
    let b = gpu.zeros::<bf16>(10).unwrap();
    let mut f9 = gpu.zeros::<f32>(9).unwrap();
    let mut b11 = gpu.zeros::<bf16>(11).unwrap();
    let e = gpu.convert_to_bf16(&f, &mut b11).unwrap_err().to_string();
    assert!(
        e.contains("convert_f32_to_bf16") && e.contains("y has 11 elements") && e.contains("10"),
        "{e}"
    );
    let e = gpu.convert_to_f32(&b, &mut f9).unwrap_err().to_string();
    assert!(
        e.contains("convert_bf16_to_f32") && e.contains("y has 9 elements"),
        "{e}"
    );
    let e = gpu.add_in_place(&mut f9, &f).unwrap_err().to_string();
    assert!(
        e.contains("add_f32_in_place") && e.contains("x has 10 elements") && e.contains("9"),
        "{e}"
    );
    let e = gpu
        .clamp_backward_bf16(&b, 1.0, &mut b11)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("clamp_backward_bf16") && e.contains("dy has 11 elements"),
        "{e}"
    );
}
