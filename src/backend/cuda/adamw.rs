//! Global grad-norm clipping and the fused mixed-precision AdamW update on the GPU
//! (kernels/adamw.cu). References: `optim::clip_grad_norm` and `optim::AdamW::step`.
//!
//! A step is: [`CudaBackend::grad_norm`] over all gradients (one launch and a final reduction;
//! writes ‖g‖ and the clip coefficient to a 2-element device buffer), then
//! [`CudaBackend::adamw_step_multi`] (one launch per kind of state for all parameters) or one
//! [`CudaBackend::adamw_step_bf16`] / [`CudaBackend::adamw_step_f32`] /
//! [`CudaBackend::adamw_step_bf16_stochastic`] per parameter, reading that buffer: no host
//! round trip. The
//! host reads the norm whenever it logs (a non-finite norm makes every update a no-op, and the
//! trainer stops on it).

use super::{check_len, CudaBackend, DeviceBuffer};
use crate::bail;
use crate::error::Result;
use cudarc::driver::{DeviceRepr, LaunchConfig};
use half::bf16;

/// Elements per block of the multi-tensor kernels, AdamW's and the gradient norm's
/// (kernels/adamw.cu `ADAMW_CHUNK`).
const ADAMW_CHUNK: usize = 65536;

/// The f32 scalars of AdamW step t, as `optim::adamw`'s `StepScalars` computes them (Python
/// floats in f64, rounded to f32 where they meet the tensors); `AdamWStep::new` (in the GPU
/// trainer's optimizer, from `StepScalars`, which owns the arithmetic) makes them. Mirrors
/// kernels/adamw.cu's `AdamWScalars` field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// 1 − lr·λ.
    pub decay: f32,
    /// 1 − β1, the lerp weight.
    pub lerp_weight: f32,
    /// 1 − (1 − β1) in f32 (torch's lerp for weights ≥ 0.5).
    pub one_minus_lerp_weight: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// √(1 − β2^t).
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
    /// −lr / (1 − β1^t).
    pub neg_step_size: f32,
    /// 1 when |1 − β1| < 0.5.
    pub lerp_small: i32,
}

// SAFETY: #[repr(C)] plain old data whose layout matches the C struct AdamWScalars (eight
// floats and an int, 4-byte aligned), passed to the kernels by value.
unsafe impl DeviceRepr for AdamWStep {}

