//! The norm fused into the decode GEMV (kernels/gemv.cu `norm_gemv_nt_*`,
//! `CudaBackend::norm_gemv_nt`): for RMSNorm and OLMo's LayerNorm, rows 1, 2, 3, 4, 5 and 8
//! gathered from a residual stream with more rows, every model width it serves at K 4096
//! (fused QKV 12288, fused gate|up 22016, the LM head 32000 in f32, and 4099, not a multiple of
//! a block's 16 columns) and K 520 (65 chunks: only a partial group), outputs poisoned first:
//! - bit for bit what `norm_rows` into bf16 then `gemm_bf16` (the GEMV) give, written and added
//!   to (accumulate);
//! - against the f64 reference (`backend::cpu::ops::{rms_norm, layer_norm_no_params}` in f64,
//!   then the product in f64). Bound: the house bf16 bound (8e-3): the normalised input is
//!   rounded to bf16 once (≤ 2⁻⁹ relative per value, ~1e-3 in norm over random values), a bf16
//!   output once more, and the f32 sums add ~K·2⁻²⁴ at most.
//! - K 4100 (not a multiple of 8) is refused by the fused kernel and `norm_gemm_bf16` falls back
//!   to the separate norm and the tiled GEMM, against the same reference.

use crate::common::gpu::{gpu, poisoned, rel_err, Dtype, Rng, BF16_BOUND};
use half::bf16;
use implicit::backend::cpu::ops;
use implicit::backend::cuda::{CudaBackend, DeviceBuffer, GemmLayout, NormedRows, RowNorm};

/// The f64 reference columns: all of them up to this many, else this many spread over n.
const CHECKED_COLUMNS: usize = 384;

struct Inputs {
    x: Vec<f32>,
    rows: Vec<u32>,
    g: Vec<f32>,
    k: usize,
    rms: bool,
}

impl Inputs {
    fn draw(rng: &mut Rng, m: usize, k: usize, rms: bool) -> Inputs {
        // Two rows more than asked for, in a shuffled order: the final norm gathers the rows
        // whose logits are wanted.
        let x_rows = m + 2;
        let mut order: Vec<u32> = (0..x_rows as u32).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        order.truncate(m);
        Inputs {
            x: rng.vec(x_rows * k, 3.0),
            rows: order,
            g: rng.vec(k, 1.5),
            k,
            rms,
        }
    }

    /// C[r, j] = Σ_i norm(x[rows[r]])_i · w[j, i] in f64 (w `[n, k]`), for the columns
    /// `cols`, row-major `[m, cols.len()]`.
    fn reference(&self, w: &[bf16], cols: &[usize]) -> Vec<f64> {
        let k = self.k;
        let mut out = Vec::with_capacity(self.rows.len() * cols.len());
        for &row in &self.rows {
            let xr: Vec<f64> = self.x[row as usize * k..][..k]
                .iter()
                .map(|&v| v as f64)
                .collect();
            let mut h = vec![0.0f64; k];
            if self.rms {
                let g: Vec<f64> = self.g.iter().map(|&v| v as f64).collect();
                ops::rms_norm(&xr, &g, EPS, &mut h);
            } else {
                ops::layer_norm_no_params(&xr, k, EPS, &mut h);
            }
            for &j in cols {
                let wj = &w[j * k..][..k];
                out.push(h.iter().zip(wj).map(|(a, b)| a * b.to_f64()).sum());
            }
        }
        out
    }
}

const EPS: f64 = 1e-5;

fn columns(n: usize) -> Vec<usize> {
    if n <= CHECKED_COLUMNS {
        return (0..n).collect();
    }
    // Both ends (the last block's partial columns) and a spread between.
    let mut cols: Vec<usize> = (0..CHECKED_COLUMNS / 2)
        .map(|i| i * n / (CHECKED_COLUMNS / 2))
        .collect();
    cols.extend(n - CHECKED_COLUMNS / 2..n);
    cols.sort_unstable();
    cols.dedup();
    cols
}

struct OnGpu {
    x: DeviceBuffer<f32>,
    rows: DeviceBuffer<u32>,
    g: DeviceBuffer<f32>,
}

impl OnGpu {
    fn new(gpu: &CudaBackend, inputs: &Inputs) -> OnGpu {
        OnGpu {
            x: gpu.upload(&inputs.x).unwrap(),
            rows: gpu.upload(&inputs.rows).unwrap(),
            g: gpu.upload(&inputs.g).unwrap(),
        }
    }

    fn normed(&self, inputs: &Inputs) -> NormedRows<'_> {
        NormedRows {
            x: &self.x,
            dim: inputs.k,
            rows: &self.rows,
            norm: if inputs.rms {
                RowNorm::Rms(&self.g)
            } else {
                RowNorm::LayerNorm
            },
            eps: EPS,
        }
    }
}

fn bits<T: Dtype>(v: &[T]) -> Vec<u32> {
    v.iter().map(|&x| x.to_f32().to_bits()).collect()
}

/// A random weight `[n, k]` (bf16), on the host and on the GPU; drawn once per shape, since
/// drawing the largest ones dominates the test's time.
struct Weight {
    host: Vec<bf16>,
    dev: DeviceBuffer<bf16>,
    n: usize,
    k: usize,
}

impl Weight {
    fn draw(gpu: &CudaBackend, rng: &mut Rng, n: usize, k: usize) -> Weight {
        let host: Vec<bf16> = rng
            .vec(n * k, 1.0)
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        let dev = gpu.upload(&host).unwrap();
        Weight { host, dev, n, k }
    }
}

