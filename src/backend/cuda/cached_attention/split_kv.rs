//! Split-KV decode attention ("flash-decoding" over blocks; kernels/cached_attention.cu,
//! `model_attention_part_j*` and `model_attention_combine_j*`): each (row, head)'s keys are
//! split over several blocks of 8 warps, each block writing its partial output, max and sum of
//! exponentials into a [`SplitKvWorkspace`], and a second kernel combining the parts in split
//! order (log-sum-exp: m = max mᵢ, l = Σ 2^(mᵢ−m)·lᵢ, o = Σ 2^(mᵢ−m)·oᵢ / l, in base 2 since
//! the scores are in log2 units). Reference: `backend::cpu::attention::causal_attention`.
//!
//! A decode step runs inside a captured CUDA graph replayed while the contexts grow
//! (src/model/cuda/decode_graph.rs), so the number of splits is fixed when the workspace is
//! made, from the batch's (row, head) pairs, the SMs and the model's context
//! ([`CudaBackend::kv_splits`]), never from the current lengths: each block reads its row's
//! position on the device and derives its key range, and a split past the row's length writes an
//! empty part (m = −inf, l = 0) that the combine skips.

use super::super::{as_int, CudaBackend, DeviceBuffer, THREADS};
use super::{KvBatch, RowList};
use crate::bail;
use crate::error::Result;
use cudarc::driver::LaunchConfig;
use half::bf16;

/// Most splits a launch takes (the combine walks them one by one).
pub const MAX_KV_SPLITS: usize = 64;

/// [`CudaBackend::kv_splits`] aims at this many blocks (pairs × splits) per SM: with 3-4 blocks
/// resident per SM (64-80 registers, 256 threads) that is ~8-10 waves, so a ragged batch's
/// longest rows leave a tail of ~10% at most, and every SM has 24-32 warps of loads in flight.
const BLOCKS_PER_SM: usize = 32;

/// At most this many splits from [`CudaBackend::kv_splits`]: 16 splits of a batch-1 step fill
/// 512 blocks (~4 per SM on an H100) already.
const PLAN_MAX_SPLITS: usize = 16;

/// A split of a full context reads at least this many keys (32 per warp), so that a block's
/// own costs (its query, barrier, combine and part write) stay small beside its K/V reads.
const MIN_SPLIT_KEYS: usize = 256;

/// Where the part kernel leaves each (row, head, split)'s partial result for the combine:
/// `parts` `[rows, heads, splits, head_dim]` (unnormalised outputs) and `stats`
/// `[rows, heads, splits, 2]` (max in log2 units, sum of exponentials), f32. Allocated once by
/// the caller (a captured decode step cannot allocate), for at most `rows` rows.
pub struct SplitKvWorkspace {
    parts: DeviceBuffer<f32>,
    stats: DeviceBuffer<f32>,
    rows: usize,
    heads: usize,
    head_dim: usize,
    splits: usize,
}

impl std::fmt::Debug for SplitKvWorkspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitKvWorkspace")
            .field("rows", &self.rows)
            .field("heads", &self.heads)
            .field("head_dim", &self.head_dim)
            .field("splits", &self.splits)
            .finish()
    }
}

impl SplitKvWorkspace {
    /// Room for `splits` parts of each of `rows` × `heads` pairs of `head_dim` values.
    pub fn new(
        gpu: &CudaBackend,
        rows: usize,
        heads: usize,
        head_dim: usize,
        splits: usize,
    ) -> Result<SplitKvWorkspace> {
        if !(1..=MAX_KV_SPLITS).contains(&splits) {
            bail!("split-KV workspace: {splits} splits, expected 1 to {MAX_KV_SPLITS}");
        }
        let slots = rows.checked_mul(heads).and_then(|p| p.checked_mul(splits));
        let Some(parts) = slots.and_then(|s| s.checked_mul(head_dim)) else {
            bail!("split-KV workspace of {rows} rows × {heads} heads × {splits} splits × {head_dim}: too large");
        };
        let slots = slots.unwrap_or(0);
        Ok(SplitKvWorkspace {
            parts: gpu.alloc(parts.max(1))?,
            stats: gpu.alloc((2 * slots).max(1))?,
            rows,
            heads,
            head_dim,
            splits,
        })
    }

    /// The workspace of a decode step of `rows` rows when [`CudaBackend::kv_splits`] splits
    /// their keys (`max_keys`: the model's context), None when it keeps one block or warp per
    /// (row, head).
    pub fn for_decode(
        gpu: &CudaBackend,
        rows: usize,
        heads: usize,
        head_dim: usize,
        max_keys: usize,
    ) -> Result<Option<SplitKvWorkspace>> {
        match gpu.kv_splits(rows, heads, max_keys) {
            0 | 1 => Ok(None),
            splits => SplitKvWorkspace::new(gpu, rows, heads, head_dim, splits).map(Some),
        }
    }

    /// Bytes [`SplitKvWorkspace::for_decode`] allocates for the same arguments (0 when it
    /// makes none), without allocating: for the decode graphs' memory budget.
    pub fn decode_bytes(
        gpu: &CudaBackend,
        rows: usize,
        heads: usize,
        head_dim: usize,
        max_keys: usize,
    ) -> usize {
        match gpu.kv_splits(rows, heads, max_keys) {
            0 | 1 => 0,
            splits => rows
                .saturating_mul(heads)
                .saturating_mul(splits)
                .saturating_mul(head_dim + 2)
                .saturating_mul(4),
        }
    }