fn one_block(blocks: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaBackend {
    /// The global L2 norm of `grads` and torch's clip coefficient, into `clip` (2 elements):
    /// clip[0] = ‖g‖, clip[1] = min(1, max_norm / (‖g‖ + 1e-6)), or NaN when ‖g‖ is not
    /// finite. Σg² is accumulated in f64 in an order fixed by the tensors' sizes (deterministic).
    /// The gradients are not modified: the update applies the coefficient.
    pub fn grad_norm(
        &self,
        grads: &[&DeviceBuffer<f32>],
        max_norm: f32,
        clip: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        use cudarc::driver::DevicePtr;
        check_len("grad_norm_finalize", "clip", clip.len(), 2)?;
        // One launch for every tensor: [address, length] per tensor and ADAMW_CHUNK-element
        // chunks, as the multi-tensor AdamW (u32 halves of the u64s, little-endian).
        let (mut table, mut chunks) = (Vec::new(), Vec::new());
        for (i, g) in grads.iter().enumerate() {
            let address = g.slice.device_ptr(&self.stream).0;
            table.extend([address as u32, (address >> 32) as u32]);
            table.extend([g.len() as u32, (g.len() as u64 >> 32) as u32]);
            for start in (0..g.len()).step_by(ADAMW_CHUNK) {
                chunks.extend([i as u32, 0, start as u32, (start as u64 >> 32) as u32]);
            }
        }
        let total = chunks.len() / 4;
        let Ok(count) = i32::try_from(total) else {
            bail!(
                "CUDA grad_norm: {} gradient tensors of {total} chunks are too many",
                grads.len()
            );
        };
        let mut partial = self.zeros::<f64>(total.max(1))?;
        if total > 0 {
            let (table_dev, chunks_dev) = (self.upload(&table)?, self.upload(&chunks)?);
            launch!(
                self,
                "grad_sumsq_multi",
                one_block(total),
                format!("{} tensors, {total} chunks", grads.len()),
                [&table_dev.slice, &chunks_dev.slice, &mut partial.slice]
            )?;
        }
        launch!(
            self,
            "grad_norm_finalize",
            one_block(1),
            format!("{} tensors, {total} partial sums", grads.len()),
            [&partial.slice, &count, &max_norm, &mut clip.slice]
        )
    }

    /// One AdamW step of a bf16 parameter with fp32 master weights: the master and the moments
    /// are updated in f32 exactly as `optim::AdamW::step` (bit for bit), then the master is
    /// rounded into `param`. `clip` is [`CudaBackend::grad_norm`]'s output (None: no clipping).
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_step_bf16(
        &self,
        param: &mut DeviceBuffer<bf16>,
        master: &mut DeviceBuffer<f32>,
        grad: &DeviceBuffer<f32>,
        exp_avg: &mut DeviceBuffer<f32>,
        exp_avg_sq: &mut DeviceBuffer<f32>,
        clip: Option<&DeviceBuffer<f32>>,
        step: &AdamWStep,
    ) -> Result<()> {
        let kernel = "adamw_bf16";
        let n = param.len();
        check_len(kernel, "master", master.len(), n)?;
        let clip =
            self.adamw_operands(kernel, n, grad.len(), exp_avg.len(), exp_avg_sq.len(), clip)?;
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
                &mut master.slice,
                &mut param.slice,
                &grad.slice,
                &mut exp_avg.slice,
                &mut exp_avg_sq.slice,
                &n64,
                &clip.slice,
                step
            ]
        )
    }

    /// Checks the lengths every AdamW kernel takes (gradient and moments as long as the
    /// parameter, a 2-element clip state) and returns the clip state to pass: the given one, or
    /// [‖g‖ = 0, coefficient 1] (no clipping).
    fn adamw_operands<'a>(
        &'a self,
        kernel: &str,
        n: usize,
        grad: usize,
        exp_avg: usize,
        exp_avg_sq: usize,
        clip: Option<&'a DeviceBuffer<f32>>,
    ) -> Result<&'a DeviceBuffer<f32>> {
        check_len(kernel, "grad", grad, n)?;
        check_len(kernel, "exp_avg", exp_avg, n)?;
        check_len(kernel, "exp_avg_sq", exp_avg_sq, n)?;
        let clip = clip.unwrap_or(&self.unit_clip);
        check_len(kernel, "clip", clip.len(), 2)?;
        Ok(clip)
    }

    /// One AdamW step of an f32 parameter (its own master copy), as `optim::AdamW::step`.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_step_f32(
        &self,
        param: &mut DeviceBuffer<f32>,
        grad: &DeviceBuffer<f32>,
        exp_avg: &mut DeviceBuffer<f32>,
        exp_avg_sq: &mut DeviceBuffer<f32>,
        clip: Option<&DeviceBuffer<f32>>,
        step: &AdamWStep,
    ) -> Result<()> {
        let kernel = "adamw_f32";
        let n = param.len();
        let clip =
            self.adamw_operands(kernel, n, grad.len(), exp_avg.len(), exp_avg_sq.len(), clip)?;
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
                &mut param.slice,
                &grad.slice,
                &mut exp_avg.slice,
                &mut exp_avg_sq.slice,
                &n64,
                &clip.slice,
                step
            ]
        )
    }

    /// One AdamW step of a bf16 parameter with bf16 moments and no master (`--optimizer-state
    /// bf16`): the update of [`CudaBackend::adamw_step_bf16`] in f32 from the widened values,
    /// then the parameter, m and v written back with stochastic rounding, bit for bit as
    /// `optim::adamw_bf16_stochastic_step` (element i draws
    /// `optim::stochastic_rounding_bits(key, i)`; `key` is the tensor's
    /// `optim::stochastic_rounding_key` at this step).
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_step_bf16_stochastic(
        &self,
        param: &mut DeviceBuffer<bf16>,
        grad: &DeviceBuffer<f32>,
        exp_avg: &mut DeviceBuffer<bf16>,
        exp_avg_sq: &mut DeviceBuffer<bf16>,
        clip: Option<&DeviceBuffer<f32>>,
        step: &AdamWStep,
        key: u64,
    ) -> Result<()> {
        let kernel = "adamw_bf16_sr";
        let n = param.len();
        let clip =
            self.adamw_operands(kernel, n, grad.len(), exp_avg.len(), exp_avg_sq.len(), clip)?;
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
                &mut param.slice,
                &grad.slice,
                &mut exp_avg.slice,
                &mut exp_avg_sq.slice,
                &n64,
                &clip.slice,
                step,
                &key
            ]
        )
    }
}

/// One parameter's operands for [`CudaBackend::adamw_step_multi`]: those of
/// [`CudaBackend::adamw_step_bf16`], [`CudaBackend::adamw_step_f32`] or
/// [`CudaBackend::adamw_step_bf16_stochastic`].
pub enum AdamWTensor<'a> {
    Bf16 {
        param: &'a mut DeviceBuffer<bf16>,
        master: &'a mut DeviceBuffer<f32>,
        grad: &'a DeviceBuffer<f32>,
        exp_avg: &'a mut DeviceBuffer<f32>,
        exp_avg_sq: &'a mut DeviceBuffer<f32>,
    },
    F32 {
        param: &'a mut DeviceBuffer<f32>,
        grad: &'a DeviceBuffer<f32>,
        exp_avg: &'a mut DeviceBuffer<f32>,
        exp_avg_sq: &'a mut DeviceBuffer<f32>,
    },
    Bf16Stochastic {
        param: &'a mut DeviceBuffer<bf16>,
        grad: &'a DeviceBuffer<f32>,
        exp_avg: &'a mut DeviceBuffer<bf16>,
        exp_avg_sq: &'a mut DeviceBuffer<bf16>,
        /// The tensor's `optim::stochastic_rounding_key` at this step.
        key: u64,
    },
}

