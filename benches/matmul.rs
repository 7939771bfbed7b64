//! GEMM benchmarks: square products, SmolLM2-135M decode (m = 1) and prefill shapes, with the
//! weight B in f32 and bf16, in the `Linear` layout (`y = x·Wᵀ`, B stored `[n, k]`).
//!
//! Throughput is reported as `Throughput::Elements(2·m·n·k)`: where criterion prints
//! "elements/s" it means FLOP/s. Before criterion runs, a short preamble prints the machine's
//! measured FMA peak and read bandwidth next to what `gemm` achieves (GFLOP/s, and GB/s of
//! weight streamed for the decode shapes), so the numbers can be judged at a glance.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use implicit::backend::cpu::matmul::gemm;
use implicit::backend::cpu::parallel::num_threads;
use implicit::tensor::Elems;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// (label, m, n, k).
const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("square", 512, 512, 512),
    ("square", 1024, 1024, 1024),
    ("decode_up", 1, 1536, 576),
    ("decode_qo", 1, 576, 576),
    ("decode_down", 1, 576, 1536),
    ("prefill_up", 64, 1536, 576),
];

/// Operands for one shape: A `[m, k]`, B `[n, k]` in f32 and bf16, C `[m, n]`.
struct Operands {
    a: Vec<f32>,
    b32: Vec<f32>,
    b16: Vec<bf16>,
    c: Vec<f32>,
}

impl Operands {
    fn new(m: usize, n: usize, k: usize) -> Self {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let a = (0..m * k).map(|_| next()).collect();
        let b32: Vec<f32> = (0..n * k).map(|_| next()).collect();
        let b16 = b32.iter().map(|&x| bf16::from_f32(x)).collect();
        Operands {
            a,
            b32,
            b16,
            c: vec![0.0; m * n],
        }
    }
}

fn run(m: usize, n: usize, k: usize, ops: &mut Operands, bf16: bool) {
    let b = if bf16 {
        Elems::BF16(&ops.b16)
    } else {
        Elems::F32(&ops.b32)
    };
    gemm(
        m,
        n,
        k,
        black_box(&ops.a),
        false,
        b,
        true,
        black_box(&mut ops.c),
        false,
    );
}

/// Mean seconds per call over about `budget`, after one warm-up call.
fn time_it(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut iters = 0u32;
    while start.elapsed() < budget || iters < 3 {
        f();
        iters += 1;
    }
    start.elapsed().as_secs_f64() / iters as f64
}

/// Peak f32 FMA throughput of all threads together, in GFLOP/s: each thread runs chains of
/// independent fused multiply-adds at the widest vector width the CPU has.
fn measured_peak_gflops() -> (f64, &'static str) {
    const CHAINS: usize = 12;
    const STEPS: usize = 20_000_000;
    #[cfg(target_arch = "x86_64")]
    let (lanes, name) = if is_x86_feature_detected!("avx512f") {
        (16, "AVX-512 FMA")
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        (8, "AVX2 FMA")
    } else {
        (1, "scalar")
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (lanes, name) = (1, "scalar");
    let per_thread = |_: usize| {
        let start = Instant::now();
        let sink = fma_chains::<CHAINS>(STEPS, lanes);
        black_box(sink);
        start.elapsed().as_secs_f64()
    };
    let all_threads = || {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..num_threads())
                .map(|t| s.spawn(move || per_thread(t)))
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap())
                .fold(0.0, f64::max)
        })
    };
    // Best of a few tries: on a shared machine, other processes only ever slow it down.
    let secs = (0..5).map(|_| all_threads()).fold(f64::MAX, f64::min);
    let flops = (num_threads() * CHAINS * STEPS * lanes * 2) as f64;
    (flops / secs / 1e9, name)
}

/// Runs `steps` rounds of `C` independent FMA chains of `lanes` floats; returns a sink value.
fn fma_chains<const C: usize>(steps: usize, lanes: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if lanes == 16 {
            // SAFETY: AVX-512F was detected by the caller.
            return unsafe { x86::chains512::<C>(steps) };
        }
        if lanes == 8 {
            // SAFETY: AVX2 and FMA were detected by the caller.
            return unsafe { x86::chains256::<C>(steps) };
        }
    }
    let mut acc = [1.0f32; C];
    for _ in 0..steps {
        for x in acc.iter_mut() {
            *x = x.mul_add(0.999_999, 1e-7);
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn chains512<const C: usize>(steps: usize) -> f32 {
        let (m, a) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); C];
        for _ in 0..steps {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, m, a);
            }
        }
        acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn chains256<const C: usize>(steps: usize) -> f32 {
        let (m, a) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); C];
        for _ in 0..steps {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, m, a);
            }
        }
        let mut out = [0.0f32; 8];
        for v in acc {
            let mut lanes = [0.0f32; 8];
            // SAFETY: `lanes` holds 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
            out.iter_mut().zip(lanes).for_each(|(o, l)| *o += l);
        }
        out.iter().sum()
    }
}

