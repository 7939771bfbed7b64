//! Optimizers: AdamW with mixed precision, gradient clipping, learning-rate schedules.
//!
//! The training recipe of the paper (open-instruct's `finetune.py`): AdamW (weight decay 0,
//! lr 1e-5), linear decay with 3% warmup, global grad-norm clipping at 1.0, an effective batch
//! of 64 reached by gradient accumulation, bf16 parameters with fp32 master weights.
//!
//! Gradient accumulation needs no helper here: callers sum the gradients of the micro-batches
//! of one optimizer step into one f32 buffer per parameter, each micro-batch's loss scaled so
//! that the sum is the loss of the whole batch (e.g. by 1/|batch| for a per-example mean), then
//! call [`clip_grad_norm`] once on the sums and [`AdamW::step`] once. This is what
//! `accelerator.accumulate` amounts to in open-instruct, and the clip then sees the norm of the
//! full-batch gradient, as there.
//!
//! [`adamw_bf16_stochastic_step`] is the other recipe the GPU trainer offers
//! (`--optimizer-state bf16`): no fp32 master, bf16 moments, stochastic rounding; not the paper's
//! numerics, and not the default.

pub(crate) mod adamw;
mod schedule;
mod stochastic;

pub use adamw::{AdamW, AdamWConfig};
pub use schedule::{learning_rate, lr_multiplier, warmup_steps, Schedule};
pub use stochastic::{
    adamw_bf16_stochastic_step, stochastic_round_bf16, stochastic_rounding_bits,
    stochastic_rounding_key,
};

use half::bf16;

/// A parameter's values as given to [`AdamW::new`]: its length and dtype, and for bf16 the
/// values the fp32 master copy starts from.
#[derive(Clone, Copy, Debug)]
pub enum ParamRef<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
}

impl ParamRef<'_> {
    pub fn len(&self) -> usize {
        match self {
            ParamRef::F32(p) => p.len(),
            ParamRef::BF16(p) => p.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A parameter as given to [`AdamW::step`], to be updated in place. An f32 parameter is its own
/// master copy; a bf16 one receives the optimizer's updated master, rounded to nearest even.
#[derive(Debug)]
pub enum ParamMut<'a> {
    F32(&'a mut [f32]),
    BF16(&'a mut [bf16]),
}

impl ParamMut<'_> {
    pub fn len(&self) -> usize {
        match self {
            ParamMut::F32(p) => p.len(),
            ParamMut::BF16(p) => p.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The Python float (f64) a hyperparameter written as a decimal literal stands for.
///
/// Why: PyTorch and Hugging Face do their scalar arithmetic (`1 - beta2`, `1 - beta2**t`,
/// `lr / (1 - beta1**t)`, `int(total * warmup_ratio)`) in f64 on the literal's exact double,
/// and only the results meet f32 tensors. The f32 nearest to 0.999 is 0.99900001287..., so
/// `1 - beta2` would be off by 1.3e-5 relative, and `int(100 * 0.03)` would give 2 instead of
/// 3. The shortest decimal that round-trips an f32 is the literal it was written as, so
/// re-reading that decimal as f64 recovers the double Python had.
pub(crate) fn as_python_float(x: f32) -> f64 {
    // `Display` for f32 prints the shortest round-trip decimal ("0.999", "inf", "NaN"), which
    // f64's `FromStr` accepts.
    x.to_string().parse().unwrap_or(x as f64)
}

/// Clips gradients in place to a global L2 norm of at most `max_norm`, exactly as
/// `torch.nn.utils.clip_grad_norm_(params, max_norm)`, and returns the norm before clipping.
///
/// torch (`torch/nn/utils/clip_grad.py`):
/// `total_norm = ‖(‖g_1‖, …, ‖g_n‖)‖₂`; `clip_coef = max_norm / (total_norm + 1e-6)`;
/// `grads *= clamp(clip_coef, max=1.0)`. `total_norm` is an f32 tensor, so the coefficient is
/// computed in f32, and `float / tensor` is `tensor.reciprocal() * float` (`Tensor.__rdiv__`).
/// The sum of squares is accumulated in f64 here (torch's f32 reduction agrees to ~1e-7).
///
/// A non-finite norm (an inf or NaN gradient) leaves the gradients untouched and is returned as
/// is, so that the caller can skip the step; torch would multiply by a NaN or zero coefficient.
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f32) -> f32 {
    let sum_sq: f64 = grads.iter().map(|g| sum_of_squares(g)).sum();
    let total_norm = sum_sq.sqrt() as f32;
    if !total_norm.is_finite() {
        return total_norm;
    }
    let clip_coef = (1.0 / (total_norm + 1e-6)) * max_norm;
    // Multiplying by the clamped coefficient 1.0 would change nothing, so skip it.
    if clip_coef < 1.0 {
        for g in grads.iter_mut() {
            for x in g.iter_mut() {
                *x *= clip_coef;
            }
        }
    }
    total_norm
}

/// Σ x², in f64 with independent partial sums (a single running sum would be bound by the
/// latency of one add per element).
fn sum_of_squares(xs: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += (x as f64) * (x as f64);
        }
    }
    let tail_sum: f64 = tail.iter().map(|&x| (x as f64) * (x as f64)).sum();
    acc.iter().sum::<f64>() + tail_sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_recovers_the_literal() {
        assert_eq!(as_python_float(0.999), 0.999f64);
        assert_eq!(as_python_float(1e-8), 1e-8f64);
        assert_eq!(as_python_float(0.03), 0.03f64);
        assert_eq!(as_python_float(1e-5), 1e-5f64);
        assert_eq!(as_python_float(0.0), 0.0);
        assert_eq!(as_python_float(f32::INFINITY), f64::INFINITY);
        assert!(as_python_float(f32::NAN).is_nan());
    }

    #[test]
    fn clip_scales_only_above_max_norm() {
        // ‖(3, 4)‖ = 5 across two tensors.
        let (mut a, mut b) = (vec![3.0f32], vec![4.0f32]);
        let norm = clip_grad_norm(&mut [&mut a, &mut b], 10.0);
        assert_eq!(norm, 5.0);
        assert_eq!((a[0], b[0]), (3.0, 4.0));
        let norm = clip_grad_norm(&mut [&mut a, &mut b], 1.0);
        assert_eq!(norm, 5.0);
        let coef = (1.0f32 / (5.0 + 1e-6)) * 1.0;
        assert_eq!((a[0], b[0]), (3.0 * coef, 4.0 * coef));
        let clipped = ((a[0] as f64).powi(2) + (b[0] as f64).powi(2)).sqrt();
        assert!((clipped - 1.0).abs() < 1e-6, "{clipped}");
    }

    #[test]
    fn clip_leaves_non_finite_gradients_alone() {
        let mut a = vec![1.0f32, f32::INFINITY];
        let norm = clip_grad_norm(&mut [&mut a], 1.0);
        assert!(norm.is_infinite());
        assert_eq!(a[0], 1.0);
        let mut empty: Vec<&mut [f32]> = Vec::new();
        assert_eq!(clip_grad_norm(&mut empty, 1.0), 0.0);
    }

    #[test]
    fn sum_of_squares_matches_naive() {
        let xs: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.37).sin()).collect();
        let naive: f64 = xs.iter().map(|&x| (x as f64).powi(2)).sum();
        assert!((sum_of_squares(&xs) - naive).abs() < 1e-9 * naive);
    }
}
