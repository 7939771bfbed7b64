//! A parameter's AdamW state (fp32 master weights and moments) on the GPU, or in page-locked
//! host memory when the GPU cannot hold it (Llama-2-7B's is 81 GB): then each step copies it
//! to the GPU tensor by tensor, runs the same fused update there, and copies it back, all
//! queued on the stream (24 bytes per parameter over the bus per step). Or, with
//! `--optimizer-state bf16`, no master and bf16 moments on the GPU, updated with stochastic
//! rounding (4 bytes of state per parameter; other numerics, see
//! `optim::adamw_bf16_stochastic_step`).
//! Saved and loaded as the others: the master is the parameter widened to f32, the moments
//! widened; loading rounds f32 moments to nearest even.

use crate::backend::cuda::{AdamWStep, AdamWTensor, CudaBackend, DeviceBuffer, HostBuffer};
use crate::error::Result;
use crate::optim::adamw::StepScalars;
use crate::optim::AdamWConfig;
use crate::train::plan::OptimizerPlacement;
use half::bf16;

/// Made here, on the GPU optimizer's side, from `optim::adamw`'s [`StepScalars`] (which owns
/// the arithmetic), so that the backend needs nothing from `optim` and `optim` nothing from the
/// CUDA feature.
impl AdamWStep {
    /// The scalars of step `t` (1 for the first step) at learning rate `lr`.
    pub fn new(config: &AdamWConfig, lr: f32, t: u64) -> Self {
        let s = StepScalars::new(config, lr, t);
        Self {
            decay: s.decay,
            lerp_weight: s.lerp_weight,
            one_minus_lerp_weight: 1.0 - s.lerp_weight,
            beta2: s.beta2,
            one_minus_beta2: s.one_minus_beta2,
            bias_correction2_sqrt: s.bias_correction2_sqrt,
            eps: s.eps,
            neg_step_size: s.neg_step_size,
            lerp_small: s.lerp_small as i32,
        }
    }
}

/// master, exp_avg, exp_avg_sq.
pub(super) enum OptimizerState {
    Device([DeviceBuffer<f32>; 3]),
    Host([HostBuffer; 3]),
    /// exp_avg, exp_avg_sq in bf16; the parameter is its own (bf16) master.
    Bf16([DeviceBuffer<bf16>; 2]),
    /// Kept by another rank (data parallelism): steps and uploads do nothing here.
    Elsewhere,
}

impl OptimizerState {
    /// Masters the exact f32 widening of `value`, moments zero (`optim::AdamW::new` for a bf16
    /// parameter); bf16 state: zero moments only.
    pub(super) fn new(
        gpu: &CudaBackend,
        value: &DeviceBuffer<bf16>,
        placement: OptimizerPlacement,
        owned: bool,
    ) -> Result<OptimizerState> {
        if !owned {
            return Ok(OptimizerState::Elsewhere);
        }
        let len = value.len();
        let master = || -> Result<DeviceBuffer<f32>> {
            let mut master = gpu.alloc::<f32>(len)?;
            gpu.convert_to_f32(value, &mut master)?;
            Ok(master)
        };
        Ok(match placement {
            OptimizerPlacement::Device => {
                OptimizerState::Device([master()?, gpu.zeros(len)?, gpu.zeros(len)?])
            }
            OptimizerPlacement::Host => {
                let mut host_master = gpu.host_zeros(len)?;
                gpu.download_host(&master()?, &mut host_master)?;
                OptimizerState::Host([host_master, gpu.host_zeros(len)?, gpu.host_zeros(len)?])
            }
            OptimizerPlacement::Bf16 => OptimizerState::Bf16([gpu.zeros(len)?, gpu.zeros(len)?]),
        })
    }

    /// One clipped AdamW step of `value` (kernels/adamw.cu's adamw_bf16, or adamw_bf16_sr with
    /// `key`, the tensor's `optim::stochastic_rounding_key` at this step).
    pub(super) fn step(
        &mut self,
        gpu: &CudaBackend,
        value: &mut DeviceBuffer<bf16>,
        grad: &DeviceBuffer<f32>,
        clip: &DeviceBuffer<f32>,
        scalars: &AdamWStep,
        key: u64,
    ) -> Result<()> {
        match self {
            OptimizerState::Bf16([m, v]) => {
                gpu.adamw_step_bf16_stochastic(value, grad, m, v, Some(clip), scalars, key)
            }
            OptimizerState::Device([master, m, v]) => {
                gpu.adamw_step_bf16(value, master, grad, m, v, Some(clip), scalars)
            }
            OptimizerState::Host(host) => {
                let mut dev = [
                    gpu.alloc::<f32>(value.len())?,
                    gpu.alloc::<f32>(value.len())?,
                    gpu.alloc::<f32>(value.len())?,
                ];
                for (h, d) in host.iter().zip(dev.iter_mut()) {
                    gpu.upload_host(h, d)?;
                }
                let [master, m, v] = &mut dev;
                gpu.adamw_step_bf16(value, master, grad, m, v, Some(clip), scalars)?;
                for (d, h) in dev.iter().zip(host.iter_mut()) {
                    gpu.download_host(d, h)?;
                }
                Ok(())
            }
            OptimizerState::Elsewhere => Ok(()),
        }
    }

