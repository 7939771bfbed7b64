//! bf16 products of a few rows on the GPU (kernels/gemv.cu): C (+)= A·Bᵀ for at most
//! [`GEMV_MAX_ROWS`] rows, a decode step's, bound by reading B once: each warp streams two rows
//! of B with eight independent 16-byte loads per lane in flight (32 KB per block; the kernel
//! file works out why that is enough). [`CudaBackend::gemm_bf16`] sends such products here;
//! tests/cuda_kernels/gemm.rs checks them against f64 on the CPU.

use super::gemm::Checked;
use super::{CudaBackend, DeviceBuffer, Float};
use crate::error::Result;
use cudarc::driver::LaunchConfig;
use half::bf16;

/// Products of at most this many rows in the NT layout (a decode step's) take kernels/gemv.cu.
pub const GEMV_MAX_ROWS: usize = 8;
/// Warps per block of kernels/gemv.cu.
const GEMV_WARPS: usize = 8;
/// Output columns each warp of kernels/gemv.cu owns at a time.
const GEMV_COLS: usize = 2;

impl CudaBackend {
    /// C (+)= A·Bᵀ for at most [`GEMV_MAX_ROWS`] rows (kernels/gemv.cu): each warp streams
    /// two of B's rows once for all of A's rows, through the variant with the fewest
    /// accumulator rows (1, 2, 4 or 8) that holds m. Shapes already checked.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemv_nt<O: Float>(
        &self,
        m: usize,
        n: usize,
        k: usize,
        batch: usize,
        checked: &Checked,
        a: &DeviceBuffer<bf16>,
        b: &DeviceBuffer<bf16>,
        c: &mut DeviceBuffer<O>,
        accumulate: bool,
    ) -> Result<()> {
        let kernel = gemv_kernel::<O>(m)?;
        let blocks = n.div_ceil(GEMV_WARPS * GEMV_COLS);
        let cfg = LaunchConfig {
            grid_dim: (blocks.min(i32::MAX as usize) as u32, 1, batch as u32),
            block_dim: (32 * GEMV_WARPS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let acc = accumulate as i32;
        launch!(
            self,
            kernel,
            cfg,
            format!("NT m {m} n {n} k {k} batch {batch} accumulate {accumulate} (gemv)"),
            [
                &a.slice,
                &b.slice,
                &mut c.slice,
                &checked.m,
                &checked.n,
                &checked.k,
                &acc
            ]
        )
    }
}

/// The kernels/gemv.cu variant for `m` rows of `O` output: the fewest accumulator rows ≥ m.
pub(super) fn gemv_kernel<O: Float>(m: usize) -> Result<&'static str> {
    let names = match m {
        1 => ("gemv_nt_f32_r1", "gemv_nt_bf16_r1"),
        2 => ("gemv_nt_f32_r2", "gemv_nt_bf16_r2"),
        3..=4 => ("gemv_nt_f32_r4", "gemv_nt_bf16_r4"),
        5..=GEMV_MAX_ROWS => ("gemv_nt_f32_r8", "gemv_nt_bf16_r8"),
        _ => crate::bail!("gemv: {m} rows; the kernel takes 1 to {GEMV_MAX_ROWS}"),
    };
    Ok(O::pick(names.0, names.1))
}
