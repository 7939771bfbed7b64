//! The ceilings and the memory-bound kernels: norms, RoPE, SwiGLU, embedding, cross-entropy,
//! the rule adapter, the gradient norm and AdamW, each against the copy bandwidth.

use super::{
    Bench, BenchResult, CopyCeiling, GemmCeiling, D_MODEL, EOS_ID, FFN, GRAD_TENSORS, HEADS,
    HEAD_DIM, MEMORY_TARGET, OPTIMIZER_PARAMS, RMS_EPS, RULE_ADAPTER_ROWS, SEQ, VOCAB,
};
use crate::backend::cpu::ops::{RopeLayout, RopeSpec};
use crate::backend::cuda::{
    AdamWStep, DeviceBuffer, Float, GemmLayout, NormGradOut, RuleAdapterKernel, RuleAdapterOutput,
    RulePlan,
};
use crate::bench::inputs::{elem, gb_s, tflops, Sample};
use crate::bench::timing::Timing;
use crate::error::Result;
use crate::optim::AdamWConfig;
use half::bf16;

impl Bench<'_> {
    pub(super) fn ceilings(&mut self) -> Result<()> {
        let copy = self.timer.time_copy(self.timer.samples())?;
        let bytes = self.timer.copy_bytes();
        self.copy_gb_s = gb_s(bytes, copy.median_us);
        self.report.ceilings.copy = Some(CopyCeiling {
            bytes,
            gb_s: self.copy_gb_s,
            time: copy,
        });
        match self.gpu.cublas_available() {
            Err(e) => self.report.ceilings.cublas_error = Some(e.to_string()),
            Ok(()) => {
                self.cublas = true;
                for size in [4096usize, 8192] {
                    let times = self.time_gemm::<bf16>(
                        GemmLayout::NT,
                        size,
                        size,
                        size,
                        false,
                        true,
                        false,
                    )?;
                    let Some(time) = times.cublas else { continue };
                    let t = tflops(2.0 * (size as f64).powi(3), time.median_us);
                    self.matmul_tflops = Some(self.matmul_tflops.map_or(t, |m: f64| m.max(t)));
                    self.report.ceilings.cublas_gemm.push(GemmCeiling {
                        shape: format!("NT {size}x{size}x{size}"),
                        tflops: t,
                        time,
                    });
                }
            }
        }
        self.sink
            .ceilings(&self.report.device, &self.report.ceilings);
        Ok(())
    }

    /// A memory-bound result: GB/s against the copy ceiling.
    fn memory_result(
        &mut self,
        kernel: &str,
        shape: String,
        tokens: Option<usize>,
        bytes: f64,
        time: Timing,
    ) {
        let rate = gb_s(bytes, time.median_us);
        let fraction = rate / self.copy_gb_s;
        self.push(BenchResult {
            kernel: kernel.to_string(),
            group: "memory",
            shape,
            tokens,
            bytes,
            flops: 0.0,
            time,
            gb_s: rate,
            tflops: None,
            ceiling: Some("copy"),
            ceiling_fraction: Some(fraction),
            reference: None,
            target: Some(format!("≥{:.0}% of copy", MEMORY_TARGET * 100.0)),
            meets_target: Some(fraction >= MEMORY_TARGET),
            check_rel_diff: None,
        });
    }

    pub(super) fn rmsnorm<T: Sample + Float>(&mut self, tokens: usize) -> Result<()> {
        let fwd = T::pick("rmsnorm_fwd_f32", "rmsnorm_fwd_bf16");
        let bwd = T::pick("rmsnorm_bwd_f32", "rmsnorm_bwd_bf16");
        let residual_names = ["rmsnorm_bwd_residual_f32", "rmsnorm_bwd_residual_bf16"];
        if !self.wants(&[
            fwd,
            bwd,
            "rmsnorm_dw_reduce",
            residual_names[0],
            residual_names[1],
        ]) {
            return Ok(());
        }
        let (gpu, es, n, d) = (self.gpu, elem::<T>(), tokens * D_MODEL, D_MODEL);
        let shape = format!("[{tokens}, {d}]");
        let sets = self.sets(2 * n * es);
        let xs = self.randoms::<T>(sets, n, -2.0, 2.0)?;
        let w = self.random::<T>(d, 0.5, 1.5)?;
        if self.wants(&[fwd]) {
            let mut y = gpu.alloc::<T>(n)?;
            let time = self
                .timer
                .time(&mut |i| gpu.rms_norm(&xs[i % sets], &w, RMS_EPS, &mut y))?;
            let bytes = (es * (2 * n + d)) as f64;
            self.memory_result(fwd, shape.clone(), Some(tokens), bytes, time);
        }
        if self.wants(&[bwd, "rmsnorm_dw_reduce"]) {
            let dys = self.randoms::<T>(sets, n, -1.0, 1.0)?;
            let mut dx = gpu.alloc::<T>(n)?;
            let mut dw = gpu.alloc::<f32>(d)?;
            let time = self.timer.time(&mut |i| {
                let s = i % sets;
                gpu.rms_norm_backward(&xs[s], &w, RMS_EPS, &dys[s], &mut dx, &mut dw, false)
            })?;
            // x, dy read, dx written; the dw partial rows written and read; dw written.
            let rows_per_block = tokens.div_ceil(256);
            let blocks = tokens.div_ceil(rows_per_block);
            let bytes = (es * (3 * n + d) + 8 * blocks * d + 4 * d) as f64;
            let name = format!("{bwd}+dw_reduce");
            self.memory_result(&name, shape.clone(), Some(tokens), bytes, time);
        }
        let residual = T::pick("rmsnorm_bwd_residual_f32", "rmsnorm_bwd_residual_bf16");
        if self.wants(&[residual]) {
            // The trainer's form: dx added into the residual gradient, and the sum rounded to
            // bf16 for the next product, in the same pass (NormGradOut).
            let dys = self.randoms::<T>(sets, n, -1.0, 1.0)?;
            let mut dx = self.random::<T>(n, -1.0, 1.0)?;
            let mut copy = gpu.alloc::<bf16>(n)?;
            let mut dw = gpu.alloc::<f32>(d)?;
            let time = self.timer.time(&mut |i| {
                let s = i % sets;
                let out = NormGradOut {
                    dx: &mut dx,
                    accumulate: true,
                    dx_bf16: Some(&mut copy),
                };
                gpu.rms_norm_backward_to(&xs[s], &w, RMS_EPS, &dys[s], out, &mut dw, true)
            })?;
            // x, dy and dx read, dx and its bf16 copy written; the dw partials; dw read+written.
            let rows_per_block = tokens.div_ceil(256);
            let blocks = tokens.div_ceil(rows_per_block);
            let bytes = (es * (4 * n + d) + 2 * n + 8 * blocks * d + 8 * d) as f64;
            let name = format!("{residual}+dw_reduce");
            self.memory_result(&name, shape, Some(tokens), bytes, time);
        }
        Ok(())
    }

    pub(super) fn layernorm<T: Sample + Float>(&mut self, tokens: usize) -> Result<()> {
        let fwd = T::pick("layernorm_fwd_f32", "layernorm_fwd_bf16");
        // The row names stay those of the first run; at d 4096 the backward runs
        // `layernorm_bwd_regs_*` (rows in registers), which the filter also matches.
        let bwd = T::pick("layernorm_bwd_f32", "layernorm_bwd_bf16");
        let regs = T::pick("layernorm_bwd_regs_f32", "layernorm_bwd_regs_bf16");
        let residual = T::pick("layernorm_bwd_residual_f32", "layernorm_bwd_residual_bf16");
        if !self.wants(&[fwd, bwd, regs, residual]) {
            return Ok(());
        }
        let (gpu, es, n, d) = (self.gpu, elem::<T>(), tokens * D_MODEL, D_MODEL);
        let shape = format!("[{tokens}, {d}]");
        let sets = self.sets(2 * n * es);
        let xs = self.randoms::<T>(sets, n, -2.0, 2.0)?;
        if self.wants(&[fwd]) {
            let mut y = gpu.alloc::<T>(n)?;
            let time = self
                .timer
                .time(&mut |i| gpu.layer_norm(&xs[i % sets], d, RMS_EPS, &mut y))?;
            self.memory_result(fwd, shape.clone(), Some(tokens), (2 * n * es) as f64, time);
        }
        if self.wants(&[bwd, regs]) {
            let dys = self.randoms::<T>(sets, n, -1.0, 1.0)?;
            let mut dx = gpu.alloc::<T>(n)?;
            let time = self.timer.time(&mut |i| {
                let s = i % sets;
                gpu.layer_norm_backward(&xs[s], d, RMS_EPS, &dys[s], &mut dx)
            })?;
            self.memory_result(bwd, shape.clone(), Some(tokens), (3 * n * es) as f64, time);
        }
        if self.wants(&[residual]) {
            // The trainer's form (OLMo): dx added into the residual gradient and the sum
            // rounded to bf16 for the next product, in the same pass (NormGradOut).
            let dys = self.randoms::<T>(sets, n, -1.0, 1.0)?;
            let mut dx = self.random::<T>(n, -1.0, 1.0)?;
            let mut copy = gpu.alloc::<bf16>(n)?;
            let time = self.timer.time(&mut |i| {
                let s = i % sets;
                let out = NormGradOut {
                    dx: &mut dx,
                    accumulate: true,
                    dx_bf16: Some(&mut copy),
                };
                gpu.layer_norm_backward_to(&xs[s], d, RMS_EPS, &dys[s], out)
            })?;
            // x, dy and dx read, dx and its bf16 copy written.
            let bytes = (4 * n * es + 2 * n) as f64;
            self.memory_result(residual, shape, Some(tokens), bytes, time);
        }
        Ok(())
    }

    pub(super) fn rope<T: Sample + Float>(&mut self, tokens: usize) -> Result<()> {
        // The row names stay those of the first run; head_dim 128 in bf16 runs `rope_bf16_vec`,
        // which "rope_bf16" also matches as a filter.
        let kernel = T::pick("rope_f32", "rope_bf16");
        if !self.wants(&[kernel]) {
            return Ok(());
        }
        let (gpu, es, n) = (self.gpu, elem::<T>(), tokens * HEADS * HEAD_DIM);
        let sets = self.sets(n * es);
        let mut xs = self.randoms::<T>(sets, n, -2.0, 2.0)?;
        let positions: Vec<u32> = (0..tokens).map(|t| (t % SEQ) as u32).collect();
        let positions = gpu.upload(&positions)?;
        let spec = RopeSpec {
            heads: HEADS,
            head_dim: HEAD_DIM,
            base: 10000.0,
            layout: RopeLayout::HalfRotation,
        };
        let time = self
            .timer
            .time(&mut |i| gpu.rope(&mut xs[i % sets], &positions, spec, false))?;
        // Q read and written in place; positions and the inverse frequencies read.
        let bytes = (2 * n * es + 4 * tokens + 4 * HEAD_DIM / 2) as f64;
        let shape = format!("[{tokens}, {HEADS}, {HEAD_DIM}] in place");
        self.memory_result(kernel, shape, Some(tokens), bytes, time);
        Ok(())
    }

    pub(super) fn swiglu<T: Sample + Float>(&mut self, tokens: usize) -> Result<()> {
        let fwd = T::pick("swiglu_fwd_f32", "swiglu_fwd_bf16");
        let bwd = T::pick("swiglu_bwd_f32", "swiglu_bwd_bf16");
        if !self.wants(&[fwd, bwd]) {
            return Ok(());
        }
        let (gpu, es, n) = (self.gpu, elem::<T>(), tokens * FFN);
        let shape = format!("[{tokens}, {FFN}]");
        let sets = self.sets(3 * n * es);
        let gates = self.randoms::<T>(sets, n, -4.0, 4.0)?;
        let ups = self.randoms::<T>(sets, n, -2.0, 2.0)?;
        if self.wants(&[fwd]) {
            let mut out = gpu.alloc::<T>(n)?;
            let time = self.timer.time(&mut |i| {
                let s = i % sets;
                gpu.swiglu(&gates[s], &ups[s], &mut out)
            })?;
            self.memory_result(fwd, shape.clone(), Some(tokens), (3 * n * es) as f64, time);
        }
        if self.wants(&[bwd]) {
            let dys = self.randoms::<T>(sets, n, -1.0, 1.0)?;
            let mut d_gate = gpu.alloc::<T>(n)?;
            let mut d_up = gpu.alloc::<T>(n)?;
            let time = self.timer.time(&mut |i| {
                let s = i % sets;
                gpu.swiglu_backward(&gates[s], &ups[s], &dys[s], &mut d_gate, &mut d_up)
            })?;
            self.memory_result(bwd, shape, Some(tokens), (5 * n * es) as f64, time);
        }
        Ok(())
    }

    pub(super) fn embedding<T: Sample + Float>(&mut self, tokens: usize) -> Result<()> {
        let fwd = T::pick("embedding_fwd_f32", "embedding_fwd_bf16");
        let bwd = T::pick("embedding_bwd_f32", "embedding_bwd_bf16");
        let sorted = T::pick("embedding_bwd_sorted_f32", "embedding_bwd_sorted_bf16");
        if !self.wants(&[fwd, bwd, sorted]) {
            return Ok(());
        }
        let (gpu, es, n, d) = (self.gpu, elem::<T>(), tokens * D_MODEL, D_MODEL);
        let shape = format!("{tokens} tokens x {d}, vocab {VOCAB}");
        let sets = self.sets(n * es);
        let ids: Vec<DeviceBuffer<u32>> = (0..sets)
            .map(|_| self.ids(tokens, VOCAB))
            .collect::<Result<_>>()?;
        if self.wants(&[fwd]) {
            let table = self.random::<T>(VOCAB * d, -1.0, 1.0)?;
            let mut out = gpu.alloc::<T>(n)?;
            let time = self
                .timer
                .time(&mut |i| gpu.embedding(&ids[i % sets], &table, d, &mut out))?;
            // ids read, one table row read and one output row written per token.
            let bytes = (4 * tokens + 2 * n * es) as f64;
            self.memory_result(fwd, shape.clone(), Some(tokens), bytes, time);
        }
        if self.wants(&[bwd]) {
            let dys = self.randoms::<T>(sets, n, -1.0, 1.0)?;
            let mut d_table = gpu.zeros::<f32>(VOCAB * d)?;
            let time = self.timer.time(&mut |i| {
                let s = i % sets;
                gpu.embedding_backward(&ids[s], &dys[s], d, &mut d_table)
            })?;
            // ids and dy read; each token's f32 row of d_table read and written (atomics).
            let bytes = (4 * tokens + n * es + 8 * n) as f64;
            self.memory_result(bwd, shape.clone(), Some(tokens), bytes, time);
        }
        if self.wants(&[sorted]) {
            // The trainer's path: the plan is made on the host once per micro-batch (not timed
            // here: it overlaps the forward), the kernel reads dy once and each touched row of
            // d_table once, and writes that row once.
            let plans = (0..sets)
                .map(|_| {
                    let host: Vec<u32> =
                        (0..tokens).map(|_| self.rng.below(VOCAB) as u32).collect();
                    gpu.embedding_grad_plan(&host, VOCAB)
                })
                .collect::<Result<Vec<_>>>()?;
            let dys = self.randoms::<T>(sets, n, -1.0, 1.0)?;
            let mut d_table = gpu.zeros::<f32>(VOCAB * d)?;
            let time = self.timer.time(&mut |i| {
                let s = i % sets;
                gpu.embedding_backward_planned(&plans[s], &dys[s], d, &mut d_table)
            })?;
            let touched = plans.iter().map(|p| p.segments()).sum::<usize>() / sets;
            // The plan's three index arrays and dy read; each touched f32 row read and written.
            let bytes = (4 * (2 * tokens + 2 * touched) + n * es + 8 * touched * d) as f64;
            self.memory_result(sorted, shape, Some(tokens), bytes, time);
        }
        Ok(())
    }

    pub(super) fn cross_entropy<T: Sample + Float>(&mut self, tokens: usize) -> Result<()> {
        let fwd = T::pick("cross_entropy_fwd_f32", "cross_entropy_fwd_bf16");
        let bwd = T::pick("cross_entropy_bwd_f32", "cross_entropy_bwd_bf16");
        if !self.wants(&[fwd, bwd]) {
            return Ok(());
        }
        let (gpu, es, n) = (self.gpu, elem::<T>(), tokens * VOCAB);
        let shape = format!("[{tokens}, {VOCAB}]");
        let sets = self.sets(n * es);
        let logits = self.randoms::<T>(sets, n, -8.0, 8.0)?;
        let targets = self.ids(tokens, VOCAB)?;
        // Every row weighted (a row of weight 0 is skipped).
        let weights = self.random::<f32>(tokens, 0.5, 1.5)?;
        let mut loss = gpu.alloc::<f32>(tokens)?;
        let mut lses: Vec<DeviceBuffer<f32>> = (0..sets)
            .map(|_| gpu.alloc::<f32>(tokens))
            .collect::<Result<_>>()?;
        // Each set's lse, for the backward (the forward's timing rewrites the same values).
        for (z, lse) in logits.iter().zip(lses.iter_mut()) {
            gpu.cross_entropy(z, VOCAB, &targets, &weights, &mut loss, lse)?;
        }
        if self.wants(&[fwd]) {
            let time = self.timer.time(&mut |i| {
                let s = i % sets;
                gpu.cross_entropy(
                    &logits[s],
                    VOCAB,
                    &targets,
                    &weights,
                    &mut loss,
                    &mut lses[s],
                )
            })?;
            // logits, targets, weights read; loss and lse written.
            let bytes = (n * es + 16 * tokens) as f64;
            self.memory_result(fwd, shape.clone(), Some(tokens), bytes, time);
        }
        if self.wants(&[bwd]) {
            let mut d_logits = gpu.alloc::<T>(n)?;
            let time = self.timer.time(&mut |i| {
                let s = i % sets;
                gpu.cross_entropy_backward(
                    &logits[s],
                    VOCAB,
                    &targets,
                    &weights,
                    &lses[s],
                    &mut d_logits,
                )
            })?;
            // logits, targets, weights, lse read; d_logits written.
            let bytes = (2 * n * es + 12 * tokens) as f64;
            self.memory_result(bwd, shape, Some(tokens), bytes, time);
        }
        Ok(())
    }

    /// The rule adapter at decode batches of [`RULE_ADAPTER_ROWS`]: the per-row kernel against
    /// the split one (what `rule_adapter` picks; at 256 rows, where it picks the per-row kernel,
    /// a split into 2 chunks forced), both in this run against the same copy ceiling.
    pub(super) fn rule_adapter<T: Sample + Float>(&mut self) -> Result<()> {
        let (per_row, split) = (
            T::pick("rule_adapter_f32", "rule_adapter_bf16"),
            T::pick("rule_adapter_split_f32", "rule_adapter_split_bf16"),
        );
        if !self.wants(&[per_row, split]) {
            return Ok(());
        }
        for rows in RULE_ADAPTER_ROWS {
            let auto = self
                .gpu
                .rule_adapter_plan(rows, VOCAB, RuleAdapterKernel::Auto)?;
            let split_kernel = match auto {
                RulePlan::Split { chunks, .. } => RuleAdapterKernel::Split(chunks),
                RulePlan::PerRow => RuleAdapterKernel::Split(2),
            };
            for (name, kernel) in [(per_row, RuleAdapterKernel::PerRow), (split, split_kernel)] {
                let plan = self.gpu.rule_adapter_plan(rows, VOCAB, kernel)?;
                let picked = if plan == auto {
                    "rule_adapter's pick"
                } else {
                    "forced"
                };
                let time = self.time_rule_adapter::<T>(rows, kernel)?;
                // logits, the shared bias and eos_bias read; three values per row written (the
                // split's records, 32 bytes per block written and read, are not counted).
                let es = elem::<T>();
                let bytes = (rows * VOCAB * es + 4 * VOCAB + 4 * rows + 12 * rows) as f64;
                let shape = format!("[{rows}, {VOCAB}], shared bias, {plan:?} ({picked})");
                self.memory_result(name, shape, None, bytes, time);
            }
        }
        Ok(())
    }

    fn time_rule_adapter<T: Sample + Float>(
        &mut self,
        rows: usize,
        kernel: RuleAdapterKernel,
    ) -> Result<Timing> {
        let (gpu, es) = (self.gpu, elem::<T>());
        let n = rows * VOCAB;
        let sets = self.sets(n * es);
        let logits = self.randoms::<T>(sets, n, -8.0, 8.0)?;
        let bias = self.random::<f32>(VOCAB, -2.0, 0.5)?;
        let eos_bias = self.random::<f32>(rows, 0.0, 15.0)?;
        let mut tokens = gpu.alloc::<u32>(rows)?;
        let mut logprobs = gpu.alloc::<f32>(rows)?;
        let mut base_logprobs = gpu.alloc::<f32>(rows)?;
        self.timer.time(&mut |i| {
            gpu.rule_adapter_with(
                kernel,
                &logits[i % sets],
                VOCAB,
                &bias,
                EOS_ID,
                &eos_bias,
                RuleAdapterOutput {
                    tokens: &mut tokens,
                    logprobs: &mut logprobs,
                    base_logprobs: &mut base_logprobs,
                },
            )
        })
    }

    pub(super) fn grad_norm(&mut self) -> Result<()> {
        let kernel = "grad_sumsq_multi+grad_norm_finalize";
        if !self.wants(&["grad_norm", "grad_sumsq"]) {
            return Ok(());
        }
        let gpu = self.gpu;
        let per = OPTIMIZER_PARAMS / GRAD_TENSORS;
        let grads = self.randoms::<f32>(GRAD_TENSORS, per, -1e-2, 1e-2)?;
        let refs: Vec<&DeviceBuffer<f32>> = grads.iter().collect();
        let mut clip = gpu.alloc::<f32>(2)?;
        let time = self
            .timer
            .time(&mut |_| gpu.grad_norm(&refs, 1.0, &mut clip))?;
        // Gradients read; the f64 partial sums (one per 65536-element chunk) written and read.
        let partials = GRAD_TENSORS * per.div_ceil(65536);
        let bytes = (4 * OPTIMIZER_PARAMS + 16 * partials + 8) as f64;
        let shape = format!("{GRAD_TENSORS} x {per} f32");
        self.memory_result(kernel, shape, None, bytes, time);
        Ok(())
    }

    /// The clip state of `grad` (max norm 1), as a training step would pass it.
    fn clip_of(&mut self, grad: &DeviceBuffer<f32>) -> Result<DeviceBuffer<f32>> {
        let mut clip = self.gpu.alloc::<f32>(2)?;
        self.gpu.grad_norm(&[grad], 1.0, &mut clip)?;
        Ok(clip)
    }

    fn adamw_step() -> AdamWStep {
        AdamWStep::new(&AdamWConfig::default(), 1e-5, 10)
    }

    pub(super) fn adamw_bf16(&mut self) -> Result<()> {
        let kernel = "adamw_bf16";
        if !self.wants(&[kernel]) {
            return Ok(());
        }
        let (gpu, n) = (self.gpu, OPTIMIZER_PARAMS);
        let mut param = self.random::<bf16>(n, -0.1, 0.1)?;
        let mut master = self.random::<f32>(n, -0.1, 0.1)?;
        let grad = self.random::<f32>(n, -1e-2, 1e-2)?;
        let mut m = self.random::<f32>(n, -1e-3, 1e-3)?;
        let mut v = self.random::<f32>(n, 1e-8, 1e-5)?;
        let clip = self.clip_of(&grad)?;
        let step = Self::adamw_step();
        let time = self.timer.time(&mut |_| {
            gpu.adamw_step_bf16(
                &mut param,
                &mut master,
                &grad,
                &mut m,
                &mut v,
                Some(&clip),
                &step,
            )
        })?;
        // bf16 param written; f32 master, m, v read and written; f32 grad read: 30 B/param.
        let bytes = (30 * n) as f64;
        self.memory_result(kernel, format!("{n} params"), None, bytes, time);
        Ok(())
    }

    /// `--optimizer-state bf16`'s update: no master, bf16 moments, stochastic rounding.
    pub(super) fn adamw_bf16_sr(&mut self) -> Result<()> {
        let kernel = "adamw_bf16_sr";
        if !self.wants(&[kernel]) {
            return Ok(());
        }
        let (gpu, n) = (self.gpu, OPTIMIZER_PARAMS);
        let mut param = self.random::<bf16>(n, -0.1, 0.1)?;
        let grad = self.random::<f32>(n, -1e-2, 1e-2)?;
        let mut m = self.random::<bf16>(n, -1e-3, 1e-3)?;
        let mut v = self.random::<bf16>(n, 1e-8, 1e-5)?;
        let clip = self.clip_of(&grad)?;
        let step = Self::adamw_step();
        let time = self.timer.time(&mut |i| {
            let key = crate::optim::stochastic_rounding_key(0, 10 + i as u64, 0);
            gpu.adamw_step_bf16_stochastic(
                &mut param,
                &grad,
                &mut m,
                &mut v,
                Some(&clip),
                &step,
                key,
            )
        })?;
        // bf16 param, m, v read and written; f32 grad read: 16 B/param.
        let bytes = (16 * n) as f64;
        self.memory_result(kernel, format!("{n} params"), None, bytes, time);
        Ok(())
    }

    pub(super) fn adamw_f32(&mut self) -> Result<()> {
        let kernel = "adamw_f32";
        if !self.wants(&[kernel]) {
            return Ok(());
        }
        let (gpu, n) = (self.gpu, OPTIMIZER_PARAMS);
        let mut param = self.random::<f32>(n, -0.1, 0.1)?;
        let grad = self.random::<f32>(n, -1e-2, 1e-2)?;
        let mut m = self.random::<f32>(n, -1e-3, 1e-3)?;
        let mut v = self.random::<f32>(n, 1e-8, 1e-5)?;
        let clip = self.clip_of(&grad)?;
        let step = Self::adamw_step();
        let time = self.timer.time(&mut |_| {
            gpu.adamw_step_f32(&mut param, &grad, &mut m, &mut v, Some(&clip), &step)
        })?;
        // param, m, v read and written; grad read: 28 B/param.
        let bytes = (28 * n) as f64;
        self.memory_result(kernel, format!("{n} params"), None, bytes, time);
        Ok(())
    }
}
