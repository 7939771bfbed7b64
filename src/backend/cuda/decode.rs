//! The launchers of kernels/decode.cu, the small kernels of the forward pass: the embedding into
//! the f32 residual stream, the norms from f32 rows into bf16 (or f32) GEMM inputs, OLMo's
//! clamp, and the KV cache's append and attention (the cache itself: kv_cache.rs; the kernels
//! that read the fused q|k|v and gate|up products: fused.rs; the keys split over blocks:
//! split_kv.rs). References:
//! `backend::cpu::ops::{embedding, rms_norm, layer_norm_no_params, clamp_in_place}` and
//! `backend::cpu::attention::causal_attention`.

mod fused;
mod kv_cache;
mod split_kv;

pub use fused::QkvOutputs;
pub use kv_cache::{CudaKvCache, KeySplit, KvBatch, KvCacheShape, KvTables, RowList, MAX_HEAD_DIM};
pub use split_kv::{SplitKvWorkspace, MAX_KV_SPLITS};

use super::flash_attention::FlashOffsets;
use super::{as_int, check_len, per_row, rows_of, CudaBackend, DeviceBuffer, Float, THREADS};
use crate::backend::cpu::attention::AttentionShape;
use crate::bail;
use crate::error::Result;
use cudarc::driver::LaunchConfig;
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

