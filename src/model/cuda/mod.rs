//! The whole model's forward pass on the GPU: [`CudaTransformer`] mirrors
//! `model::Transformer::forward` (Llama and OLMo, ragged batches, a KV cache per sequence),
//! with bf16 weights and bf16 matrix-product inputs on the tensor cores, the residual stream
//! and every norm, softmax and accumulation in f32.
//!
//! At load each layer's Wq, Wk, Wv become one `[q_dim + 2·kv_dim, hidden]` matrix and Wg, Wu
//! one `[2·ffn, hidden]` (fused.rs), so that a step reads each layer's attention-input and
//! FFN-input weights in one product (one pass over the weights, one launch) for any number of
//! rows, and the kernels after each product read slices of its rows in place.
//!
//! Per layer: h = norm(x) (bf16) → [q|k|v] = h·W_qkvᵀ (bf16 GEMM, bf16 out) → OLMo's clamp →
//! RoPE on q (into a contiguous q) and on k, k and v appended to each sequence's cache (one
//! kernel) → causal GQA attention (flash attention for prefill when head_dim is 64 or 128: one
//! launch over the whole batch when every sequence starts from an empty cache with the same
//! number of tokens, else one per sequence; the plain kernel otherwise and for every decode
//! row) → x += attn·Woᵀ (the GEMM accumulates into the f32 residual) → h = norm(x) →
//! [g|u] = h·W_guᵀ → silu(g) ⊙ u → x += act·Wdᵀ. Then the final norm of only the rows whose
//! logits are wanted, and the LM head (the embedding when tied) in f32.
//!
//! With at most `GEMV_MAX_ROWS` rows (a decode step of up to 8 sequences) each norm runs inside
//! the product after it (`CudaBackend::norm_gemm_bf16`: the GEMV normalises x itself, bit for
//! bit as the norm kernel would), two launches fewer per layer and one before the LM head,
//! unless [`CudaTransformer::set_fused_norms`] (or `IMPLICIT_FUSED_NORMS=0`) turns that off.

mod decode_graph;
mod fused;
mod greedy;

use decode_graph::{DecodeGraph, DecodeOutput};
use fused::{CudaLayer, Prefill};
use greedy::GreedyPicks;

use crate::backend::cpu::attention::AttentionShape;
use crate::backend::cpu::parallel::parallel_chunks_mut;
use crate::backend::cuda::{
    CudaBackend, CudaKvCache, DeviceBuffer, Float, GemmLayout, KvBatch, KvCacheShape, NormedRows,
    QkvOutputs, RowList, RowNorm, SplitKvWorkspace, MAX_HEAD_DIM,
};
use crate::bail;
use crate::error::Result;
use crate::io::safetensors::WeightStore;
use crate::model::weights::load_weights;
use crate::model::{Logits, ModelConfig, Transformer};
use crate::tensor::{Elems, Tensor};
use half::bf16;
use std::path::Path;

impl From<&ModelConfig> for KvCacheShape {
    fn from(config: &ModelConfig) -> KvCacheShape {
        KvCacheShape {
            layers: config.num_layers,
            kv_dim: config.num_kv_heads * config.head_dim,
            max_positions: config.max_position_embeddings,
        }
    }
}

/// Environment variable: `0` runs the norms before decode products as separate launches
/// ([`CudaTransformer::set_fused_norms`]).
pub const FUSED_NORMS_ENV: &str = "IMPLICIT_FUSED_NORMS";

/// Which attention kernel a forward pass uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionPath {
    /// Flash attention for a sequence's prefill (2 or more new tokens) when head_dim is 64 or
    /// 128; the plain kernel otherwise and for decode steps.
    Auto,
    /// The plain kernel for every row (any even head_dim up to 256).
    Plain,
}

