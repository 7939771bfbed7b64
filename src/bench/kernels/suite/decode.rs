//! A decode step's products: Llama-2-7B's weights (q/k/v/o 4096×4096, gate/up 11008×4096, down
//! 4096×11008, LM head 32000×4096) against a batch of m ∈ {1, 16, 64, 128, 256} rows, through
//! `gemm_bf16` as the model calls it (m = 1 takes kernels/gemv.cu, 9..=256 kernels/gemm_skinny.cu),
//! bf16 out. Each row gives the weights' bytes per second (the product's floor is reading them
//! once), its fraction of the copy bandwidth measured in the same run, and cuBLAS at the same
//! shape on the same inputs.
//!
//! Then, at batch 1, the norm before each normed product run inside the GEMV
//! (`CudaBackend::norm_gemv_nt`, kernels/gemv.cu) against the separate norm + GEMV the model ran
//! before, on the 7B's fused q|k|v, fused gate|up and LM head (f32 out): the fused launch's
//! time, the pair's (the reference), and their outputs' difference (0: the same bits).

use super::{Bench, BenchResult, Reference, D_MODEL, FFN, MEMORY_TARGET, VOCAB};
use crate::backend::cuda::{
    Float, GemmLayout, NormedRows, RowNorm, SkinnySplit, GEMV_MAX_ROWS, SKINNY_MAX_ROWS,
};
use crate::bench::inputs::Sample;
use crate::bench::inputs::{gb_s, rel_diff, tflops};
use crate::error::Result;
use half::bf16;

/// Decode batches benchmarked.
pub(super) const DECODE_ROWS: [usize; 5] = [1, 16, 64, 128, 256];
/// Rows up to which a product is bound by the weights' bytes on paper (at m = 128 mma.sync's
/// FLOPs take about as long as the bytes on an H100; above, longer): rows past it have no
/// bandwidth target.
const MEMORY_BOUND_ROWS: usize = 64;

