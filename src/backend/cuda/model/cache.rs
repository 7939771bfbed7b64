//! The KV cache on the GPU and the attention over it (kernels/model.cu, and
//! kernels/flash_attention.cu for prefill): each sequence's keys and values stay on the GPU as
//! bf16 `[layers, capacity, kv_heads, head_dim]`, growing geometrically (doubling, from 64
//! positions, up to the model's context) and copied over when they grow.
//!
//! A forward pass over a ragged batch of sequences builds one [`KvBatch`]: it reserves room for
//! the new tokens in every cache and uploads the per-row sequence and position, and a table of
//! each sequence's cache (addresses and capacity), so that one launch appends the new k, v rows
//! of every sequence ([`CudaBackend::kv_append`]) and one attends every row to its own
//! sequence's keys ([`CudaBackend::cached_attention`]). [`KvBatch::finish`] then advances the
//! caches' lengths. Reference: `backend::cpu::attention::causal_attention`.

use super::super::attention::FlashOffsets;
use super::super::{as_int, check_len, driver_error, per_row, CudaBackend, DeviceBuffer, THREADS};
use crate::backend::cpu::attention::AttentionShape;
use crate::bail;
use crate::error::Result;
use crate::model::ModelConfig;
use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig};
use half::bf16;

/// Positions a cache gets at its first use; it then doubles, up to the model's context.
const MIN_CAPACITY: usize = 64;

/// Largest head dimension of the plain attention kernel (4 pairs per lane).
pub const MAX_HEAD_DIM: usize = 256;

/// Keys and values of one sequence on the GPU, per layer (bf16). Empty until its first forward.
pub struct CudaKvCache {
    layers: usize,
    kv_dim: usize,
    max_positions: usize,
    /// K and V, each `[layers, capacity, kv_dim]`.
    buffers: Option<(DeviceBuffer<bf16>, DeviceBuffer<bf16>)>,
    capacity: usize,
    len: usize,
}

impl std::fmt::Debug for CudaKvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaKvCache")
            .field("layers", &self.layers)
            .field("kv_dim", &self.kv_dim)
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl CudaKvCache {
    /// An empty cache for a model of this configuration (no GPU memory yet).
    pub fn new(config: &ModelConfig) -> CudaKvCache {
        CudaKvCache {
            layers: config.num_layers,
            kv_dim: config.num_kv_heads * config.head_dim,
            max_positions: config.max_position_embeddings,
            buffers: None,
            capacity: 0,
            len: 0,
        }
    }

    /// Tokens already in the cache (the position of the next one).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Layers of the model it belongs to.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Values per token and layer (kv_heads · head_dim).
    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// Positions the cache holds without growing.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A copy of this cache (its own GPU memory): a shared prefix computed once, continued
    /// differently by each copy.
    pub fn fork(&self, gpu: &CudaBackend) -> Result<CudaKvCache> {
        let buffers = match &self.buffers {
            Some((k, v)) => Some((gpu.copy(k)?, gpu.copy(v)?)),
            None => None,
        };
        Ok(CudaKvCache {
            layers: self.layers,
            kv_dim: self.kv_dim,
            max_positions: self.max_positions,
            buffers,
            capacity: self.capacity,
            len: self.len,
        })
    }

    /// Forgets every token, keeping the memory.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Makes room for `needed` positions: doubles (at least to 64, at most to the model's
    /// context unless more is needed) and copies what is there.
    fn reserve(&mut self, gpu: &CudaBackend, needed: usize) -> Result<()> {
        if needed <= self.capacity {
            return Ok(());
        }
        let cap = (self.capacity * 2)
            .max(MIN_CAPACITY)
            .min(self.max_positions.max(1))
            .max(needed);
        let size = match self
            .layers
            .checked_mul(cap)
            .and_then(|x| x.checked_mul(self.kv_dim))
        {
            Some(s) => s.max(1),
            None => bail!("KV cache of {cap} positions: too large"),
        };
        let mut k = gpu.alloc::<bf16>(size)?;
        let mut v = gpu.alloc::<bf16>(size)?;
        if let (Some((old_k, old_v)), true) = (&self.buffers, self.len > 0) {
            let n = self.len * self.kv_dim;
            for layer in 0..self.layers {
                let src = layer * self.capacity * self.kv_dim;
                let dst = layer * cap * self.kv_dim;
                for (from, to) in [(old_k, &mut k), (old_v, &mut v)] {
                    gpu.stream()
                        .memcpy_dtod(
                            &from.slice.slice(src..src + n),
                            &mut to.slice.slice_mut(dst..dst + n),
                        )
                        .map_err(|e| driver_error("growing a KV cache", e))?;
                }
            }
        }
        self.buffers = Some((k, v));
        self.capacity = cap;
        Ok(())
    }

    /// Layer `layer`'s keys and values, each `[len, kv_heads, head_dim]` (for tests).
    pub fn download_layer(
        &self,
        gpu: &CudaBackend,
        layer: usize,
    ) -> Result<(Vec<bf16>, Vec<bf16>)> {
        if layer >= self.layers {
            bail!("KV cache: layer {layer} of {}", self.layers);
        }
        let Some((k, v)) = &self.buffers else {
            return Ok((Vec::new(), Vec::new()));
        };
        if self.len == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let off = layer * self.capacity * self.kv_dim;
        let n = self.len * self.kv_dim;
        let mut out = Vec::with_capacity(2);
        for buffer in [k, v] {
            let raw = gpu
                .stream()
                .clone_dtoh(&buffer.slice.slice(off..off + n))
                .map_err(|e| driver_error("copying a KV cache from the GPU", e))?;
            gpu.synchronize()?;
            out.push(raw.into_iter().map(bf16::from_bits).collect::<Vec<_>>());
        }
        let v = out.pop().unwrap_or_default();
        let k = out.pop().unwrap_or_default();
        Ok((k, v))
    }
}

