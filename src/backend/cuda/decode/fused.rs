//! The launchers of kernels/decode.cu that read the fused products of a model whose weights are
//! concatenated at load (src/model/cuda/): W_qkv = [Wq; Wk; Wv] gives each row
//! `[q | k | v]` in one product, W_gu = [Wg; Wu] gives `[gate | up]`. Instead of copying the
//! slices out, [`CudaBackend::qkv_rope_append`] applies RoPE to q and k and appends k, v to the
//! cache straight from the fused row (one launch for what took three), and
//! [`CudaBackend::swiglu_fused`] reads both halves of the gate|up row. References:
//! `backend::cpu::ops::{rope, swiglu}` and the cache's contents (tests/cuda_kernels/decode_fused.rs).

use super::super::{as_int, check_len, per_row, CudaBackend, DeviceBuffer};
use super::{attention_heads, KvBatch};
use crate::backend::cpu::ops::{RopeLayout, RopeSpec};
use crate::bail;
use crate::error::Result;
use half::bf16;

/// Where [`CudaBackend::qkv_rope_append`] writes besides the cache.
pub struct QkvOutputs<'a> {
    /// `[rows, heads, head_dim]`: the rotated queries, contiguous, as attention reads them.
    pub q: &'a mut DeviceBuffer<bf16>,
    /// `[rows, kv_dim]` each: the rotated keys and the values, contiguous, when a caller wants
    /// them outside the cache too (a prefill that runs flash attention over the whole batch).
    pub kv: Option<(&'a mut DeviceBuffer<bf16>, &'a mut DeviceBuffer<bf16>)>,
}

impl CudaBackend {
    /// From each row of the fused product `qkv` (`[rows, (heads + 2·kv_heads)·head_dim]`: q,
    /// then k, then v), in one launch: RoPE on q into `out.q`, RoPE on k, and k and v into layer
    /// `layer` of the row's sequence's cache at its position (and into `out.kv` when given). RoPE
    /// as [`CudaBackend::rope`] with `rope`'s base and layout (its `heads` is not read: q has
    /// `heads` heads, k the cache's).
    pub fn qkv_rope_append(
        &self,
        batch: &KvBatch<'_>,
        layer: usize,
        qkv: &DeviceBuffer<bf16>,
        heads: usize,
        rope: RopeSpec,
        out: QkvOutputs<'_>,
    ) -> Result<()> {
        const KERNEL: &str = "model_qkv_rope_append";
        let head_dim = rope.head_dim;
        let kv_heads = attention_heads(KERNEL, batch, layer, heads, head_dim)?;
        let rows = batch.rows;
        let width = (heads + 2 * kv_heads) * head_dim;
        check_len(KERNEL, "qkv", qkv.len(), rows.saturating_mul(width))?;
        check_len(
            KERNEL,
            "q",
            out.q.len(),
            rows.saturating_mul(heads * head_dim),
        )?;
        if let Some((k, v)) = &out.kv {
            check_len(KERNEL, "k", k.len(), rows * batch.kv_dim)?;
            check_len(KERNEL, "v", v.len(), rows * batch.kv_dim)?;
        }
        if rows == 0 {
            return Ok(());
        }
        let inv_freq = self.rope_inv_freq(rope.base, head_dim)?;
        let width_int = as_int(KERNEL, "width", width)?;
        let (layer_int, heads_int, kv_heads_int) = (layer as i32, heads as i32, kv_heads as i32);
        let hd_int = head_dim as i32;
        let interleaved = (rope.layout == RopeLayout::Interleaved) as i32;
        let cfg = per_row(rows, (head_dim * 4) as u32);
        let contiguous = out.kv.is_some();
        let shapes = || {
            format!(
                "rows {rows}, layer {layer}, heads {heads}, kv_heads {kv_heads}, head_dim {head_dim}, {:?}, contiguous k/v {}",
                rope.layout, contiguous
            )
        };
        let tables = &batch.tables;
        match out.kv {
            Some((k, v)) => launch!(
                self,
                KERNEL,
                cfg,
                shapes(),
                [
                    &qkv.slice,
                    &width_int,
                    &mut out.q.slice,
                    &mut k.slice,
                    &mut v.slice,
                    &tables.row_seq.slice,
                    &tables.positions.slice,
                    &tables.table,
                    &layer_int,
                    &inv_freq.slice,
                    &heads_int,
                    &kv_heads_int,
                    &hd_int,
                    &interleaved
                ]
            ),
            None => {
                // Null k_out and v_out: the kernel writes only the cache.
                let null = 0u64;
                launch!(
                    self,
                    KERNEL,
                    cfg,
                    shapes(),
                    [
                        &qkv.slice,
                        &width_int,
                        &mut out.q.slice,
                        &null,
                        &null,
                        &tables.row_seq.slice,
                        &tables.positions.slice,
                        &tables.table,
                        &layer_int,
                        &inv_freq.slice,
                        &heads_int,
                        &kv_heads_int,
                        &hd_int,
                        &interleaved
                    ]
                )
            }
        }
    }

    /// act[r, i] = silu(gu[r, i])·gu[r, ffn + i] for the fused gate|up product `gu`
    /// (`[rows, 2·ffn]` bf16) into `act` (`[rows, ffn]`), with [`CudaBackend::swiglu`]'s
    /// arithmetic.
    pub fn swiglu_fused(
        &self,
        gu: &DeviceBuffer<bf16>,
        ffn: usize,
        act: &mut DeviceBuffer<bf16>,
    ) -> Result<()> {
        const KERNEL: &str = "model_swiglu_fused_bf16";
        if ffn == 0 || !gu.len().is_multiple_of(2 * ffn) {
            bail!(
                "CUDA kernel {KERNEL}: gu has {} elements, not a whole number of rows of 2 × {ffn}",
                gu.len()
            );
        }
        let rows = gu.len() / (2 * ffn);
        check_len(KERNEL, "act", act.len(), rows * ffn)?;
        if rows == 0 {
            return Ok(());
        }
        let ffn_int = as_int(KERNEL, "ffn", ffn)?;
        let rows64 = rows as u64;
        let units = if ffn.is_multiple_of(8) {
            rows * ffn / 8
        } else {
            rows * ffn
        };
        launch!(
            self,
            KERNEL,
            self.grid_stride(units),
            format!("rows {rows}, ffn {ffn}"),
            [&gu.slice, &mut act.slice, &rows64, &ffn_int]
        )
    }

    /// The buffers one after the other in a new one (device to device): the fused weights
    /// `[Wq; Wk; Wv]` and `[Wg; Wu]` of a layer, each `[out, in]` with the same `in`.
    pub fn concat_bf16(&self, parts: &[&DeviceBuffer<bf16>]) -> Result<DeviceBuffer<bf16>> {
        let total = parts.iter().map(|p| p.len()).sum();
        let mut out = self.alloc::<bf16>(total)?;
        let mut at = 0;
        for part in parts {
            if part.is_empty() {
                continue;
            }
            let mut view = out.slice.slice_mut(at..at + part.len());
            self.stream()
                .memcpy_dtod(&part.slice, &mut view)
                .map_err(|e| {
                    super::super::driver_error(
                        &format!("concatenating {} elements at {at} of {total}", part.len()),
                        e,
                    )
                })?;
            at += part.len();
        }
        Ok(out)
    }
}
