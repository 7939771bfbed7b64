//! A decode step as one CUDA graph. Greedy decoding of a 7B model at batch 1 moves ~13.5 GB of
//! weights per token (≥ 4 ms on an H100), but the step was ~450 kernel launches (14 per layer plus
//! the embedding, the final norm and the head): launched one by one from the host, their ~5 µs
//! each are a large share of the step. Captured once per batch size and replayed, the step is a
//! single launch (benches/NOTES.md, "Decode step as a CUDA graph"). With the fused weights
//! (fused.rs) a Llama layer is 9 kernels (norm, QKV product, RoPE + KV append, attention, output
//! product, norm, gate|up product, SwiGLU, down product), 292 for a 32-layer step; with the norms
//! inside the products at up to 8 rows (mod.rs), 7 per layer and 227 for the step.
//!
//! What makes one graph serve every step of every sequence:
//! - the step's activations, token ids, row lists, final-norm rows and logits live in buffers
//!   owned by the graph (no allocation inside it);
//! - the KV tables (per row its sequence and position, per sequence its cache's addresses and
//!   capacity, [`KvTables`]) are device memory the kernels read when they run, so each replay
//!   first overwrites them with the current step's: caches may grow (and move) between steps,
//!   and sequences may join and leave the batch (continuous batching);
//! - the attention kernel loops over each row's keys up to the position it reads, so the
//!   number of keys is not baked into the launch.
//!
//! Each batch size's graph keeps its own buffers (~260 KB per row for a 7B model), so the graphs
//! share a memory budget ([`CudaTransformer::decode_graph_budget`]) and the least recently used
//! are dropped beyond it; a batch shrinking one sequence at a time under continuous batching
//! would otherwise keep a graph of every size it passed.
//!
//! Around each replay, on the host: the ids and the tables are copied in (before), the caches'
//! lengths advanced and the logits copied out (after). Every step runs the same kernels with the
//! same inputs as [`CudaTransformer::forward`]'s eager path (decode rows never take flash
//! attention), so its logits are the same bit for bit (tests/cuda_generate.rs).

use super::{
    split_rows, Activations, CudaKvCache, CudaTransformer, GreedyPicks, KvBatch, Prefill, RowList,
};
use crate::backend::cuda::{
    driver_error, gemm_choice, CudaBackend, DeviceBuffer, GemmChoice, KvTables, SplitKvWorkspace,
};
use crate::bail;
use crate::error::Result;
use crate::model::ModelConfig;
use cudarc::driver::{sys, CudaGraph};
use half::bf16;

/// Largest batch whose decode steps are captured; larger ones launch kernel by kernel (their
/// launch overhead is small beside their GEMMs).
pub const MAX_GRAPH_BATCH: usize = 256;

/// Environment variable: MiB of device memory the captured steps' buffers may hold.
pub const GRAPH_BUDGET_ENV: &str = "IMPLICIT_CUDA_GRAPH_MIB";

/// [`CudaTransformer::decode_graph_budget`] from `IMPLICIT_CUDA_GRAPH_MIB` (1024 MiB unset).
pub fn budget_from_env() -> Result<usize> {
    let mib = match std::env::var(GRAPH_BUDGET_ENV) {
        Err(_) => 1024,
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(mib) => mib,
            Err(_) => bail!("{GRAPH_BUDGET_ENV}={v:?}: expected a whole number of MiB"),
        },
    };
    Ok(mib.saturating_mul(1 << 20))
}