/// A Llama or OLMo model on the GPU (see the module docs).
pub struct CudaTransformer<'g> {
    gpu: &'g CudaBackend,
    pub config: ModelConfig,
    /// Which attention kernel to use; [`AttentionPath::Auto`] unless changed.
    pub attention: AttentionPath,
    /// Whether decode steps replay CUDA graphs (decode_graph.rs): on unless
    /// `IMPLICIT_CUDA_GRAPHS=0`.
    pub decode_graphs: bool,
    /// Device memory the captured steps' own buffers may hold (about 260 KB per row for a
    /// 7B model, so every batch size up to 256 would take ~8.5 GB): beyond it the least
    /// recently used graphs are dropped. `IMPLICIT_CUDA_GRAPH_MIB`, 1024 MiB by default.
    pub decode_graph_budget: usize,
    /// Whether the norms before the products of at most `GEMV_MAX_ROWS` rows run inside them
    /// ([`CudaTransformer::set_fused_norms`]).
    fuse_norms: bool,
    /// One captured decode step per batch size. Declared before the weights, so that the
    /// graphs, which hold the weights' addresses, go first.
    graphs: std::collections::HashMap<usize, DecodeGraph>,
    /// Counts graphed steps: each graph's last use, for eviction.
    graph_clock: u64,
    embed_tokens: DeviceBuffer<bf16>,
    layers: Vec<CudaLayer>,
    final_norm: Option<DeviceBuffer<f32>>,
    /// `[vocab, hidden]`; None when tied to the embedding.
    lm_head: Option<DeviceBuffer<bf16>>,
}

impl std::fmt::Debug for CudaTransformer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaTransformer")
            .field("gpu", self.gpu)
            .field("config", &self.config)
            .field("attention", &self.attention)
            .field("decode_graphs", &self.decode_graphs)
            .field("decode_graph_budget", &self.decode_graph_budget)
            .field("fuse_norms", &self.fuse_norms)
            .field("captured_batch_sizes", &self.captured_batch_sizes())
            .finish()
    }
}

/// A weight as bf16 on the GPU, whatever its dtype in the checkpoint (f32 and f16 rounded to
/// nearest even).
pub(crate) fn upload_bf16(gpu: &CudaBackend, t: &Tensor) -> Result<DeviceBuffer<bf16>> {
    let t = if t.is_contiguous() {
        t.clone()
    } else {
        t.contiguous()
    };
    match t.elems()? {
        Elems::BF16(s) => gpu.upload(s),
        elems => {
            let mut out = vec![bf16::ZERO; elems.len()];
            parallel_chunks_mut(&mut out, 1 << 16, |i, chunk| {
                let start = i << 16;
                for (j, o) in chunk.iter_mut().enumerate() {
                    *o = bf16::from_f32(elems.get(start + j));
                }
            });
            gpu.upload(&out)
        }
    }
}

impl<'g> CudaTransformer<'g> {
    /// Uploads the weights of a model loaded on the CPU (read again from its folder's
    /// safetensors, which are memory-mapped).
    pub fn load(gpu: &'g CudaBackend, model: &Transformer) -> Result<CudaTransformer<'g>> {
        let store = WeightStore::open(&model.path)?;
        CudaTransformer::from_store(gpu, model.config.clone(), &store, &model.path)
    }

    /// Loads config.json and the safetensors weights of a Hugging Face model folder onto the
    /// GPU.
    pub fn from_dir(gpu: &'g CudaBackend, dir: &Path) -> Result<CudaTransformer<'g>> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let store = WeightStore::open(dir)?;
        CudaTransformer::from_store(gpu, config, &store, dir)
    }

    /// The same tensors, names and shape checks as `Transformer::from_store` (both read them
    /// through [`load_weights`]).
    pub fn from_store(
        gpu: &'g CudaBackend,
        config: ModelConfig,
        store: &WeightStore,
        dir: &Path,
    ) -> Result<CudaTransformer<'g>> {
        let c = &config;
        if c.head_dim > MAX_HEAD_DIM {
            bail!(
                "{}: head_dim {} is more than the CUDA attention's {MAX_HEAD_DIM}",
                dir.display(),
                c.head_dim
            );
        }
        let w = load_weights(
            &config,
            store,
            dir,
            |t| upload_bf16(gpu, &t),
            |norm| gpu.upload(&norm),
        )?;
        // Layer by layer, so that at most one layer's weights are held twice.
        let layers = w
            .layers
            .into_iter()
            .map(|layer| CudaLayer::fuse(gpu, layer))
            .collect::<Result<Vec<_>>>()?;
        gpu.synchronize()?;
        Ok(CudaTransformer {
            gpu,
            config,
            attention: AttentionPath::Auto,
            decode_graphs: std::env::var("IMPLICIT_CUDA_GRAPHS").map_or(true, |v| v != "0"),
            decode_graph_budget: decode_graph::budget_from_env()?,
            fuse_norms: std::env::var(FUSED_NORMS_ENV).map_or(true, |v| v != "0"),
            graphs: std::collections::HashMap::new(),
            graph_clock: 0,
            embed_tokens: w.embed_tokens,
            layers,
            final_norm: w.final_norm,
            lm_head: w.lm_head,
        })
    }

