//! The decoder-only transformer shared by Llama and OLMo, on the CPU backend.
//!
//! Per layer (pre-norm): x += o(attn(rope(q(n(x))), rope(k(n(x))), v(n(x))));
//! x += down(silu(gate(n(x))) ⊙ up(n(x))), where n is RMSNorm (Llama) or a LayerNorm without
//! parameters (OLMo), and OLMo clamps q, k, v to ±clip_qkv when set.

use super::config::ModelConfig;
use super::weights::{load_weights, LayerWeights};
use crate::backend::cpu::attention::{causal_attention, AttentionShape};
use crate::backend::cpu::matmul::gemm;
use crate::backend::cpu::ops;
use crate::bail;
use crate::error::Result;
use crate::io::safetensors::WeightStore;
use crate::tensor::Tensor;
use std::path::{Path, PathBuf};

/// Norm weights are tiny: kept as f32 copies whatever the checkpoint's dtype.
type Layer = LayerWeights<Tensor, Vec<f32>>;

pub struct Transformer {
    pub config: ModelConfig,
    /// The folder the model was loaded from.
    pub path: PathBuf,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    final_norm: Option<Vec<f32>>,
    /// `[vocab, hidden]`; the embedding itself when tied.
    lm_head: Tensor,
}

/// Keys and values of one sequence, per layer, as `[len, kv_heads, head_dim]`.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    pub fn new(config: &ModelConfig) -> KvCache {
        KvCache {
            k: vec![Vec::new(); config.num_layers],
            v: vec![Vec::new(); config.num_layers],
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
}

/// Which positions' logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only each sequence's last new token (generation).
    Last,
    /// Every new token (scoring, tests).
    All,
    /// No logits: every new token's final-normed hidden state, `[tokens, hidden]` (embeddings).
    Hidden,
}

/// y[rows, out] = x[rows, in] · Wᵀ for a PyTorch-layout weight W[out, in].
fn linear(x: &[f32], w: &Tensor) -> Vec<f32> {
    let (out, inp) = (w.dim(0), w.dim(1));
    let rows = x.len() / inp;
    let mut y = vec![0.0f32; rows * out];
    gemm(
        rows,
        out,
        inp,
        x,
        false,
        w.elems().expect("weights are contiguous"),
        true,
        &mut y,
        false,
    );
    y
}

