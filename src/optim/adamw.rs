//! AdamW as `torch.optim.AdamW` (single-tensor path, no AMSGrad, minimising), with fp32 master
//! weights for bf16 parameters.
//!
//! torch's `_single_tensor_adam` with `decoupled_weight_decay=True`, per parameter, at step t:
//!
//! ```text
//! p ← p · (1 − lr·λ)                                   param.mul_(1 - lr * weight_decay)
//! m ← m + (1 − β1)·(g − m)                             exp_avg.lerp_(grad, 1 - beta1)
//! v ← v·β2 + ((1 − β2)·g)·g                            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
//! step_size = lr / (1 − β1^t)
//! denom = √v / √(1 − β2^t) + ε                         (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
//! p ← p + ((−step_size)·m) / denom                     param.addcdiv_(exp_avg, denom, value=-step_size)
//! ```
//!
//! The scalars (`1 - lr*λ`, `1 - β1`, `step_size`, `√(1 − β2^t)`) are Python floats, computed in
//! f64 and rounded to f32 where they meet the f32 tensors; the element-wise work is f32, one
//! rounding per tensor operation in the order above, as in torch's scalar CPU kernels (torch's
//! vectorised lerp uses a fused multiply-add, so results may differ from it in the last bit).
//!
//! One weight decay for all parameters: open-instruct exempts names containing "bias" or
//! "layer_norm.weight", which no Llama or OLMo parameter matches ("input_layernorm.weight"
//! does not), and the paper's weight decay is 0 anyway.

use super::{as_python_float, ParamMut, ParamRef};
use crate::backend::cpu::parallel::parallel_chunks_mut;
use crate::bail;
use crate::error::{Context, Result};
use half::bf16;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

/// Elements per parallel task: large enough that scheduling costs nothing next to the update
/// (a few ns per element), small enough to balance parameters of very different sizes.
const CHUNK: usize = 1 << 15;

/// The name of the step counter among [`AdamW::state_tensors`].
pub const STEP_TENSOR: &str = "step";

/// Hyperparameters; the defaults are torch's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Base learning rate (what a schedule scales); [`AdamW::step`] takes the lr of each step.
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled weight decay λ: each step multiplies parameters by (1 − lr·λ).
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    /// The checks of torch's `Adam.__init__`, with its messages.
    pub fn validate(&self) -> Result<()> {
        let c = self;
        // Written so that NaN fails every check.
        let non_negative = |x: f32| x >= 0.0;
        let unit = |x: f32| (0.0..1.0).contains(&x);
        if !non_negative(c.lr) {
            bail!("AdamW: invalid learning rate: {}", c.lr);
        }
        if !non_negative(c.eps) {
            bail!("AdamW: invalid epsilon value: {}", c.eps);
        }
        if !unit(c.beta1) {
            bail!("AdamW: invalid beta parameter at index 0: {}", c.beta1);
        }
        if !unit(c.beta2) {
            bail!("AdamW: invalid beta parameter at index 1: {}", c.beta2);
        }
        if !non_negative(c.weight_decay) {
            bail!("AdamW: invalid weight_decay value: {}", c.weight_decay);
        }
        Ok(())
    }
}

/// What the optimizer keeps for one parameter.
struct ParamState {
    name: String,
    len: usize,
    /// First moment m (torch's `exp_avg`).
    exp_avg: Vec<f32>,
    /// Second moment v (torch's `exp_avg_sq`).
    exp_avg_sq: Vec<f32>,
    /// fp32 master weights of a bf16 parameter; `None` when the parameter itself is f32.
    master: Option<Vec<f32>>,
}

/// AdamW over a fixed, ordered list of named parameters.
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<ParamState>,
    /// Steps taken (torch's `state["step"]`); step t of the bias corrections is `step + 1`.
    step: u64,
}

impl std::fmt::Debug for AdamW {
    /// A summary: the config, the step and the parameters' names and sizes, not the values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let params: Vec<(&str, usize, &str)> = self
            .params
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.len,
                    if p.master.is_some() { "bf16" } else { "f32" },
                )
            })
            .collect();
        f.debug_struct("AdamW")
            .field("config", &self.config)
            .field("step", &self.step)
            .field("params", &params)
            .finish()
    }
}