/// Read bandwidth in GB/s over a buffer far larger than the caches, all threads summing
/// their own part (a vectorised sum with 64 partial sums, so add latency never limits it).
/// Best of several passes.
fn measured_read_gbs() -> f64 {
    let n: usize = 64 << 20; // 256 MiB of f32
    let buf: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let chunk = n.div_ceil(num_threads());
    let pass = || {
        std::thread::scope(|s| {
            for part in buf.chunks(chunk) {
                s.spawn(move || {
                    let mut acc = [0.0f32; 64];
                    for c in part.chunks_exact(64) {
                        for (a, &x) in acc.iter_mut().zip(c) {
                            *a += x;
                        }
                    }
                    black_box(acc);
                });
            }
        })
    };
    pass();
    let secs = (0..6)
        .map(|_| {
            let start = Instant::now();
            pass();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min);
    (n * 4) as f64 / secs / 1e9
}

/// GB/s of weight streamed by a decode-shaped call whose weight is not in cache, as in a real
/// decode step (a model's weights far exceed L3): cycles through 256 MiB of weight copies.
fn cold_decode_gbs(m: usize, n: usize, k: usize, bf16: bool) -> f64 {
    let ops = Operands::new(m, n, k);
    let bytes = n * k * if bf16 { 2 } else { 4 };
    let copies = (256usize << 20).div_ceil(bytes);
    let b32: Vec<Vec<f32>> = if bf16 {
        Vec::new()
    } else {
        vec![ops.b32.clone(); copies]
    };
    let b16: Vec<Vec<bf16>> = if bf16 {
        vec![ops.b16.clone(); copies]
    } else {
        Vec::new()
    };
    let mut c = vec![0.0f32; m * n];
    let mut i = 0;
    let secs = time_it(Duration::from_millis(300), || {
        let b = if bf16 {
            Elems::BF16(&b16[i])
        } else {
            Elems::F32(&b32[i])
        };
        gemm(m, n, k, &ops.a, false, b, true, black_box(&mut c), false);
        i = (i + 1) % copies;
    });
    bytes as f64 / secs / 1e9
}

/// The preamble: peak, bandwidth, and each shape's achieved rate, timed plainly.
fn print_summary() {
    let (peak, what) = measured_peak_gflops();
    let bw = measured_read_gbs();
    println!(
        "matmul: {} threads; measured peak {peak:.0} GFLOP/s ({what}), DRAM read {bw:.1} GB/s",
        num_threads()
    );
    for &(label, m, n, k) in SHAPES {
        let mut ops = Operands::new(m, n, k);
        for bf16 in [false, true] {
            let secs = time_it(Duration::from_millis(300), || run(m, n, k, &mut ops, bf16));
            let gflops = 2.0 * (m * n * k) as f64 / secs / 1e9;
            let weight_gbs = (n * k * if bf16 { 2 } else { 4 }) as f64 / secs / 1e9;
            println!(
                "  {label:12} m={m:<5} n={n:<5} k={k:<5} B={:4}: {:9.1} µs  {gflops:7.1} GFLOP/s ({:4.1}% of peak)  weight {weight_gbs:6.1} GB/s",
                if bf16 { "bf16" } else { "f32" },
                secs * 1e6,
                100.0 * gflops / peak,
            );
            if m == 1 {
                let cold = cold_decode_gbs(m, n, k, bf16);
                println!(
                    "  {:12} weight not in cache: {cold:6.1} GB/s ({:4.1}% of DRAM read)",
                    "",
                    100.0 * cold / bw
                );
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    // IMPLICIT_BENCH_NO_SUMMARY=1 skips the preamble (e.g. when profiling one benchmark).
    if std::env::var_os("IMPLICIT_BENCH_NO_SUMMARY").is_none() {
        print_summary();
    }
    let mut group = c.benchmark_group("gemm");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for &(label, m, n, k) in SHAPES {
        let mut ops = Operands::new(m, n, k);
        // "elements" = floating-point operations (one multiply-add counts as two).
        group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        for bf16 in [false, true] {
            let name = format!("{label}/{}", if bf16 { "bf16" } else { "f32" });
            group.bench_function(BenchmarkId::new(name, format!("{m}x{n}x{k}")), |bch| {
                bch.iter(|| run(m, n, k, &mut ops, bf16))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
