//! Parameter-free LayerNorm (OLMo) on the GPU (kernels/layernorm.cu). References:
//! `backend::cpu::ops::layer_norm_no_params`, `backend::cpu::backward::layer_norm_backward`.

use super::norm::NormGradOut;
use super::{as_int, check_len, per_row, rows_of, CudaBackend, DeviceBuffer, Float, THREADS};
use crate::error::Result;
use cudarc::driver::LaunchConfig;

/// The rows-in-registers LayerNorm backward for rows of `d` elements of `elem_bytes` each
/// (kernels/layernorm.cu `layernorm_bwd_regs_*`): its name and the rows R each block takes, as
/// the kernel's instantiation says; None past
/// [`RMS_BWD_REGS_MAX_D`](super::RMS_BWD_REGS_MAX_D), where `layernorm_bwd_*` runs.
fn layernorm_regs_kernel(elem_bytes: usize, d: usize) -> Option<(&'static str, usize)> {
    let per_thread = d
        .div_ceil(16 / elem_bytes)
        .div_ceil(THREADS as usize)
        .next_power_of_two();
    match (elem_bytes, per_thread) {
        (4, 1) => Some(("layernorm_bwd_regs_f32_v1", 4)),
        (4, 2) => Some(("layernorm_bwd_regs_f32_v2", 4)),
        (4, 4) => Some(("layernorm_bwd_regs_f32_v4", 2)),
        (4, 8) => Some(("layernorm_bwd_regs_f32_v8", 1)),
        (2, 1) => Some(("layernorm_bwd_regs_bf16_v1", 4)),
        (2, 2) => Some(("layernorm_bwd_regs_bf16_v2", 2)),
        (2, 4) => Some(("layernorm_bwd_regs_bf16_v4", 1)),
        _ => None,
    }
}

impl CudaBackend {
    /// Parameter-free LayerNorm per row of `x` (`[rows, dim]`): y = (x − mean)/sqrt(var + eps),
    /// biased variance (OLMo-7B).
    pub fn layer_norm<T: Float>(
        &self,
        x: &DeviceBuffer<T>,
        dim: usize,
        eps: f64,
        y: &mut DeviceBuffer<T>,
    ) -> Result<()> {
        let kernel = T::pick("layernorm_fwd_f32", "layernorm_fwd_bf16");
        let rows = rows_of(kernel, "x", x.len(), dim)?;
        check_len(kernel, "y", y.len(), x.len())?;
        if rows == 0 {
            return Ok(());
        }
        let (d_int, eps) = (as_int(kernel, "dim", dim)?, eps as f32);
        launch!(
            self,
            kernel,
            per_row(rows, 0),
            format!("rows {rows}, dim {dim}"),
            [&x.slice, &mut y.slice, &d_int, &eps]
        )
    }

    /// Parameter-free LayerNorm's backward: dx = r·(dy − mean(dy) − x̂·mean(dy⊙x̂)) per row.
    pub fn layer_norm_backward<T: Float>(
        &self,
        x: &DeviceBuffer<T>,
        dim: usize,
        eps: f64,
        dy: &DeviceBuffer<T>,
        dx: &mut DeviceBuffer<T>,
    ) -> Result<()> {
        let out = NormGradOut {
            dx,
            accumulate: false,
            dx_bf16: None,
        };
        self.layer_norm_backward_to(x, dim, eps, dy, out)
    }

