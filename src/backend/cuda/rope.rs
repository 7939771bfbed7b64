//! RoPE on the GPU (kernels/rope.cu), in place, both layouts, forward and inverse (the
//! backward): bf16 with head_dim a multiple of 16 on `rope_bf16_vec`, every other shape and
//! f32 on the one-block-per-token kernels. Reference: `backend::cpu::ops::rope`.

use super::{as_int, check_len, per_row, CudaBackend, DeviceBuffer, Float, THREADS};
use crate::backend::cpu::ops::{RopeLayout, RopeSpec};
use crate::bail;
use crate::error::Result;
use cudarc::driver::{DevicePtr, LaunchConfig};
use std::sync::Arc;

/// Shared memory is 48 KiB per block without opting in; RoPE keeps 2·(head_dim/2) f32 there.
const MAX_ROPE_HEAD_DIM: usize = 48 * 1024 / 4;

/// Heads per thread of `rope_bf16_vec` (kernels/rope.cu's ROPE_VEC_HEADS).
const ROPE_VEC_HEADS: usize = 4;

/// The threads `rope_bf16_vec` needs: one per (token, chunk of 8 frequencies, group of
/// [`ROPE_VEC_HEADS`] heads); None where the vector kernel does not apply (f32, head_dim not a
/// multiple of 16, x not 16-byte aligned) or the count overflows its 32-bit thread index, and
/// the one-block-per-token kernel runs instead.
fn rope_vec_threads(
    elem_bytes: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    x_address: u64,
) -> Option<usize> {
    if elem_bytes != 2 || !head_dim.is_multiple_of(16) || !x_address.is_multiple_of(16) {
        return None;
    }
    let threads = tokens
        .checked_mul(head_dim / 16)?
        .checked_mul(heads.div_ceil(ROPE_VEC_HEADS))?;
    (threads <= i32::MAX as usize).then_some(threads)
}

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
        let RopeSpec {
            heads,
            head_dim,
            base,
            layout,
        } = spec;
        let per_token = T::pick("rope_f32", "rope_bf16");
        if head_dim == 0 || !head_dim.is_multiple_of(2) || head_dim > MAX_ROPE_HEAD_DIM {
            bail!(
                "CUDA kernel {per_token}: head_dim {head_dim} must be even, 2 to {MAX_ROPE_HEAD_DIM}"
            );
        }
        let tokens = positions.len();
        let address = x.slice.device_ptr(&self.stream).0;
        let vec_threads = rope_vec_threads(
            std::mem::size_of::<T::Raw>(),
            tokens,
            heads,
            head_dim,
            address,
        );
        let kernel = match vec_threads {
            Some(_) => "rope_bf16_vec",
            None => per_token,
        };
        check_len(
            kernel,
            "x",
            x.len(),
            tokens.saturating_mul(heads).saturating_mul(head_dim),
        )?;
        let tokens_int = as_int(kernel, "tokens", tokens)?;
        if x.is_empty() {
            return Ok(());
        }
        let inv_freq = self.rope_inv_freq(base, head_dim)?;
        let heads_int = as_int(kernel, "heads", heads)?;
        let hd_int = head_dim as i32;
        let interleaved = (layout == RopeLayout::Interleaved) as i32;
        let sign: f32 = if inverse { -1.0 } else { 1.0 };
        let shapes = || {
            format!("tokens {tokens}, heads {heads}, head_dim {head_dim}, {layout:?}, inverse {inverse}")
        };
        match vec_threads {
            Some(threads) => {
                let config = LaunchConfig {
                    grid_dim: (threads.div_ceil(THREADS as usize) as u32, 1, 1),
                    block_dim: (THREADS, 1, 1),
                    shared_mem_bytes: 0,
                };
                launch!(
                    self,
                    kernel,
                    config,
                    shapes(),
                    [
                        &mut x.slice,
                        &positions.slice,
                        &inv_freq.slice,
                        &tokens_int,
                        &heads_int,
                        &hd_int,
                        &interleaved,
                        &sign
                    ]
                )
            }
            None => launch!(
                self,
                kernel,
                per_row(tokens, (head_dim * 4) as u32),
                shapes(),
                [
                    &mut x.slice,
                    &positions.slice,
                    &inv_freq.slice,
                    &heads_int,
                    &hd_int,
                    &interleaved,
                    &sign
                ]
            ),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_with_head_dim_a_multiple_of_16_takes_the_vector_kernel() {
        // Llama-2-7B's Q: 2048 tokens × 8 chunks × 8 groups of 4 heads.
        assert_eq!(rope_vec_threads(2, 2048, 32, 128, 256), Some(2048 * 8 * 8));
        // 5 heads: two groups, the second one head wide.
        assert_eq!(rope_vec_threads(2, 3, 5, 16, 0), Some(3 * 2));
        // f32, head_dim 8 or 24 (not a multiple of 16), misaligned x: the per-token kernels.
        assert_eq!(rope_vec_threads(4, 2048, 32, 128, 256), None);
        assert_eq!(rope_vec_threads(2, 7, 3, 8, 0), None);
        assert_eq!(rope_vec_threads(2, 7, 3, 24, 0), None);
        assert_eq!(rope_vec_threads(2, 7, 3, 128, 8), None);
        // More threads than a 32-bit index holds.
        assert_eq!(rope_vec_threads(2, 1 << 28, 32, 128, 0), None);
    }
}
