//! `implicit train` and `implicit data build`.

use crate::backend::Device;
use crate::data::{build_task, Mode, Task, DEFAULT_MAX_LEN};
use crate::error::Result;
use crate::optim::Schedule;
use crate::train::launch::{spawn_ranks, DataParallel};
use crate::train::plan::OptimizerPlacement;
use crate::train::{train, Precision, TrainOptions};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Build one of the paper's training sets as Tulu `messages` JSONL (first 1000 rows).
    Build {
        #[arg(long, value_enum)]
        task: Task,
        /// The source file (or the shared data folder holding it).
        #[arg(long)]
        source: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run_data(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Build { task, source, out } => {
            println!("{}", build_task(task, &source, &out)?);
            Ok(())
        }
    }
}

#[derive(Args)]
pub struct TrainArgs {
    /// Model folder to start from (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Training data: Tulu `messages` JSONL (`implicit data build`).
    #[arg(long)]
    data: PathBuf,
    /// `response` replaces every user turn with "" (response tuning).
    #[arg(long, value_enum, default_value_t = Mode::Instruction)]
    mode: Mode,
    #[arg(long)]
    epochs: usize,
    #[arg(long)]
    lr: f32,
    /// Effective batch: examples per optimizer step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Examples per forward/backward pass; gradients accumulate to --batch-size.
    #[arg(long, default_value_t = 1)]
    micro_batch: usize,
    /// Fraction of the steps spent warming the learning rate up from 0.
    #[arg(long, default_value_t = 0.03)]
    warmup: f32,
    #[arg(long, value_enum, default_value_t = Schedule::Linear)]
    schedule: Schedule,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Global gradient-norm clipping threshold.
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    /// Examples are cut at this many tokens.
    #[arg(long, default_value_t = DEFAULT_MAX_LEN)]
    max_len: usize,
    /// Use only the first N examples of --data.
    #[arg(long)]
    max_examples: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Parameter storage: bf16 with fp32 master weights, or fp32.
    #[arg(long, value_enum, default_value_t = Precision::Bf16)]
    precision: Precision,
    /// Where the forward, backward and optimizer run: cpu, or cuda (a build with `--features
    /// cuda` and a GPU of compute capability 8.0 or newer; bf16 precision).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// (cuda) Activation checkpointing: keep each layer's input only and recompute the layer in
    /// the backward (one more forward, far less memory).
    #[arg(long)]
    checkpointing: bool,
    /// (cuda) Where the fp32 master weights and AdamW moments live: on the GPU (18 bytes per
    /// parameter there), or in page-locked host memory (6 on the GPU; Llama-2-7B on 80 GB); or
    /// bf16: no master, bf16 moments on the GPU, stochastic rounding (10 bytes per parameter;
    /// Llama-2-7B on 80 GB without streaming; other numerics than fp32 master weights).
    #[arg(long, value_enum, default_value_t = OptimizerPlacement::Device)]
    optimizer_state: OptimizerPlacement,
    /// (cuda) Print the memory plan before loading and the measured peak after the first step.
    #[arg(long)]
    memory_report: bool,
    /// (cuda) Data parallelism over this many GPUs: one process per GPU, gradients summed and
    /// the optimizer state sharded over NCCL (1 runs the same path on one GPU).
    #[arg(long)]
    gpus: Option<usize>,
    /// Output folder: epoch-N/ checkpoints (loadable by `generate`) and metrics.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// Continue from the newest checkpoint in --out.
    #[arg(long)]
    resume: bool,
}

pub fn run_train(a: TrainArgs) -> Result<()> {
    let rank = DataParallel::from_env()?;
    if let (Some(world), None) = (a.gpus, &rank) {
        if a.device != Device::Cuda {
            crate::bail!("--gpus is for --device cuda");
        }
        // This process only starts the ranks (copies of this command) and waits for them.
        return spawn_ranks(world, &a.out);
    }
    let opts = TrainOptions {
        model: a.model,
        data: a.data,
        mode: a.mode,
        epochs: a.epochs,
        lr: a.lr,
        batch_size: a.batch_size,
        micro_batch: a.micro_batch,
        warmup: a.warmup,
        schedule: a.schedule,
        weight_decay: a.weight_decay,
        max_grad_norm: a.max_grad_norm,
        max_len: a.max_len,
        max_examples: a.max_examples,
        seed: a.seed,
        precision: a.precision,
        device: a.device,
        checkpointing: a.checkpointing,
        optimizer_state: a.optimizer_state,
        memory_report: a.memory_report,
        data_parallel: rank,
        out: a.out,
        resume: a.resume,
        progress: true,
    };
    let summary = train(&opts)?;
    println!(
        "trained {} steps; final loss {:.4}; checkpoints: {}",
        summary.steps,
        summary.final_loss,
        summary
            .checkpoints
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
