//! The training recipe: what the paper fixes for every model and run (the batch, the
//! schedule, clipping, the length, the precision), its values the default. `implicit train`
//! takes it as flags and an experiment config as its `[train]` table, both defaulting to
//! [`Recipe::PAPER`]; the learning rate (one per model) and the epochs (swept) are given per run
//! in [`super::TrainOptions`]. [`Recipe::validate`] is the one check of every field, which the
//! CLI, an experiment config and the trainer all go through.

use super::Precision;
use crate::bail;
use crate::data::DEFAULT_MAX_LEN;
use crate::error::Result;
use crate::model::ModelConfig;
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

impl Recipe {
    /// Checks every field: sizes at least what can run, fractions and thresholds finite and in
    /// range. The error names the field (as its flag) and the value.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1 (got 0)");
        }
        if self.micro_batch == 0 {
            bail!("--micro-batch must be at least 1 (got 0)");
        }
        // A fraction of the steps: 1 warms up over every step (the peak is reached at the end).
        if !(0.0..=1.0).contains(&self.warmup) {
            bail!(
                "--warmup is the fraction of steps spent warming up: it must be in [0, 1] (got {})",
                self.warmup
            );
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!(
                "--weight-decay must be finite and at least 0 (got {})",
                self.weight_decay
            );
        }
        // Clipping to 0 (or less) would zero every gradient; there is no "off" value.
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm > 0.0) {
            bail!(
                "--max-grad-norm must be finite and above 0 (got {})",
                self.max_grad_norm
            );
        }
        // One token predicts nothing: the loss needs an input and a target.
        if self.max_len < 2 {
            bail!("--max-len must be at least 2 tokens (got {})", self.max_len);
        }
        Ok(())
    }

    /// [`Recipe::validate`], and the length against the model's context.
    pub fn validate_for(&self, model: &ModelConfig) -> Result<()> {
        self.validate()?;
        if self.max_len > model.max_position_embeddings {
            bail!(
                "--max-len {} is above the model's context of {} tokens (max_position_embeddings); \
                 give --max-len {} or less",
                self.max_len,
                model.max_position_embeddings,
                model.max_position_embeddings
            );
        }
        Ok(())
    }
}

impl Default for Recipe {
    fn default() -> Recipe {
        Recipe::PAPER
    }
}