/// The f32 scalars of one step (see the module comment for where each enters).
pub(crate) struct StepScalars {
    /// 1 − lr·λ.
    pub(crate) decay: f32,
    /// 1 − β1, the lerp weight.
    pub(crate) lerp_weight: f32,
    /// torch's lerp computes `end − (end − self)·(1 − w)` when |w| ≥ 0.5 (β1 ≤ 0.5).
    pub(crate) lerp_small: bool,
    pub(crate) beta2: f32,
    pub(crate) one_minus_beta2: f32,
    pub(crate) bias_correction2_sqrt: f32,
    pub(crate) eps: f32,
    /// −lr / (1 − β1^t).
    pub(crate) neg_step_size: f32,
}

impl StepScalars {
    pub(crate) fn new(config: &AdamWConfig, lr: f32, t: u64) -> StepScalars {
        let lr = as_python_float(lr);
        let weight_decay = as_python_float(config.weight_decay);
        let beta1 = as_python_float(config.beta1);
        let beta2 = as_python_float(config.beta2);
        // torch keeps t in an f32 tensor and reads it back as a Python float.
        let t = t as f32 as f64;
        let bias_correction1 = 1.0 - beta1.powf(t);
        let bias_correction2 = 1.0 - beta2.powf(t);
        let lerp_weight = (1.0 - beta1) as f32;
        StepScalars {
            decay: (1.0 - lr * weight_decay) as f32,
            lerp_weight,
            lerp_small: lerp_weight.abs() < 0.5,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            bias_correction2_sqrt: bias_correction2.sqrt() as f32,
            eps: as_python_float(config.eps) as f32,
            neg_step_size: (-(lr / bias_correction1)) as f32,
        }
    }

    /// One element's update: returns the new parameter, updates the moments in place.
    #[inline(always)]
    pub(crate) fn update(&self, p: f32, g: f32, m: &mut f32, v: &mut f32) -> f32 {
        let p = p * self.decay;
        *m = if self.lerp_small {
            *m + self.lerp_weight * (g - *m)
        } else {
            g - (g - *m) * (1.0 - self.lerp_weight)
        };
        *v = *v * self.beta2 + (self.one_minus_beta2 * g) * g;
        let denom = v.sqrt() / self.bias_correction2_sqrt + self.eps;
        p + (self.neg_step_size * *m) / denom
    }
}

/// Where a chunk's updated values go.
enum Target<'a> {
    /// An f32 parameter, updated in place.
    F32(&'a mut [f32]),
    /// A bf16 parameter: the master is updated, then rounded into the stored values.
    Bf16 {
        master: &'a mut [f32],
        stored: &'a mut [bf16],
    },
}

/// A contiguous run of one parameter: the unit of parallel work.
struct Chunk<'a> {
    target: Target<'a>,
    grad: &'a [f32],
    exp_avg: &'a mut [f32],
    exp_avg_sq: &'a mut [f32],
}

impl Chunk<'_> {
    fn run(&mut self, s: &StepScalars) {
        let moments = self.exp_avg.iter_mut().zip(self.exp_avg_sq.iter_mut());
        match &mut self.target {
            Target::F32(p) => {
                for ((p, &g), (m, v)) in p.iter_mut().zip(self.grad).zip(moments) {
                    *p = s.update(*p, g, m, v);
                }
            }
            Target::Bf16 { master, stored } => {
                for (((p, out), &g), (m, v)) in master
                    .iter_mut()
                    .zip(stored.iter_mut())
                    .zip(self.grad)
                    .zip(moments)
                {
                    *p = s.update(*p, g, m, v);
                    // Round to nearest even, as torch's `.to(torch.bfloat16)`.
                    *out = bf16::from_f32(*p);
                }
            }
        }
    }
}

