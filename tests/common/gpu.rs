//! What the GPU tests (tests/cuda_*.rs) share: the backend (or a printed reason to skip), a
//! random source that draws new inputs on every run, the dtypes under test with their bounds,
//! and the relative error against an f64 reference.

use half::bf16;
use implicit::backend::cuda::{CudaAvailability, CudaBackend, DeviceBuffer, Float};
use std::cell::RefCell;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

/// The shared backend, or None after printing why the test is skipped. The calling thread
/// holds the GPU until it ends (tests/common/gpu.rs's `hold_the_gpu`).
pub fn gpu() -> Option<&'static CudaBackend> {
    let gpu = shared_backend()?;
    hold_the_gpu();
    Some(gpu)
}

/// One test at a time on the GPU: the tests share one backend and so one stream, and a test
/// capturing a decode step as a CUDA graph would record another test's launches into its graph.
/// The first call on a thread takes the lock and keeps it, in a thread-local, until the thread
/// ends (the test harness runs each test on its own thread, or all on one with
/// `--test-threads=1`, where the lock is simply never contended).
fn hold_the_gpu() {
    static GPU_LOCK: Mutex<()> = Mutex::new(());
    thread_local! {
        static HELD: RefCell<Option<MutexGuard<'static, ()>>> = const { RefCell::new(None) };
    }
    HELD.with(|held| {
        let mut held = held.borrow_mut();
        if held.is_none() {
            // A test that panicked while holding it poisons nothing the lock guards.
            *held = Some(GPU_LOCK.lock().unwrap_or_else(PoisonError::into_inner));
        }
    });
}

/// The backend where the Hopper (sm_90a: wgmma, TMA) kernels apply: None (after printing why
/// `what` skips) without a GPU or on a device other than compute capability 9.0; a panic on a
/// 9.0 device where the sm_90a images cannot run, since there they must.
#[allow(dead_code)] // not every test crate asks
pub fn hopper_gpu(what: &str) -> Option<&'static CudaBackend> {
    let gpu = gpu()?;
    if gpu.compute_capability() != (9, 0) {
        println!(
            "SKIPPED ({what} needs compute capability 9.0): {} is {:?}",
            gpu.device_name(),
            gpu.compute_capability()
        );
        return None;
    }
    if let Err(e) = gpu.wgmma_available() {
        panic!("{}: {e}", gpu.device_name());
    }
    Some(gpu)
}

/// Whether a GPU is there, without the "SKIPPED" line [`gpu`] prints: for a test that checks
/// something on the CPU either way and only changes what it expects (tools/skip_summary.py
/// counts a test that prints SKIPPED as one that ran nothing).
#[allow(dead_code)] // not every test crate asks
pub fn gpu_present() -> bool {
    opened().is_ok()
}

fn shared_backend() -> Option<&'static CudaBackend> {
    match opened() {
        Ok(b) => Some(b),
        Err(reason) => {
            println!("SKIPPED (no GPU): {reason}");
            None
        }
    }
}

fn opened() -> &'static Result<CudaBackend, String> {
    static GPU: OnceLock<Result<CudaBackend, String>> = OnceLock::new();
    GPU.get_or_init(
        || match CudaBackend::open().expect("a GPU is there but failed") {
            CudaAvailability::Ready(b) => {
                eprintln!("CUDA device: {}", b.device_name());
                Ok(b)
            }
            CudaAvailability::NoGpu(reason) => Err(reason),
        },
    )
}

/// xorshift64*, seeded from the clock (or IMPLICIT_TEST_SEED) so every run draws new inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(test: &str) -> Rng {
        let seed = std::env::var("IMPLICIT_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                t.map(|d| d.as_nanos() as u64).unwrap_or(1)
            });
        eprintln!("{test}: IMPLICIT_TEST_SEED={seed}");
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }

    /// Uniform in [−scale, scale), never exactly 0.
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u = ((self.next() >> 40) as f32 + 0.5) / (1u64 << 24) as f32;
                (2.0 * u - 1.0) * scale
            })
            .collect()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn tokens(&mut self, n: usize, vocab: usize) -> Vec<u32> {
        (0..n).map(|_| self.below(vocab) as u32).collect()
    }
}

/// The error bound of f32 storage (‖out − ref‖/‖ref‖).
pub const F32_BOUND: f64 = 1e-5;
/// The error bound of bf16 storage.
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

/// ‖out − ref‖/‖ref‖, infinite if any output is not finite (unwritten or poisoned).
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

/// Asserts rel_err(out, reference) ≤ bound, printing the error either way.
pub fn check<T: Dtype>(what: &str, out: &[T], reference: &[f64], bound: f64) {
    let e = rel_err(out, reference);
    eprintln!("{what}: rel err {e:.2e} (bound {bound:.0e})");
    assert!(e <= bound, "{what}: rel err {e:.3e} > {bound:.0e}");
}

/// A buffer of `n` NaNs, so that an output the kernel does not write shows.
pub fn poisoned<T: Dtype>(gpu: &CudaBackend, n: usize) -> DeviceBuffer<T> {
    gpu.upload(&vec![T::from_f32(f32::NAN); n]).unwrap()
}

pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The values' bits as f32 (exact for bf16, whose f32 widening is one-to-one), for asserting
/// that two runs agree bit for bit.
pub fn bits<T: Dtype>(v: &[T]) -> Vec<u32> {
    v.iter().map(|&x| x.to_f32().to_bits()).collect()
}
