//! Full finetuning on the GPU. [`CudaTrainer`] keeps everything a step touches on the GPU:
//! the parameters as bf16 (what the matrix products and the embedding read), fp32 master
//! weights, fp32 AdamW moments and fp32 gradients (or, by [`OptimizerPlacement`], the master
//! and moments in host memory, or no master and bf16 moments with stochastic rounding).
//! [`CudaTrainer::accumulate`] runs one micro-batch's forward and backward (trainer/pass.rs) and
//! adds its gradients;
//! [`CudaTrainer::step`] computes the global gradient norm on the GPU, and applies the clipped
//! AdamW update to every parameter (kernels/adamw.cu); only the norm comes back to the host.
//!
//! The computation is `model::train::TrainModel::loss` followed by `optim::clip_grad_norm` and
//! `optim::AdamW::step` in bf16 precision (the paper's setting), with bf16 matrix-product inputs
//! and f32 residual stream, statistics and accumulations; tests/cuda_train.rs compares loss,
//! gradients and updated parameters with the CPU. The optimizer state is saved and restored
//! under the CPU optimizer's tensor names, so a checkpoint resumes on either device.

mod optimizer;
mod pass;

use crate::backend::cuda::{AdamWStep, Communicator, CudaBackend, DeviceBuffer};
use crate::bail;
use crate::error::{Context, Result};
use crate::io::safetensors::WeightStore;
use crate::model::cuda::upload_bf16;
use crate::model::train::{parameter_layout, TrainSequence};
use crate::model::{Architecture, ModelConfig};
use crate::optim::{stochastic_rounding_key, AdamWConfig};
use crate::train::plan::{Checkpointing, OptimizerPlacement, LOGITS_CHUNK_BYTES};
use half::bf16;
use optimizer::OptimizerState;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The optimizer-state tensor holding the step count (as `optim::AdamW` names it).
const STEP_TENSOR: &str = "step";

/// Positions of one layer's parameters in `parameter_layout` order.
#[derive(Clone, Debug)]
struct LayerParams {
    /// Llama's RMSNorm weights; None for OLMo's parameter-free LayerNorm.
    attn_norm: Option<usize>,
    q: usize,
    k: usize,
    v: usize,
    o: usize,
    mlp_norm: Option<usize>,
    gate: usize,
    up: usize,
    down: usize,
}

/// Positions of every parameter in `parameter_layout` order.
#[derive(Clone, Debug)]
struct ParamIndex {
    embed: usize,
    layers: Vec<LayerParams>,
    final_norm: Option<usize>,
    /// The LM head: the embedding's position when tied.
    head: usize,
    count: usize,
}

impl ParamIndex {
    fn new(c: &ModelConfig) -> ParamIndex {
        let llama = c.arch == Architecture::Llama;
        let mut count = 0;
        let mut next = || {
            count += 1;
            count - 1
        };
        let embed = next();
        // Fields are evaluated in the order written, which is parameter_layout's.
        let layers = (0..c.num_layers)
            .map(|_| LayerParams {
                attn_norm: llama.then(&mut next),
                q: next(),
                k: next(),
                v: next(),
                o: next(),
                mlp_norm: llama.then(&mut next),
                gate: next(),
                up: next(),
                down: next(),
            })
            .collect();
        let final_norm = llama.then(&mut next);
        let head = if c.tie_word_embeddings { embed } else { next() };
        ParamIndex {
            embed,
            layers,
            final_norm,
            head,
            count,
        }
    }
}

/// How a trainer is set up: the optimizer, where its state lives, and the data-parallel ranks
/// it belongs to.
#[derive(Debug)]
pub struct TrainerSetup {
    pub adamw: AdamWConfig,
    pub placement: OptimizerPlacement,
    /// Data parallelism: each rank runs its share of the micro-batches, gradients are summed
    /// over the ranks, and each parameter's optimizer state lives on one rank only (its
    /// owner), which updates it and broadcasts the new values. None: one GPU.
    ///
    /// Every collective needs every rank: a rank that fails before one (out of memory, a token
    /// outside the vocabulary in its share) returns its error while the others wait in the
    /// collective. `train --gpus N` (src/train/launch.rs) stops the other ranks when one exits
    /// with an error; a program driving ranks itself must do the same.
    pub parallel: Option<Communicator>,
    /// Seed of the stochastic rounding of [`OptimizerPlacement::Bf16`] (with the step and the
    /// parameter's position: `optim::stochastic_rounding_key`); unused by the other placements.
    pub seed: u64,
}

