//! Full finetuning: the paper's recipe (AdamW, linear decay with warmup, global grad-norm
//! clipping, gradient accumulation to an effective batch, per-example mean token loss), with
//! per-epoch checkpoints, resume, progress and a metrics JSONL log. This file is the loop every
//! device shares; the engines behind its [`Engine`] trait are `cpu.rs` and (feature `cuda`)
//! `cuda/`.
//!
//! What a run refuses (issue 15): numbers out of range ([`TrainOptions::validate`],
//! [`Recipe::validate`]); a fresh start in a folder that holds a run (`run_folder.rs`); a
//! resume whose recipe or inputs differ from the checkpoint's (`record.rs`); a non-finite
//! gradient norm or loss (the run stops; the last checkpoint stays the last good one); a
//! checkpoint with a non-finite weight (`checkpoint.rs`). A loss that grows while finite
//! (lr 1e6 on stories260k: 1.9e13 by step 2) is not stopped: no fixed bound tells a diverged
//! run from a batch of rare targets, and metrics.jsonl shows it.

pub mod checkpoint;
mod cpu;
pub mod cuda;
pub mod launch;
pub mod plan;
mod recipe;
pub mod record;
mod run_folder;

pub use recipe::Recipe;
pub use run_folder::remove_run;
use run_folder::{refuse_existing_run, remove_stale_temporaries};

use crate::backend::Device;
use crate::bail;
use crate::data::{encode_dataset, read_messages_jsonl, EncodedExample, Mode};
use crate::error::{Context, Result};
use crate::io::atomic::write_atomic;
use crate::io::tokenizer::Tokenizer;
use crate::model::train::{parameter_layout, TrainSequence};
use crate::model::ModelConfig;
use crate::optim::{learning_rate, AdamWConfig};
use crate::train::plan::{CheckpointingChoice, OptimizerPlacement};
use checkpoint::TrainerState;
use record::RunRecord;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How parameters are stored between steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    /// bf16 parameters, fp32 master weights and moments in the optimizer (the paper's setting).
    Bf16,
    /// fp32 parameters (they are their own master weights).
    F32,
}

/// One run: the model, the data and the output, the recipe, and where it runs.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub model: PathBuf,
    pub data: PathBuf,
    pub mode: Mode,
    pub epochs: usize,
    /// Peak learning rate (the paper's differs per model).
    pub lr: f32,
    /// Batch, schedule, clipping, length and precision ([`Recipe::PAPER`] unless changed).
    pub recipe: Recipe,
    /// Train on the first N examples only (small CPU runs).
    pub max_examples: Option<usize>,
    pub seed: u64,
    /// Where the forward, backward and optimizer run (cuda: bf16 precision only).
    pub device: Device,
    /// (cuda) Activation checkpointing: auto (the plan's choice for the free memory), on or off.
    pub checkpointing: CheckpointingChoice,
    /// (cuda) Where the fp32 master weights and moments live (or bf16 moments and no master).
    pub optimizer_state: OptimizerPlacement,
    /// (cuda) Print the memory plan, and the measured peak after the first step.
    pub memory_report: bool,
    /// (cuda) This process's rank of a data-parallel run (`launch`), None on one GPU.
    pub data_parallel: Option<launch::DataParallel>,
    pub out: PathBuf,
    pub resume: bool,
    /// Print a progress line to stderr each step.
    pub progress: bool,
}

impl TrainOptions {
    /// Checks every number of the run: the recipe's fields ([`Recipe::validate`]), and the
    /// epochs, learning rate and example limit.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            bail!("--epochs must be at least 1 (got 0)");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("--lr must be finite and above 0 (got {})", self.lr);
        }
        if self.max_examples == Some(0) {
            bail!("--max-examples must be at least 1 (got 0)");
        }
        self.recipe.validate()
    }

    /// Whether this process writes the run's files (not a data-parallel rank other than 0).
    fn is_writer(&self) -> bool {
        self.data_parallel.as_ref().is_none_or(|dp| dp.rank == 0)
    }
}

