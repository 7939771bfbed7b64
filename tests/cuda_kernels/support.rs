//! Helpers of the CUDA kernel tests: the shared backend, a seeded RNG, the dtypes under test
//! and the error measure.

use half::bf16;
use implicit::backend::cuda::{CudaBackend, DeviceBuffer, Float};

// Each test crate uses a part of the shared helpers.
#[allow(dead_code)]
#[path = "../common/gpu.rs"]
mod shared;
pub use shared::{gpu, Rng};

pub const F32_BOUND: f64 = 1e-5;
pub const BF16_BOUND: f64 = 8e-3;

/// A float type under test: how its inputs are drawn and how close its outputs must be.
pub trait Dtype: Float {
    const BOUND: f64;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    /// The values as stored (bf16-rounded for bf16), so the reference sees the same inputs.
    fn quantize(v: &[f32]) -> (Vec<Self>, Vec<f32>) {
        let q: Vec<Self> = v.iter().map(|&x| Self::from_f32(x)).collect();
        let back = q.iter().map(|&x| x.to_f32()).collect();
        (q, back)
    }
}

impl Dtype for f32 {
    const BOUND: f64 = F32_BOUND;
    fn from_f32(x: f32) -> f32 {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Dtype for bf16 {
    const BOUND: f64 = BF16_BOUND;
    fn from_f32(x: f32) -> bf16 {
        bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// ‖out − ref‖ / ‖ref‖ (infinite if any output is not finite: unwritten or poisoned).
pub fn rel_err<T: Dtype>(out: &[T], reference: &[f64]) -> f64 {
    assert_eq!(out.len(), reference.len());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&o, &r) in out.iter().zip(reference) {
        let o = o.to_f32() as f64;
        if !o.is_finite() {
            return f64::INFINITY;
        }
        num += (o - r) * (o - r);
        den += r * r;
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

pub fn check<T: Dtype>(what: &str, out: &[T], reference: &[f64], bound: f64) {
    let e = rel_err(out, reference);
    eprintln!("{what}: rel err {e:.2e} (bound {bound:.0e})");
    assert!(e <= bound, "{what}: rel err {e:.3e} > {bound:.0e}");
}

pub fn poisoned<T: Dtype>(gpu: &CudaBackend, n: usize) -> DeviceBuffer<T> {
    gpu.upload(&vec![T::from_f32(f32::NAN); n]).unwrap()
}

pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
