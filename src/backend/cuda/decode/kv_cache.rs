//! The KV cache on the GPU (the attention over it is launched from cached_attention.rs:
//! kernels/cached_attention.cu, and kernels/flash_attention.cu for prefill): each sequence's keys and values stay on the GPU as
//! bf16 `[layers, capacity, kv_heads, head_dim]`, growing geometrically (doubling, from 64
//! positions, up to the model's context) and copied over when they grow.
//!
//! A forward pass over a ragged batch of sequences builds one [`KvBatch`]: it reserves room for
//! the new tokens in every cache and uploads the per-row sequence and position, and a table of
//! each sequence's cache (addresses and capacity), so that one launch appends the new k, v rows
//! of every sequence ([`CudaBackend::kv_append`]) and one attends every row to its own
//! sequence's keys ([`CudaBackend::cached_attention`]). [`KvBatch::finish`] then advances the
//! caches' lengths. Reference: `backend::cpu::attention::causal_attention`.

use super::super::{as_int, driver_error, CudaBackend, DeviceBuffer};
use crate::bail;
use crate::error::Result;
use cudarc::driver::{CudaSlice, DevicePtr};
use half::bf16;

/// Positions a cache gets at its first use; it then doubles, up to the model's context.
const MIN_CAPACITY: usize = 64;

/// Largest head dimension of the plain attention kernel (4 pairs per lane).
pub const MAX_HEAD_DIM: usize = 256;

/// What a [`CudaKvCache`] holds per token and how far it may grow: `model::cuda` makes one from
/// a `ModelConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheShape {
    pub layers: usize,
    /// Values per token and layer (kv_heads · head_dim).
    pub kv_dim: usize,
    /// The model's context: a cache grows (doubling) at most to it unless more is needed.
    pub max_positions: usize,
}

/// Keys and values of one sequence on the GPU, per layer (bf16). Empty until its first forward.
pub struct CudaKvCache {
    pub(in crate::backend::cuda) layers: usize,
    pub(in crate::backend::cuda) kv_dim: usize,
    pub(in crate::backend::cuda) max_positions: usize,
    /// K and V, each `[layers, capacity, kv_dim]`.
    pub(in crate::backend::cuda) buffers: Option<(DeviceBuffer<bf16>, DeviceBuffer<bf16>)>,
    pub(in crate::backend::cuda) capacity: usize,
    pub(in crate::backend::cuda) len: usize,
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
    /// An empty cache for a model of this shape (no GPU memory yet).
    pub fn new(shape: impl Into<KvCacheShape>) -> CudaKvCache {
        let KvCacheShape {
            layers,
            kv_dim,
            max_positions,
        } = shape.into();
        CudaKvCache {
            layers,
            kv_dim,
            max_positions,
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
    pub(in crate::backend::cuda) row_seq: DeviceBuffer<u32>,
    pub(in crate::backend::cuda) positions: DeviceBuffer<u32>,
    pub(in crate::backend::cuda) table: CudaSlice<u64>,
    pub(in crate::backend::cuda) rows: usize,
    pub(in crate::backend::cuda) sequences: usize,
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
    pub(in crate::backend::cuda) caches: Vec<&'c mut CudaKvCache>,
    pub(in crate::backend::cuda) new_tokens: Vec<usize>,
    /// First row of each sequence.
    pub(in crate::backend::cuda) starts: Vec<usize>,
    pub(in crate::backend::cuda) rows: usize,
    pub(in crate::backend::cuda) layers: usize,
    pub(in crate::backend::cuda) kv_dim: usize,
    pub(in crate::backend::cuda) tables: KvTables,
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

/// Row indices on the GPU, each checked to be below `bound` (the rows of the batch they index).
pub struct RowList {
    pub(in crate::backend::cuda) rows: DeviceBuffer<u32>,
    pub(in crate::backend::cuda) len: usize,
    pub(in crate::backend::cuda) bound: usize,
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
