//! Plain causal attention on the GPU (kernels/attention_plain.cu) for any head_dim from 1 to
//! 256: the contract of [`CudaBackend::flash_attention_forward`] and
//! [`CudaBackend::flash_attention_backward`] (same layouts, lse, masking, grouped-query heads,
//! scale 1/√head_dim, f32 accumulation, bf16 outputs), for the head sizes the flash kernels do
//! not take. Simple, not fast: one block per query row (forward, dq) or per key row (dk, dv).
//! Every output is deterministic. References: `backend::cpu::attention::{causal_attention,
//! causal_attention_backward}`; tests in tests/cuda_kernels/attention_plain.rs.

use super::flash_attention::{check_dims, describe, raise_smem_limit, Checked};
use super::{kernel_error, CudaBackend, DeviceBuffer};
use crate::backend::cpu::attention::AttentionShape;
use crate::bail;
use crate::error::Result;
use cudarc::driver::{sys, LaunchConfig};
use half::bf16;

/// Threads per block (kernels/attention_plain.cu's ATTN_THREADS).
const THREADS: u32 = 128;
/// Largest head_dim: the kernels keep a row in static shared memory and give each thread at
/// most two columns (ATTN_MAX_HEAD_DIM).
const MAX_PLAIN_HEAD_DIM: usize = 256;

const FWD: &str = "attn_plain_fwd";
const BWD_DQ: &str = "attn_plain_bwd_dq";
const BWD_DKV: &str = "attn_plain_bwd_dkv";

/// Checks the shapes (head_dim 1 to 256, the rest as the flash kernels) and that the per-head
/// row counts fit the kernels' ints.
fn check_plain(what: &str, s: AttentionShape, batch: usize) -> Result<Checked> {
    if s.head_dim == 0 || s.head_dim > MAX_PLAIN_HEAD_DIM {
        bail!(
            "{what} ({}): head_dim {} is not supported (1 to {MAX_PLAIN_HEAD_DIM})",
            describe(s, batch),
            s.head_dim
        );
    }
    let c = check_dims(what, s, batch)?;
    // attn_plain_bwd_dkv counts (query, head) pairs and the forward grid has one block per
    // query: both in ints.
    let rows = s
        .queries
        .checked_mul(s.heads)
        .zip(s.keys.checked_mul(s.kv_heads));
    if !rows.is_some_and(|(a, b)| i32::try_from(a).is_ok() && i32::try_from(b).is_ok()) {
        bail!(
            "{what} ({}): queries·heads and keys·kv_heads must fit in an int",
            describe(s, batch)
        );
    }
    Ok(c)
}

/// The launch of a row kernel: one block per (row, head, batch), `smem` bytes of scores.
fn rows_grid(rows: usize, heads: usize, batch: usize, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, heads as u32, batch as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: smem,
    }
}

impl CudaBackend {
    /// The dynamic shared memory of a row kernel, 4·keys bytes of scores, after raising
    /// `kernel`'s limit where that needs it (to all the device allows next to the kernel's
    /// static shared memory); an error if a row of scores does not fit.
    fn plain_scores_smem(
        &self,
        kernel: &'static str,
        shape: AttentionShape,
        batch: usize,
    ) -> Result<u32> {
        let shapes = || describe(shape, batch);
        let optin = self
            .ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(|e| {
                kernel_error(kernel, &shapes(), "reading the device's shared memory", e)
            })?;
        let fixed = self
            .function(kernel)?
            .get_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
            .map_err(|e| kernel_error(kernel, &shapes(), "reading the static shared memory", e))?;
        let budget = (optin.max(0) as usize).saturating_sub(fixed.max(0) as usize);
        let need = shape.keys.saturating_mul(4);
        if need > budget {
            bail!(
                "CUDA kernel {kernel} ({}): keys {} need {need} bytes of shared memory for a row \
                 of scores, the device allows {budget} (at most {} keys)",
                shapes(),
                shape.keys,
                budget / 4
            );
        }
        // Over 48 KiB (static included) needs the opt-in; the limit set is the same on every
        // call, so concurrent calls cannot lower it under one another.
        if need + fixed.max(0) as usize > 48 * 1024 {
            raise_smem_limit(self, kernel, budget as u32, shapes)?;
        }
        Ok(need as u32)
    }