/// A permutation of 0..n drawn from (seed, epoch): the data order of that epoch, the same
/// whether or not the run was resumed.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut state = seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = || {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    order
}

/// One line of metrics.jsonl.
#[derive(serde::Serialize, serde::Deserialize)]
struct StepLog {
    step: usize,
    epoch: usize,
    loss: f64,
    lr: f32,
    grad_norm: f32,
    examples: usize,
    tokens: usize,
    tokens_per_s: f64,
    elapsed_s: f64,
}

/// What a finished run reports.
pub struct TrainSummary {
    pub steps: usize,
    pub final_loss: f64,
    pub checkpoints: Vec<PathBuf>,
}

/// What every engine's run shares: the data, the schedule and where the run starts.
struct Plan {
    config: ModelConfig,
    layout: Vec<(String, Vec<usize>)>,
    examples: Vec<EncodedExample>,
    total_steps: usize,
    start_epoch: usize,
    /// Steps already taken (0 unless resuming).
    step: usize,
    /// Where the parameters come from: the model, or the checkpoint being resumed.
    source: PathBuf,
    /// What the run is made of, saved with each checkpoint (the writer's only).
    record: Option<RunRecord>,
}

/// The parameters and optimizer of a run between steps, on the device that trains.
trait Engine {
    /// Restores the optimizer state of the checkpoint being resumed.
    fn load_state(&mut self, tensors: &HashMap<String, Vec<f32>>) -> Result<()>;

    /// One optimizer step over `micro_batches` (each sequence's loss scaled by `scale`):
    /// forward and backward of each, gradients summed, clipped to `max_grad_norm`, then AdamW
    /// at `lr`. Returns (loss, grad norm before clipping); a non-finite norm is an error and
    /// leaves the parameters as they were.
    fn step(
        &mut self,
        micro_batches: &[Vec<TrainSequence>],
        scale: f64,
        lr: f32,
        max_grad_norm: f32,
    ) -> Result<(f64, f32)>;

    /// Writes model.safetensors and optimizer.safetensors into `dir`. Every rank of a
    /// data-parallel run calls it (gathering the state is collective); only the writer gets a
    /// `dir`.
    fn write_tensors(&self, dir: Option<&Path>, layout: &[(String, Vec<usize>)]) -> Result<()>;

    /// Whether this process prints progress and writes metrics and checkpoints (rank 0).
    fn is_writer(&self) -> bool {
        true
    }
}

pub fn train(opts: &TrainOptions) -> Result<TrainSummary> {
    match opts.device {
        Device::Cpu => {
            if opts.checkpointing == CheckpointingChoice::On
                || opts.optimizer_state != OptimizerPlacement::Device
                || opts.data_parallel.is_some()
            {
                bail!(
                    "--checkpointing on, --optimizer-state host|bf16 and --gpus are for --device cuda \
                     (the CPU trainer keeps every activation and its fp32 optimizer state in host \
                     memory)"
                );
            }
            let plan = prepare(opts)?;
            let mut engine = cpu::CpuEngine::new(&plan, opts)?;
            run(opts, plan, &mut engine)
        }
        Device::Cuda => cuda::train(opts),
    }
}

