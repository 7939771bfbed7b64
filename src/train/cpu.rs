//! `train --device cpu`: the parameters in their storage precision (f32, or bf16 widened for
//! each forward), `optim::AdamW` and the autograd tape, behind the shared loop's [`Engine`].

use super::checkpoint::{self, ParamValues};
use super::{adamw_config, check_grad_norm, Engine, Plan, Precision, TrainOptions};
use crate::autograd::Tape;
use crate::error::Result;
use crate::model::train::{load_parameter_values, TrainModel, TrainSequence};
use crate::model::ModelConfig;
use crate::optim::{clip_grad_norm, AdamW, ParamMut, ParamRef};
use half::bf16;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Parameters between steps, in their storage precision.
enum Store {
    F32(Vec<Arc<Vec<f32>>>),
    BF16(Vec<Vec<bf16>>),
}

impl Store {
    /// f32 values for the forward pass (shared, not copied, when stored in f32).
    fn f32_values(&self) -> Vec<Arc<Vec<f32>>> {
        match self {
            Store::F32(v) => v.clone(),
            Store::BF16(v) => v
                .iter()
                .map(|p| Arc::new(p.iter().map(|x| x.to_f32()).collect()))
                .collect(),
        }
    }
}

/// The CPU engine: parameters in their storage precision, `optim::AdamW`, the autograd tape.
pub(super) struct CpuEngine {
    config: ModelConfig,
    params: Store,
    optimizer: AdamW,
}

impl CpuEngine {
    pub(super) fn new(plan: &Plan, opts: &TrainOptions) -> Result<CpuEngine> {
        let values = load_parameter_values(&plan.source, &plan.config)?;
        let params = match opts.recipe.precision {
            Precision::F32 => Store::F32(values.into_iter().map(Arc::new).collect()),
            Precision::Bf16 => Store::BF16(
                values
                    .into_iter()
                    .map(|v| v.into_iter().map(bf16::from_f32).collect())
                    .collect(),
            ),
        };
        let names = plan.layout.iter().map(|(name, _)| name.clone());
        let optimizer = match &params {
            Store::F32(v) => AdamW::new(
                adamw_config(opts),
                names.zip(v.iter().map(|p| ParamRef::F32(p))),
            ),
            Store::BF16(v) => AdamW::new(
                adamw_config(opts),
                names.zip(v.iter().map(|p| ParamRef::BF16(p))),
            ),
        }?;
        Ok(CpuEngine {
            config: plan.config.clone(),
            params,
            optimizer,
        })
    }
}

impl Engine for CpuEngine {
    fn load_state(&mut self, tensors: &HashMap<String, Vec<f32>>) -> Result<()> {
        self.optimizer.load_state(tensors)
    }

    fn step(
        &mut self,
        micro_batches: &[Vec<TrainSequence>],
        scale: f64,
        lr: f32,
        max_grad_norm: f32,
    ) -> Result<(f64, f32)> {
        let model = TrainModel::from_shared(self.config.clone(), self.params.f32_values())?;
        let mut grads: Vec<Vec<f32>> = model
            .params
            .iter()
            .map(|p| vec![0.0; p.value.len()])
            .collect();
        let mut loss_sum = 0.0f64;
        for seqs in micro_batches {
            let mut tape = Tape::new();
            let vars = model.bind(&mut tape);
            let loss = model.loss(&mut tape, &vars, seqs, scale)?;
            loss_sum += tape.value(loss)[0] as f64;
            let g = tape.backward(loss);
            for (acc, &v) in grads.iter_mut().zip(&vars) {
                if let Some(gv) = g.get(v) {
                    crate::backend::cpu::ops::add_in_place(acc, gv);
                }
            }
        }
        drop(model);
        let grad_norm = {
            let mut refs: Vec<&mut [f32]> = grads.iter_mut().map(|g| g.as_mut_slice()).collect();
            clip_grad_norm(&mut refs, max_grad_norm)
        };
        check_grad_norm(grad_norm)?;
        let grad_refs: Vec<&[f32]> = grads.iter().map(|g| g.as_slice()).collect();
        match &mut self.params {
            Store::F32(v) => {
                let mut muts: Vec<ParamMut> = v
                    .iter_mut()
                    .map(|p| {
                        ParamMut::F32(
                            Arc::get_mut(p)
                                .expect("no tape holds the parameters now")
                                .as_mut_slice(),
                        )
                    })
                    .collect();
                self.optimizer.step(&mut muts, &grad_refs, lr);
            }
            Store::BF16(v) => {
                let mut muts: Vec<ParamMut> = v
                    .iter_mut()
                    .map(|p| ParamMut::BF16(p.as_mut_slice()))
                    .collect();
                self.optimizer.step(&mut muts, &grad_refs, lr);
            }
        }
        Ok((loss_sum, grad_norm))
    }

    fn write_tensors(&self, dir: Option<&Path>, layout: &[(String, Vec<usize>)]) -> Result<()> {
        let Some(dir) = dir else {
            return Ok(());
        };
        let params: Vec<ParamValues> = match &self.params {
            Store::F32(v) => v.iter().map(|p| ParamValues::F32(p)).collect(),
            Store::BF16(v) => v.iter().map(|p| ParamValues::BF16(p)).collect(),
        };
        let state = self.optimizer.state_tensors();
        checkpoint::write_checkpoint_tensors(
            dir,
            layout,
            params,
            state.iter().map(|(name, v)| (name, &v[..])),
        )
    }
}