/// The device-side tables of a [`KvBatch`]: per row its sequence and position, per sequence
/// its cache's K address, V address and capacity. The kernels read them from device memory at
/// run time, never as launch arguments, so a captured decode step (a CUDA graph, decode_graph.rs)
/// serves any caches: each replay overwrites the same tables.
pub struct KvTables {
    row_seq: DeviceBuffer<u32>,
    positions: DeviceBuffer<u32>,
    table: CudaSlice<u64>,
    rows: usize,
    sequences: usize,
}

impl KvTables {
    /// Tables for `rows` rows of `sequences` sequences (contents unset until a [`KvBatch`]
    /// fills them).
    pub fn new(gpu: &CudaBackend, rows: usize, sequences: usize) -> Result<KvTables> {
        // SAFETY: u64 has no invalid bit patterns, and KvBatch overwrites the table before any
        // kernel reads it.
        let table = unsafe { gpu.stream().alloc::<u64>(3 * sequences.max(1)) }
            .map_err(|e| driver_error("allocating the KV table", e))?;
        Ok(KvTables {
            row_seq: gpu.alloc(rows.max(1))?,
            positions: gpu.alloc(rows.max(1))?,
            table,
            rows,
            sequences,
        })
    }
}

/// The caches of one forward pass over a ragged batch (see the module docs). Borrows the caches
/// until [`KvBatch::finish`], so none can grow or be dropped while kernels hold their addresses.
pub struct KvBatch<'c> {
    caches: Vec<&'c mut CudaKvCache>,
    new_tokens: Vec<usize>,
    /// First row of each sequence.
    starts: Vec<usize>,
    rows: usize,
    layers: usize,
    kv_dim: usize,
    tables: KvTables,
}

