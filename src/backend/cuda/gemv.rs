//! bf16 products of a few rows on the GPU (kernels/gemv.cu): C (+)= A·Bᵀ for at most
//! [`GEMV_MAX_ROWS`] rows, a decode step's, bound by reading B once. [`CudaBackend::gemm_bf16`]
//! sends such products here; tests/cuda_kernels/gemm.rs checks them against f64 on the CPU.

use super::gemm::Checked;
use super::{CudaBackend, DeviceBuffer, Float};
use crate::error::Result;
use cudarc::driver::LaunchConfig;
use half::bf16;

/// Products of at most this many rows in the NT layout (a decode step's) take kernels/gemv.cu.
pub const GEMV_MAX_ROWS: usize = 8;
/// Warps per block of kernels/gemv.cu, each owning output columns.
const GEMV_WARPS: usize = 8;

impl CudaBackend {
    /// C (+)= A·Bᵀ for at most [`GEMV_MAX_ROWS`] rows (kernels/gemv.cu): one warp per output
    /// column streams B's row once for all of A's rows. Shapes already checked.
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
        let kernel = O::pick("gemv_nt_f32", "gemv_nt_bf16");
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(GEMV_WARPS) as u32, 1, batch as u32),
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