/// Bytes of the buffers [`DecodeGraph::new`] allocates for `batch` rows (the activations with
/// the split-KV attention's workspace, the logits, the tables and the picks; the graph itself
/// is small beside them).
fn graph_bytes(gpu: &CudaBackend, c: &ModelConfig, batch: usize) -> usize {
    let split_kv = SplitKvWorkspace::decode_bytes(
        gpu,
        batch,
        c.num_heads,
        c.head_dim,
        c.max_position_embeddings,
    );
    let (d, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (q_dim, kv_dim) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    // Per row: ids, x (f32), h, qkv, q, k, v, attn, gate_up, act (bf16), normed (bf16),
    // logits (f32), the KV tables' and the picks' few words.
    let qkv = q_dim + 2 * kv_dim;
    let per_row = 4 + 4 * d + 2 * d + 2 * qkv + 4 * q_dim + 4 * kv_dim + 6 * f + 2 * d + 4 * v + 64;
    batch
        .saturating_mul(per_row)
        .saturating_add(4 * v)
        .saturating_add(split_kv)
}

/// One captured decode step of `batch` sequences and the buffers it reads and writes.
pub struct DecodeGraph {
    /// Declared first: dropped before the buffers it uses.
    graph: Option<CudaGraph>,
    /// The model's graph clock at its last replay (the least recent goes first).
    last_used: u64,
    acts: Activations,
    /// None only while lent to the step's [`KvBatch`].
    tables: Option<KvTables>,
    /// 0..batch: every row is a plain-attention row and a logits row.
    rows: RowList,
    normed: DeviceBuffer<bf16>,
    logits: DeviceBuffer<f32>,
    /// Each row's greedy token and log-probability, computed from `logits` in the same graph
    /// (a few microseconds beside the step) whether or not the caller wants them.
    picks: GreedyPicks,
}

/// What a graphed decode step hands back.
pub enum DecodeOutput {
    /// Each sequence's logits (`[vocab]`).
    Logits(Vec<Vec<f32>>),
    /// Each sequence's greedy token and its log-probability.
    Greedy(Vec<(u32, f32)>),
}

impl DecodeGraph {
    fn new(gpu: &CudaBackend, model: &CudaTransformer<'_>, batch: usize) -> Result<DecodeGraph> {
        let c = &model.config;
        Ok(DecodeGraph {
            graph: None,
            last_used: 0,
            acts: Activations::new(gpu, c, batch)?,
            tables: Some(KvTables::new(gpu, batch, batch)?),
            rows: RowList::all(gpu, batch)?,
            normed: gpu.alloc(batch * c.hidden_size)?,
            logits: gpu.alloc(batch * c.vocab_size)?,
            picks: GreedyPicks::new(gpu, batch, c.vocab_size)?,
        })
    }
}

impl CudaTransformer<'_> {
    /// The batch sizes whose decode step has been captured, ascending.
    pub fn captured_batch_sizes(&self) -> Vec<usize> {
        let mut sizes: Vec<usize> = self
            .graphs
            .iter()
            .filter(|(_, g)| g.graph.is_some())
            .map(|(&b, _)| b)
            .collect();
        sizes.sort_unstable();
        sizes
    }

    /// Drops every captured decode step and its buffers (the next steps capture again).
    pub fn clear_decode_graphs(&mut self) {
        self.graphs.clear();
    }

    /// Drops the least recently used graphs until `bytes` more fit in
    /// [`CudaTransformer::decode_graph_budget`], or none is left (the step being graphed gets
    /// its graph whatever the budget).
    fn make_room_for_graph(&mut self, bytes: usize) {
        let (gpu, c) = (self.gpu, &self.config);
        let mut held: usize = self.graphs.keys().map(|&b| graph_bytes(gpu, c, b)).sum();
        while held.saturating_add(bytes) > self.decode_graph_budget {
            let oldest = self.graphs.iter().min_by_key(|(_, g)| g.last_used);
            let Some(oldest) = oldest.map(|(&b, _)| b) else {
                break;
            };
            self.graphs.remove(&oldest);
            held -= graph_bytes(gpu, c, oldest);
        }
    }

    /// A decode step (one new token per sequence; the batch already checked) through the graph
    /// for this batch size, captured first if there is none: each sequence's logits, or with
    /// `greedy` only its greedy token and log-probability. None, for the caller to run the
    /// step eagerly, when it is not a decode step, graphs are off
    /// ([`CudaTransformer::decode_graphs`]), the batch is over [`MAX_GRAPH_BATCH`], or the
    /// capture failed (which turns graphs off).
    pub(super) fn decode_step_graphed(
        &mut self,
        batch: &mut [(&[u32], &mut CudaKvCache)],
        greedy: bool,
    ) -> Result<Option<DecodeOutput>> {
        let gpu = self.gpu;
        let b = batch.len();
        let decode_step = batch.iter().all(|(t, _)| t.len() == 1);
        if !decode_step || !self.decode_graphs || b == 0 || b > MAX_GRAPH_BATCH {
            return Ok(None);
        }
        let ids: Vec<u32> = batch.iter().map(|(t, _)| t[0]).collect();
        // Taken out of the map while in use; an error drops it, and the next step recaptures.
        let mut step = match self.graphs.remove(&b) {
            Some(step) => step,
            None => {
                self.make_room_for_graph(graph_bytes(gpu, &self.config, b));
                DecodeGraph::new(gpu, self, b)?
            }
        };
        self.graph_clock += 1;
        step.last_used = self.graph_clock;
        gpu.upload_into(&ids, &mut step.acts.ids)?;
        let Some(tables) = step.tables.take() else {
            bail!("decode graph of batch {b}: its KV tables were not handed back");
        };
        let caches: Vec<&mut CudaKvCache> = batch.iter_mut().map(|(_, c)| &mut **c).collect();
        let kv = KvBatch::with_tables(gpu, caches, &vec![1; b], tables)?;
        if step.graph.is_none() {
            match self.capture(&mut step, &kv) {
                Ok(graph) => step.graph = Some(graph),
                Err(e) => {
                    // Nothing ran (a capture records without running, and the caches only
                    // advance in `finish`): the caller can take the eager path for this step
                    // and all later ones, so a capture the driver refuses slows decoding
                    // instead of ending it.
                    eprintln!("warning: {e}; decoding without CUDA graphs from here on");
                    self.decode_graphs = false;
                    return Ok(None);
                }
            }
        }
        if let Some(graph) = &step.graph {
            graph.launch().map_err(|e| {
                driver_error(&format!("replaying the decode graph of batch {b}"), e)
            })?;
        }
        step.tables = Some(kv.finish());
        let out = if greedy {
            DecodeOutput::Greedy(step.picks.download(gpu)?)
        } else {
            let flat = gpu.download(&step.logits)?;
            DecodeOutput::Logits(split_rows(&flat, self.config.vocab_size, &vec![1; b]))
        };
        self.graphs.insert(b, step);
        Ok(Some(out))
    }

    /// Records the step's launches (the layers, the final norm and the head) into a graph; the
    /// stream runs nothing while capturing.
    fn capture(&self, step: &mut DecodeGraph, kv: &KvBatch<'_>) -> Result<CudaGraph> {
        let gpu = self.gpu;
        let b = kv.rows();
        // Allocations and host copies cannot be captured: make RoPE's frequency table (built
        // at its first use) exist before.
        gpu.rope_inv_freq(self.config.rope_theta, self.config.head_dim)?;
        // Likewise the wgmma GEMM's one-time probe: run inside the capture it would be
        // refused, and the graph would keep the mma.sync GEMM while eager steps take wgmma.
        if gemm_choice()? == GemmChoice::Wgmma {
            // Unavailable is an answer too: every GEMM then takes kernels/gemm.cu.
            let _ = gpu.wgmma_available();
        }
        let stream = gpu.stream();
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| {
                driver_error(
                    &format!("starting to capture a decode step of batch {b}"),
                    e,
                )
            })?;
        let mut no_flash = Prefill::PerSequence(vec![false; b]);
        let DecodeGraph {
            acts,
            rows,
            normed,
            logits,
            picks,
            ..
        } = step;
        let recorded = self
            .run_layers(acts, kv, rows, rows, &mut no_flash)
            .and_then(|()| self.lm_head(&acts.x, rows, normed, logits))
            .and_then(|()| picks.compute(gpu, logits));
        // Always end the capture, so that the stream works again whatever happened.
        let ended = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        recorded.map_err(|e| {
            crate::Error(format!(
                "capturing the decode step of batch {b} as a CUDA graph: {e} (IMPLICIT_CUDA_GRAPHS=0 decodes without graphs)"
            ))
        })?;
        match ended {
            Ok(Some(graph)) => Ok(graph),
            Ok(None) => bail!("capturing the decode step of batch {b}: the graph is empty"),
            Err(e) => Err(driver_error(
                &format!(
                    "capturing the decode step of batch {b} (IMPLICIT_CUDA_GRAPHS=0 decodes without graphs)"
                ),
                e,
            )),
        }
    }
}