impl Transformer {
    /// Loads config.json and the safetensors weights of a Hugging Face model folder.
    pub fn load(dir: &Path) -> Result<Transformer> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let store = WeightStore::open(dir)?;
        Transformer::from_store(config, &store, dir)
    }

    pub fn from_store(config: ModelConfig, store: &WeightStore, dir: &Path) -> Result<Transformer> {
        let w = load_weights(&config, store, dir, Ok, Ok)?;
        Ok(Transformer {
            lm_head: w.lm_head.unwrap_or_else(|| w.embed_tokens.clone()),
            final_norm: w.final_norm,
            config,
            path: dir.to_path_buf(),
            embed_tokens: w.embed_tokens,
            layers: w.layers,
        })
    }

    fn normalize(&self, x: &[f32], weight: Option<&Vec<f32>>) -> Vec<f32> {
        let mut y = vec![0.0f32; x.len()];
        match weight {
            Some(w) => ops::rms_norm(x, w, self.config.norm_eps as f64, &mut y),
            None => ops::layer_norm_no_params(
                x,
                self.config.hidden_size,
                self.config.norm_eps as f64,
                &mut y,
            ),
        }
        y
    }

    /// Runs the new tokens of each sequence through the model, appending to its cache, and
    /// returns each sequence's logits (`[vocab]` for `Logits::Last`, `[tokens, vocab]` for
    /// `Logits::All`). Sequences of any lengths share one matrix product per weight.
    pub fn forward(
        &self,
        batch: &mut [(&[u32], &mut KvCache)],
        want: Logits,
    ) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let (d, hd) = (c.hidden_size, c.head_dim);
        let (heads, kv_heads) = (c.num_heads, c.num_kv_heads);
        let lens: Vec<usize> = batch.iter().map(|(t, _)| t.len()).collect();
        let total: usize = lens.iter().sum();
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
            if cache.k.len() != c.num_layers {
                bail!(
                    "KV cache has {} layers, the model {}",
                    cache.k.len(),
                    c.num_layers
                );
            }
        }
        let ids: Vec<u32> = batch.iter().flat_map(|(t, _)| t.iter().copied()).collect();
        let positions: Vec<usize> = batch
            .iter()
            .flat_map(|(t, cache)| cache.len..cache.len + t.len())
            .collect();

        let mut x = vec![0.0f32; total * d];
        ops::embedding(&ids, self.embed_tokens.elems()?, d, &mut x);
        for (li, layer) in self.layers.iter().enumerate() {
            let h = self.normalize(&x, layer.attn_norm.as_ref());
            let mut q = linear(&h, &layer.q_proj);
            let mut k = linear(&h, &layer.k_proj);
            let mut v = linear(&h, &layer.v_proj);
            if let Some(clip) = c.clip_qkv {
                for t in [&mut q, &mut k, &mut v] {
                    ops::clamp_in_place(t.as_mut_slice(), clip);
                }
            }
            ops::rope(&mut q, &positions, c.rope_spec(heads), false);
            ops::rope(&mut k, &positions, c.rope_spec(kv_heads), false);
            let mut attn = vec![0.0f32; total * heads * hd];
            let mut row = 0;
            for ((_, cache), &n) in batch.iter_mut().zip(&lens) {
                let kv = kv_heads * hd;
                cache.k[li].extend_from_slice(&k[row * kv..(row + n) * kv]);
                cache.v[li].extend_from_slice(&v[row * kv..(row + n) * kv]);
                let shape = AttentionShape {
                    queries: n,
                    keys: cache.len + n,
                    heads,
                    kv_heads,
                    head_dim: hd,
                };
                let qs = &q[row * heads * hd..(row + n) * heads * hd];
                let out = &mut attn[row * heads * hd..(row + n) * heads * hd];
                causal_attention(qs, &cache.k[li], &cache.v[li], shape, out);
                row += n;
            }
            ops::add_in_place(&mut x, &linear(&attn, &layer.o_proj));
            let h = self.normalize(&x, layer.mlp_norm.as_ref());
            let gate = linear(&h, &layer.gate_proj);
            let up = linear(&h, &layer.up_proj);
            let mut act = vec![0.0f32; gate.len()];
            ops::swiglu(&gate, &up, &mut act);
            ops::add_in_place(&mut x, &linear(&act, &layer.down_proj));
        }
        for ((_, cache), &n) in batch.iter_mut().zip(&lens) {
            cache.len += n;
        }
        // Only the rows whose logits are wanted go through the final norm and the LM head.
        let rows: Vec<f32> = match want {
            Logits::All | Logits::Hidden => x,
            Logits::Last => {
                let mut end = 0;
                lens.iter()
                    .flat_map(|&n| {
                        end += n;
                        x[(end - 1) * d..end * d].to_vec()
                    })
                    .collect()
            }
        };
        let h = self.normalize(&rows, self.final_norm.as_ref());
        if want == Logits::Hidden {
            let mut start = 0;
            return Ok(lens
                .iter()
                .map(|&n| {
                    start += n;
                    h[(start - n) * d..start * d].to_vec()
                })
                .collect());
        }
        let logits = linear(&h, &self.lm_head);
        let v = c.vocab_size;
        let per_seq: Vec<usize> = match want {
            Logits::All | Logits::Hidden => lens,
            Logits::Last => vec![1; batch.len()],
        };
        let mut out = Vec::with_capacity(batch.len());
        let mut start = 0;
        for n in per_seq {
            out.push(logits[start * v..(start + n) * v].to_vec());
            start += n;
        }
        Ok(out)
    }

    /// The mean over positions of the final-normed hidden states of `tokens`, L2-normalised: a
    /// text embedding (mean pooling, as the paper's plot_embeds.py does with its embedder).
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        super::lm::embed(self, tokens)
    }

    /// Logits of every position of one sequence, from an empty cache: `[tokens, vocab]`.
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut cache = KvCache::new(&self.config);
        Ok(self
            .forward(&mut [(tokens, &mut cache)], Logits::All)?
            .remove(0))
    }
}