impl TrainerSetup {
    /// One GPU, the optimizer state on it.
    pub fn new(adamw: AdamWConfig) -> TrainerSetup {
        TrainerSetup {
            adamw,
            placement: OptimizerPlacement::Device,
            parallel: None,
            seed: 0,
        }
    }
}

/// The ranks of data parallelism, and which rank owns each parameter's optimizer state.
struct Parallel {
    comm: Communicator,
    owner: Vec<usize>,
}

/// Owners of the parameters (given by size) over `world` ranks: largest first, each to the
/// rank with the fewest elements so far (ties to the lowest rank), so every rank holds about
/// 1/world of the state and all ranks compute the same assignment.
fn owners(sizes: &[usize], world: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(sizes[i]), i));
    let mut load = vec![0usize; world.max(1)];
    let mut owner = vec![0; sizes.len()];
    for i in order {
        let rank = (0..load.len()).min_by_key(|&r| (load[r], r)).unwrap_or(0);
        owner[i] = rank;
        load[rank] += sizes[i];
    }
    owner
}

/// A model being trained on the GPU (see the module docs).
pub struct CudaTrainer<'g> {
    gpu: &'g CudaBackend,
    pub config: ModelConfig,
    adamw: AdamWConfig,
    names: Vec<String>,
    index: ParamIndex,
    /// bf16 parameters, in `parameter_layout` order.
    values: Vec<DeviceBuffer<bf16>>,
    /// f32 copies of the 1-D parameters (the norm weights) for the norm kernels; None for the
    /// matrices.
    norm_values: Vec<Option<DeviceBuffer<f32>>>,
    /// Each parameter's fp32 master weights and moments (on the GPU or the host), or its bf16
    /// moments.
    optimizer: Vec<OptimizerState>,
    /// Seed of the bf16 state's stochastic rounding.
    seed: u64,
    grads: Vec<DeviceBuffer<f32>>,
    /// [‖g‖, clip coefficient] of the last step (kernels/adamw.cu's grad_norm_finalize).
    clip: DeviceBuffer<f32>,
    /// Optimizer steps taken.
    steps: u64,
    parallel: Option<Parallel>,
    /// Rows of vocabulary-sized logits held at once by the loss (bounds its memory).
    pub logits_chunk_rows: usize,
    /// Activation checkpointing: which layers keep only their input from the forward and run
    /// their forward again in the backward (the last layers keep everything; see
    /// `train::plan` for what each costs and how `auto` chooses).
    pub checkpointing: Checkpointing,
}

impl std::fmt::Debug for CudaTrainer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaTrainer")
            .field("gpu", self.gpu)
            .field("config", &self.config)
            .field("steps", &self.steps)
            .finish()
    }
}

