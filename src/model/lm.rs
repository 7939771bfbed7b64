//! [`LanguageModel`]: what generation, ranking, the local judge and the embedder need of a
//! model: a causal LM that runs ragged batches of new tokens, each sequence appending to its own
//! KV cache. The CPU [`Transformer`], the GPU model and [`super::device::DeviceModel`] (either,
//! opened by `model::device`, which holds the GPU model's impl) implement it, so every entry
//! point runs on either device.
//!
//! The methods take `&mut self`, since the GPU model's forward pass needs it (it drives one
//! stream; a `&self` contract would push a `RefCell`/`Mutex` into it). The CPU model does not
//! mutate in its forward pass, so `&Transformer` is itself a model (a `Copy` handle that many
//! threads may hold, e.g. behind the server's `Arc`). Entry points take the model by value as
//! a handle, `M: LanguageModel`: `f(&cpu_model, ..)` for the CPU (unchanged call sites), and
//! `f(&mut gpu_model, ..)` for the GPU; `&mut M` is a model whenever `M` is, so a generic
//! function can lend its handle to another (`step(&mut model, ..)`) and keep using it.

use super::config::ModelConfig;
use super::transformer::{KvCache, Logits, Transformer};
use crate::error::Result;

/// A causal language model with one KV cache per sequence (see the module docs).
pub trait LanguageModel {
    /// One sequence's keys and values.
    type Cache;

    fn config(&self) -> &ModelConfig;

    /// An empty cache for one sequence.
    fn new_cache(&self) -> Self::Cache;

    /// Tokens already in `cache` (the position of the next one).
    fn cache_len(cache: &Self::Cache) -> usize;

    /// A copy of `cache` that grows independently of it (to share a prompt prefix between
    /// sequences), or None when this model's caches cannot be copied: the caller then runs the
    /// prefix again for each sequence.
    fn fork_cache(&self, cache: &Self::Cache) -> Option<Self::Cache>;

    /// Runs the new tokens of each sequence through the model, appending to its cache, and
    /// returns each sequence's logits (`[vocab]` for `Logits::Last`, `[tokens, vocab]` for
    /// `Logits::All`) or final-normed hidden states (`Logits::Hidden`, `[tokens, hidden]`).
    fn forward(
        &mut self,
        batch: &mut [(&[u32], &mut Self::Cache)],
        want: Logits,
    ) -> Result<Vec<Vec<f32>>>;

    /// The forward of a step in which every sequence decodes greedily (no adjuster, no
    /// alternatives asked), returning only each sequence's next token (the argmax of its last
    /// logits, the lowest index on ties) and that token's log-probability. The GPU model picks
    /// beside its logits and copies back two numbers per sequence instead of the vocabulary's
    /// logits. None when the model has no such path (the CPU's logits are already in memory):
    /// then nothing ran, and the caller asks [`LanguageModel::forward`] for the logits.
    fn forward_greedy(
        &mut self,
        batch: &mut [(&[u32], &mut Self::Cache)],
    ) -> Result<Option<Vec<(u32, f32)>>> {
        let _ = batch;
        Ok(None)
    }
}

impl<M: LanguageModel + ?Sized> LanguageModel for &mut M {
    type Cache = M::Cache;
    fn config(&self) -> &ModelConfig {
        (**self).config()
    }
    fn new_cache(&self) -> M::Cache {
        (**self).new_cache()
    }
    fn cache_len(cache: &M::Cache) -> usize {
        M::cache_len(cache)
    }
    fn fork_cache(&self, cache: &M::Cache) -> Option<M::Cache> {
        (**self).fork_cache(cache)
    }
    fn forward(
        &mut self,
        batch: &mut [(&[u32], &mut M::Cache)],
        want: Logits,
    ) -> Result<Vec<Vec<f32>>> {
        (**self).forward(batch, want)
    }
    fn forward_greedy(
        &mut self,
        batch: &mut [(&[u32], &mut M::Cache)],
    ) -> Result<Option<Vec<(u32, f32)>>> {
        (**self).forward_greedy(batch)
    }
}

/// The CPU model, shared: its forward pass only reads the weights.
impl LanguageModel for &Transformer {
    type Cache = KvCache;
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn new_cache(&self) -> KvCache {
        KvCache::new(&self.config)
    }
    fn cache_len(cache: &KvCache) -> usize {
        cache.len()
    }
    fn fork_cache(&self, cache: &KvCache) -> Option<KvCache> {
        Some(cache.clone())
    }
    fn forward(
        &mut self,
        batch: &mut [(&[u32], &mut KvCache)],
        want: Logits,
    ) -> Result<Vec<Vec<f32>>> {
        Transformer::forward(self, batch, want)
    }
}

/// The CPU model, owned (e.g. kept by an embedder); the same as `&Transformer`.
impl LanguageModel for Transformer {
    type Cache = KvCache;
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn new_cache(&self) -> KvCache {
        KvCache::new(&self.config)
    }
    fn cache_len(cache: &KvCache) -> usize {
        cache.len()
    }
    fn fork_cache(&self, cache: &KvCache) -> Option<KvCache> {
        Some(cache.clone())
    }
    fn forward(
        &mut self,
        batch: &mut [(&[u32], &mut KvCache)],
        want: Logits,
    ) -> Result<Vec<Vec<f32>>> {
        Transformer::forward(self, batch, want)
    }
}

/// The mean over positions of the final-normed hidden states of `tokens`, L2-normalised: a
/// text embedding (mean pooling, as the paper's plot_embeds.py does with its embedder). The
/// same arithmetic as `Transformer::embed`, on any model.
pub fn embed<M: LanguageModel>(mut model: M, tokens: &[u32]) -> Result<Vec<f32>> {
    let d = model.config().hidden_size;
    let mut cache = model.new_cache();
    let h = model
        .forward(&mut [(tokens, &mut cache)], Logits::Hidden)?
        .remove(0);
    let mut mean = vec![0.0f64; d];
    for row in h.chunks_exact(d) {
        for (m, &x) in mean.iter_mut().zip(row) {
            *m += x as f64;
        }
    }
    let norm = mean.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    Ok(mean.iter().map(|x| (x / norm) as f32).collect())
}
