//! `implicit bench train`'s measuring: a model of the given shape with random weights (speed does
//! not depend on them) trained on the GPU by `train::cuda::CudaTrainer`, warm-up steps, then
//! timed steps (each ends when the gradient norm is read back; the AdamW kernels queued after
//! that run into the next step, so in steady state each timed step holds one update), then with
//! `profile` two steps under the backend's recorder (the second is reported). Its parent,
//! `bench::train`, turns the figures into tokens/s, MFU, the profile's table and the report.

use crate::backend::cpu::parallel::parallel_chunks_mut;
use crate::backend::cuda::{CudaBackend, MemoryUse, RecordedProfile};
use crate::error::{Context, Result};
use crate::model::train::TrainSequence;
use crate::model::ModelConfig;
use crate::optim::AdamWConfig;
use crate::train::cuda::{CudaTrainer, TrainerSetup};
use crate::train::plan::{choose, Checkpointing, OptimizerPlacement};
use half::bf16;
use std::time::Instant;

/// What `bench train` runs: the model, the batch and the steps.
#[derive(Clone, Debug)]
pub struct TrainShape {
    pub config: ModelConfig,
    /// Tokens per sequence.
    pub seq: usize,
    /// Sequences per forward/backward.
    pub micro_batch: usize,
    /// Micro-batches per optimizer step.
    pub accumulation: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    /// The layers that keep their activations; None: as many as the memory left after the
    /// model's state holds (`train::plan::choose`).
    pub checkpointing: Option<Checkpointing>,
    pub optimizer_state: OptimizerPlacement,
    /// Seed of the random weights and tokens.
    pub seed: u64,
    /// After the timed steps, profile one more (backend/cuda/profile.rs).
    pub profile: bool,
}

/// The figures of one `bench train` run.
#[derive(Clone, Debug)]
pub struct TrainMeasurement {
    /// Seconds of each timed step, in order.
    pub step_seconds: Vec<f64>,
    /// The device's memory after the timed steps (peak since the warm-up).
    pub memory: MemoryUse,
    /// The profiled step, when asked for.
    pub profile: Option<ProfiledStep>,
    /// The checkpointing the steps ran with (`auto`'s choice).
    pub checkpointing: Checkpointing,
}

/// One step run with the backend's recorder on.
#[derive(Clone, Debug)]
pub struct ProfiledStep {
    pub recorded: RecordedProfile,
    /// The step's time on the host's clock, to the end of its GPU work (the window the
    /// profile's events span).
    pub host_seconds: f64,
}

/// splitmix64: the random stream of the weights and tokens.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in ±limit (the weights' values do not change the speed; finite, non-zero
/// values keep the arithmetic realistic), norm weights 1.
fn random_tensor(shape: &[usize], seed: u64) -> Vec<bf16> {
    let n: usize = shape.iter().product();
    if shape.len() == 1 {
        return vec![bf16::ONE; n];
    }
    let limit = (3.0 / shape[1] as f32).sqrt();
    let mut out = vec![bf16::ZERO; n];
    parallel_chunks_mut(&mut out, 1 << 16, |chunk, xs| {
        for (i, x) in xs.iter_mut().enumerate() {
            let r = mix(seed ^ mix(((chunk as u64) << 16) + i as u64));
            let u = (r >> 40) as f32 / (1u64 << 24) as f32;
            *x = bf16::from_f32((2.0 * u - 1.0) * limit);
        }
    });
    out
}

