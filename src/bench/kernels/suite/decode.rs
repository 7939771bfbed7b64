//! A decode step's products: Llama-2-7B's weights (q/k/v/o 4096×4096, gate/up 11008×4096, down
//! 4096×11008, LM head 32000×4096) against a batch of m ∈ {1, 16, 64, 128, 256} rows, through
//! `gemm_bf16` as the model calls it (m = 1 takes kernels/gemv.cu, 9..=256 kernels/gemm_skinny.cu),
//! bf16 out. Each row gives the weights' bytes per second (the product's floor is reading them
//! once), its fraction of the copy bandwidth measured in the same run, and cuBLAS at the same
//! shape on the same inputs.
//!
//! And the attention of a decode step over the KV cache at Llama-2-7B's heads (32 × 128) and
//! 2048 keys, at batch 1 and 64: the kernel `cached_attention` picked before the split over
//! blocks (the keys over a block's warps at batch 1, one warp per pair at 64) and the split-KV
//! kernels, each with GB/s of K/V read and its fraction of copy.
//!
//! Then, at batch 1, the norm before each normed product run inside the GEMV
//! (`CudaBackend::norm_gemv_nt`, kernels/gemv.cu) against the separate norm + GEMV the model ran
//! before, on the 7B's fused q|k|v, fused gate|up and LM head (f32 out): the fused launch's
//! time, the pair's (the reference), and their outputs' difference (0: the same bits).

use super::{
    Bench, BenchResult, Reference, DECODE_BATCH, D_MODEL, FFN, HEADS, HEAD_DIM, MEMORY_TARGET,
    VOCAB,
};
use crate::backend::cuda::{
    CudaKvCache, Float, GemmLayout, KeySplit, KvBatch, KvCacheShape, NormedRows, RowList, RowNorm,
    SkinnySplit, SplitKvWorkspace, GEMV_MAX_ROWS, SKINNY_MAX_ROWS,
};
use crate::bench::inputs::{gb_s, rel_diff, tflops, Sample};
use crate::error::Result;
use half::bf16;

/// Decode batches benchmarked.
pub(super) const DECODE_ROWS: [usize; 5] = [1, 16, 64, 128, 256];
/// Keys each decode row attends to in the attention rows, and the model context the split is
/// planned for (Llama-2's).
const ATTENTION_KEYS: usize = 2048;
const MODEL_CONTEXT: usize = 4096;

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

    /// One decode step's attention over caches of [`ATTENTION_KEYS`] keys at batch 1 and
    /// [`DECODE_BATCH`], old kernel and split-KV, on the same caches and queries.
    pub(super) fn decode_attentions(&mut self) -> Result<()> {
        for batch in [1, DECODE_BATCH] {
            self.decode_attention(batch)?;
        }
        Ok(())
    }

    /// Random k, v (in [−1, 1]) for every row of `batch` into layers 0..layers of its caches.
    fn fill_cache(&mut self, batch: &KvBatch<'_>, layers: usize) -> Result<()> {
        let n = batch.rows() * HEADS * HEAD_DIM;
        let k = self.random::<bf16>(n, -1.0, 1.0)?;
        let v = self.random::<bf16>(n, -1.0, 1.0)?;
        for layer in 0..layers {
            self.gpu.kv_append(batch, layer, &k, &v)?;
        }
        Ok(())
    }

    fn decode_attention(&mut self, b: usize) -> Result<()> {
        let part = "model_attention_part_j2+combine_j2";
        let old_kernel = if b * HEADS < 8 * self.gpu.multiprocessors as usize {
            ("model_attention_split_j2", KeySplit::Warps)
        } else {
            ("model_attention_j2", KeySplit::None)
        };
        if !self.wants(&[part, old_kernel.0, "decode", "cached_attention"]) {
            return Ok(());
        }
        let gpu = self.gpu;
        let kv_dim = HEADS * HEAD_DIM;
        // K and V of one layer: rotated over `sets` layers so that batch 1's 34 MB is not
        // served from L2.
        let kv_bytes = (b * ATTENTION_KEYS * kv_dim * 2 * 2) as f64;
        let sets = self.sets(kv_bytes as usize);
        let shape = KvCacheShape {
            layers: sets,
            kv_dim,
            max_positions: ATTENTION_KEYS,
        };
        let mut caches: Vec<CudaKvCache> = (0..b).map(|_| CudaKvCache::new(shape)).collect();
        // The history (finite values, so that both kernels' outputs can be compared), then one
        // decode row per sequence at position ATTENTION_KEYS − 1, whose batch the launches read
        // (never finished: only its tables matter).
        let prefill = KvBatch::new(
            gpu,
            caches.iter_mut().collect(),
            &vec![ATTENTION_KEYS - 1; b],
        )?;
        self.fill_cache(&prefill, sets)?;
        prefill.finish();
        let batch = KvBatch::new(gpu, caches.iter_mut().collect(), &vec![1; b])?;
        self.fill_cache(&batch, sets)?;
        let rows = RowList::all(gpu, b)?;
        let q = self.random::<bf16>(b * HEADS * HEAD_DIM, -1.0, 1.0)?;
        let mut out = gpu.alloc::<bf16>(b * HEADS * HEAD_DIM)?;
        let splits = gpu.kv_splits(b, HEADS, MODEL_CONTEXT);
        let mut ws = SplitKvWorkspace::new(gpu, b, HEADS, HEAD_DIM, splits)?;
        let bytes = kv_bytes + (2 * b * HEADS * HEAD_DIM * 2) as f64;
        let mut outputs = Vec::new();
        let mut times = Vec::new();
        for (kernel, split) in [old_kernel, (part, KeySplit::Blocks(splits))] {
            let mut attend = |layer: usize| {
                gpu.cached_attention_split(
                    &batch,
                    layer,
                    &q,
                    HEADS,
                    HEAD_DIM,
                    &rows,
                    &mut out,
                    split,
                    Some(&mut ws),
                )
            };
            let time = self.timer.time(&mut |i| attend(i % sets))?;
            attend(0)?;
            outputs.push(self.download_prefix(&out, out.len())?);
            let rate = gb_s(bytes, time.median_us);
            let fraction = rate / self.copy_gb_s;
            let reference = times.first().map(|&old: &f64| Reference {
                name: "previous kernel's time ÷ ours",
                median_us: old,
                tflops: None,
                speed_ratio: old / time.median_us,
            });
            let split_shape = match split {
                KeySplit::Blocks(n) => format!(", {n} splits"),
                _ => String::new(),
            };
            let check = (outputs.len() == 2).then(|| rel_diff(&outputs[1], &outputs[0]));
            times.push(time.median_us);
            self.push(BenchResult {
                kernel: kernel.to_string(),
                group: "decode",
                shape: format!(
                    "decode attention batch {b}: {HEADS} heads × {HEAD_DIM}, {ATTENTION_KEYS} keys{split_shape}"
                ),
                tokens: Some(b),
                bytes,
                flops: (4 * b * HEADS * HEAD_DIM * ATTENTION_KEYS) as f64,
                time,
                gb_s: rate,
                tflops: None,
                ceiling: Some("copy"),
                ceiling_fraction: Some(fraction),
                reference,
                target: Some(format!("≥{:.0}% of copy", MEMORY_TARGET * 100.0)),
                meets_target: Some(fraction >= MEMORY_TARGET),
                check_rel_diff: check,
            });
        }
        drop(batch);
        Ok(())
    }
}