impl<'g> CudaTrainer<'g> {
    /// Loads the parameters of a Hugging Face model folder (or a training checkpoint) onto the
    /// GPU, one tensor at a time, rounded to bf16; masters are their exact f32 widening and the
    /// moments start at zero, as `optim::AdamW::new` for bf16 parameters; see [`TrainerSetup`]
    /// for where they live.
    pub fn from_dir(
        gpu: &'g CudaBackend,
        config: ModelConfig,
        dir: &Path,
        setup: TrainerSetup,
    ) -> Result<CudaTrainer<'g>> {
        let store = WeightStore::open(dir)?;
        CudaTrainer::build(gpu, config, setup, |name, shape| {
            upload_bf16(gpu, &store.get(name, shape, dir)?)
        })
    }

    /// A trainer over given parameter values (in `parameter_layout` order), rounded to bf16,
    /// with the optimizer state on the GPU.
    pub fn from_values(
        gpu: &'g CudaBackend,
        config: ModelConfig,
        values: &[Vec<f32>],
        adamw: AdamWConfig,
    ) -> Result<CudaTrainer<'g>> {
        let layout = parameter_layout(&config);
        if values.len() != layout.len() {
            bail!(
                "{} parameter tensors given, the model has {}",
                values.len(),
                layout.len()
            );
        }
        let mut next = values.iter();
        CudaTrainer::from_fn(gpu, config, TrainerSetup::new(adamw), |_, _| {
            let v = next
                .next()
                .expect("as many values as the layout, checked above");
            Ok(v.iter().map(|&x| bf16::from_f32(x)).collect())
        })
    }

    /// A trainer whose parameters `values(name, shape)` gives one at a time, in
    /// `parameter_layout` order (so that no host copy of the whole model is needed).
    pub fn from_fn(
        gpu: &'g CudaBackend,
        config: ModelConfig,
        setup: TrainerSetup,
        mut values: impl FnMut(&str, &[usize]) -> Result<Vec<bf16>>,
    ) -> Result<CudaTrainer<'g>> {
        CudaTrainer::build(gpu, config, setup, |name, shape| {
            let v = values(name, shape)?;
            if v.len() != shape.iter().product::<usize>() {
                bail!(
                    "parameter {name} of shape {shape:?} given {} values",
                    v.len()
                );
            }
            gpu.upload(&v)
        })
    }

    fn build(
        gpu: &'g CudaBackend,
        config: ModelConfig,
        setup: TrainerSetup,
        mut load: impl FnMut(&str, &[usize]) -> Result<DeviceBuffer<bf16>>,
    ) -> Result<CudaTrainer<'g>> {
        let TrainerSetup {
            adamw,
            placement,
            parallel,
            seed,
        } = setup;
        adamw.validate()?;
        let layout = parameter_layout(&config);
        let parallel = parallel.map(|comm| {
            let sizes: Vec<usize> = layout.iter().map(|(_, s)| s.iter().product()).collect();
            let owner = owners(&sizes, comm.world());
            Parallel { comm, owner }
        });
        let index = ParamIndex::new(&config);
        debug_assert_eq!(index.count, layout.len());
        let n = layout.len();
        let mut t = CudaTrainer {
            gpu,
            adamw,
            names: Vec::with_capacity(n),
            index,
            values: Vec::with_capacity(n),
            norm_values: Vec::with_capacity(n),
            optimizer: Vec::with_capacity(n),
            seed,
            grads: Vec::with_capacity(n),
            clip: gpu.zeros(2)?,
            steps: 0,
            parallel,
            logits_chunk_rows: (LOGITS_CHUNK_BYTES as usize / (4 * config.vocab_size.max(1)))
                .max(1),
            checkpointing: Checkpointing::Off,
            config,
        };
        for (i, (name, shape)) in layout.into_iter().enumerate() {
            let value = load(&name, &shape)?;
            let owned = t.owns(i);
            let len = value.len();
            t.norm_values.push(if shape.len() == 1 {
                let mut f = gpu.alloc::<f32>(len)?;
                gpu.convert_to_f32(&value, &mut f)?;
                Some(f)
            } else {
                None
            });
            t.optimizer
                .push(OptimizerState::new(gpu, &value, placement, owned)?);
            t.values.push(value);
            t.grads.push(gpu.zeros(len)?);
            t.names.push(name);
        }
        gpu.synchronize()?;
        Ok(t)
    }

    /// Whether this rank keeps and updates parameter `i`'s optimizer state.
    fn owns(&self, i: usize) -> bool {
        self.parallel
            .as_ref()
            .is_none_or(|p| p.owner[i] == p.comm.rank())
    }

    /// This process's rank and the number of ranks (0 of 1 without data parallelism).
    pub fn rank(&self) -> (usize, usize) {
        self.parallel
            .as_ref()
            .map_or((0, 1), |p| (p.comm.rank(), p.comm.world()))
    }

    /// `x` summed over the ranks (x itself on one GPU).
    pub fn sum_over_ranks(&self, x: f64) -> Result<f64> {
        match &self.parallel {
            Some(p) => p.comm.sum_scalar(self.gpu, x),
            None => Ok(x),
        }
    }

    /// The backend the trainer runs on.
    pub fn gpu(&self) -> &'g CudaBackend {
        self.gpu
    }

    /// Parameter names, in `parameter_layout` order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Optimizer steps taken (restored by [`CudaTrainer::load_state`]).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Sets every gradient to zero (the start of an optimizer step).
    pub fn zero_grads(&mut self) -> Result<()> {
        self.gpu.profile_phase("zero_grads");
        for g in &mut self.grads {
            self.gpu.fill_zeros(g)?;
        }
        Ok(())
    }

    /// One micro-batch: the loss of `batch` as `TrainModel::loss` defines it (each sequence's
    /// mean token cross-entropy, summed and times `scale`), its gradients added to the
    /// accumulated ones. Returns the loss.
    pub fn accumulate(&mut self, batch: &[TrainSequence], scale: f64) -> Result<f64> {
        self.forward_backward(batch, scale)
    }

    /// The accumulated gradients, in `parameter_layout` order (for tests and inspection).
    pub fn gradients(&self) -> Result<Vec<Vec<f32>>> {
        self.grads.iter().map(|g| self.gpu.download(g)).collect()
    }

    /// Clips the accumulated gradients to a global norm of `max_grad_norm` and applies one
    /// AdamW step at learning rate `lr`; returns the norm before clipping. A non-finite norm
    /// changes nothing (the caller stops): the same contract as `optim::clip_grad_norm`.
    pub fn step(&mut self, lr: f32, max_grad_norm: f32) -> Result<f32> {
        let gpu = self.gpu;
        gpu.profile_phase("optimizer");
        if let Some(p) = &self.parallel {
            // Each rank ran its share of the micro-batches: the step's gradient is the sum.
            p.comm.group(|| {
                self.grads
                    .iter_mut()
                    .try_for_each(|g| p.comm.all_reduce_sum(gpu, g))
            })?;
        }
        let grads: Vec<&DeviceBuffer<f32>> = self.grads.iter().collect();
        gpu.grad_norm(&grads, max_grad_norm, &mut self.clip)?;
        let norm = gpu.download(&self.clip)?[0];
        if !norm.is_finite() {
            return Ok(norm);
        }
        let t = self.steps + 1;
        let scalars = AdamWStep::new(&self.adamw, lr, t);
        // The parameter's position, the same on every rank: one GPU and data parallelism draw
        // the same roundings.
        let key = |i: usize| stochastic_rounding_key(self.seed, t, i as u64);
        // One launch for all parameters whose state is on the GPU (bit-identical to the
        // per-tensor kernels); state kept on the host takes the per-tensor path, which stages it.
        let multi: Option<Vec<_>> = self
            .optimizer
            .iter_mut()
            .zip(self.values.iter_mut())
            .zip(&self.grads)
            .enumerate()
            .map(|(i, ((state, value), grad))| state.multi_operands(value, grad, key(i)))
            .collect();
        match multi {
            Some(operands) => {
                let operands: Vec<_> = operands.into_iter().flatten().collect();
                gpu.adamw_step_multi(operands, Some(&self.clip), &scalars)?;
            }
            None => {
                for i in 0..self.values.len() {
                    self.optimizer[i].step(
                        gpu,
                        &mut self.values[i],
                        &self.grads[i],
                        &self.clip,
                        &scalars,
                        key(i),
                    )?;
                }
            }
        }
        if let Some(p) = &self.parallel {
            // Every rank gets the values their owners computed.
            p.comm.group(|| {
                self.values
                    .iter_mut()
                    .zip(&p.owner)
                    .try_for_each(|(v, &owner)| p.comm.broadcast(gpu, v, owner))
            })?;
        }
        for (value, f) in self.values.iter().zip(&mut self.norm_values) {
            if let Some(f) = f {
                gpu.convert_to_f32(value, f)?;
            }
        }
        self.steps += 1;
        Ok(norm)
    }

    /// The bf16 parameters, in `parameter_layout` order.
    pub fn parameter_values(&self) -> Result<Vec<Vec<bf16>>> {
        self.values.iter().map(|v| self.gpu.download(v)).collect()
    }

    /// The optimizer state under `optim::AdamW::state_tensors`' names: `exp_avg.NAME`,
    /// `exp_avg_sq.NAME`, `master.NAME` and `step`, all f32 (bf16 state: the moments widened,
    /// the master the parameter widened, so that any trainer can resume from it). With data
    /// parallelism this is collective (every rank must call it): the owners send their parts
    /// to rank 0, which returns the whole state; the other ranks return nothing.
    pub fn state_tensors(&self) -> Result<Vec<(String, Vec<f32>)>> {
        let gpu = self.gpu;
        let mut out = Vec::with_capacity(3 * self.names.len() + 1);
        for (i, (name, state)) in self.names.iter().zip(&self.optimizer).enumerate() {
            let [master, exp_avg, exp_avg_sq] = match &self.parallel {
                None => state.download(gpu, &self.values[i])?,
                Some(p) => {
                    let (owner, rank) = (p.owner[i], p.comm.rank());
                    let mut parts = if owner == rank {
                        state.device_copies(gpu, &self.values[i])?
                    } else {
                        let n = self.values[i].len();
                        [gpu.alloc(n)?, gpu.alloc(n)?, gpu.alloc(n)?]
                    };
                    for part in &mut parts {
                        p.comm.broadcast(gpu, part, owner)?;
                    }
                    if rank != 0 {
                        continue;
                    }
                    let [a, b, c] = parts;
                    [gpu.download(&a)?, gpu.download(&b)?, gpu.download(&c)?]
                }
            };
            out.push((format!("exp_avg.{name}"), exp_avg));
            out.push((format!("exp_avg_sq.{name}"), exp_avg_sq));
            out.push((format!("master.{name}"), master));
        }
        if self.rank().0 == 0 {
            out.push((STEP_TENSOR.to_string(), vec![self.steps as f32]));
        }
        Ok(out)
    }

    /// Restores what [`CudaTrainer::state_tensors`] (or the CPU optimizer in bf16 precision)
    /// saved: every expected tensor must be there with its parameter's size, and nothing else.
    /// The master weights replace the parameters' values (rounded to bf16), as on the CPU;
    /// bf16 state rounds the moments to nearest even too. Checked in full before anything
    /// changes.
    pub fn load_state(&mut self, tensors: &HashMap<String, Vec<f32>>) -> Result<()> {
        let steps = match tensors.get(STEP_TENSOR).map(|v| v.as_slice()) {
            Some(&[s]) if s >= 0.0 && s.fract() == 0.0 && s < (1u32 << 24) as f32 => s as u64,
            Some(v) => bail!(
                "optimizer state: {STEP_TENSOR} must be one whole number below 2^24, got {v:?}"
            ),
            None => bail!("optimizer state: no {STEP_TENSOR} tensor"),
        };
        let mut expected = HashSet::from([STEP_TENSOR.to_string()]);
        let mut found = Vec::with_capacity(self.names.len());
        for (i, name) in self.names.iter().enumerate() {
            let len = self.values[i].len();
            let mut fetch = |kind: &str| -> Result<&Vec<f32>> {
                let key = format!("{kind}.{name}");
                let v = tensors
                    .get(&key)
                    .with_context(|| format!("optimizer state: no tensor {key}"))?;
                if v.len() != len {
                    bail!(
                        "optimizer state: {key} has {} elements, the parameter has {len}",
                        v.len()
                    );
                }
                expected.insert(key);
                Ok(v)
            };
            found.push((fetch("exp_avg")?, fetch("exp_avg_sq")?, fetch("master")?));
        }
        if let Some(extra) = tensors.keys().find(|k| !expected.contains(*k)) {
            bail!("optimizer state: unexpected tensor {extra} (a model of another shape?)");
        }
        let gpu = self.gpu;
        for (i, (m, v, master)) in found.into_iter().enumerate() {
            self.optimizer[i].upload(gpu, [master, m, v])?;
            let rounded: Vec<bf16> = master.iter().map(|&x| bf16::from_f32(x)).collect();
            gpu.upload_into(&rounded, &mut self.values[i])?;
            if let Some(f) = &mut self.norm_values[i] {
                gpu.convert_to_f32(&self.values[i], f)?;
            }
        }
        self.steps = steps;
        gpu.synchronize()
    }
}