    /// Causal attention out = softmax(q·kᵀ/√d + mask)·v for `batch` sequences, and the
    /// log-sum-exp `lse[b, h, i]` = ln Σ_j exp(q_i·k_j/√d) over the keys query i sees, as
    /// [`CudaBackend::flash_attention_forward`] (layouts: see `flash_attention.rs`'s module docs) for
    /// any head_dim from 1 to 256. `out` is rounded to bf16; everything else is f32.
    /// Deterministic. A row of scores (4·keys bytes) must fit in a block's shared memory
    /// (about 56 000 keys on an H100).
    #[allow(clippy::too_many_arguments)]
    pub fn plain_attention_forward(
        &self,
        shape: AttentionShape,
        batch: usize,
        q: &DeviceBuffer<bf16>,
        k: &DeviceBuffer<bf16>,
        v: &DeviceBuffer<bf16>,
        out: &mut DeviceBuffer<bf16>,
        lse: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        const WHAT: &str = "CUDA plain attention forward";
        let c = check_plain(WHAT, shape, batch)?;
        let lens = [q.len(), k.len(), v.len(), out.len(), lse.len()];
        c.forward_buffers(WHAT, shape, batch, lens)?;
        if c.q_len == 0 {
            return Ok(()); // no query: nothing to write
        }
        let smem = self.plain_scores_smem(FWD, shape, batch)?;
        let hd = shape.head_dim as i32;
        let scale = 1.0 / (shape.head_dim as f32).sqrt();
        launch!(
            self,
            FWD,
            rows_grid(shape.queries, shape.heads, batch, smem),
            describe(shape, batch),
            [
                &q.slice,
                &k.slice,
                &v.slice,
                &mut out.slice,
                &mut lse.slice,
                &c.queries,
                &c.keys,
                &c.heads,
                &c.kv_heads,
                &hd,
                &scale
            ]
        )
    }

    /// Gradients of [`CudaBackend::plain_attention_forward`] (or of the flash forward: same
    /// function) for the gradient `d_out` of its output, written (not accumulated) into `dq`,
    /// `dk`, `dv` in bf16; the query heads of a group are summed into their KV head in f32.
    /// `out` and `lse` are the forward's outputs on the same q, k, v. As
    /// [`CudaBackend::flash_attention_backward`] for any head_dim from 1 to 256, but fully
    /// deterministic (no atomics). Allocates one f32 scratch buffer per call, D = rowsum(dO∘O)
    /// (`[batch, heads, queries]`).
    #[allow(clippy::too_many_arguments)]
    pub fn plain_attention_backward(
        &self,
        shape: AttentionShape,
        batch: usize,
        q: &DeviceBuffer<bf16>,
        k: &DeviceBuffer<bf16>,
        v: &DeviceBuffer<bf16>,
        out: &DeviceBuffer<bf16>,
        d_out: &DeviceBuffer<bf16>,
        lse: &DeviceBuffer<f32>,
        dq: &mut DeviceBuffer<bf16>,
        dk: &mut DeviceBuffer<bf16>,
        dv: &mut DeviceBuffer<bf16>,
    ) -> Result<()> {
        const WHAT: &str = "CUDA plain attention backward";
        let c = check_plain(WHAT, shape, batch)?;
        let lens = [q.len(), k.len(), v.len(), out.len(), d_out.len(), lse.len()];
        c.backward_buffers(WHAT, shape, batch, lens, [dq.len(), dk.len(), dv.len()])?;
        if c.kv_len == 0 {
            return Ok(()); // no key (so no query either): nothing to write
        }
        let hd = shape.head_dim as i32;
        let scale = 1.0 / (shape.head_dim as f32).sqrt();
        // At least one element, so that the dk/dv kernel always gets a valid pointer (with no
        // query it reads none).
        let mut delta = self.alloc::<f32>(c.lse_len.max(1))?;

        // 1. dq, and D for step 2.
        if c.q_len > 0 {
            let smem = self.plain_scores_smem(BWD_DQ, shape, batch)?;
            launch!(
                self,
                BWD_DQ,
                rows_grid(shape.queries, shape.heads, batch, smem),
                describe(shape, batch),
                [
                    &q.slice,
                    &k.slice,
                    &v.slice,
                    &out.slice,
                    &d_out.slice,
                    &lse.slice,
                    &mut delta.slice,
                    &mut dq.slice,
                    &c.queries,
                    &c.keys,
                    &c.heads,
                    &c.kv_heads,
                    &hd,
                    &scale
                ]
            )?;
        }

        // 2. dk, dv per key (zeros for every key when there is no query).
        launch!(
            self,
            BWD_DKV,
            rows_grid(shape.keys, shape.kv_heads, batch, 0),
            describe(shape, batch),
            [
                &q.slice,
                &k.slice,
                &v.slice,
                &d_out.slice,
                &lse.slice,
                &delta.slice,
                &mut dk.slice,
                &mut dv.slice,
                &c.queries,
                &c.keys,
                &c.heads,
                &c.kv_heads,
                &hd,
                &scale
            ]
        )
    }
}