/// Reads and encodes the data, and finds the checkpoint to resume from.
fn prepare(opts: &TrainOptions) -> Result<Plan> {
    opts.validate()?;
    let config = ModelConfig::from_file(&opts.model.join("config.json"))?;
    let mut examples = read_messages_jsonl(&opts.data)?;
    opts.recipe
        .validate_for(&config)
        .with_context(|| opts.model.display().to_string())?;
    if opts.is_writer() {
        if !opts.resume {
            refuse_existing_run(&opts.out)?;
        }
        remove_stale_temporaries(&opts.out)?;
    }
    let tok = Tokenizer::load(&opts.model, &config)?;
    if let Some(n) = opts.max_examples {
        examples.truncate(n);
    }
    let data = encode_dataset(&tok, &examples, opts.mode, opts.recipe.max_len)
        .with_context(|| opts.data.display().to_string())?;
    eprintln!("{}: {data}", opts.data.display());
    if data.examples.is_empty() {
        bail!(
            "{}: no example has a token that carries loss",
            opts.data.display()
        );
    }
    let n = data.examples.len();
    let total_steps = n.div_ceil(opts.recipe.batch_size) * opts.epochs;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("{}: cannot create", opts.out.display()))?;

    // Start from the model, or from the newest checkpoint when resuming.
    let record = if opts.is_writer() {
        Some(record::run_record(opts)?)
    } else {
        None
    };
    let (start_epoch, source, step) = match (opts.resume, checkpoint::latest_checkpoint(&opts.out))
    {
        (true, Some((epoch, dir))) => {
            let state = checkpoint::read_state(&dir)?;
            record::check_same_run(&dir, &state, record.as_ref())?;
            if state.seed != opts.seed || state.examples != n || state.total_steps != total_steps {
                bail!(
                    "{}: checkpoint was made with seed {}, {} examples, {} steps; this run has seed {}, {n}, {total_steps}",
                    dir.display(),
                    state.seed,
                    state.examples,
                    state.total_steps,
                    opts.seed
                );
            }
            eprintln!(
                "resuming from {} (epoch {epoch}, step {})",
                dir.display(),
                state.step
            );
            if let Some(change) =
                checkpoint::placement_change(state.optimizer_state, opts.optimizer_state)
            {
                eprintln!("note: {change}");
            }
            (epoch, dir, state.step)
        }
        _ => (0, opts.model.clone(), 0),
    };
    Ok(Plan {
        layout: parameter_layout(&config),
        config,
        examples: data.examples,
        total_steps,
        start_epoch,
        step,
        source,
        record,
    })
}