/// The fused launch against the separate norm + GEMV (bit for bit, written and accumulated)
/// and against f64.
fn case<O: Dtype>(gpu: &CudaBackend, rng: &mut Rng, m: usize, weight: &Weight, rms: bool) {
    let (n, k) = (weight.n, weight.k);
    let tag = format!(
        "{} m {m} n {n} k {k} {}",
        if rms { "rms" } else { "layer norm" },
        std::any::type_name::<O>()
    );
    let inputs = Inputs::draw(rng, m, k, rms);
    let dev = OnGpu::new(gpu, &inputs);
    let w = &weight.dev;
    assert!(
        gpu.norm_gemv_supports(m, n, k, w).is_ok(),
        "{tag}: the fused kernel should take this shape"
    );

    let mut fused = poisoned::<O>(gpu, m * n);
    gpu.norm_gemv_nt(dev.normed(&inputs), w, &mut fused, false)
        .unwrap();
    let mut h = poisoned::<bf16>(gpu, m * k);
    let mut separate = poisoned::<O>(gpu, m * n);
    let normed = dev.normed(&inputs);
    gpu.norm_rows(&dev.x, k, &dev.rows, normed.norm, EPS, &mut h)
        .unwrap();
    gpu.gemm_bf16(GemmLayout::NT, m, n, k, 1, &h, w, &mut separate, false)
        .unwrap();
    let (fused, separate) = (
        gpu.download(&fused).unwrap(),
        gpu.download(&separate).unwrap(),
    );
    let differ = bits(&fused)
        .iter()
        .zip(bits(&separate))
        .filter(|(a, b)| **a != *b)
        .count();
    assert_eq!(
        differ,
        0,
        "{tag}: {differ} of {} values differ from norm then GEMV",
        m * n
    );

    let cols = columns(n);
    let picked: Vec<O> = (0..m)
        .flat_map(|r| cols.iter().map(move |&j| r * n + j))
        .map(|i| fused[i])
        .collect();
    let e = rel_err(&picked, &inputs.reference(&weight.host, &cols));
    eprintln!("{tag}: rel err {e:.2e} against f64 (bound {BF16_BOUND:.0e})");
    assert!(e <= BF16_BOUND, "{tag}: rel err {e:.3e} > {BF16_BOUND:.0e}");

    // Accumulating into the same random C, both ways.
    let start: Vec<O> = rng.vec(m * n, 2.0).into_iter().map(O::from_f32).collect();
    let mut fused_acc = gpu.upload(&start).unwrap();
    gpu.norm_gemv_nt(dev.normed(&inputs), w, &mut fused_acc, true)
        .unwrap();
    let mut separate_acc = gpu.upload(&start).unwrap();
    gpu.gemm_bf16(GemmLayout::NT, m, n, k, 1, &h, w, &mut separate_acc, true)
        .unwrap();
    assert_eq!(
        bits(&gpu.download(&fused_acc).unwrap()),
        bits(&gpu.download(&separate_acc).unwrap()),
        "{tag}: accumulating differs from norm then GEMV"
    );
}

#[test]
fn fused_norm_gemv_equals_norm_then_gemv_bit_for_bit_and_matches_f64() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("norm_gemv");
    // (n, k, f32 out): fused q|k|v, fused gate|up, the LM head, 4099 columns, k 520.
    for (n, k, f32_out) in [
        (12288, 4096, false),
        (22016, 4096, false),
        (32000, 4096, true),
        (4099, 4096, false),
        (37, 520, true),
    ] {
        let weight = Weight::draw(gpu, &mut rng, n, k);
        for rms in [true, false] {
            for m in [1, 2, 3, 4, 5, 8] {
                if f32_out {
                    case::<f32>(gpu, &mut rng, m, &weight, rms);
                } else {
                    case::<bf16>(gpu, &mut rng, m, &weight, rms);
                }
            }
        }
    }
}

/// What the fused kernel cannot take it refuses with an error, and `norm_gemm_bf16` then runs
/// the separate norm and product: k 4100 (not a multiple of 8), 9 rows.
#[test]
fn norm_gemm_falls_back_where_the_fused_kernel_cannot_run() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("norm_gemm_fallback");
    for (m, n, k) in [(3, 300, 4100), (9, 300, 512)] {
        for rms in [true, false] {
            let tag = format!("{} m {m} n {n} k {k}", if rms { "rms" } else { "layer" });
            let weight = Weight::draw(gpu, &mut rng, n, k);
            let w = &weight.dev;
            let inputs = Inputs::draw(&mut rng, m, k, rms);
            let dev = OnGpu::new(gpu, &inputs);
            let refused = gpu.norm_gemv_supports(m, n, k, w);
            assert!(refused.is_err(), "{tag}: the fused kernel cannot take this");
            let mut out = poisoned::<f32>(gpu, m * n);
            let err = gpu
                .norm_gemv_nt(dev.normed(&inputs), w, &mut out, false)
                .expect_err("the fused launcher must refuse");
            assert!(err.to_string().contains(&format!("k {k}")), "{tag}: {err}");
            let mut h = poisoned::<bf16>(gpu, m * k);
            gpu.norm_gemm_bf16(dev.normed(&inputs), &mut h, w, &mut out, false, true)
                .unwrap();
            let got = gpu.download(&out).unwrap();
            let all: Vec<usize> = (0..n).collect();
            let e = rel_err(&got, &inputs.reference(&weight.host, &all));
            eprintln!("{tag}: rel err {e:.2e} (bound {BF16_BOUND:.0e})");
            assert!(e <= BF16_BOUND, "{tag}: rel err {e:.3e} > {BF16_BOUND:.0e}");
        }
    }
}