    /// This parameter's operands for the multi-tensor step (`CudaBackend::adamw_step_multi`):
    /// None when its state lives on the host (it takes the per-tensor path, which stages it),
    /// Some(None) when another rank keeps it.
    pub(super) fn multi_operands<'a>(
        &'a mut self,
        value: &'a mut DeviceBuffer<bf16>,
        grad: &'a DeviceBuffer<f32>,
        key: u64,
    ) -> Option<Option<AdamWTensor<'a>>> {
        match self {
            OptimizerState::Bf16([m, v]) => Some(Some(AdamWTensor::Bf16Stochastic {
                param: value,
                grad,
                exp_avg: m,
                exp_avg_sq: v,
                key,
            })),
            OptimizerState::Device([master, m, v]) => Some(Some(AdamWTensor::Bf16 {
                param: value,
                master,
                grad,
                exp_avg: m,
                exp_avg_sq: v,
            })),
            OptimizerState::Host(_) => None,
            OptimizerState::Elsewhere => Some(None),
        }
    }

    /// [master, exp_avg, exp_avg_sq] in new f32 device buffers (owned state only); `value` is
    /// the parameter (the master of bf16 state).
    pub(super) fn device_copies(
        &self,
        gpu: &CudaBackend,
        value: &DeviceBuffer<bf16>,
    ) -> Result<[DeviceBuffer<f32>; 3]> {
        match self {
            OptimizerState::Device([a, b, c]) => Ok([gpu.copy(a)?, gpu.copy(b)?, gpu.copy(c)?]),
            OptimizerState::Bf16([m, v]) => {
                let mut out = [
                    gpu.alloc(value.len())?,
                    gpu.alloc(m.len())?,
                    gpu.alloc(v.len())?,
                ];
                for (src, dst) in [value, m, v].into_iter().zip(out.iter_mut()) {
                    gpu.convert_to_f32(src, dst)?;
                }
                Ok(out)
            }
            OptimizerState::Host(host) => {
                let mut out = [
                    gpu.alloc(host[0].len())?,
                    gpu.alloc(host[1].len())?,
                    gpu.alloc(host[2].len())?,
                ];
                for (h, d) in host.iter().zip(out.iter_mut()) {
                    gpu.upload_host(h, d)?;
                }
                Ok(out)
            }
            OptimizerState::Elsewhere => {
                crate::bail!("optimizer state: this rank does not keep this parameter's state")
            }
        }
    }

    /// [master, exp_avg, exp_avg_sq] on the host, in f32; `value` is the parameter (the master
    /// of bf16 state, widened exactly as the moments).
    pub(super) fn download(
        &self,
        gpu: &CudaBackend,
        value: &DeviceBuffer<bf16>,
    ) -> Result<[Vec<f32>; 3]> {
        let widened = |b: &DeviceBuffer<bf16>| -> Result<Vec<f32>> {
            Ok(gpu.download(b)?.iter().map(|x| x.to_f32()).collect())
        };
        Ok(match self {
            OptimizerState::Device([a, b, c]) => {
                [gpu.download(a)?, gpu.download(b)?, gpu.download(c)?]
            }
            OptimizerState::Bf16([m, v]) => [widened(value)?, widened(m)?, widened(v)?],
            OptimizerState::Host([a, b, c]) => [
                a.as_slice()?.to_vec(),
                b.as_slice()?.to_vec(),
                c.as_slice()?.to_vec(),
            ],
            OptimizerState::Elsewhere => {
                crate::bail!("optimizer state: this rank does not keep this parameter's state")
            }
        })
    }

    /// Replaces [master, exp_avg, exp_avg_sq] (lengths checked by the caller). bf16 state
    /// keeps no master (the caller sets the parameter from it) and rounds the moments to
    /// nearest even.
    pub(super) fn upload(&mut self, gpu: &CudaBackend, values: [&[f32]; 3]) -> Result<()> {
        match self {
            OptimizerState::Bf16(dev) => {
                for (d, v) in dev.iter_mut().zip(&values[1..]) {
                    let rounded: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
                    gpu.upload_into(&rounded, d)?;
                }
            }
            OptimizerState::Device(dev) => {
                for (d, v) in dev.iter_mut().zip(values) {
                    gpu.upload_into(v, d)?;
                }
            }
            OptimizerState::Host(host) => {
                for (h, v) in host.iter_mut().zip(values) {
                    h.as_mut_slice()?.copy_from_slice(v);
                }
            }
            OptimizerState::Elsewhere => {}
        }
        Ok(())
    }
}
