//! RoPE, SwiGLU and the embedding on the GPU (kernels/{rope,swiglu,embedding}.cu). References:
//! `backend::cpu::ops::{rope, swiglu, embedding}`,
//! `backend::cpu::backward::{swiglu_backward, embedding_backward}`.

use super::{as_int, check_len, per_row, rows_of, CudaBackend, DeviceBuffer, Float};
use crate::backend::cpu::ops::{RopeLayout, RopeSpec};
use crate::bail;
use crate::error::Result;
use std::sync::Arc;

/// Shared memory is 48 KiB per block without opting in; RoPE keeps 2·(head_dim/2) f32 there.
const MAX_ROPE_HEAD_DIM: usize = 48 * 1024 / 4;

impl CudaBackend {
    /// RoPE in place on `x` (`[tokens, heads, head_dim]`), token t at `positions[t]`; `inverse`
    /// rotates by −θ, which is RoPE's backward. Both layouts of [`RopeLayout`].
    pub fn rope<T: Float>(
        &self,
        x: &mut DeviceBuffer<T>,
        positions: &DeviceBuffer<u32>,
        spec: RopeSpec,
        inverse: bool,
    ) -> Result<()> {
        let kernel = T::pick("rope_f32", "rope_bf16");
        let RopeSpec {
            heads,
            head_dim,
            base,
            layout,
        } = spec;
        if head_dim == 0 || !head_dim.is_multiple_of(2) || head_dim > MAX_ROPE_HEAD_DIM {
            bail!(
                "CUDA kernel {kernel}: head_dim {head_dim} must be even, 2 to {MAX_ROPE_HEAD_DIM}"
            );
        }
        let tokens = positions.len();
        check_len(
            kernel,
            "x",
            x.len(),
            tokens.saturating_mul(heads).saturating_mul(head_dim),
        )?;
        as_int(kernel, "tokens", tokens)?;
        if x.is_empty() {
            return Ok(());
        }
        let inv_freq = self.rope_inv_freq(base, head_dim)?;
        let heads_int = as_int(kernel, "heads", heads)?;
        let hd_int = head_dim as i32;
        let interleaved = (layout == RopeLayout::Interleaved) as i32;
        let sign: f32 = if inverse { -1.0 } else { 1.0 };
        launch!(
            self,
            kernel,
            per_row(tokens, (head_dim * 4) as u32),
            format!("tokens {tokens}, heads {heads}, head_dim {head_dim}, {layout:?}, inverse {inverse}"),
            [
                &mut x.slice,
                &positions.slice,
                &inv_freq.slice,
                &heads_int,
                &hd_int,
                &interleaved,
                &sign
            ]
        )
    }

    /// inv_freq[i] = 1 / base^(2i/head_dim), computed in f32 exactly as the CPU reference.
    pub(crate) fn rope_inv_freq(
        &self,
        base: f32,
        head_dim: usize,
    ) -> Result<Arc<DeviceBuffer<f32>>> {
        let key = (base.to_bits(), head_dim);
        let mut tables = match self.rope_tables.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(), // a cache: any contents are still valid
        };
        if let Some(t) = tables.get(&key) {
            return Ok(t.clone());
        }
        let host: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0f32 / base.powf(((2 * i) as f64 / head_dim as f64) as f32))
            .collect();
        let table = Arc::new(self.upload(&host)?);
        tables.insert(key, table.clone());
        Ok(table)
    }

    /// SwiGLU's gate: out = silu(gate) ⊙ up, element-wise.
    pub fn swiglu<T: Float>(
        &self,
        gate: &DeviceBuffer<T>,
        up: &DeviceBuffer<T>,
        out: &mut DeviceBuffer<T>,
    ) -> Result<()> {
        let kernel = T::pick("swiglu_fwd_f32", "swiglu_fwd_bf16");
        let n = gate.len();
        check_len(kernel, "up", up.len(), n)?;
        check_len(kernel, "out", out.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let n64 = n as u64;
        launch!(
            self,
            kernel,
            self.grid_stride(n / 4),
            format!("n {n}"),
            [&gate.slice, &up.slice, &mut out.slice, &n64]
        )
    }

    /// SwiGLU's backward: d_up = dy⊙silu(g); d_gate = dy⊙u⊙σ(g)·(1 + g·(1 − σ(g))).
    pub fn swiglu_backward<T: Float>(
        &self,
        gate: &DeviceBuffer<T>,
        up: &DeviceBuffer<T>,
        dy: &DeviceBuffer<T>,
        d_gate: &mut DeviceBuffer<T>,
        d_up: &mut DeviceBuffer<T>,
    ) -> Result<()> {
        let kernel = T::pick("swiglu_bwd_f32", "swiglu_bwd_bf16");
        let n = gate.len();
        check_len(kernel, "up", up.len(), n)?;
        check_len(kernel, "dy", dy.len(), n)?;
        check_len(kernel, "d_gate", d_gate.len(), n)?;
        check_len(kernel, "d_up", d_up.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let n64 = n as u64;
        launch!(
            self,
            kernel,
            self.grid_stride(n / 4),
            format!("n {n}"),
            [
                &gate.slice,
                &up.slice,
                &dy.slice,
                &mut d_gate.slice,
                &mut d_up.slice,
                &n64
            ]
        )
    }

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
