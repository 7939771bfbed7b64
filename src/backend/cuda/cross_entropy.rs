//! The fused softmax cross-entropy on the GPU (kernels/cross_entropy.cu): one pass over each
//! row of logits forward (loss and log-sum-exp), one backward. Reference:
//! `backend::cpu::backward::cross_entropy`.

use super::{as_int, check_len, per_row, rows_of, CudaBackend, DeviceBuffer, Float};
use crate::error::Result;

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
}
