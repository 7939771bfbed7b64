//! SwiGLU on the GPU (kernels/swiglu.cu), forward and backward, element-wise. References:
//! `backend::cpu::ops::swiglu`, `backend::cpu::backward::swiglu_backward`.

use super::{check_len, CudaBackend, DeviceBuffer, Float};
use crate::error::Result;

impl CudaBackend {
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
}