/// Checks `q`/`out` against the batch and returns the KV heads.
fn attention_heads(
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

    /// Causal grouped-query attention of the listed rows of `q` (`[batch rows, heads,
    /// head_dim]` bf16, after RoPE) against layer `layer` of their own sequence's cache (which
    /// must already hold the batch's new keys, [`CudaBackend::kv_append`]), into the same rows of
    /// `out` (other rows untouched). Row t at position p sees keys 0..=p. Scale 1/√head_dim;
    /// softmax and sums in f32. Any even head_dim up to 256. With a `workspace` (made by
    /// [`SplitKvWorkspace::for_decode`] for a step whose (row, head) pairs leave the GPU
    /// short of blocks: fewer than 32 per SM) each pair's keys are split over
    /// `workspace.splits()` blocks ([`KeySplit::Blocks`]). Without one: with fewer than 8 pairs
    /// per multiprocessor each pair's keys are split over the 8 warps of a block
    /// ([`KeySplit::Warps`]); otherwise one warp takes them all.
    #[allow(clippy::too_many_arguments)]
    pub fn cached_attention(
        &self,
        batch: &KvBatch<'_>,
        layer: usize,
        q: &DeviceBuffer<bf16>,
        heads: usize,
        head_dim: usize,
        rows: &RowList,
        out: &mut DeviceBuffer<bf16>,
        workspace: Option<&mut SplitKvWorkspace>,
    ) -> Result<()> {
        let pairs = rows.len.saturating_mul(heads);
        let split = match &workspace {
            Some(ws) if ws.splits() > 1 => KeySplit::Blocks(ws.splits()),
            _ if pairs < 8 * self.multiprocessors as usize => KeySplit::Warps,
            _ => KeySplit::None,
        };
        self.cached_attention_split(
            batch, layer, q, heads, head_dim, rows, out, split, workspace,
        )
    }

    /// [`CudaBackend::cached_attention`] with the kernel chosen by the caller (the tests check
    /// each on the same inputs). [`KeySplit::Blocks`] needs a workspace with room for its
    /// splits of every listed row's heads; the other splits do not read it.
    #[allow(clippy::too_many_arguments)]
    pub fn cached_attention_split(
        &self,
        batch: &KvBatch<'_>,
        layer: usize,
        q: &DeviceBuffer<bf16>,
        heads: usize,
        head_dim: usize,
        rows: &RowList,
        out: &mut DeviceBuffer<bf16>,
        split: KeySplit,
        workspace: Option<&mut SplitKvWorkspace>,
    ) -> Result<()> {
        let j = head_dim.div_ceil(64).clamp(1, 4);
        let kernel = match (split, j) {
            (KeySplit::None, 1) => "model_attention_j1",
            (KeySplit::None, 2) => "model_attention_j2",
            (KeySplit::None, 3) => "model_attention_j3",
            (KeySplit::None, _) => "model_attention_j4",
            (KeySplit::Warps, 1) => "model_attention_split_j1",
            (KeySplit::Warps, 2) => "model_attention_split_j2",
            (KeySplit::Warps, 3) => "model_attention_split_j3",
            (KeySplit::Warps, _) => "model_attention_split_j4",
            (KeySplit::Blocks(_), _) => "model_attention_part_j*",
        };
        let kv_heads = attention_heads(kernel, batch, layer, heads, head_dim)?;
        let n = batch.rows.saturating_mul(heads).saturating_mul(head_dim);
        check_len(kernel, "q", q.len(), n)?;
        check_len(kernel, "out", out.len(), n)?;
        if rows.bound != batch.rows {
            bail!(
                "CUDA kernel {kernel}: a row list of a batch of {} rows, this one has {}",
                rows.bound,
                batch.rows
            );
        }
        if rows.is_empty() {
            return Ok(());
        }
        let splits = match split {
            KeySplit::Blocks(splits) => splits,
            KeySplit::None | KeySplit::Warps => 0,
        };
        if splits > 0 {
            let shape = (heads, kv_heads, head_dim);
            return self.attention_blocks(batch, layer, q, shape, rows, out, splits, workspace);
        }
        let pairs = rows.len.saturating_mul(heads);
        let threads = match split {
            KeySplit::Warps => pairs,
            _ => pairs.saturating_mul(32),
        };
        // The one-warp kernel runs 32 threads per (row, head) pair; the split kernel one block per
        // pair, and a grid's x dimension takes at most 2^31 - 1 blocks.
        if u32::try_from(threads).is_err()
            || (split == KeySplit::Warps && pairs > i32::MAX as usize)
        {
            bail!(
                "CUDA kernel {kernel}: {} rows × {heads} heads are too many for one launch",
                rows.len
            );
        }
        let (nrows, layer_int) = (rows.len as i32, layer as i32);
        let (heads_int, kv_heads_int, hd_int) = (heads as i32, kv_heads as i32, head_dim as i32);
        let scale_log2 = std::f32::consts::LOG2_E / (head_dim as f32).sqrt();
        let shapes = || {
            format!(
                "rows {} of {}, layer {layer}, heads {heads}, kv_heads {kv_heads}, head_dim {head_dim}",
                rows.len, batch.rows
            )
        };
        match split {
            KeySplit::None | KeySplit::Blocks(_) => {
                let cfg = LaunchConfig {
                    grid_dim: (threads.div_ceil(THREADS as usize) as u32, 1, 1),
                    block_dim: (THREADS, 1, 1),
                    shared_mem_bytes: 0,
                };
                launch!(
                    self,
                    kernel,
                    cfg,
                    shapes(),
                    [
                        &q.slice,
                        &mut out.slice,
                        &rows.rows.slice,
                        &nrows,
                        &batch.tables.row_seq.slice,
                        &batch.tables.positions.slice,
                        &batch.tables.table,
                        &layer_int,
                        &heads_int,
                        &kv_heads_int,
                        &hd_int,
                        &scale_log2
                    ]
                )
            }
            KeySplit::Warps => {
                // One block of THREADS (8 warps) per (row, head).
                launch!(
                    self,
                    kernel,
                    per_row(pairs, 0),
                    shapes(),
                    [
                        &q.slice,
                        &mut out.slice,
                        &rows.rows.slice,
                        &batch.tables.row_seq.slice,
                        &batch.tables.positions.slice,
                        &batch.tables.table,
                        &layer_int,
                        &heads_int,
                        &kv_heads_int,
                        &hd_int,
                        &scale_log2
                    ]
                )
            }
        }
    }

    /// [`CudaBackend::cached_attention`] for all the new rows of sequence `seq` through flash
    /// attention (head_dim 64 or 128), in place: the kernel reads the sequence's queries from
    /// its rows of `q`, its keys and values from the cache's layer (already in the kernel's
    /// `[keys, kv_heads, head_dim]` layout), and writes its rows of `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn cached_flash_attention(
        &self,
        batch: &KvBatch<'_>,
        layer: usize,
        seq: usize,
        q: &DeviceBuffer<bf16>,
        heads: usize,
        head_dim: usize,
        out: &mut DeviceBuffer<bf16>,
    ) -> Result<()> {
        const WHAT: &str = "cached flash attention";
        let kv_heads = attention_heads(WHAT, batch, layer, heads, head_dim)?;
        let n = batch.rows.saturating_mul(heads).saturating_mul(head_dim);
        check_len(WHAT, "q", q.len(), n)?;
        check_len(WHAT, "out", out.len(), n)?;
        if seq >= batch.sequences() {
            bail!("{WHAT}: sequence {seq} of {}", batch.sequences());
        }
        let (start, queries) = batch.sequence_rows(seq);
        let cache = &batch.caches[seq];
        let keys = cache.len + queries;
        let Some((k_all, v_all)) = &cache.buffers else {
            bail!("{WHAT}: sequence {seq}'s cache has no memory");
        };
        let shape = AttentionShape {
            queries,
            keys,
            heads,
            kv_heads,
            head_dim,
        };
        let at = FlashOffsets {
            q: start * heads * head_dim,
            kv: layer * cache.capacity * batch.kv_dim,
        };
        let mut lse = self.alloc::<f32>(heads * queries)?;
        self.flash_attention_forward_at(shape, q, k_all, v_all, at, out, &mut lse)
    }
}
