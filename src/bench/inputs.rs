//! Random inputs (a seeded xorshift generator, uploaded in chunks), the relative difference
//! of two results, and the unit conversions of the rates.

use crate::backend::cuda::{driver_error, CudaBackend, DeviceBuffer, DeviceElem};
use crate::error::Result;
use half::bf16;

/// Host pool and upload chunk for random fills: buffers larger than a chunk are filled chunk by
/// chunk from random offsets into a pool of twice the chunk.
const FILL_CHUNK: usize = 1 << 22;

/// xorshift64*.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = ((self.next() >> 40) as f32 + 0.5) / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Element types drawn at random.
pub(super) trait Sample: DeviceElem {
    fn from_f32(x: f32) -> Self;
    fn to_f64(self) -> f64;
}

impl Sample for f32 {
    fn from_f32(x: f32) -> f32 {
        x
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Sample for bf16 {
    fn from_f32(x: f32) -> bf16 {
        bf16::from_f32(x)
    }
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
}

impl Sample for u32 {
    /// Random bits (for buffers whose contents are not interpreted).
    fn from_f32(x: f32) -> u32 {
        x.to_bits()
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

/// `n` values uniform in [lo, hi): a pool of up to 2·FILL_CHUNK drawn on the host, uploaded
/// chunk by chunk from random offsets.
pub(super) fn random<T: Sample>(
    gpu: &CudaBackend,
    rng: &mut Rng,
    n: usize,
    lo: f32,
    hi: f32,
) -> Result<DeviceBuffer<T>> {
    let mut buf = gpu.alloc::<T>(n)?;
    let pool: Vec<T> = (0..n.min(2 * FILL_CHUNK))
        .map(|_| T::from_f32(rng.uniform(lo, hi)))
        .collect();
    let mut start = 0;
    while start < n {
        let len = (n - start).min(FILL_CHUNK);
        let off = rng.below(pool.len() - len + 1);
        gpu.stream()
            .memcpy_htod(
                T::as_raw(&pool[off..off + len]),
                &mut buf.slice.slice_mut(start..start + len),
            )
            .map_err(|e| driver_error(&format!("copying {len} random values to the GPU"), e))?;
        start += len;
    }
    gpu.synchronize()?;
    Ok(buf)
}

/// ‖a − b‖ / ‖b‖ (infinite when `a` has a value that is not finite).
pub(super) fn rel_diff<T: Sample>(a: &[T], b: &[T]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x.to_f64(), y.to_f64());
        if !x.is_finite() {
            return f64::INFINITY;
        }
        num += (x - y) * (x - y);
        den += y * y;
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

pub(super) fn tflops(flops: f64, us: f64) -> f64 {
    flops / us / 1e6
}

pub(super) fn gb_s(bytes: f64, us: f64) -> f64 {
    bytes / us / 1e3
}

pub(super) fn elem<T: DeviceElem>() -> usize {
    std::mem::size_of::<T>()
}

#[cfg(test)]
mod tests {
    use super::{rel_diff, Rng};

    #[test]
    fn rng_is_uniform_and_never_zero() {
        let mut rng = Rng(12345);
        let v: Vec<f32> = (0..10_000).map(|_| rng.uniform(-1.0, 1.0)).collect();
        assert!(v.iter().all(|&x| x != 0.0 && (-1.0..1.0).contains(&x)));
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 0.05, "mean {mean}");
    }

    #[test]
    fn rel_diff_measures() {
        assert_eq!(rel_diff(&[1.0f32, 2.0], &[1.0f32, 2.0]), 0.0);
        assert!((rel_diff(&[0.0f32, 0.0], &[3.0f32, 4.0]) - 1.0).abs() < 1e-12);
        assert!(rel_diff(&[f32::NAN], &[1.0f32]).is_infinite());
    }
}
