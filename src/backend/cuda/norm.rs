//! RMSNorm and parameter-free LayerNorm on the GPU (kernels/norm.cu). References:
//! `backend::cpu::ops::{rms_norm, layer_norm_no_params}`,
//! `backend::cpu::backward::{rms_norm_backward, layer_norm_backward}`.

use super::{as_int, check_len, per_row, rows_of, CudaBackend, DeviceBuffer, Float, THREADS};
use crate::error::Result;
use cudarc::driver::LaunchConfig;

/// Blocks of the RMSNorm backward (at most): each writes one row of dw partial sums, so this
/// bounds the partial buffer and the final reduction. A constant, so that dw's summation order
/// depends on the shapes alone, not on the GPU.
const RMS_BWD_BLOCKS: usize = 256;

impl CudaBackend {
    /// RMSNorm per row of `x` (`[rows, d]`, d = `weight.len()`): y = x·r·w with
    /// r = 1/sqrt(mean(x²) + eps). Accumulates in f32.
    pub fn rms_norm<T: Float>(
        &self,
        x: &DeviceBuffer<T>,
        weight: &DeviceBuffer<T>,
        eps: f64,
        y: &mut DeviceBuffer<T>,
    ) -> Result<()> {
        let kernel = T::pick("rmsnorm_fwd_f32", "rmsnorm_fwd_bf16");
        let d = weight.len();
        let rows = rows_of(kernel, "x", x.len(), d)?;
        check_len(kernel, "y", y.len(), x.len())?;
        if rows == 0 {
            return Ok(());
        }
        let (d_int, eps) = (as_int(kernel, "d", d)?, eps as f32);
        launch!(
            self,
            kernel,
            per_row(rows, 0),
            format!("rows {rows}, d {d}"),
            [&x.slice, &weight.slice, &mut y.slice, &d_int, &eps]
        )
    }

    /// RMSNorm's backward: dx = r·(w⊙dy) − r³/d · x · Σ(w⊙dy⊙x) per row, and
    /// dw = Σ_rows dy⊙x·r into `dw` (f32; added to its contents when `accumulate`).
    /// dw is summed in an order fixed by the shapes, so it is the same on every run.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_backward<T: Float>(
        &self,
        x: &DeviceBuffer<T>,
        weight: &DeviceBuffer<T>,
        eps: f64,
        dy: &DeviceBuffer<T>,
        dx: &mut DeviceBuffer<T>,
        dw: &mut DeviceBuffer<f32>,
        accumulate: bool,
    ) -> Result<()> {
        let kernel = T::pick("rmsnorm_bwd_f32", "rmsnorm_bwd_bf16");
        let d = weight.len();
        let rows = rows_of(kernel, "x", x.len(), d)?;
        check_len(kernel, "dy", dy.len(), x.len())?;
        check_len(kernel, "dx", dx.len(), x.len())?;
        check_len(kernel, "dw", dw.len(), d)?;
        if rows == 0 {
            if !accumulate {
                self.stream
                    .memset_zeros(&mut dw.slice)
                    .map_err(|e| super::kernel_error(kernel, "rows 0", "zeroing dw", e))?;
            }
            return Ok(());
        }
        let rows_per_block = rows.div_ceil(RMS_BWD_BLOCKS);
        let blocks = rows.div_ceil(rows_per_block);
        let mut partial = self.alloc::<f32>(blocks * d)?;
        let shapes = || format!("rows {rows}, d {d}, {blocks} blocks of {rows_per_block} rows");
        let (rows_int, d_int, rpb_int, eps) = (
            rows as i32,
            as_int(kernel, "d", d)?,
            rows_per_block as i32,
            eps as f32,
        );
        launch!(
            self,
            kernel,
            LaunchConfig {
                grid_dim: (blocks as u32, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            },
            shapes(),
            [
                &x.slice,
                &weight.slice,
                &dy.slice,
                &mut dx.slice,
                &mut partial.slice,
                &rows_int,
                &d_int,
                &rpb_int,
                &eps
            ]
        )?;
        let (blocks_int, acc_int) = (blocks as i32, accumulate as i32);
        launch!(
            self,
            "rmsnorm_dw_reduce",
            LaunchConfig {
                grid_dim: (d.div_ceil(32) as u32, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            },
            shapes(),
            [&partial.slice, &mut dw.slice, &blocks_int, &d_int, &acc_int]
        )
    }

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
        let kernel = T::pick("layernorm_bwd_f32", "layernorm_bwd_bf16");
        let rows = rows_of(kernel, "x", x.len(), dim)?;
        check_len(kernel, "dy", dy.len(), x.len())?;
        check_len(kernel, "dx", dx.len(), x.len())?;
        if rows == 0 {
            return Ok(());
        }
        let (d_int, eps) = (as_int(kernel, "dim", dim)?, eps as f32);
        launch!(
            self,
            kernel,
            per_row(rows, 0),
            format!("rows {rows}, dim {dim}"),
            [&x.slice, &dy.slice, &mut dx.slice, &d_int, &eps]
        )
    }
}
