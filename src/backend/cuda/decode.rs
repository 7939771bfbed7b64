//! The launchers of kernels/decode.cu, the small kernels of the forward pass: the embedding into
//! the f32 residual stream, the norms from f32 rows into bf16 (or f32) GEMM inputs, OLMo's
//! clamp, and the KV cache's append (the cache itself: kv_cache.rs; the kernels that read the
//! fused q|k|v and gate|up products: fused.rs; the attention over the cache:
//! cached_attention.rs). References:
//! `backend::cpu::ops::{embedding, rms_norm, layer_norm_no_params, clamp_in_place}`.

mod fused;
mod kv_cache;

pub use fused::QkvOutputs;
pub use kv_cache::{CudaKvCache, KvBatch, KvCacheShape, KvTables, RowList, MAX_HEAD_DIM};

use super::{as_int, check_len, per_row, rows_of, CudaBackend, DeviceBuffer, Float};
use crate::bail;
use crate::error::Result;
use half::bf16;

/// Which norm [`CudaBackend::norm_rows`] applies.
#[derive(Clone, Copy, Debug)]
pub enum RowNorm<'a> {
    /// RMSNorm with this weight (`[dim]`, f32): y = x·w/sqrt(mean(x²) + eps).
    Rms(&'a DeviceBuffer<f32>),
    /// LayerNorm without parameters (OLMo): y = (x − mean)/sqrt(var + eps), biased variance.
    LayerNorm,
}

impl CudaBackend {
    /// out[t] = table[ids[t]] widened to f32 (`table` is `[vocab, dim]` bf16, `out`
    /// `[tokens, dim]` f32). An id ≥ vocab gives a row of NaN.
    pub fn embedding_to_f32(
        &self,
        ids: &DeviceBuffer<u32>,
        table: &DeviceBuffer<bf16>,
        dim: usize,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        const KERNEL: &str = "model_embed_f32";
        let vocab = rows_of(KERNEL, "table", table.len(), dim)?;
        let tokens = ids.len();
        check_len(KERNEL, "out", out.len(), tokens.saturating_mul(dim))?;
        as_int(KERNEL, "tokens", tokens)?;
        if tokens == 0 {
            return Ok(());
        }
        let (vocab_int, dim_int) = (vocab as i32, as_int(KERNEL, "dim", dim)?);
        launch!(
            self,
            KERNEL,
            per_row(tokens, 0),
            format!("tokens {tokens}, vocab {vocab}, dim {dim}"),
            [
                &ids.slice,
                &table.slice,
                &mut out.slice,
                &vocab_int,
                &dim_int
            ]
        )
    }

    /// out[r] = norm(x[rows[r]]) for each entry of `rows` (`x` is `[x_rows, dim]` f32, `out`
    /// `[rows.len(), dim]` as `O`), statistics in f32: the per-layer norms (rows 0..x_rows) and
    /// the final norm of only the rows whose logits are wanted. A row index ≥ x_rows gives a row
    /// of NaN (never reading outside `x`).
    pub fn norm_rows<O: Float>(
        &self,
        x: &DeviceBuffer<f32>,
        dim: usize,
        rows: &DeviceBuffer<u32>,
        norm: RowNorm<'_>,
        eps: f64,
        out: &mut DeviceBuffer<O>,
    ) -> Result<()> {
        let kernel = O::pick("model_norm_f32", "model_norm_bf16");
        let x_rows = rows_of(kernel, "x", x.len(), dim)?;
        let n = rows.len();
        check_len(kernel, "out", out.len(), n.saturating_mul(dim))?;
        as_int(kernel, "rows", n)?;
        if let RowNorm::Rms(w) = norm {
            check_len(kernel, "weight", w.len(), dim)?;
        }
        if n == 0 {
            return Ok(());
        }
        if x_rows == 0 {
            bail!("CUDA kernel {kernel}: {n} rows asked of an empty x");
        }
        // LayerNorm reads no weight: x stands in for the pointer.
        let (weight, layer_norm) = match norm {
            RowNorm::Rms(w) => (&w.slice, 0i32),
            RowNorm::LayerNorm => (&x.slice, 1i32),
        };
        let (d_int, x_rows_int, eps) = (as_int(kernel, "dim", dim)?, x_rows as i32, eps as f32);
        launch!(
            self,
            kernel,
            per_row(n, 0),
            format!("rows {n} of {x_rows}, dim {dim}, {norm:?}"),
            [
                &x.slice,
                &x_rows_int,
                &rows.slice,
                weight,
                &mut out.slice,
                &d_int,
                &eps,
                &layer_norm
            ]
        )
    }

    /// Clamps every value of `x` into [−limit, limit] in place (OLMo's clip_qkv); NaN stays.
    pub fn clamp_bf16(&self, x: &mut DeviceBuffer<bf16>, limit: f32) -> Result<()> {
        const KERNEL: &str = "model_clamp_bf16";
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let n64 = n as u64;
        launch!(
            self,
            KERNEL,
            self.grid_stride(n),
            format!("n {n}, limit {limit}"),
            [&mut x.slice, &n64, &limit]
        )
    }
}

/// Checks `q`/`out` against the batch and returns the KV heads (fused.rs,
/// cached_attention.rs).
pub(super) fn attention_heads(
    what: &str,
    batch: &KvBatch<'_>,
    layer: usize,
    heads: usize,
    head_dim: usize,
) -> Result<usize> {
    if layer >= batch.layers {
        bail!("{what}: layer {layer} of {}", batch.layers);
    }
    if head_dim == 0 || !head_dim.is_multiple_of(2) || head_dim > MAX_HEAD_DIM {
        bail!("{what}: head_dim {head_dim} must be even, 2 to {MAX_HEAD_DIM}");
    }
    if !batch.kv_dim.is_multiple_of(head_dim) {
        bail!(
            "{what}: the cache's {} values per token are not whole heads of {head_dim}",
            batch.kv_dim
        );
    }
    let kv_heads = batch.kv_dim / head_dim;
    if heads == 0 || !heads.is_multiple_of(kv_heads) {
        bail!("{what}: {heads} query heads are not a multiple of {kv_heads} KV heads");
    }
    Ok(kv_heads)
}

impl CudaBackend {
    /// Writes each row's `k`, `v` (`[rows, kv_heads, head_dim]` bf16, RoPE already applied to
    /// k) into layer `layer` of its sequence's cache, at its position.
    pub fn kv_append(
        &self,
        batch: &KvBatch<'_>,
        layer: usize,
        k: &DeviceBuffer<bf16>,
        v: &DeviceBuffer<bf16>,
    ) -> Result<()> {
        const KERNEL: &str = "model_kv_append";
        if layer >= batch.layers {
            bail!("CUDA kernel {KERNEL}: layer {layer} of {}", batch.layers);
        }
        let n = batch.rows * batch.kv_dim;
        check_len(KERNEL, "k", k.len(), n)?;
        check_len(KERNEL, "v", v.len(), n)?;
        let (layer_int, kv_dim_int) = (layer as i32, as_int(KERNEL, "kv_dim", batch.kv_dim)?);
        launch!(
            self,
            KERNEL,
            per_row(batch.rows, 0),
            format!(
                "rows {}, layer {layer}, kv_dim {}",
                batch.rows, batch.kv_dim
            ),
            [
                &k.slice,
                &v.slice,
                &batch.tables.row_seq.slice,
                &batch.tables.positions.slice,
                &batch.tables.table,
                &layer_int,
                &kv_dim_int
            ]
        )
    }
}
