//! The launchers of kernels/cached_attention.cu: causal grouped-query attention of a forward's
//! rows against their own sequence's KV cache (decode/kv_cache.rs), one warp per (row, head),
//! the keys over a block's warps, or over several blocks (split_kv.rs), as [`KeySplit`] says;
//! and, for a prefill with head_dim 64 or 128, flash attention (flash_attention.rs) over the
//! cache. Reference: `backend::cpu::attention::causal_attention`.

mod split_kv;

pub use split_kv::{SplitKvWorkspace, MAX_KV_SPLITS};

use super::decode::attention_heads;
use super::flash_attention::FlashOffsets;
use super::{check_len, per_row, CudaBackend, DeviceBuffer, KvBatch, RowList, THREADS};
use crate::backend::cpu::attention::AttentionShape;
use crate::bail;
use crate::error::Result;
use cudarc::driver::LaunchConfig;
use half::bf16;

/// How [`CudaBackend::cached_attention_split`] spreads each (row, head)'s keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySplit {
    /// One warp walks all the keys (many rows: the warps fill the GPU).
    None,
    /// The keys are split over the 8 warps of one block and the parts combined (few rows).
    Warps,
    /// The keys are split over this many blocks of 8 warps each, whose parts a second kernel
    /// combines (split_kv.rs: few rows over long contexts, or a batch-1 step, whose pairs alone
    /// leave SMs idle). Needs a [`SplitKvWorkspace`].
    Blocks(usize),
}

impl CudaBackend {
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