    /// The backend the weights live on.
    pub fn gpu(&self) -> &'g CudaBackend {
        self.gpu
    }

    /// Whether the norms before the products of decode-sized batches (at most `GEMV_MAX_ROWS`
    /// rows) run inside those products: on unless `IMPLICIT_FUSED_NORMS=0`.
    pub fn fused_norms(&self) -> bool {
        self.fuse_norms
    }

    /// Turns the fused norms on or off (the results are the same bits either way; off keeps
    /// the separate norm launches, to compare). Drops the captured decode steps, which were
    /// recorded with the other choice.
    pub fn set_fused_norms(&mut self, on: bool) {
        if on != self.fuse_norms {
            self.fuse_norms = on;
            self.clear_decode_graphs();
        }
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> CudaKvCache {
        CudaKvCache::new(&self.config)
    }

    fn norm<'a>(&self, weight: Option<&'a DeviceBuffer<f32>>) -> RowNorm<'a> {
        match weight {
            Some(w) => RowNorm::Rms(w),
            None => RowNorm::LayerNorm,
        }
    }

    /// y[rows, out] = norm(x[rows])·Wᵀ (W `[out, hidden]`, the norm with `weight` or OLMo's
    /// LayerNorm): one fused launch for up to `GEMV_MAX_ROWS` rows when
    /// [`CudaTransformer::fused_norms`], else the norm into `h` (bf16) and the product.
    fn norm_linear<O: Float>(
        &self,
        x: &DeviceBuffer<f32>,
        rows: &RowList,
        weight: Option<&DeviceBuffer<f32>>,
        h: &mut DeviceBuffer<bf16>,
        w: &DeviceBuffer<bf16>,
        y: &mut DeviceBuffer<O>,
    ) -> Result<()> {
        let input = NormedRows {
            x,
            dim: self.config.hidden_size,
            rows: rows.device(),
            norm: self.norm(weight),
            eps: self.config.norm_eps as f64,
        };
        self.gpu
            .norm_gemm_bf16(input, h, w, y, false, self.fuse_norms)
    }

    /// y[rows, out] = x[rows, inp] · Wᵀ for W `[out, inp]` (bf16 in, f32 sums; `O` out, added
    /// to y's contents when `accumulate`).
    fn linear<O: Float>(
        &self,
        x: &DeviceBuffer<bf16>,
        w: &DeviceBuffer<bf16>,
        (rows, inp): (usize, usize),
        y: &mut DeviceBuffer<O>,
        accumulate: bool,
    ) -> Result<()> {
        let out = w.len() / inp.max(1);
        self.gpu
            .gemm_bf16(GemmLayout::NT, rows, out, inp, 1, x, w, y, accumulate)
    }

    /// Runs the new tokens of each sequence through the model, appending to its GPU cache, and
    /// returns each sequence's logits (`[vocab]` for `Logits::Last`, `[tokens, vocab]` for
    /// `Logits::All`) or final-normed hidden states (`Logits::Hidden`), as
    /// `Transformer::forward` does. All sequences share one GEMM per weight. A decode step
    /// (one new token per sequence) replays a CUDA graph of the whole step when
    /// [`CudaTransformer::decode_graphs`] is on (decode_graph.rs); the arithmetic is the same.
    pub fn forward(
        &mut self,
        batch: &mut [(&[u32], &mut CudaKvCache)],
        want: Logits,
    ) -> Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.check_batch(batch)?;
        if want != Logits::Hidden {
            match self.decode_step_graphed(batch, false)? {
                Some(DecodeOutput::Logits(logits)) => return Ok(logits),
                Some(DecodeOutput::Greedy(_)) => bail!("decode graph: picks returned for logits"),
                None => {} // not a graphed step: eagerly, below
            }
        }
        let (out, width, per_seq) = self.forward_eager(batch, want)?;
        Ok(split_rows(&self.gpu.download(&out)?, width, &per_seq))
    }

    /// Each sequence's greedy next token after its new tokens (the argmax of its last logits,
    /// the lowest index on ties) and that token's log-probability, picked on the GPU
    /// (kernels/rule_adapter.cu with no rules): two numbers per sequence come back to the host
    /// instead of its logits. The same forward as [`CudaTransformer::forward`].
    pub fn forward_greedy(
        &mut self,
        batch: &mut [(&[u32], &mut CudaKvCache)],
    ) -> Result<Vec<(u32, f32)>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.check_batch(batch)?;
        match self.decode_step_graphed(batch, true)? {
            Some(DecodeOutput::Greedy(picks)) => return Ok(picks),
            Some(DecodeOutput::Logits(_)) => bail!("decode graph: logits returned for picks"),
            None => {} // not a graphed step: eagerly, below
        }
        let (logits, _, per_seq) = self.forward_eager(batch, Logits::Last)?;
        let mut picks = GreedyPicks::new(self.gpu, per_seq.len(), self.config.vocab_size)?;
        picks.compute(self.gpu, &logits)?;
        picks.download(self.gpu)
    }

    /// Every sequence has new tokens in the vocabulary, and a cache of this model's shape.
    fn check_batch(&self, batch: &[(&[u32], &mut CudaKvCache)]) -> Result<()> {
        let c = &self.config;
        let kv_dim = c.num_kv_heads * c.head_dim;
        for (tokens, cache) in batch.iter() {
            if tokens.is_empty() {
                bail!("forward: a sequence in the batch has no new tokens");
            }
            if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                bail!(
                    "token id {bad} is outside the vocabulary of {} tokens",
                    c.vocab_size
                );
            }
            if cache.layers() != c.num_layers || cache.kv_dim() != kv_dim {
                bail!(
                    "KV cache has {} layers of {} values per token, the model {} of {kv_dim}",
                    cache.layers(),
                    cache.kv_dim(),
                    c.num_layers
                );
            }
        }
        Ok(())
    }

    /// [`CudaTransformer::forward`] launch by launch, with activations allocated for this
    /// batch: the wanted rows' logits or hidden states on the GPU (`[rows, width]`), their
    /// width, and how many rows each sequence has.
    fn forward_eager(
        &mut self,
        batch: &mut [(&[u32], &mut CudaKvCache)],
        want: Logits,
    ) -> Result<(DeviceBuffer<f32>, usize, Vec<usize>)> {
        let gpu = self.gpu;
        let c = &self.config;
        let (d, hd) = (c.hidden_size, c.head_dim);
        let lens: Vec<usize> = batch.iter().map(|(t, _)| t.len()).collect();
        let total: usize = lens.iter().sum();
        let ids: Vec<u32> = batch.iter().flat_map(|(t, _)| t.iter().copied()).collect();
        let flash_ok = self.attention == AttentionPath::Auto && (hd == 64 || hd == 128);
        let flash: Vec<bool> = lens.iter().map(|&n| flash_ok && n >= 2).collect();
        // One flash attention launch over the batch when every sequence is a prefill of the
        // same length from an empty cache: q, k, v are then [batch, n, heads, head_dim].
        let uniform = lens.iter().all(|&n| n == lens[0]);
        let fresh = batch.iter().all(|(_, cache)| cache.is_empty());
        let batched = flash.iter().all(|&fl| fl) && uniform && fresh;
        let plain_rows: Vec<u32> = {
            let mut rows = Vec::new();
            let mut start = 0u32;
            for (&n, &fl) in lens.iter().zip(&flash) {
                if !fl {
                    rows.extend(start..start + n as u32);
                }
                start += n as u32;
            }
            rows
        };

        let caches: Vec<&mut CudaKvCache> = batch.iter_mut().map(|(_, c)| &mut **c).collect();
        let kv = KvBatch::new(gpu, caches, &lens)?;
        let all_rows = RowList::all(gpu, total)?;
        let plain = RowList::new(gpu, &plain_rows, total)?;
        let mut acts = Activations::new(gpu, c, total)?;
        gpu.upload_into(&ids, &mut acts.ids)?;
        let mut prefill = if batched {
            Prefill::batched(gpu, c, lens.len(), lens[0])?
        } else {
            Prefill::PerSequence(flash)
        };
        self.run_layers(&mut acts, &kv, &all_rows, &plain, &mut prefill)?;
        kv.finish();

        // Only the rows whose logits are wanted go through the final norm and the LM head.
        let (rows, per_seq): (Vec<u32>, Vec<usize>) = match want {
            Logits::All | Logits::Hidden => ((0..total as u32).collect(), lens),
            Logits::Last => {
                let mut end = 0;
                let rows = lens
                    .iter()
                    .map(|&n| {
                        end += n;
                        (end - 1) as u32
                    })
                    .collect();
                (rows, vec![1; batch.len()])
            }
        };
        let rows = RowList::new(gpu, &rows, total)?;
        let n = rows.len();
        if want == Logits::Hidden {
            let mut hidden = gpu.alloc::<f32>(n * d)?;
            let final_norm = self.norm(self.final_norm.as_ref());
            gpu.norm_rows(
                &acts.x,
                d,
                rows.device(),
                final_norm,
                c.norm_eps as f64,
                &mut hidden,
            )?;
            Ok((hidden, d, per_seq))
        } else {
            let mut normed = gpu.alloc::<bf16>(n * d)?;
            let mut logits = gpu.alloc::<f32>(n * c.vocab_size)?;
            self.lm_head(&acts.x, &rows, &mut normed, &mut logits)?;
            Ok((logits, c.vocab_size, per_seq))
        }
    }

    /// The embedding of `acts.ids` into the residual stream `acts.x`, then every layer (see the
    /// module docs): `plain` lists the rows the plain attention kernel serves, and `prefill`
    /// says which sequences go through flash attention (all at once, or each marked one).
    /// Launches only: no allocation and no copy from the host when no sequence takes flash
    /// attention, so that a decode step can be captured as a CUDA graph.
    fn run_layers(
        &self,
        acts: &mut Activations,
        kv: &KvBatch<'_>,
        all_rows: &RowList,
        plain: &RowList,
        prefill: &mut Prefill,
    ) -> Result<()> {
        let gpu = self.gpu;
        let c = &self.config;
        let (d, hd) = (c.hidden_size, c.head_dim);
        let (heads, kv_heads) = (c.num_heads, c.num_kv_heads);
        let q_dim = heads * hd;
        let total = kv.rows();
        let rope = c.rope_spec(heads);
        let Activations {
            ids,
            x,
            h,
            qkv,
            q,
            k,
            v,
            attn,
            gate_up,
            act,
            split_kv,
        } = acts;
        gpu.embedding_to_f32(ids, &self.embed_tokens, d, x)?;
        for (li, layer) in self.layers.iter().enumerate() {
            self.norm_linear(x, all_rows, layer.attn_norm.as_ref(), h, &layer.qkv, qkv)?;
            if let Some(clip) = c.clip_qkv {
                // q, k and v are all clamped: one launch over the fused rows.
                gpu.clamp_bf16(qkv, clip)?;
            }
            match prefill {
                Prefill::Batched { queries, lse } => {
                    let out = QkvOutputs {
                        q: &mut *q,
                        kv: Some((&mut *k, &mut *v)),
                    };
                    gpu.qkv_rope_append(kv, li, qkv, heads, rope, out)?;
                    let shape = AttentionShape {
                        queries: *queries,
                        keys: *queries,
                        heads,
                        kv_heads,
                        head_dim: hd,
                    };
                    let sequences = kv.sequences();
                    gpu.flash_attention_forward(shape, sequences, q, k, v, attn, lse)?;
                }
                Prefill::PerSequence(flash) => {
                    let out = QkvOutputs {
                        q: &mut *q,
                        kv: None,
                    };
                    gpu.qkv_rope_append(kv, li, qkv, heads, rope, out)?;
                    gpu.cached_attention(kv, li, q, heads, hd, plain, attn, split_kv.as_mut())?;
                    for (s, _) in flash.iter().enumerate().filter(|(_, &fl)| fl) {
                        gpu.cached_flash_attention(kv, li, s, q, heads, hd, attn)?;
                    }
                }
            }
            self.linear(attn, &layer.o_proj, (total, q_dim), x, true)?;
            self.norm_linear(
                x,
                all_rows,
                layer.mlp_norm.as_ref(),
                h,
                &layer.gate_up,
                gate_up,
            )?;
            gpu.swiglu_fused(gate_up, c.intermediate_size, act)?;
            self.linear(act, &layer.down_proj, (total, c.intermediate_size), x, true)?;
        }
        Ok(())
    }

    /// The final norm of the listed rows of the residual stream `x` into `normed` (bf16), and
    /// the LM head (the embedding when tied) into `logits` (`[rows, vocab]`, f32); one fused
    /// launch for up to `GEMV_MAX_ROWS` rows ([`CudaTransformer::norm_linear`]).
    fn lm_head(
        &self,
        x: &DeviceBuffer<f32>,
        rows: &RowList,
        normed: &mut DeviceBuffer<bf16>,
        logits: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        self.norm_linear(x, rows, self.final_norm.as_ref(), normed, head, logits)
    }

    /// Logits of every position of one sequence, from an empty cache: `[tokens, vocab]`.
    pub fn logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut cache = self.new_cache();
        Ok(self
            .forward(&mut [(tokens, &mut cache)], Logits::All)?
            .remove(0))
    }
}

