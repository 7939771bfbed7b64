//! The embedding on the GPU (kernels/embedding.cu): the row lookup and its backward, a
//! scatter-add into the table's gradient, either with atomics from device ids or segmented
//! from an [`EmbeddingGradPlan`] (the ids sorted on the host, where the trainer has them):
//! deterministic, one write per touched row. References: `backend::cpu::ops::embedding`,
//! `backend::cpu::backward::embedding_backward`.

use super::{as_int, check_len, per_row, rows_of, CudaBackend, DeviceBuffer, Float, THREADS};
use crate::bail;
use crate::error::Result;
use cudarc::driver::LaunchConfig;

/// Token ids sorted by id for [`CudaBackend::embedding_backward_planned`]: `order` lists the
/// tokens stably sorted by id (ids ≥ vocab left out), segment s is
/// `order[starts[s]..starts[s + 1]]`, all of id `rows[s]`.
pub struct EmbeddingGradPlan {
    order: DeviceBuffer<u32>,
    starts: DeviceBuffer<u32>,
    rows: DeviceBuffer<u32>,
    tokens: usize,
    vocab: usize,
}

impl EmbeddingGradPlan {
    /// Touched rows (segments).
    pub fn segments(&self) -> usize {
        self.rows.len()
    }
}

/// The host half of the plan: the token indices stably sorted by id (so each row's tokens
/// keep their order; microseconds for a micro-batch's few thousand), the segment offsets and ids.
fn sort_by_id(ids: &[u32], vocab: usize) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let mut order: Vec<u32> = (0..ids.len() as u32)
        .filter(|&t| (ids[t as usize] as usize) < vocab)
        .collect();
    // sort_by_key is stable: equal ids keep the token order.
    order.sort_by_key(|&t| ids[t as usize]);
    let (mut starts, mut rows) = (Vec::new(), Vec::new());
    for (k, &t) in order.iter().enumerate() {
        let id = ids[t as usize];
        if rows.last() != Some(&id) {
            starts.push(k as u32);
            rows.push(id);
        }
    }
    starts.push(order.len() as u32);
    (order, starts, rows)
}

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

    /// Sorts `ids` (host) by id for the segmented embedding backward over a `[vocab, ·]`
    /// table, and uploads the plan. Ids ≥ vocab are left out (their tokens add nothing).
    pub fn embedding_grad_plan(&self, ids: &[u32], vocab: usize) -> Result<EmbeddingGradPlan> {
        if u32::try_from(ids.len()).is_err() {
            bail!(
                "embedding_grad_plan: {} tokens do not fit u32 indices",
                ids.len()
            );
        }
        let (order, starts, rows) = sort_by_id(ids, vocab);
        Ok(EmbeddingGradPlan {
            order: self.upload(&order)?,
            starts: self.upload(&starts)?,
            rows: self.upload(&rows)?,
            tokens: ids.len(),
            vocab,
        })
    }

    /// d_table[id] += Σ dy[t] over the tokens t of that id (`d_table` `[vocab, dim]` f32, not
    /// cleared first), from a plan of [`CudaBackend::embedding_grad_plan`]: each touched row is
    /// read and written once, its tokens summed in token order in f64 from the row's old value
    /// and rounded once, so the result is the same on every run (and bit for bit the CPU's f64
    /// sum in that order).
    pub fn embedding_backward_planned<T: Float>(
        &self,
        plan: &EmbeddingGradPlan,
        dy: &DeviceBuffer<T>,
        dim: usize,
        d_table: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        let kernel = T::pick("embedding_bwd_sorted_f32", "embedding_bwd_sorted_bf16");
        let vocab = rows_of(kernel, "d_table", d_table.len(), dim)?;
        if vocab != plan.vocab {
            bail!(
                "CUDA kernel {kernel}: d_table has {vocab} rows, the plan was made for {}",
                plan.vocab
            );
        }
        check_len(kernel, "dy", dy.len(), plan.tokens.saturating_mul(dim))?;
        let dim_int = as_int(kernel, "dim", dim)?;
        let segments = plan.segments();
        if segments == 0 || dim == 0 {
            return Ok(());
        }
        let column_blocks = dim.div_ceil(4 * THREADS as usize);
        let config = LaunchConfig {
            grid_dim: (segments as u32, column_blocks as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            self,
            kernel,
            config,
            format!(
                "tokens {}, {segments} rows touched, vocab {vocab}, dim {dim}",
                plan.tokens
            ),
            [
                &plan.order.slice,
                &plan.starts.slice,
                &plan.rows.slice,
                &dy.slice,
                &mut d_table.slice,
                &dim_int
            ]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::sort_by_id;

    #[test]
    fn the_plan_sorts_stably_and_drops_ids_past_the_vocabulary() {
        let (order, starts, rows) = sort_by_id(&[5, 2, 5, 9, 2, 5, 1], 9);
        assert_eq!(order, [6, 1, 4, 0, 2, 5]);
        assert_eq!(starts, [0, 1, 3, 6]);
        assert_eq!(rows, [1, 2, 5]);
        let (order, starts, rows) = sort_by_id(&[], 9);
        assert!(order.is_empty() && rows.is_empty());
        assert_eq!(starts, [0]);
    }
}
