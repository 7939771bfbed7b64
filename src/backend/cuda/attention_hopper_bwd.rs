//! The Hopper flash attention backward (kernels/attention_hopper_bwd.cu: wgmma, TMA, the
//! FlashAttention-3 scheme): its scratch buffers, tensor maps, launches and the checks that
//! decide whether a call can take it. Same contract as the sm80 backward
//! ([`CudaBackend::flash_attention_backward_sm80`]; layouts in flash_attention.rs's module
//! docs): dq, dk, dv written (not accumulated), bf16, dk and dv deterministic.
//! [`CudaBackend::flash_attention_backward`] routes here on compute capability 9.0 unless
//! `IMPLICIT_ATTENTION=sm80`; tests and the benchmark also call
//! [`CudaBackend::flash_attention_backward_hopper`] directly.
//!
//! Per call: two zeroed f32 buffers of `[batch, heads, qpad]` (D = rowsum(dO ∘ O) and
//! lse·log₂e, qpad = queries rounded up to 64) and a zeroed f32 dQ accumulator of
//! `[batch, heads, qpad, head_dim]`, then three launches (preprocess, the main kernel, the dQ
//! conversion).

use super::flash_attention::{check_dims, describe, raise_smem_limit};
use super::tensor_map::{encode_attention, MAX_STRIDE_BYTES};
use super::{CudaBackend, DeviceBuffer};
use crate::backend::cpu::attention::AttentionShape;
use crate::bail;
use crate::error::{Error, Result};
use cudarc::driver::{DevicePtr, LaunchConfig};
use half::bf16;

/// Keys per block of the main kernel (two warpgroups of 64).
const KEY_BLOCK: usize = 128;
/// Queries per pipeline stage, and the padding of the per-row buffers.
const QUERY_BLOCK: usize = 64;
/// Threads per block: two warpgroups.
const THREADS: u32 = 256;
/// Most blocks along a grid's y dimension (the key blocks).
const MAX_GRID_Y: usize = 65535;

/// Dynamic shared memory of the main kernel (kernels/attention_hopper_bwd.cu asserts the same).
fn smem_bytes(head_dim: usize) -> u32 {
    if head_dim == 64 {
        150_016
    } else {
        231_936
    }
}

/// Why the kernel cannot take a shape (None: it can), beyond what [`check_dims`] checks.
fn shape_problem(s: AttentionShape, batch: usize) -> Option<String> {
    if s.head_dim != 64 && s.head_dim != 128 {
        return Some(format!("head_dim {} (64 or 128)", s.head_dim));
    }
    let key_blocks = s.keys.div_ceil(KEY_BLOCK);
    if key_blocks > MAX_GRID_Y {
        return Some(format!(
            "{key_blocks} blocks of {KEY_BLOCK} keys, over a grid's {MAX_GRID_Y}"
        ));
    }
    if s.kv_heads
        .checked_mul(batch)
        .is_none_or(|n| n > i32::MAX as usize)
    {
        return Some("kv_heads × batch blocks over a grid's 2^31 − 1".into());
    }
    // TMA's sequence stride (whole sequences of rows) stays below 2^40 bytes.
    for (name, seq, heads) in [("q", s.queries, s.heads), ("k", s.keys, s.kv_heads)] {
        let bytes = (2 * s.head_dim as u64)
            .checked_mul(heads as u64)
            .and_then(|b| b.checked_mul(seq as u64));
        if bytes.is_none_or(|b| b >= MAX_STRIDE_BYTES) {
            return Some(format!(
                "a sequence of {name} is over TMA's 2^40-byte stride"
            ));
        }
    }
    None
}

impl CudaBackend {
    /// Whether [`CudaBackend::flash_attention_backward_hopper`] can run this shape on this
    /// device: Ok, or why not (compute capability other than 9.0, no tensor maps in the
    /// driver, a non-sm_90a image — the GEMM's probe, kernels/gemm_wgmma.cu being built the
    /// same way — or a shape it does not take).
    pub fn attention_hopper_bwd_supports(&self, shape: AttentionShape, batch: usize) -> Result<()> {
        self.wgmma_available()
            .map_err(|e| Error(format!("Hopper attention backward unavailable: {e}")))?;
        if let Some(why) = shape_problem(shape, batch) {
            bail!(
                "Hopper attention backward ({}): {why}",
                describe(shape, batch)
            );
        }
        Ok(())
    }

