//! Row-wise passes over the vocabulary (kernels/{cross_entropy,rule_adapter}.cu): the fused
//! softmax cross-entropy (reference `backend::cpu::backward::cross_entropy`) and the rule
//! adapter's log_softmax + rule scores + argmax.

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
    /// Fused softmax cross-entropy, forward: per row r of `logits` (`[rows, vocab]`),
    /// loss[r] = w_r·(lse_r − z_r[t_r]) and lse[r] = log Σ exp(z_r), in one pass over the row.
    /// Rows with weight 0 are not read (loss and lse 0). The total loss of the CPU reference is
    /// Σ_r loss[r]; keep `lse` for [`CudaBackend::cross_entropy_backward`].
    #[allow(clippy::too_many_arguments)]
    pub fn cross_entropy<T: Float>(
        &self,
        logits: &DeviceBuffer<T>,
        vocab: usize,
        targets: &DeviceBuffer<u32>,
        weights: &DeviceBuffer<f32>,
        loss: &mut DeviceBuffer<f32>,
        lse: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        let kernel = T::pick("cross_entropy_fwd_f32", "cross_entropy_fwd_bf16");
        let rows = rows_of(kernel, "logits", logits.len(), vocab)?;
        check_len(kernel, "targets", targets.len(), rows)?;
        check_len(kernel, "weights", weights.len(), rows)?;
        check_len(kernel, "loss", loss.len(), rows)?;
        check_len(kernel, "lse", lse.len(), rows)?;
        if rows == 0 {
            return Ok(());
        }
        let vocab_int = as_int(kernel, "vocab", vocab)?;
        launch!(
            self,
            kernel,
            per_row(rows, 0),
            format!("rows {rows}, vocab {vocab}"),
            [
                &logits.slice,
                &targets.slice,
                &weights.slice,
                &mut loss.slice,
                &mut lse.slice,
                &vocab_int
            ]
        )
    }

    /// Fused softmax cross-entropy, backward: d_logits[r] = w_r·(softmax(z_r) − onehot(t_r)),
    /// from the `lse` the forward saved, in one pass; rows with weight 0 get zeros.
    #[allow(clippy::too_many_arguments)]
    pub fn cross_entropy_backward<T: Float>(
        &self,
        logits: &DeviceBuffer<T>,
        vocab: usize,
        targets: &DeviceBuffer<u32>,
        weights: &DeviceBuffer<f32>,
        lse: &DeviceBuffer<f32>,
        d_logits: &mut DeviceBuffer<T>,
    ) -> Result<()> {
        let kernel = T::pick("cross_entropy_bwd_f32", "cross_entropy_bwd_bf16");
        let rows = rows_of(kernel, "logits", logits.len(), vocab)?;
        check_len(kernel, "targets", targets.len(), rows)?;
        check_len(kernel, "weights", weights.len(), rows)?;
        check_len(kernel, "lse", lse.len(), rows)?;
        check_len(kernel, "d_logits", d_logits.len(), logits.len())?;
        if rows == 0 {
            return Ok(());
        }
        let vocab_int = as_int(kernel, "vocab", vocab)?;
        launch!(
            self,
            kernel,
            per_row(rows, 0),
            format!("rows {rows}, vocab {vocab}"),
            [
                &logits.slice,
                &targets.slice,
                &weights.slice,
                &lse.slice,
                &mut d_logits.slice,
                &vocab_int
            ]
        )
    }

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
