//! The rule adapter on the GPU (kernels/rule_adapter.cu): per row of logits, log_softmax + the
//! rules' scores + argmax, in one pass. Reference: an f64 one in tests/cuda_kernels.rs
//! (`rule_reference`).

use super::{as_int, check_len, per_row, rows_of, CudaBackend, DeviceBuffer, Float};
use crate::bail;
use crate::error::Result;

/// Where [`CudaBackend::rule_adapter`] writes, one value per row.
#[derive(Debug)]
pub struct RuleAdapterOutput<'a> {
    /// argmax of the adapted scores (the lowest index on ties).
    pub tokens: &'a mut DeviceBuffer<u32>,
    /// The chosen token's log-probability under the adapted (renormalised) distribution.
    pub logprobs: &'a mut DeviceBuffer<f32>,
    /// The chosen token's log-probability under the base model, log_softmax(logits)[token].
    pub base_logprobs: &'a mut DeviceBuffer<f32>,
}

impl CudaBackend {
    /// The rule adapter, one pass per row of `logits` (`[rows, vocab]`): scores =
    /// log_softmax(z) + bias + [i = eos_id]·eos_bias[r]; writes the argmax of the scores and the
    /// chosen token's log-probabilities (see [`RuleAdapterOutput`]). `bias` is `[vocab]` (shared
    /// by all rows) or `[rows, vocab]`; `eos_bias` is `[rows]`; an `eos_id` ≥ vocab adds no EOS
    /// term. A row whose scores are all −inf or NaN gives token 0 and NaN log-probabilities.
    #[allow(clippy::too_many_arguments)]
    pub fn rule_adapter<T: Float>(
        &self,
        logits: &DeviceBuffer<T>,
        vocab: usize,
        bias: &DeviceBuffer<f32>,
        eos_id: u32,
        eos_bias: &DeviceBuffer<f32>,
        out: RuleAdapterOutput<'_>,
    ) -> Result<()> {
        let kernel = T::pick("rule_adapter_f32", "rule_adapter_bf16");
        let rows = rows_of(kernel, "logits", logits.len(), vocab)?;
        let bias_row_stride = if bias.len() == vocab {
            0
        } else if bias.len() == logits.len() {
            vocab
        } else {
            bail!(
                "CUDA kernel {kernel}: bias has {} elements, expected {vocab} (shared) or \
                 {} (one row per logits row)",
                bias.len(),
                logits.len()
            );
        };
        check_len(kernel, "eos_bias", eos_bias.len(), rows)?;
        check_len(kernel, "tokens", out.tokens.len(), rows)?;
        check_len(kernel, "logprobs", out.logprobs.len(), rows)?;
        check_len(kernel, "base_logprobs", out.base_logprobs.len(), rows)?;
        if rows == 0 {
            return Ok(());
        }
        let (vocab_int, stride_int) = (as_int(kernel, "vocab", vocab)?, bias_row_stride as i32);
        launch!(
            self,
            kernel,
            per_row(rows, 0),
            format!("rows {rows}, vocab {vocab}, bias stride {bias_row_stride}"),
            [
                &logits.slice,
                &bias.slice,
                &stride_int,
                &eos_id,
                &eos_bias.slice,
                &mut out.tokens.slice,
                &mut out.logprobs.slice,
                &mut out.base_logprobs.slice,
                &vocab_int
            ]
        )
    }
}