    /// [`CudaBackend::layer_norm_backward`] with its input gradient delivered as `out` says.
    /// Rows up to [`RMS_BWD_REGS_MAX_D`](super::RMS_BWD_REGS_MAX_D) wide take the
    /// rows-in-registers kernel (x and dy read once, R rows a block); wider ones the
    /// one-row-a-block kernel, which reads them twice.
    pub fn layer_norm_backward_to<T: Float>(
        &self,
        x: &DeviceBuffer<T>,
        dim: usize,
        eps: f64,
        dy: &DeviceBuffer<T>,
        out: NormGradOut<'_, T>,
    ) -> Result<()> {
        let regs = layernorm_regs_kernel(std::mem::size_of::<T::Raw>(), dim);
        let kernel = match regs {
            Some((name, _)) => name,
            None => T::pick("layernorm_bwd_f32", "layernorm_bwd_bf16"),
        };
        let rows = rows_of(kernel, "x", x.len(), dim)?;
        check_len(kernel, "dy", dy.len(), x.len())?;
        check_len(kernel, "dx", out.dx.len(), x.len())?;
        if let Some(copy) = &out.dx_bf16 {
            check_len(kernel, "dx_bf16", copy.len(), x.len())?;
        }
        if rows == 0 {
            return Ok(());
        }
        let (d_int, eps) = (as_int(kernel, "dim", dim)?, eps as f32);
        let dx_accumulate = out.accumulate as i32;
        let null = 0u64;
        let Some((_, rows_per_block)) = regs else {
            let shapes = format!("rows {rows}, dim {dim}");
            return match out.dx_bf16 {
                Some(copy) => launch!(
                    self,
                    kernel,
                    per_row(rows, 0),
                    shapes,
                    [
                        &x.slice,
                        &dy.slice,
                        &mut out.dx.slice,
                        &mut copy.slice,
                        &dx_accumulate,
                        &d_int,
                        &eps
                    ]
                ),
                None => launch!(
                    self,
                    kernel,
                    per_row(rows, 0),
                    shapes,
                    [
                        &x.slice,
                        &dy.slice,
                        &mut out.dx.slice,
                        &null,
                        &dx_accumulate,
                        &d_int,
                        &eps
                    ]
                ),
            };
        };
        let rows_int = rows as i32; // rows_of checked that the row count fits a grid
        let config = LaunchConfig {
            grid_dim: (rows.div_ceil(rows_per_block) as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let shapes = format!("rows {rows}, dim {dim}, {rows_per_block} rows a block");
        match out.dx_bf16 {
            Some(copy) => launch!(
                self,
                kernel,
                config,
                shapes,
                [
                    &x.slice,
                    &dy.slice,
                    &mut out.dx.slice,
                    &mut copy.slice,
                    &dx_accumulate,
                    &rows_int,
                    &d_int,
                    &eps
                ]
            ),
            None => launch!(
                self,
                kernel,
                config,
                shapes,
                [
                    &x.slice,
                    &dy.slice,
                    &mut out.dx.slice,
                    &null,
                    &dx_accumulate,
                    &rows_int,
                    &d_int,
                    &eps
                ]
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::RMS_BWD_REGS_MAX_D;

    #[test]
    fn layernorm_backward_takes_the_rows_in_registers_kernel_up_to_8192() {
        // OLMo-7B's d 4096: 4 f32 vectors a thread, 2 rows a block; 2 bf16 vectors, 2 rows.
        assert_eq!(
            layernorm_regs_kernel(4, 4096),
            Some(("layernorm_bwd_regs_f32_v4", 2))
        );
        assert_eq!(
            layernorm_regs_kernel(2, 4096),
            Some(("layernorm_bwd_regs_bf16_v2", 2))
        );
        // Odd widths round up to the next kernel; 1 element is one vector's worth.
        assert_eq!(
            layernorm_regs_kernel(4, 4100),
            Some(("layernorm_bwd_regs_f32_v8", 1))
        );
        assert_eq!(
            layernorm_regs_kernel(2, 1),
            Some(("layernorm_bwd_regs_bf16_v1", 4))
        );
        assert_eq!(
            layernorm_regs_kernel(2, RMS_BWD_REGS_MAX_D),
            Some(("layernorm_bwd_regs_bf16_v4", 1))
        );
        // Wider rows: the one-row-a-block kernel.
        assert_eq!(layernorm_regs_kernel(4, RMS_BWD_REGS_MAX_D + 1), None);
        assert_eq!(layernorm_regs_kernel(2, RMS_BWD_REGS_MAX_D + 1), None);
    }
}
