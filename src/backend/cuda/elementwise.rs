//! Element-wise helpers of the training step on the GPU (kernels/elementwise.cu): precision
//! conversions, an f32 in-place add, and clamp's backward. Any length, 0 included. References:
//! `half::bf16::from_f32` / `to_f32`, `backend::cpu::backward::clamp_backward`; tests in
//! tests/cuda_kernels/elementwise.rs.

use super::{check_len, CudaBackend, DeviceBuffer};
use crate::error::Result;
use half::bf16;

impl CudaBackend {
    /// y = bf16(x), round to nearest even (as `half::bf16::from_f32`; NaN stays NaN).
    pub fn convert_to_bf16(&self, x: &DeviceBuffer<f32>, y: &mut DeviceBuffer<bf16>) -> Result<()> {
        const KERNEL: &str = "convert_f32_to_bf16";
        let n = x.len();
        check_len(KERNEL, "y", y.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let n64 = n as u64;
        launch!(
            self,
            KERNEL,
            self.grid_stride(n.div_ceil(8)),
            format!("n {n}"),
            [&x.slice, &mut y.slice, &n64]
        )
    }

    /// y = f32(x) (exact).
    pub fn convert_to_f32(&self, x: &DeviceBuffer<bf16>, y: &mut DeviceBuffer<f32>) -> Result<()> {
        const KERNEL: &str = "convert_bf16_to_f32";
        let n = x.len();
        check_len(KERNEL, "y", y.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let n64 = n as u64;
        launch!(
            self,
            KERNEL,
            self.grid_stride(n.div_ceil(8)),
            format!("n {n}"),
            [&x.slice, &mut y.slice, &n64]
        )
    }

    /// y += x (f32, element-wise).
    pub fn add_in_place(&self, y: &mut DeviceBuffer<f32>, x: &DeviceBuffer<f32>) -> Result<()> {
        const KERNEL: &str = "add_f32_in_place";
        let n = y.len();
        check_len(KERNEL, "x", x.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let n64 = n as u64;
        launch!(
            self,
            KERNEL,
            self.grid_stride(n.div_ceil(4)),
            format!("n {n}"),
            [&mut y.slice, &x.slice, &n64]
        )
    }

    /// The backward of clamp(x, −limit, limit), in place: dy[i] = 0 where x[i] lies outside
    /// [−limit, limit] (the bounds inclusive) or is NaN, unchanged elsewhere, as
    /// `backend::cpu::backward::clamp_backward` (a NaN limit zeroes everything). `x` is the
    /// clamp's input.
    pub fn clamp_backward_bf16(
        &self,
        x: &DeviceBuffer<bf16>,
        limit: f32,
        dy: &mut DeviceBuffer<bf16>,
    ) -> Result<()> {
        const KERNEL: &str = "clamp_backward_bf16";
        let n = x.len();
        check_len(KERNEL, "dy", dy.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let n64 = n as u64;
        launch!(
            self,
            KERNEL,
            self.grid_stride(n.div_ceil(8)),
            format!("n {n}, limit {limit}"),
            [&x.slice, &mut dy.slice, &n64, &limit]
        )
    }
}