impl<'c> KvBatch<'c> {
    /// Reserves room for `new_tokens[i]` more tokens in `caches[i]` (all of one model, each
    /// with at least one new token) and uploads the tables of the batch's rows: sequence 0's
    /// new tokens first, then sequence 1's, and so on.
    pub fn new(
        gpu: &CudaBackend,
        caches: Vec<&'c mut CudaKvCache>,
        new_tokens: &[usize],
    ) -> Result<KvBatch<'c>> {
        let rows = new_tokens.iter().sum();
        let tables = KvTables::new(gpu, rows, new_tokens.len())?;
        KvBatch::with_tables(gpu, caches, new_tokens, tables)
    }

    /// [`KvBatch::new`] writing into tables already on the GPU (sized for exactly this batch's
    /// rows and sequences); [`KvBatch::finish`] hands them back.
    pub fn with_tables(
        gpu: &CudaBackend,
        caches: Vec<&'c mut CudaKvCache>,
        new_tokens: &[usize],
        mut tables: KvTables,
    ) -> Result<KvBatch<'c>> {
        if caches.len() != new_tokens.len() {
            bail!(
                "KV batch: {} caches for {} sequences",
                caches.len(),
                new_tokens.len()
            );
        }
        let Some(first) = caches.first() else {
            bail!("KV batch: no sequence");
        };
        let (layers, kv_dim) = (first.layers, first.kv_dim);
        let mut caches = caches;
        let mut row_seq = Vec::new();
        let mut positions = Vec::new();
        let mut starts = Vec::with_capacity(caches.len());
        let mut table = Vec::with_capacity(3 * caches.len());
        for (s, (cache, &n)) in caches.iter_mut().zip(new_tokens).enumerate() {
            if (cache.layers, cache.kv_dim) != (layers, kv_dim) {
                bail!("KV batch: caches of different models in one batch");
            }
            if n == 0 {
                bail!("KV batch: sequence {s} has no new tokens");
            }
            let end = cache.len + n;
            if u32::try_from(end).is_err() {
                bail!("KV batch: sequence {s} would reach position {end}");
            }
            cache.reserve(gpu, end)?;
            starts.push(row_seq.len());
            row_seq.extend(std::iter::repeat_n(s as u32, n));
            positions.extend(cache.len as u32..end as u32);
            let Some((k, v)) = &cache.buffers else {
                bail!("KV batch: sequence {s}'s cache has no memory after reserving");
            };
            let (k_ptr, _) = k.slice.device_ptr(gpu.stream());
            let (v_ptr, _) = v.slice.device_ptr(gpu.stream());
            table.extend([k_ptr, v_ptr, cache.capacity as u64]);
        }
        let rows = row_seq.len();
        as_int("model_kv_append", "rows", rows)?;
        if (tables.rows, tables.sequences) != (rows, caches.len()) {
            bail!(
                "KV batch: tables for {} rows of {} sequences, the batch has {rows} rows of {}",
                tables.rows,
                tables.sequences,
                caches.len()
            );
        }
        gpu.upload_into(&row_seq, &mut tables.row_seq)?;
        gpu.upload_into(&positions, &mut tables.positions)?;
        gpu.stream()
            .memcpy_htod(&table, &mut tables.table)
            .map_err(|e| driver_error("copying the KV table to the GPU", e))?;
        Ok(KvBatch {
            caches,
            new_tokens: new_tokens.to_vec(),
            starts,
            rows,
            layers,
            kv_dim,
            tables,
        })
    }

    /// Rows of the batch (new tokens of all sequences).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Each row's position in its sequence (RoPE's positions).
    pub fn positions(&self) -> &DeviceBuffer<u32> {
        &self.tables.positions
    }

    pub fn sequences(&self) -> usize {
        self.caches.len()
    }

    /// The rows of sequence `s`: its first row and its number of new tokens.
    pub fn sequence_rows(&self, s: usize) -> (usize, usize) {
        (self.starts[s], self.new_tokens[s])
    }

    /// Tokens in sequence `s`'s cache before this batch.
    pub fn past(&self, s: usize) -> usize {
        self.caches[s].len
    }

    /// Counts the new tokens into the caches' lengths (after every layer appended them) and
    /// hands back the tables, for the next batch of the same size to reuse.
    pub fn finish(self) -> KvTables {
        for (cache, n) in self.caches.into_iter().zip(self.new_tokens) {
            cache.len += n;
        }
        self.tables
    }
}

/// How [`CudaBackend::cached_attention_split`] spreads each (row, head)'s keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySplit {
    /// One warp walks all the keys (many rows: the warps fill the GPU).
    None,
    /// The keys are split over the 8 warps of one block and the parts combined (few rows).
    Warps,
}

/// Row indices on the GPU, each checked to be below `bound` (the rows of the batch they index).
pub struct RowList {
    rows: DeviceBuffer<u32>,
    len: usize,
    bound: usize,
}

impl RowList {
    pub fn new(gpu: &CudaBackend, rows: &[u32], bound: usize) -> Result<RowList> {
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= bound) {
            bail!("row list: row {bad} of {bound}");
        }
        // Never an empty allocation: an empty list keeps one unused element.
        let host: &[u32] = if rows.is_empty() { &[0] } else { rows };
        Ok(RowList {
            rows: gpu.upload(host)?,
            len: rows.len(),
            bound,
        })
    }

    /// 0, 1, …, n − 1.
    pub fn all(gpu: &CudaBackend, n: usize) -> Result<RowList> {
        let rows: Vec<u32> = (0..n as u32).collect();
        RowList::new(gpu, &rows, n)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The indices on the GPU (one unused element when empty).
    pub fn device(&self) -> &DeviceBuffer<u32> {
        &self.rows
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
    /// softmax and sums in f32. Any even head_dim up to 256. With few (row, head) pairs (fewer
    /// than 8 per multiprocessor, e.g. a decode step of a small batch) each pair's keys are
    /// split over the 8 warps of a block ([`KeySplit::Warps`]); otherwise one warp takes them
    /// all.
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
    ) -> Result<()> {
        let pairs = rows.len.saturating_mul(heads);
        let split = if pairs < 8 * self.multiprocessors as usize {
            KeySplit::Warps
        } else {
            KeySplit::None
        };
        self.cached_attention_split(batch, layer, q, heads, head_dim, rows, out, split)
    }

    /// [`CudaBackend::cached_attention`] with the kernel chosen by the caller (the tests check
    /// both on the same inputs).
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
        let pairs = rows.len.saturating_mul(heads);
        let threads = match split {
            KeySplit::None => pairs.saturating_mul(32),
            KeySplit::Warps => pairs,
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
            KeySplit::None => {
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