    /// The splits it was made for ([`CudaBackend::cached_attention`] launches that many).
    pub fn splits(&self) -> usize {
        self.splits
    }

    /// Bytes of device memory it holds.
    pub fn bytes(&self) -> usize {
        4 * (self.parts.len() + self.stats.len())
    }

    /// Fills it with NaN (tests: the combine must read only what the part kernel wrote).
    pub fn poison(&mut self, gpu: &CudaBackend) -> Result<()> {
        gpu.upload_into(&vec![f32::NAN; self.parts.len()], &mut self.parts)?;
        gpu.upload_into(&vec![f32::NAN; self.stats.len()], &mut self.stats)
    }
}

impl CudaBackend {
    /// How many blocks [`CudaBackend::cached_attention`] splits each (row, head)'s keys over,
    /// for `rows` rows of `heads` heads in a model of `max_keys` positions: enough for
    /// [`BLOCKS_PER_SM`] blocks per SM, at most 16, and no more than one per 256 positions of the
    /// context. 1 means no split over blocks. Fixed by the shapes and the device only, so a
    /// captured decode graph keeps it as its contexts grow. Llama-2-7B (32 heads, 4096
    /// positions) on a 132-SM H100: 16 at batch 1, 3 at batch 64, 2 at 128, 1 from 132 rows.
    pub fn kv_splits(&self, rows: usize, heads: usize, max_keys: usize) -> usize {
        let pairs = rows.saturating_mul(heads).max(1);
        let target = BLOCKS_PER_SM * self.multiprocessors as usize;
        target
            .div_ceil(pairs)
            .min(PLAN_MAX_SPLITS)
            .min(max_keys / MIN_SPLIT_KEYS)
            .max(1)
    }

    /// The split-KV launches of [`CudaBackend::cached_attention_split`] (shapes already
    /// checked there): `splits` part blocks per (row, head), then one combine warp per pair.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_blocks(
        &self,
        batch: &KvBatch<'_>,
        layer: usize,
        q: &DeviceBuffer<bf16>,
        (heads, kv_heads, head_dim): (usize, usize, usize),
        rows: &RowList,
        out: &mut DeviceBuffer<bf16>,
        splits: usize,
        workspace: Option<&mut SplitKvWorkspace>,
    ) -> Result<()> {
        let j = head_dim.div_ceil(64).clamp(1, 4);
        let (part, combine) = match j {
            1 => ("model_attention_part_j1", "model_attention_combine_j1"),
            2 => ("model_attention_part_j2", "model_attention_combine_j2"),
            3 => ("model_attention_part_j3", "model_attention_combine_j3"),
            _ => ("model_attention_part_j4", "model_attention_combine_j4"),
        };
        if !(1..=MAX_KV_SPLITS).contains(&splits) {
            bail!("CUDA kernel {part}: {splits} splits, expected 1 to {MAX_KV_SPLITS}");
        }
        let Some(ws) = workspace else {
            bail!("CUDA kernel {part}: a split over {splits} blocks needs a split-KV workspace");
        };
        let pairs = rows.len.saturating_mul(heads);
        let slots = pairs.saturating_mul(splits);
        let (need_parts, need_stats) = (slots.saturating_mul(head_dim), slots.saturating_mul(2));
        if need_parts > ws.parts.len() || need_stats > ws.stats.len() {
            bail!(
                "CUDA kernel {part}: the split-KV workspace holds {} floats of parts and {} of \
                 stats ({ws:?}); {} rows × {heads} heads × {splits} splits × head_dim {head_dim} \
                 need {need_parts} and {need_stats}",
                ws.parts.len(),
                ws.stats.len(),
                rows.len
            );
        }
        // The part grid is pairs × splits blocks, the combine's pairs × 32 threads: each in
        // the grid's x range and in the kernels' int and unsigned arithmetic.
        if i32::try_from(slots).is_err() || u32::try_from(pairs.saturating_mul(32)).is_err() {
            bail!(
                "CUDA kernel {part}: {} rows × {heads} heads × {splits} splits are too many for one launch",
                rows.len
            );
        }
        let (nrows, layer_int, splits_int) = (rows.len as i32, layer as i32, splits as i32);
        let (heads_int, kv_heads_int, hd_int) = (heads as i32, kv_heads as i32, head_dim as i32);
        as_int(part, "head_dim", head_dim)?;
        let scale_log2 = std::f32::consts::LOG2_E / (head_dim as f32).sqrt();
        let shapes = || {
            format!(
                "rows {} of {}, layer {layer}, heads {heads}, kv_heads {kv_heads}, head_dim {head_dim}, splits {splits}",
                rows.len, batch.rows
            )
        };
        let part_cfg = LaunchConfig {
            grid_dim: (slots as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            self,
            part,
            part_cfg,
            shapes(),
            [
                &q.slice,
                &mut ws.parts.slice,
                &mut ws.stats.slice,
                &rows.rows.slice,
                &batch.tables.row_seq.slice,
                &batch.tables.positions.slice,
                &batch.tables.table,
                &layer_int,
                &heads_int,
                &kv_heads_int,
                &hd_int,
                &scale_log2,
                &splits_int
            ]
        )?;
        let combine_cfg = LaunchConfig {
            grid_dim: ((pairs * 32).div_ceil(THREADS as usize) as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            self,
            combine,
            combine_cfg,
            shapes(),
            [
                &ws.parts.slice,
                &ws.stats.slice,
                &mut out.slice,
                &rows.rows.slice,
                &nrows,
                &heads_int,
                &hd_int,
                &splits_int
            ]
        )
    }
}
