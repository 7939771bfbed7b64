//! The embedding on the GPU (kernels/embedding.cu): the row lookup and its backward, a
//! scatter-add into the table's gradient. References: `backend::cpu::ops::embedding`,
//! `backend::cpu::backward::embedding_backward`.

use super::{as_int, check_len, per_row, rows_of, CudaBackend, DeviceBuffer, Float};
use crate::error::Result;

impl CudaBackend {
    /// out[t] = table[ids[t]] (`table` is `[vocab, dim]`). An id ≥ vocab gives a row of NaN.
    pub fn embedding<T: Float>(
        &self,
        ids: &DeviceBuffer<u32>,
        table: &DeviceBuffer<T>,
        dim: usize,
        out: &mut DeviceBuffer<T>,
    ) -> Result<()> {
        let kernel = T::pick("embedding_fwd_f32", "embedding_fwd_bf16");
        let vocab = rows_of(kernel, "table", table.len(), dim)?;
        let tokens = ids.len();
        check_len(kernel, "out", out.len(), tokens.saturating_mul(dim))?;
        as_int(kernel, "tokens", tokens)?;
        if tokens == 0 {
            return Ok(());
        }
        let (vocab_int, dim_int) = (vocab as i32, as_int(kernel, "dim", dim)?);
        launch!(
            self,
            kernel,
            per_row(tokens, 0),
            format!("tokens {tokens}, vocab {vocab}, dim {dim}"),
            [
                &ids.slice,
                &table.slice,
                &mut out.slice,
                &vocab_int,
                &dim_int
            ]
        )
    }

    /// d_table[ids[t]] += dy[t] (`d_table` is `[vocab, dim]` f32, not cleared first). Uses f32
    /// atomics: with repeated ids the order of the additions, and so the last bits, can vary
    /// from run to run. Ids ≥ vocab are skipped.
    pub fn embedding_backward<T: Float>(
        &self,
        ids: &DeviceBuffer<u32>,
        dy: &DeviceBuffer<T>,
        dim: usize,
        d_table: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        let kernel = T::pick("embedding_bwd_f32", "embedding_bwd_bf16");
        let vocab = rows_of(kernel, "d_table", d_table.len(), dim)?;
        let tokens = ids.len();
        check_len(kernel, "dy", dy.len(), tokens.saturating_mul(dim))?;
        as_int(kernel, "tokens", tokens)?;
        if tokens == 0 {
            return Ok(());
        }
        let (vocab_int, dim_int) = (vocab as i32, as_int(kernel, "dim", dim)?);
        launch!(
            self,
            kernel,
            per_row(tokens, 0),
            format!("tokens {tokens}, vocab {vocab}, dim {dim}"),
            [
                &ids.slice,
                &dy.slice,
                &mut d_table.slice,
                &vocab_int,
                &dim_int
            ]
        )
    }
}
