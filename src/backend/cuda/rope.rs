//! RoPE on the GPU (kernels/rope.cu), in place, both layouts, forward and inverse (the
//! backward). Reference: `backend::cpu::ops::rope`.

use super::{as_int, check_len, per_row, CudaBackend, DeviceBuffer, Float};
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
}