/// The activations of one forward pass over `rows` rows: the token ids, the f32 residual
/// stream and the bf16 inputs and outputs of the matrix products.
struct Activations {
    ids: DeviceBuffer<u32>,
    x: DeviceBuffer<f32>,
    h: DeviceBuffer<bf16>,
    /// `[rows, q_dim + 2·kv_dim]`: the fused attention-input product.
    qkv: DeviceBuffer<bf16>,
    /// `[rows, q_dim]`: the rotated queries.
    q: DeviceBuffer<bf16>,
    /// `[rows, kv_dim]` each: the rotated keys and the values, written only for a batched
    /// flash-attention prefill.
    k: DeviceBuffer<bf16>,
    v: DeviceBuffer<bf16>,
    attn: DeviceBuffer<bf16>,
    /// `[rows, 2·ffn]`: the fused gate|up product.
    gate_up: DeviceBuffer<bf16>,
    act: DeviceBuffer<bf16>,
    /// The split-KV attention's parts when a step of `rows` rows splits its keys over blocks
    /// (fixed by the row count and the model's context, so a captured step keeps it).
    split_kv: Option<SplitKvWorkspace>,
}

impl Activations {
    fn new(gpu: &CudaBackend, c: &ModelConfig, rows: usize) -> Result<Activations> {
        let (d, f) = (c.hidden_size, c.intermediate_size);
        let (q_dim, kv_dim) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        Ok(Activations {
            ids: gpu.alloc(rows)?,
            x: gpu.alloc(rows * d)?,
            h: gpu.alloc(rows * d)?,
            qkv: gpu.alloc(rows * (q_dim + 2 * kv_dim))?,
            q: gpu.alloc(rows * q_dim)?,
            k: gpu.alloc(rows * kv_dim)?,
            v: gpu.alloc(rows * kv_dim)?,
            attn: gpu.alloc(rows * q_dim)?,
            gate_up: gpu.alloc(rows * 2 * f)?,
            act: gpu.alloc(rows * f)?,
            split_kv: SplitKvWorkspace::for_decode(
                gpu,
                rows,
                c.num_heads,
                c.head_dim,
                c.max_position_embeddings,
            )?,
        })
    }
}

/// `flat` (`[Σ per_seq, width]`) cut into one `[per_seq[i], width]` block per sequence.
fn split_rows(flat: &[f32], width: usize, per_seq: &[usize]) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(per_seq.len());
    let mut start = 0;
    for &m in per_seq {
        out.push(flat[start * width..(start + m) * width].to_vec());
        start += m;
    }
    out
}
