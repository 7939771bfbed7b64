//! The greedy pick of each row on the GPU, for [`super::CudaTransformer::forward_greedy`] and the
//! decode graphs: the rule adapter's kernel with no rules, so that two numbers per row come back
//! instead of its logits.

use crate::backend::cuda::{CudaBackend, DeviceBuffer, RuleAdapterOutput};
use crate::error::Result;

/// The greedy choice of each row of `[rows, vocab]` logits, made on the GPU by the rule adapter's
/// kernel with no rules (a zero bias, no EOS term): the argmax and its log-softmax.
pub(super) struct GreedyPicks {
    tokens: DeviceBuffer<u32>,
    logprobs: DeviceBuffer<f32>,
    base_logprobs: DeviceBuffer<f32>,
    /// `[vocab]` zeros.
    no_bias: DeviceBuffer<f32>,
    /// `[rows]` zeros.
    no_eos_bias: DeviceBuffer<f32>,
    vocab: usize,
}

impl GreedyPicks {
    pub(super) fn new(gpu: &CudaBackend, rows: usize, vocab: usize) -> Result<GreedyPicks> {
        Ok(GreedyPicks {
            tokens: gpu.alloc(rows)?,
            logprobs: gpu.alloc(rows)?,
            base_logprobs: gpu.alloc(rows)?,
            no_bias: gpu.zeros(vocab)?,
            no_eos_bias: gpu.zeros(rows)?,
            vocab,
        })
    }

    /// Queues the picks of every row of `logits`.
    pub(super) fn compute(&mut self, gpu: &CudaBackend, logits: &DeviceBuffer<f32>) -> Result<()> {
        let out = RuleAdapterOutput {
            tokens: &mut self.tokens,
            logprobs: &mut self.logprobs,
            base_logprobs: &mut self.base_logprobs,
        };
        // An EOS id past the vocabulary adds no EOS term.
        gpu.rule_adapter(
            logits,
            self.vocab,
            &self.no_bias,
            u32::MAX,
            &self.no_eos_bias,
            out,
        )
    }

    /// Each row's token and log-probability, after the queued work.
    pub(super) fn download(&self, gpu: &CudaBackend) -> Result<Vec<(u32, f32)>> {
        let tokens = gpu.download(&self.tokens)?;
        let logprobs = gpu.download(&self.logprobs)?;
        Ok(tokens.into_iter().zip(logprobs).collect())
    }
}