impl Bench<'_> {
    /// Every decode product at every batch of [`DECODE_ROWS`].
    pub(super) fn decode_products(&mut self) -> Result<()> {
        for (label, d_in, d_out) in [
            ("q/k/v/o", D_MODEL, D_MODEL),
            ("gate/up", D_MODEL, FFN),
            ("down", FFN, D_MODEL),
            ("lm_head", D_MODEL, VOCAB),
        ] {
            for m in DECODE_ROWS {
                self.decode_product(label, m, d_out, d_in)?;
            }
        }
        self.norm_product::<bf16>("fused q|k|v", 3 * D_MODEL)?;
        self.norm_product::<bf16>("fused gate|up", 2 * FFN)?;
        self.norm_product::<f32>("lm_head", VOCAB)
    }

    /// y[1, n] = rmsnorm(x)·Wᵀ (W `[n, D_MODEL]`, f32 x and norm weight, `O` out): fused
    /// (`norm_gemv_nt`) against `norm_rows` + `gemm_bf16` on the same inputs.
    fn norm_product<O: Float + Sample>(&mut self, label: &str, n: usize) -> Result<()> {
        let kernel = O::pick("norm_gemv_nt_f32", "norm_gemv_nt_bf16").to_string();
        if !self.wants(&[&kernel, label, "decode", "norm_gemv"]) {
            return Ok(());
        }
        let (gpu, k) = (self.gpu, D_MODEL);
        let sets = self.sets(2 * k * n);
        let w = self.randoms::<bf16>(sets, n * k, -1.0, 1.0)?;
        let x = self.random::<f32>(k, -3.0, 3.0)?;
        let g = self.random::<f32>(k, 0.5, 1.5)?;
        let rows = gpu.upload(&[0u32])?;
        let input = NormedRows {
            x: &x,
            dim: k,
            rows: &rows,
            norm: RowNorm::Rms(&g),
            eps: 1e-5,
        };
        let mut h = gpu.alloc::<bf16>(k)?;
        let mut c = gpu.alloc::<O>(n)?;
        let fused = self
            .timer
            .time(&mut |i| gpu.norm_gemv_nt(input, &w[i % sets], &mut c, false))?;
        let separate = self
            .timer
            .time(&mut |i| gpu.norm_gemm_bf16(input, &mut h, &w[i % sets], &mut c, false, false))?;
        gpu.norm_gemm_bf16(input, &mut h, &w[0], &mut c, false, false)?;
        let separate_out = self.download_prefix(&c, n)?;
        gpu.norm_gemv_nt(input, &w[0], &mut c, false)?;
        let check = rel_diff(&self.download_prefix(&c, n)?, &separate_out);
        // The fused launch reads the weights once, and x and g in f32.
        let bytes = (2 * n * k + 8 * k) as f64;
        let rate = gb_s(bytes, fused.median_us);
        let fraction = rate / self.copy_gb_s;
        let speed_ratio = separate.median_us / fused.median_us;
        self.push(BenchResult {
            kernel,
            group: "decode",
            shape: format!("decode rmsnorm + {label} m 1: 1x{n}x{k}"),
            tokens: Some(1),
            bytes,
            flops: 2.0 * (n * k) as f64,
            time: fused,
            gb_s: rate,
            tflops: None,
            ceiling: Some("copy"),
            ceiling_fraction: Some(fraction),
            reference: Some(Reference {
                name: "norm + GEMV time ÷ fused",
                median_us: separate.median_us,
                tflops: None,
                speed_ratio,
            }),
            target: Some(format!("≥{:.0}% of copy", MEMORY_TARGET * 100.0)),
            meets_target: Some(fraction >= MEMORY_TARGET),
            check_rel_diff: Some(check),
        });
        Ok(())
    }

    /// C[m, n] = A[m, k]·W[n, k]ᵀ through `gemm_bf16`, and through cuBLAS on the same inputs.
    fn decode_product(&mut self, label: &str, m: usize, n: usize, k: usize) -> Result<()> {
        let skinny = m > GEMV_MAX_ROWS && m <= SKINNY_MAX_ROWS;
        let gpu = self.gpu;
        let plan = if skinny {
            Some(gpu.skinny_plan(m, n, k, SkinnySplit::Auto)?)
        } else {
            None
        };
        let kernel = match &plan {
            Some(p) => format!("gemm_skinny_m{}_bf16", p.m_tile),
            None if m <= GEMV_MAX_ROWS => "gemv_nt_bf16".to_string(),
            None => "gemm_bf16".to_string(),
        };
        if !self.wants(&[&kernel, label, "decode", "gemm_skinny"]) {
            return Ok(());
        }
        let sets = self.sets(2 * (m * k + k * n));
        let a = self.randoms::<bf16>(sets, m * k, -1.0, 1.0)?;
        let w = self.randoms::<bf16>(sets, n * k, -1.0, 1.0)?;
        let mut c = gpu.alloc::<bf16>(m * n)?;
        let layout = GemmLayout::NT;
        let ours = self.timer.time(&mut |i| {
            let s = i % sets;
            gpu.gemm_bf16(layout, m, n, k, 1, &a[s], &w[s], &mut c, false)
        })?;
        let plan = plan.map_or(String::new(), |p| {
            format!(" ({} blocks × {} splits)", p.tiles, p.splits)
        });
        let (reference, check) = if self.cublas {
            let theirs = self.timer.time(&mut |i| {
                let s = i % sets;
                gpu.cublas_gemm_bf16(layout, m, n, k, 1, &a[s], &w[s], &mut c, false)
            })?;
            let count = m * n;
            let mut y = gpu.alloc::<bf16>(m * n)?;
            gpu.cublas_gemm_bf16(layout, m, n, k, 1, &a[0], &w[0], &mut y, false)?;
            let y = self.download_prefix(&y, count)?;
            gpu.gemm_bf16(layout, m, n, k, 1, &a[0], &w[0], &mut c, false)?;
            let x = self.download_prefix(&c, count)?;
            let flops = 2.0 * (m * n * k) as f64;
            let reference = Reference {
                name: "cuBLAS time ÷ ours",
                median_us: theirs.median_us,
                tflops: Some(tflops(flops, theirs.median_us)),
                speed_ratio: theirs.median_us / ours.median_us,
            };
            (Some(reference), Some(rel_diff(&x, &y)))
        } else {
            (None, None)
        };
        let weight_bytes = (2 * n * k) as f64;
        let rate = gb_s(weight_bytes, ours.median_us);
        let fraction = rate / self.copy_gb_s;
        let bound = m <= MEMORY_BOUND_ROWS;
        self.push(BenchResult {
            kernel,
            group: "decode",
            shape: format!("decode {label} m {m}: {m}x{n}x{k}{plan}"),
            tokens: Some(m),
            bytes: weight_bytes,
            flops: 2.0 * (m * n * k) as f64,
            time: ours,
            gb_s: rate,
            tflops: None,
            ceiling: Some("copy"),
            ceiling_fraction: Some(fraction),
            reference,
            target: bound.then(|| format!("≥{:.0}% of copy", MEMORY_TARGET * 100.0)),
            meets_target: bound.then_some(fraction >= MEMORY_TARGET),
            check_rel_diff: check,
        });
        Ok(())
    }
}
