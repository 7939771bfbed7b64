//! The training recipe: what the paper fixes for every model and run (the batch, the
//! schedule, clipping, the length, the precision), its values the default. `implicit train`
//! takes it as flags and an experiment config as its `[train]` table, both defaulting to
//! [`Recipe::PAPER`]; the learning rate (one per model) and the epochs (swept) are given per run
//! in [`super::TrainOptions`].

use super::Precision;
use crate::data::DEFAULT_MAX_LEN;
use crate::optim::Schedule;
use crate::toml_file::value_enum;

#[derive(Clone, Copy, Debug, PartialEq, clap::Args, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Recipe {
    /// Effective batch: examples per optimizer step.
    #[arg(long, default_value_t = Recipe::PAPER.batch_size)]
    pub batch_size: usize,
    /// Examples per forward/backward pass; gradients accumulate to --batch-size.
    #[arg(long, default_value_t = Recipe::PAPER.micro_batch)]
    pub micro_batch: usize,
    /// Fraction of the steps spent warming the learning rate up from 0.
    #[arg(long, default_value_t = Recipe::PAPER.warmup)]
    pub warmup: f32,
    #[arg(long, value_enum, default_value_t = Recipe::PAPER.schedule)]
    #[serde(deserialize_with = "value_enum")]
    pub schedule: Schedule,
    #[arg(long, default_value_t = Recipe::PAPER.weight_decay)]
    pub weight_decay: f32,
    /// Global gradient-norm clipping threshold.
    #[arg(long, default_value_t = Recipe::PAPER.max_grad_norm)]
    pub max_grad_norm: f32,
    /// Examples are cut at this many tokens.
    #[arg(long, default_value_t = Recipe::PAPER.max_len)]
    pub max_len: usize,
    /// Parameter storage: bf16 with fp32 master weights, or fp32.
    #[arg(long, value_enum, default_value_t = Recipe::PAPER.precision)]
    #[serde(deserialize_with = "value_enum")]
    pub precision: Precision,
}

impl Recipe {
    /// Hewitt et al. (2024) as its open-instruct scripts ran it (configs/paper-*.toml): 64
    /// examples per step (1 per GPU × 32 accumulation × 2 GPUs), examples cut at 2048 tokens,
    /// linear decay to 0 after 3% warmup, no weight decay, gradients clipped to norm 1, bf16
    /// parameters with fp32 master weights and AdamW moments.
    pub const PAPER: Recipe = Recipe {
        batch_size: 64,
        micro_batch: 1,
        warmup: 0.03,
        schedule: Schedule::Linear,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        max_len: DEFAULT_MAX_LEN,
        precision: Precision::Bf16,
    };
}

impl Default for Recipe {
    fn default() -> Recipe {
        Recipe::PAPER
    }
}