/// The epochs of a run on `engine`: steps, progress, metrics.jsonl and a checkpoint per epoch.
fn run(opts: &TrainOptions, plan: Plan, engine: &mut impl Engine) -> Result<TrainSummary> {
    let Plan {
        layout,
        examples,
        total_steps,
        start_epoch,
        mut step,
        source,
        record,
        ..
    } = plan;
    let n = examples.len();
    let writer = engine.is_writer();
    let metrics_path = opts.out.join("metrics.jsonl");
    if start_epoch > 0 {
        engine.load_state(&checkpoint::read_f32_tensors(
            &source.join("optimizer.safetensors"),
        )?)?;
        if writer {
            truncate_metrics(&metrics_path, step)?;
        }
    } else if writer && metrics_path.exists() {
        std::fs::remove_file(&metrics_path)
            .with_context(|| format!("{}: cannot reset", metrics_path.display()))?;
    }
    let mut metrics = if writer {
        Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics_path)
                .with_context(|| format!("{}: cannot open", metrics_path.display()))?,
        )
    } else {
        None
    };

    let started = Instant::now();
    let mut tokens_done = 0usize;
    let mut steps_this_run = 0usize;
    let mut last_loss = f64::NAN;
    let mut checkpoints = Vec::new();
    for epoch in start_epoch..opts.epochs {
        let order = epoch_order(n, opts.seed, epoch);
        for batch in order.chunks(opts.recipe.batch_size) {
            let micro_batches: Vec<Vec<TrainSequence>> = batch
                .chunks(opts.recipe.micro_batch)
                .map(|micro| {
                    micro
                        .iter()
                        .map(|&i| TrainSequence {
                            ids: &examples[i].ids,
                            loss_mask: &examples[i].loss_mask,
                        })
                        .collect()
                })
                .collect();
            let tokens: usize = batch.iter().map(|&i| examples[i].ids.len()).sum();
            let lr = learning_rate(
                opts.recipe.schedule,
                opts.lr,
                step,
                total_steps,
                opts.recipe.warmup,
            );
            let scale = 1.0 / batch.len() as f64;
            let (loss, grad_norm) = engine
                .step(&micro_batches, scale, lr, opts.recipe.max_grad_norm)
                .with_context(|| format!("epoch {} step {}", epoch + 1, step + 1))?;
            // The run stops here, before this epoch's checkpoint: the last one written stays
            // the last good one.
            if !loss.is_finite() {
                bail!(
                    "epoch {} step {}: the loss is {loss}; stopping (the last checkpoint in {} \
                     is the last good one; try a lower --lr)",
                    epoch + 1,
                    step + 1,
                    opts.out.display()
                );
            }
            step += 1;
            steps_this_run += 1;
            tokens_done += tokens;
            last_loss = loss;
            let elapsed = started.elapsed().as_secs_f64();
            let log = StepLog {
                step,
                epoch: epoch + 1,
                loss,
                lr,
                grad_norm,
                examples: batch.len(),
                tokens,
                tokens_per_s: tokens_done as f64 / elapsed,
                elapsed_s: elapsed,
            };
            if let Some(metrics) = &mut metrics {
                writeln!(
                    metrics,
                    "{}",
                    serde_json::to_string(&log).context("metrics")?
                )
                .with_context(|| format!("{}: cannot append", metrics_path.display()))?;
            }
            if opts.progress && writer {
                let eta = elapsed / steps_this_run as f64 * (total_steps - step) as f64;
                eprintln!(
                    "epoch {}/{} step {step}/{total_steps} loss {loss:.4} lr {lr:.2e} grad-norm {grad_norm:.3} | {:.0} tokens/s | ETA {}",
                    epoch + 1,
                    opts.epochs,
                    log.tokens_per_s,
                    crate::progress::clock(eta)
                );
            }
        }
        let state = TrainerState {
            epoch: epoch + 1,
            step,
            total_steps,
            seed: opts.seed,
            examples: n,
            optimizer_state: opts.optimizer_state,
            record: record.clone(),
        };
        if writer {
            let dir = save_checkpoint(opts, &layout, engine, &state)?;
            eprintln!("saved {}", dir.display());
            checkpoints.push(dir);
        } else {
            engine.write_tensors(None, &layout)?;
        }
    }
    Ok(TrainSummary {
        steps: step,
        final_loss: last_loss,
        checkpoints,
    })
}

/// The paper's AdamW (torch defaults but the learning rate and weight decay).
fn adamw_config(opts: &TrainOptions) -> AdamWConfig {
    AdamWConfig {
        lr: opts.lr,
        weight_decay: opts.recipe.weight_decay,
        ..AdamWConfig::default()
    }
}

/// A non-finite gradient norm stops the run before the parameters are corrupted.
fn check_grad_norm(grad_norm: f32) -> Result<()> {
    if !grad_norm.is_finite() {
        bail!("gradient norm is {grad_norm}; stopping before the parameters are corrupted");
    }
    Ok(())
}

fn save_checkpoint(
    opts: &TrainOptions,
    layout: &[(String, Vec<usize>)],
    engine: &impl Engine,
    state: &TrainerState,
) -> Result<PathBuf> {
    let dir = checkpoint::epoch_dir(&opts.out, state.epoch);
    // A unique name: nothing else's temporary folder is removed or written into.
    let tmp = crate::io::atomic::temp_path(&dir);
    std::fs::create_dir(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    let saved = (|| {
        engine.write_tensors(Some(&tmp), layout)?;
        checkpoint::copy_model_files(&opts.model, &tmp)?;
        checkpoint::write_state(&tmp, state)?;
        checkpoint::commit_dir(&tmp, &dir)
    })();
    if saved.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    saved.map(|()| dir)
}

/// Keeps the metrics of steps up to `step` (a resumed run rewrites the ones after).
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<StepLog>(l)
                .map(|s| s.step <= step)
                .unwrap_or(false)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}
