//! RMSNorm on the GPU (kernels/norm.cu), and [`NormGradOut`], where both norm backwards (this
//! and layernorm.rs's) put dx. References: `backend::cpu::ops::rms_norm`,
//! `backend::cpu::backward::rms_norm_backward`.

use super::{as_int, check_len, per_row, rows_of, CudaBackend, DeviceBuffer, Float, THREADS};
use crate::bail;
use crate::error::Result;
use cudarc::driver::LaunchConfig;
use half::bf16;

/// Blocks of the RMSNorm backward (at most): each writes one row of dw partial sums, so this
/// bounds the partial buffer and the final reduction. A constant, so that dw's summation order
/// depends on the shapes alone, not on the GPU.
const RMS_BWD_BLOCKS: usize = 256;

/// The widest row the rows-in-registers RMSNorm backward takes (both f32 and bf16: 256 threads
/// × 8 or 4 16-byte vectors); only it delivers dx into the residual gradient. LayerNorm's
/// rows-in-registers backward (layernorm.rs) has the same limit.
pub const RMS_BWD_REGS_MAX_D: usize = 8192;

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
        let out = NormGradOut {
            dx,
            accumulate: false,
            dx_bf16: None,
        };
        self.rms_norm_backward_to(x, weight, eps, dy, out, dw, accumulate)
    }

    /// [`CudaBackend::rms_norm_backward`] with its input gradient delivered as `out` says: added
    /// to the residual stream's gradient and rounded to bf16 for the next product in the same
    /// pass, so the trainer runs no separate add and cast.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_backward_to<T: Float>(
        &self,
        x: &DeviceBuffer<T>,
        weight: &DeviceBuffer<T>,
        eps: f64,
        dy: &DeviceBuffer<T>,
        out: NormGradOut<'_, T>,
        dw: &mut DeviceBuffer<f32>,
        accumulate: bool,
    ) -> Result<()> {
        let d = weight.len();
        let elem = std::mem::size_of::<T::Raw>();
        let per_thread = d
            .div_ceil(16 / elem)
            .div_ceil(THREADS as usize)
            .next_power_of_two();
        // The rows-in-registers kernels hold at most 32 f32 or 32 bf16 of each of x and dy per
        // thread and row (d ≤ RMS_BWD_REGS_MAX_D); wider rows take the tiled kernel.
        let regs = match (elem, per_thread) {
            (4, 1) => Some("rmsnorm_bwd_regs_f32_v1"),
            (4, 2) => Some("rmsnorm_bwd_regs_f32_v2"),
            (4, 4) => Some("rmsnorm_bwd_regs_f32_v4"),
            (4, 8) => Some("rmsnorm_bwd_regs_f32_v8"),
            (2, 1) => Some("rmsnorm_bwd_regs_bf16_v1"),
            (2, 2) => Some("rmsnorm_bwd_regs_bf16_v2"),
            (2, 4) => Some("rmsnorm_bwd_regs_bf16_v4"),
            _ => None,
        };
        let kernel = regs.unwrap_or(T::pick("rmsnorm_bwd_f32", "rmsnorm_bwd_bf16"));
        let rows = rows_of(kernel, "x", x.len(), d)?;
        check_len(kernel, "dy", dy.len(), x.len())?;
        check_len(kernel, "dx", out.dx.len(), x.len())?;
        if let Some(copy) = &out.dx_bf16 {
            check_len(kernel, "dx_bf16", copy.len(), x.len())?;
        }
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
        let config = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        match regs {
            Some(kernel) => {
                let dx_accumulate = out.accumulate as i32;
                let null = 0u64;
                match out.dx_bf16 {
                    Some(copy) => launch!(
                        self,
                        kernel,
                        config,
                        shapes(),
                        [
                            &x.slice,
                            &weight.slice,
                            &dy.slice,
                            &mut out.dx.slice,
                            &mut copy.slice,
                            &dx_accumulate,
                            &mut partial.slice,
                            &rows_int,
                            &d_int,
                            &rpb_int,
                            &eps
                        ]
                    )?,
                    None => launch!(
                        self,
                        kernel,
                        config,
                        shapes(),
                        [
                            &x.slice,
                            &weight.slice,
                            &dy.slice,
                            &mut out.dx.slice,
                            &null,
                            &dx_accumulate,
                            &mut partial.slice,
                            &rows_int,
                            &d_int,
                            &rpb_int,
                            &eps
                        ]
                    )?,
                }
            }
            None => {
                if out.accumulate || out.dx_bf16.is_some() {
                    bail!(
                        "CUDA kernel {kernel}: d {d} is wider than the fused residual backward \
                         takes ({RMS_BWD_REGS_MAX_D} at most)"
                    );
                }
                launch!(
                    self,
                    kernel,
                    config,
                    shapes(),
                    [
                        &x.slice,
                        &weight.slice,
                        &dy.slice,
                        &mut out.dx.slice,
                        &mut partial.slice,
                        &rows_int,
                        &d_int,
                        &rpb_int,
                        &eps
                    ]
                )?
            }
        }
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
}

/// Where a norm backward puts its input gradient: written to `dx`, or added to it
/// (`accumulate`: the residual stream's gradient, with no separate add), and optionally also
/// rounded to bf16 into `dx_bf16` (the next matrix product's input, with no separate cast).
pub struct NormGradOut<'a, T: Float> {
    pub dx: &'a mut DeviceBuffer<T>,
    pub accumulate: bool,
    pub dx_bf16: Option<&'a mut DeviceBuffer<bf16>>,
}