impl AdamWTensor<'_> {
    /// The kernel, and the entry of kernels/adamw.cu's `AdamWTensorEntry` (param, master, grad,
    /// exp_avg, exp_avg_sq device addresses, n, key), after checking the lengths.
    fn entry(&mut self, stream: &cudarc::driver::CudaStream) -> Result<(&'static str, [u64; 7])> {
        use cudarc::driver::{DevicePtr, DevicePtrMut};
        let (kernel, n) = match self {
            AdamWTensor::Bf16 { param, .. } => ("adamw_multi_bf16", param.len()),
            AdamWTensor::F32 { param, .. } => ("adamw_multi_f32", param.len()),
            AdamWTensor::Bf16Stochastic { param, .. } => ("adamw_multi_bf16_sr", param.len()),
        };
        let lens = |grad: usize, m: usize, v: usize| -> Result<()> {
            check_len(kernel, "grad", grad, n)?;
            check_len(kernel, "exp_avg", m, n)?;
            check_len(kernel, "exp_avg_sq", v, n)
        };
        let n64 = n as u64;
        let entry = match self {
            AdamWTensor::Bf16 {
                param,
                master,
                grad,
                exp_avg,
                exp_avg_sq,
            } => {
                check_len(kernel, "master", master.len(), n)?;
                lens(grad.len(), exp_avg.len(), exp_avg_sq.len())?;
                [
                    param.slice.device_ptr_mut(stream).0,
                    master.slice.device_ptr_mut(stream).0,
                    grad.slice.device_ptr(stream).0,
                    exp_avg.slice.device_ptr_mut(stream).0,
                    exp_avg_sq.slice.device_ptr_mut(stream).0,
                    n64,
                    0,
                ]
            }
            AdamWTensor::F32 {
                param,
                grad,
                exp_avg,
                exp_avg_sq,
            } => {
                lens(grad.len(), exp_avg.len(), exp_avg_sq.len())?;
                [
                    param.slice.device_ptr_mut(stream).0,
                    0,
                    grad.slice.device_ptr(stream).0,
                    exp_avg.slice.device_ptr_mut(stream).0,
                    exp_avg_sq.slice.device_ptr_mut(stream).0,
                    n64,
                    0,
                ]
            }
            AdamWTensor::Bf16Stochastic {
                param,
                grad,
                exp_avg,
                exp_avg_sq,
                key,
            } => {
                lens(grad.len(), exp_avg.len(), exp_avg_sq.len())?;
                [
                    param.slice.device_ptr_mut(stream).0,
                    0,
                    grad.slice.device_ptr(stream).0,
                    exp_avg.slice.device_ptr_mut(stream).0,
                    exp_avg_sq.slice.device_ptr_mut(stream).0,
                    n64,
                    *key,
                ]
            }
        };
        Ok((kernel, entry))
    }
}

impl CudaBackend {
    /// The AdamW step of every tensor in `tensors` with one launch per kind present (bf16 with
    /// master, f32, bf16 with stochastic rounding) instead of one per tensor: a table of the
    /// tensors' addresses and a list of 65536-element chunks are uploaded, and block b updates
    /// chunk b with the per-tensor kernels' arithmetic, so the results are bit-identical to
    /// theirs (tests/cuda_kernels/adamw_multi.rs). `clip` as for the per-tensor calls.
    pub fn adamw_step_multi(
        &self,
        mut tensors: Vec<AdamWTensor<'_>>,
        clip: Option<&DeviceBuffer<f32>>,
        step: &AdamWStep,
    ) -> Result<()> {
        let clip = clip.unwrap_or(&self.unit_clip);
        check_len("adamw_multi", "clip", clip.len(), 2)?;
        for kernel in ["adamw_multi_bf16", "adamw_multi_f32", "adamw_multi_bf16_sr"] {
            let (mut table, mut chunks) = (Vec::new(), Vec::new());
            for t in tensors.iter_mut() {
                let (k, entry) = t.entry(&self.stream)?;
                if k != kernel {
                    continue;
                }
                let index = (table.len() / 7) as u64;
                for start in (0..entry[5] as usize).step_by(ADAMW_CHUNK) {
                    chunks.extend([index, start as u64]);
                }
                table.extend(entry);
            }
            if chunks.is_empty() {
                continue;
            }
            let blocks = chunks.len() / 2;
            if u32::try_from(blocks).is_err() {
                bail!("CUDA kernel {kernel}: {blocks} chunks are too many for one grid");
            }
            // As u32 halves, little-endian: the kernel reads the u64s of the (8-byte aligned)
            // allocations.
            let halves = |v: &[u64]| -> Vec<u32> {
                v.iter()
                    .flat_map(|&x| [x as u32, (x >> 32) as u32])
                    .collect()
            };
            let table_dev = self.upload(&halves(&table))?;
            let chunks_dev = self.upload(&halves(&chunks))?;
            launch!(
                self,
                kernel,
                one_block(blocks),
                format!("{} tensors, {blocks} chunks", table.len() / 7),
                [&table_dev.slice, &chunks_dev.slice, &clip.slice, step]
            )?;
        }
        Ok(())
    }
}