/// Sets up the trainer, runs `shape.warmup` steps, then times `shape.steps` (progress on stderr).
pub fn measure(gpu: &CudaBackend, shape: &TrainShape) -> Result<TrainMeasurement> {
    let t0 = Instant::now();
    let mut index = 0u64;
    let mut trainer = CudaTrainer::from_fn(
        gpu,
        shape.config.clone(),
        TrainerSetup {
            placement: shape.optimizer_state,
            seed: shape.seed,
            ..TrainerSetup::new(AdamWConfig::default())
        },
        |_, dims| {
            index += 1;
            Ok(random_tensor(dims, mix(shape.seed ^ index)))
        },
    )
    .context("bench train: setting up the model (does it fit? try --layers)")?;
    let state = gpu.memory_use()?;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    eprintln!(
        "model and optimizer state on the GPU in {:.1}s: {:.2} GiB in use, {:.2} GiB free",
        t0.elapsed().as_secs_f64(),
        gib(state.used_bytes),
        gib(state.free_bytes)
    );
    trainer.checkpointing = match shape.checkpointing {
        Some(policy) => policy,
        None => {
            let (c, placement) = (&shape.config, shape.optimizer_state);
            let policy = choose(c, shape.seq, shape.micro_batch, placement, state.free_bytes);
            let kept = policy.kept_layers(c.num_layers);
            eprintln!(
                "checkpointing auto: {kept} of {} layers keep their activations, {} recompute",
                c.num_layers,
                c.num_layers - kept
            );
            policy
        }
    };

    let tokens_per_step = shape.seq * shape.micro_batch * shape.accumulation;
    let ids: Vec<u32> = (0..shape.seq * shape.micro_batch)
        .map(|i| (mix(shape.seed ^ 0xA5A5 ^ i as u64) % shape.config.vocab_size as u64) as u32)
        .collect();
    let mask = vec![true; shape.seq];
    let seqs: Vec<TrainSequence> = ids
        .chunks(shape.seq)
        .map(|ids| TrainSequence {
            ids,
            loss_mask: &mask,
        })
        .collect();
    let scale = 1.0 / (shape.micro_batch * shape.accumulation) as f64;
    let step = |trainer: &mut CudaTrainer| -> Result<(f64, f64)> {
        let start = Instant::now();
        trainer.zero_grads()?;
        let mut loss = 0.0;
        for _ in 0..shape.accumulation {
            loss += trainer.accumulate(&seqs, scale)?;
        }
        trainer.step(1e-5, 1.0)?; // reads the norm back: the step has finished
        Ok((start.elapsed().as_secs_f64(), loss))
    };
    for i in 0..shape.warmup {
        let (s, loss) = step(&mut trainer)?;
        eprintln!("warmup {}: {s:.3}s, loss {loss:.3}", i + 1);
    }
    gpu.reset_peak_memory()?;
    let mut times = Vec::with_capacity(shape.steps);
    for i in 0..shape.steps {
        let (s, loss) = step(&mut trainer)?;
        eprintln!(
            "step {}: {s:.3}s, {:.0} tokens/s, loss {loss:.3}",
            i + 1,
            tokens_per_step as f64 / s
        );
        times.push(s);
    }
    let memory = gpu.memory_use()?;
    let profile = if shape.profile {
        // Twice: the first fills the recorder's event pool (creating events costs host time
        // a profiled step should not carry), the second is the one reported.
        let mut last = None;
        for round in 1..=2 {
            gpu.profile_start()?;
            // Timed to the end of its GPU work: `step` returns once the norm is read, before
            // the AdamW kernels finish, whose time the profile (to its end event) includes.
            let start = Instant::now();
            let stepped = step(&mut trainer).and_then(|out| gpu.synchronize().map(|()| out));
            let s = start.elapsed().as_secs_f64();
            // Finished either way, so that a failed step leaves the recorder off.
            let finished = gpu.profile_finish();
            let (_, loss) = stepped.context("bench train: the profiled step")?;
            let recorded = finished?;
            eprintln!(
                "profiled step {round}: {s:.3}s, {} spans, loss {loss:.3}",
                recorded.spans.len()
            );
            last = Some(ProfiledStep {
                recorded,
                host_seconds: s,
            });
        }
        last
    } else {
        None
    };
    Ok(TrainMeasurement {
        step_seconds: times,
        memory,
        profile,
        checkpointing: trainer.checkpointing,
    })
}