impl AdamW {
    /// An optimizer over `params` (name, current values), in the order that [`AdamW::step`]
    /// will receive them. Moments start at zero; a bf16 parameter gets an fp32 master copy of
    /// its values. Fails on an invalid config or a repeated name.
    pub fn new<'a>(
        config: AdamWConfig,
        params: impl IntoIterator<Item = (String, ParamRef<'a>)>,
    ) -> Result<AdamW> {
        config.validate()?;
        let mut seen = HashSet::new();
        let mut states = Vec::new();
        for (name, values) in params {
            if name == STEP_TENSOR {
                bail!("AdamW: parameter name {name:?} is reserved for the step counter");
            }
            if !seen.insert(name.clone()) {
                bail!("AdamW: parameter {name} is listed twice");
            }
            let len = values.len();
            let master = match values {
                ParamRef::F32(_) => None,
                ParamRef::BF16(v) => Some(v.iter().map(|x| x.to_f32()).collect()),
            };
            states.push(ParamState {
                name,
                len,
                exp_avg: vec![0.0; len],
                exp_avg_sq: vec![0.0; len],
                master,
            });
        }
        Ok(AdamW {
            config,
            params: states,
            step: 0,
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Optimizer steps taken so far (restored by [`AdamW::load_state`]).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The parameter names, in order.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.name.as_str())
    }

    /// The fp32 master weights of bf16 parameter `name` (None for f32 or unknown parameters).
    pub fn master(&self, name: &str) -> Option<&[f32]> {
        self.params
            .iter()
            .find(|p| p.name == name)?
            .master
            .as_deref()
    }

    /// One AdamW step at learning rate `lr` (the schedule's value for this step): `params[i]`
    /// and `grads[i]` belong to the i-th parameter given to [`AdamW::new`]. Gradients should
    /// already be accumulated and clipped.
    ///
    /// Panics when the number, lengths or dtypes of `params` and `grads` differ from those at
    /// creation: that is a bug in the caller, not a condition of the data.
    pub fn step(&mut self, params: &mut [ParamMut], grads: &[&[f32]], lr: f32) {
        assert_eq!(
            (params.len(), grads.len()),
            (self.params.len(), self.params.len()),
            "AdamW::step: expected {n} parameters and {n} gradients",
            n = self.params.len()
        );
        self.step += 1;
        let scalars = StepScalars::new(&self.config, lr, self.step);

        let mut chunks = Vec::new();
        for ((state, param), &grad) in self.params.iter_mut().zip(params.iter_mut()).zip(grads) {
            let name = &state.name;
            assert!(
                param.len() == state.len && grad.len() == state.len,
                "AdamW::step: parameter {name} has {} elements and its gradient {}, expected {}",
                param.len(),
                grad.len(),
                state.len
            );
            let moments = state
                .exp_avg
                .chunks_mut(CHUNK)
                .zip(state.exp_avg_sq.chunks_mut(CHUNK));
            let grads = grad.chunks(CHUNK);
            match (param, &mut state.master) {
                (ParamMut::F32(p), None) => {
                    for ((p, g), (m, v)) in p.chunks_mut(CHUNK).zip(grads).zip(moments) {
                        chunks.push(Chunk {
                            target: Target::F32(p),
                            grad: g,
                            exp_avg: m,
                            exp_avg_sq: v,
                        });
                    }
                }
                (ParamMut::BF16(stored), Some(master)) => {
                    let targets = master.chunks_mut(CHUNK).zip(stored.chunks_mut(CHUNK));
                    for (((master, stored), g), (m, v)) in targets.zip(grads).zip(moments) {
                        let target = Target::Bf16 { master, stored };
                        chunks.push(Chunk {
                            target,
                            grad: g,
                            exp_avg: m,
                            exp_avg_sq: v,
                        });
                    }
                }
                (p, master) => panic!(
                    "AdamW::step: parameter {name} was created as {} but is now given as {}",
                    if master.is_some() { "bf16" } else { "f32" },
                    if matches!(p, ParamMut::BF16(_)) {
                        "bf16"
                    } else {
                        "f32"
                    },
                ),
            }
        }
        // Element-wise and independent, so the result does not depend on the split.
        parallel_chunks_mut(&mut chunks, 1, |_, c| c[0].run(&scalars));
    }

    /// The optimizer state for a checkpoint, borrowed where possible: `exp_avg.NAME`,
    /// `exp_avg_sq.NAME` and, for bf16 parameters, `master.NAME` (all fp32, flat), plus `step`,
    /// one element holding the step count (an f32, as torch stores it; exact below 2^24).
    pub fn state_tensors(&self) -> Vec<(String, Cow<'_, [f32]>)> {
        let mut out = Vec::with_capacity(3 * self.params.len() + 1);
        for p in &self.params {
            out.push((format!("exp_avg.{}", p.name), Cow::Borrowed(&p.exp_avg[..])));
            out.push((
                format!("exp_avg_sq.{}", p.name),
                Cow::Borrowed(&p.exp_avg_sq[..]),
            ));
            if let Some(master) = &p.master {
                out.push((format!("master.{}", p.name), Cow::Borrowed(&master[..])));
            }
        }
        out.push((STEP_TENSOR.to_string(), Cow::Owned(vec![self.step as f32])));
        out
    }

    /// Restores what [`AdamW::state_tensors`] saved. Every expected tensor must be present with
    /// the parameter's size, and nothing else; on any error the state is left unchanged.
    pub fn load_state(&mut self, tensors: &HashMap<String, Vec<f32>>) -> Result<()> {
        let step = match tensors.get(STEP_TENSOR).map(|v| v.as_slice()) {
            Some(&[s]) if s >= 0.0 && s.fract() == 0.0 && s < (1u32 << 24) as f32 => s as u64,
            Some(v) => bail!(
                "optimizer state: {STEP_TENSOR} must be one whole number below 2^24, got {v:?}"
            ),
            None => bail!("optimizer state: no {STEP_TENSOR} tensor"),
        };
        let fetch = |key: String, len: usize| -> Result<&Vec<f32>> {
            let v = tensors
                .get(&key)
                .with_context(|| format!("optimizer state: no tensor {key}"))?;
            if v.len() != len {
                bail!(
                    "optimizer state: {key} has {} elements, the parameter has {len}",
                    v.len()
                );
            }
            Ok(v)
        };
        let mut expected = HashSet::from([STEP_TENSOR.to_string()]);
        let mut loaded = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let exp_avg = fetch(format!("exp_avg.{}", p.name), p.len)?;
            let exp_avg_sq = fetch(format!("exp_avg_sq.{}", p.name), p.len)?;
            let master_key = format!("master.{}", p.name);
            let master = match (&p.master, tensors.contains_key(&master_key)) {
                (Some(_), _) => Some(fetch(master_key.clone(), p.len)?),
                (None, false) => None,
                (None, true) => bail!(
                    "optimizer state: {master_key} holds fp32 master weights of a bf16 parameter, \
                     but {} is f32 here (load the checkpoint with the precision it was trained in)",
                    p.name
                ),
            };
            expected.extend([
                format!("exp_avg.{}", p.name),
                format!("exp_avg_sq.{}", p.name),
                master_key,
            ]);
            loaded.push((exp_avg, exp_avg_sq, master));
        }
        let mut unexpected: Vec<&String> =
            tensors.keys().filter(|k| !expected.contains(*k)).collect();
        if !unexpected.is_empty() {
            unexpected.sort();
            bail!("optimizer state: unexpected tensors (not parameters of this model?): {unexpected:?}");
        }
        for (p, (exp_avg, exp_avg_sq, master)) in self.params.iter_mut().zip(loaded) {
            p.exp_avg.copy_from_slice(exp_avg);
            p.exp_avg_sq.copy_from_slice(exp_avg_sq);
            if let (Some(dst), Some(src)) = (&mut p.master, master) {
                dst.copy_from_slice(src);
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_is_sign_times_lr() {
        // At t = 1, m̂ = g and √v̂ = |g|, so the update is −lr·g/(|g| + ε) ≈ −lr·sign(g).
        let config = AdamWConfig {
            weight_decay: 0.0,
            ..AdamWConfig::default()
        };
        let mut p = vec![1.0f32, -2.0, 0.5];
        let mut opt = AdamW::new(config, [("w".to_string(), ParamRef::F32(&p))]).unwrap();
        opt.step(&mut [ParamMut::F32(&mut p)], &[&[0.3, -4.0, 0.0]], 0.01);
        assert_eq!(opt.step_count(), 1);
        assert!((p[0] - 0.99).abs() < 1e-6, "{p:?}");
        assert!((p[1] + 1.99).abs() < 1e-6, "{p:?}");
        assert_eq!(
            p[2], 0.5,
            "a zero gradient leaves the parameter (without decay)"
        );
    }

    #[test]
    fn invalid_configs_are_refused() {
        for bad in [
            AdamWConfig {
                lr: -1.0,
                ..AdamWConfig::default()
            },
            AdamWConfig {
                beta1: 1.0,
                ..AdamWConfig::default()
            },
            AdamWConfig {
                beta2: f32::NAN,
                ..AdamWConfig::default()
            },
            AdamWConfig {
                eps: -1e-8,
                ..AdamWConfig::default()
            },
            AdamWConfig {
                weight_decay: -0.1,
                ..AdamWConfig::default()
            },
        ] {
            assert!(AdamW::new(bad, []).is_err(), "{bad:?}");
        }
        let twice = [
            ("a".to_string(), ParamRef::F32(&[0.0])),
            ("a".to_string(), ParamRef::F32(&[0.0])),
        ];
        assert!(AdamW::new(AdamWConfig::default(), twice)
            .unwrap_err()
            .0
            .contains("listed twice"));
    }

    #[test]
    #[should_panic(expected = "created as f32 but is now given as bf16")]
    fn dtype_change_panics() {
        let p = [0.0f32; 2];
        let mut opt = AdamW::new(
            AdamWConfig::default(),
            [("w".to_string(), ParamRef::F32(&p))],
        )
        .unwrap();
        let mut b = [bf16::ZERO; 2];
        opt.step(&mut [ParamMut::BF16(&mut b)], &[&[1.0, 1.0]], 1e-3);
    }
}
