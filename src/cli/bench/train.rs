//! `implicit bench train`'s arguments; the benchmark is `bench::train`.

use crate::bench::train::TrainBenchOptions;
use crate::cli::numbers::positive_usize;
use crate::train::plan::{CheckpointingChoice, OptimizerPlacement};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct TrainArgs {
    /// The model's shape: a Hugging Face config.json (configs/models/ has Llama-2-7B's and
    /// OLMo-7B's).
    #[arg(long)]
    config: PathBuf,
    /// Use this many layers instead of the config's (speed per layer is what matters; fewer
    /// layers fit a smaller GPU).
    #[arg(long, value_parser = positive_usize)]
    layers: Option<usize>,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 2048, value_parser = positive_usize)]
    seq: usize,
    /// Sequences per forward/backward.
    #[arg(long, default_value_t = 1, value_parser = positive_usize)]
    micro_batch: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1, value_parser = positive_usize)]
    accumulation: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = positive_usize)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Activation checkpointing: `auto` keeps the activations of as many layers (the last
    /// ones) as the memory left after the model's state holds and recomputes the others in
    /// the backward; `on` (also the bare flag) recomputes every layer, `off` none.
    #[arg(long, value_enum, num_args = 0..=1, default_value_t = CheckpointingChoice::Auto,
          default_missing_value = "on")]
    checkpointing: CheckpointingChoice,
    /// Instead of --checkpointing: the last N layers keep their activations, the others are
    /// recomputed.
    #[arg(long, value_name = "N", conflicts_with = "checkpointing")]
    keep_layers: Option<usize>,
    /// Where the fp32 master weights and moments live (host: page-locked memory, streamed
    /// through the GPU at each step), or bf16 (no master, bf16 moments, stochastic rounding).
    #[arg(long, value_enum, default_value_t = OptimizerPlacement::Device)]
    optimizer_state: OptimizerPlacement,
    /// tools/bench_train_torch.py's JSON for the same shapes, shown beside.
    #[arg(long)]
    torch: Option<PathBuf>,
    /// Write the results (device, commit, date, command, config, figures) here, atomically.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seed of the random weights and tokens.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// After the timed steps, profile one more: its GPU time by kernel family and phase
    /// (CUDA events around every launch and copy), host gaps, and the profiling overhead.
    #[arg(long)]
    profile: bool,
}

impl From<TrainArgs> for TrainBenchOptions {
    fn from(a: TrainArgs) -> Self {
        Self {
            config: a.config,
            layers: a.layers,
            seq: a.seq,
            micro_batch: a.micro_batch,
            accumulation: a.accumulation,
            steps: a.steps,
            warmup: a.warmup,
            checkpointing: a.checkpointing,
            keep_layers: a.keep_layers,
            optimizer_state: a.optimizer_state,
            torch: a.torch,
            json: a.json,
            seed: a.seed,
            profile: a.profile,
        }
    }
}