    /// [`CudaBackend::flash_attention_backward`] on the Hopper kernels
    /// (kernels/attention_hopper_bwd.cu), never falling back: shapes or devices it cannot take
    /// ([`CudaBackend::attention_hopper_bwd_supports`]) are errors naming the shapes. dk and dv
    /// are deterministic; dq's last bits depend on the order of the f32 reductions.
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attention_backward_hopper(
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
        const WHAT: &str = "CUDA Hopper flash attention backward";
        let c = check_dims(WHAT, shape, batch)?;
        if let Some(why) = shape_problem(shape, batch) {
            bail!("{WHAT} ({}): {why}", describe(shape, batch));
        }
        let lens = [q.len(), k.len(), v.len(), out.len(), d_out.len(), lse.len()];
        c.backward_buffers(WHAT, shape, batch, lens, [dq.len(), dk.len(), dv.len()])?;
        if c.kv_len == 0 {
            return Ok(()); // no key (so no query either): nothing to write
        }
        if c.q_len == 0 {
            // No query sees the keys: their gradients are zeros.
            self.fill_zeros(dk)?;
            return self.fill_zeros(dv);
        }
        if let Err(e) = self.attention_hopper_bwd_supports(shape, batch) {
            bail!("{WHAT} ({}): {e}", describe(shape, batch));
        }
        let stream = self.stream();
        let aligned = |name: &str, ptr: u64| -> Result<()> {
            if !ptr.is_multiple_of(16) {
                bail!(
                    "{WHAT} ({}): {name} at {ptr:#x} is not 16-byte aligned (TMA and the \
                     kernels' vector accesses need it)",
                    describe(shape, batch)
                );
            }
            Ok(())
        };
        for (name, buffer) in [("out", out), ("dq", &*dq), ("dk", &*dk), ("dv", &*dv)] {
            aligned(name, buffer.slice.device_ptr(stream).0)?;
        }
        // The tensor maps' operands; the guards keep their stream-ordering records alive until
        // after the launches.
        let mut ptrs = Vec::with_capacity(4);
        for (name, buffer) in [("q", q), ("k", k), ("v", v), ("d_out", d_out)] {
            let (ptr, record) = buffer.slice.device_ptr(stream);
            aligned(name, ptr)?;
            ptrs.push((ptr, record));
        }
        let hd = shape.head_dim;
        let shapes = || describe(shape, batch);
        let map = |ptr: u64, heads: usize, seq: usize, name: &str| {
            encode_attention(ptr, batch, seq, heads, hd, QUERY_BLOCK as u32)
                .map_err(|e| Error(format!("{WHAT} ({}): {name}: {e}", shapes())))
        };
        let map_q = map(ptrs[0].0, shape.heads, shape.queries, "q")?;
        let map_k = map(ptrs[1].0, shape.kv_heads, shape.keys, "k")?;
        let map_v = map(ptrs[2].0, shape.kv_heads, shape.keys, "v")?;
        let map_do = map(ptrs[3].0, shape.heads, shape.queries, "d_out")?;

        let q_blocks = shape.queries.div_ceil(QUERY_BLOCK);
        let qpad = q_blocks * QUERY_BLOCK;
        let rows_len = batch * shape.heads * qpad;
        let mut delta = self.zeros::<f32>(rows_len)?;
        let mut lse2 = self.zeros::<f32>(rows_len)?;
        let mut dq_acc = self.zeros::<f32>(rows_len * hd)?;
        let scale = 1.0 / (hd as f32).sqrt();
        let scale_log2 = std::f32::consts::LOG2_E * scale;
        let hd_int = hd as i32;
        let qpad_int = i32::try_from(qpad)
            .map_err(|_| Error(format!("{WHAT} ({}): queries overflow an int", shapes())))?;

        // 1. D = rowsum(dO ∘ O) and lse·log₂e, padded per (sequence, head).
        let rows = (c.q_len / hd) as i64;
        launch!(
            self,
            "flash_bwd_hopper_preprocess",
            self.grid_stride(c.q_len / hd * 32),
            shapes(),
            [
                &out.slice,
                &d_out.slice,
                &lse.slice,
                &mut delta.slice,
                &mut lse2.slice,
                &rows,
                &c.queries,
                &c.heads,
                &hd_int,
                &qpad_int
            ]
        )?;

        // 2. dK, dV per key block (written whole), dQ reduced into the accumulator.
        let kernel = if hd == 64 {
            "flash_bwd_hopper_hd64"
        } else {
            "flash_bwd_hopper_hd128"
        };
        let smem = smem_bytes(hd);
        raise_smem_limit(self, kernel, smem, shapes)?;
        let cfg = LaunchConfig {
            grid_dim: (
                (shape.kv_heads * batch) as u32,
                shape.keys.div_ceil(KEY_BLOCK) as u32,
                1,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: smem,
        };
        launch!(
            self,
            kernel,
            cfg,
            shapes(),
            [
                &map_q,
                &map_k,
                &map_v,
                &map_do,
                &lse2.slice,
                &delta.slice,
                &mut dq_acc.slice,
                &mut dk.slice,
                &mut dv.slice,
                &c.queries,
                &c.keys,
                &c.heads,
                &c.kv_heads,
                &scale,
                &scale_log2
            ]
        )?;

        // 3. dq = bf16(τ · accumulator).
        let tiles = (batch * shape.heads * q_blocks) as i64;
        launch!(
            self,
            "flash_bwd_hopper_convert_dq",
            self.grid_stride(rows_len * hd / 2),
            shapes(),
            [
                &dq_acc.slice,
                &mut dq.slice,
                &tiles,
                &c.queries,
                &c.heads,
                &hd_int,
                &scale
            ]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(
        queries: usize,
        keys: usize,
        heads: usize,
        kv_heads: usize,
        hd: usize,
    ) -> AttentionShape {
        AttentionShape {
            queries,
            keys,
            heads,
            kv_heads,
            head_dim: hd,
        }
    }

    #[test]
    fn shapes_the_kernel_cannot_take_are_named() {
        assert!(shape_problem(shape(2048, 2048, 32, 8, 128), 4).is_none());
        assert!(shape_problem(shape(17, 257, 8, 2, 64), 2).is_none());
        let why = shape_problem(shape(16, 16, 2, 2, 96), 1).unwrap();
        assert!(why.contains("head_dim 96"), "{why}");
        // 65536 key blocks do not fit a grid's y dimension.
        let why = shape_problem(shape(1, 128 * 65536, 1, 1, 64), 1).unwrap();
        assert!(why.contains("blocks of 128 keys"), "{why}");
        let why = shape_problem(shape(1, 8, 1 << 16, 1 << 16, 64), 1 << 16).unwrap();
        assert!(why.contains("kv_heads × batch"), "{why}");
    }

    #[test]
    fn shared_memory_matches_the_kernel_layout() {
        // K and V (128 keys × d each), 3 stages of Q and dO (64 × d each), two dSᵀ buffers
        // (128 × 64 bf16), two 16 KiB dQ staging buffers, 3 × 512 B of L₂ and D, 1 KiB of
        // alignment slack: the sum kernels/attention_hopper_bwd.cu asserts.
        for hd in [64usize, 128] {
            let bf = 2;
            let want = 2 * 128 * hd * bf
                + 3 * 2 * 64 * hd * bf
                + 2 * 128 * 64 * bf
                + 2 * 64 * 64 * 4
                + 3 * 2 * 64 * 4
                + 1024;
            assert_eq!(smem_bytes(hd) as usize, want, "head_dim {hd}");
        }
    }
}
