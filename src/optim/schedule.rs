//! Learning-rate schedules, as Hugging Face `transformers.get_scheduler` builds them for
//! open-instruct's `finetune.py`.
//!
//! Warmup length. open-instruct (allenai/open-instruct `open_instruct/finetune.py`, and the copy
//! in the paper's repository john-hewitt/implicit-ins, whose scripts pass `--warmup_ratio 0.03
//! --lr_scheduler_type linear`) creates the scheduler with
//! `num_warmup_steps=int(num_training_steps_for_scheduler * args.warmup_ratio)`: the product
//! in f64, truncated. (The HF `Trainer`'s `get_warmup_steps` rounds up with `math.ceil`
//! instead; we follow open-instruct, e.g. 0.03 × 100 steps → 3, 0.03 × 50 → 1, not 2.)
//!
//! Step indexing. `torch.optim.lr_scheduler.LambdaLR` sets lr = base_lr · λ(0) at creation and
//! `scheduler.step()` runs after each `optimizer.step()`, so the k-th optimizer step (0-based)
//! uses λ(k). With warmup, the first step therefore has lr 0.

/// The shape of the learning rate over training (`--lr_scheduler_type` of open-instruct).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Schedule {
    /// Linear warmup from 0, then linear decay to 0 at the last step
    /// (`get_linear_schedule_with_warmup`; the paper's setting).
    Linear,
    /// Linear warmup, then half a cosine down to 0 (`get_cosine_schedule_with_warmup`, one
    /// half-cycle).
    Cosine,
    /// The base learning rate throughout, without warmup (`get_constant_schedule`, which is
    /// what HF's `get_scheduler("constant", ...)` returns even when given warmup steps).
    Constant,
}

/// Warmup steps for `total_steps` optimizer steps: `int(total_steps * warmup_fraction)` as
/// open-instruct computes it (see the module comment), the fraction read as the Python float
/// it was written as.
pub fn warmup_steps(total_steps: usize, warmup_fraction: f32) -> usize {
    let product = total_steps as f64 * super::as_python_float(warmup_fraction);
    // Python's int() truncates toward zero; `as` does too, and maps negatives and NaN to 0.
    product as usize
}

/// The `LambdaLR` multiplier λ(step) of HF's schedule functions (the formulas of
/// `_get_linear_schedule_with_warmup_lr_lambda` and `_get_cosine_schedule_with_warmup_lr_lambda`).
pub fn lr_multiplier(
    schedule: Schedule,
    step: usize,
    total_steps: usize,
    warmup_steps: usize,
) -> f64 {
    // Python ints: differences may go negative past the end of training.
    let (step, total, warmup) = (step as i64, total_steps as i64, warmup_steps as i64);
    if schedule == Schedule::Constant {
        return 1.0;
    }
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    match schedule {
        Schedule::Linear => ((total - step) as f64 / (total - warmup).max(1) as f64).max(0.0),
        Schedule::Cosine => {
            let num_cycles = 0.5;
            let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
            (0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos())).max(0.0)
        }
        Schedule::Constant => unreachable!("handled above"),
    }
}

/// The learning rate of optimizer step `step` (0-based) out of `total_steps`, with the first
/// `int(warmup_fraction · total_steps)` steps warming up: base_lr · λ(step), computed in f64.
pub fn learning_rate(
    schedule: Schedule,
    base_lr: f32,
    step: usize,
    total_steps: usize,
    warmup_fraction: f32,
) -> f32 {
    let warmup = warmup_steps(total_steps, warmup_fraction);
    (super::as_python_float(base_lr) * lr_multiplier(schedule, step, total_steps, warmup)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_truncates_like_python_int() {
        assert_eq!(warmup_steps(100, 0.03), 3); // with the f32 0.03 it would be 2.99999... → 2
        assert_eq!(warmup_steps(50, 0.03), 1); // 1.5
        assert_eq!(warmup_steps(33, 0.03), 0); // 0.99
        assert_eq!(warmup_steps(1000, 0.03), 30);
        assert_eq!(warmup_steps(10, 0.0), 0);
        assert_eq!(warmup_steps(10, -0.5), 0);
    }

    #[test]
    fn past_the_end_stays_at_zero() {
        assert_eq!(lr_multiplier(Schedule::Linear, 12, 10, 2), 0.0);
        assert_eq!(lr_multiplier(Schedule::Cosine, 10, 10, 2), 0.0);
        // No decay phase at all: HF divides by max(1, ...).
        assert_eq!(lr_multiplier(Schedule::Linear, 3, 3, 3), 0.0);
    }
}
