//! Score adjusters and the token choice over the vocabulary.
//!
//! The rule adapter of Hewitt et al. (2024, §6.1) is a product of experts: the next-token
//! distribution is p_base(w|x) · p_rules(w|x) / Z(x) with p_rules = softmax(r(·, x)). Its log is
//! `log_softmax(logits) + r − log Z'`, so the greedy choice is `argmax(log_softmax(logits) + r)`,
//! exactly what the paper's `CombinedCausalLM` computes (the constant log-normaliser of
//! p_rules does not move the argmax). A [`ScoreAdjuster`] supplies `r` per sequence per step;
//! [`greedy_pick`] is the one fused pass that a GPU kernel has to reproduce: the dense `r` of
//! each live sequence is the kernel's per-row `bias` (`[rows, vocab]`), with `eos_bias` 0, since
//! [`SequenceScores::scores`] already holds EOS's final value.

/// A source of scores added to the model's log-probabilities before each token is chosen
/// (e.g. the paper's rule adapter). Shared by every sequence of a batch; each sequence gets its
/// own state from [`ScoreAdjuster::start`].
pub trait ScoreAdjuster: Send + Sync {
    /// The state for one sequence that begins with `prompt`; `vocab` is the length of the
    /// model's logits (it may exceed the tokenizer's vocabulary).
    fn start(&self, prompt: &[u32], vocab: usize) -> Box<dyn SequenceScores>;
}

/// The per-sequence side of a [`ScoreAdjuster`].
pub trait SequenceScores: Send {
    /// The scores `r` for the next token: one per vocabulary entry, 0 for "unchanged".
    fn scores(&mut self) -> &[f32];
    /// Records the token that was chosen, so that the next scores can depend on it.
    fn accept(&mut self, token: u32);
}

/// A chosen token and its log-probabilities.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pick {
    pub token: u32,
    /// Under the adapted (renormalised product) distribution.
    pub logprob: f32,
    /// Under the base model alone: `log_softmax(logits)[token]`.
    pub base_logprob: f32,
}

/// log Σ exp over a row, accumulated in f64 (max-shifted, so it cannot overflow).
fn log_sum_exp(row: impl Iterator<Item = f32> + Clone) -> f64 {
    let max = row.clone().fold(f32::NEG_INFINITY, f32::max) as f64;
    if max == f64::NEG_INFINITY {
        return max;
    }
    row.map(|v| (v as f64 - max).exp()).sum::<f64>().ln() + max
}

/// The fused greedy step over the vocabulary, written as the reference for the GPU kernel
/// (kernels/rule_adapter.cu): with `score = log_softmax(logits) + scores`, returns
/// `argmax(score)` (the lowest index on ties, as torch.argmax) and its log-probability under the
/// adapted distribution `softmax(score)`, and under the base model.
///
/// Since `log_softmax(z)_i = z_i − lse(z)` shifts every entry alike, the argmax is that of
/// `y = z + scores`, and `lse(score) = lse(y) − lse(z)`, so `logprob = y_a − lse(y)`: one pass
/// keeping an online logsumexp of `z`, one of `y` and a running argmax of `y`. Without scores
/// `y = z`: the token is `argmax(logits)` exactly, the log-probability the model's own.
pub fn greedy_pick(logits: &[f32], scores: Option<&[f32]>) -> Pick {
    assert!(!logits.is_empty(), "greedy_pick: empty logits");
    let lse_z = log_sum_exp(logits.iter().copied());
    let pick = |token: usize, y_best: f32, lse_y: f64| Pick {
        token: token as u32,
        logprob: (y_best as f64 - lse_y) as f32,
        base_logprob: (logits[token] as f64 - lse_z) as f32,
    };
    let Some(scores) = scores else {
        let token = crate::backend::cpu::ops::argmax(logits);
        return pick(token, logits[token], lse_z);
    };
    debug_assert_eq!(scores.len(), logits.len(), "one score per logit");
    let y: Vec<f32> = logits.iter().zip(scores).map(|(&z, &s)| z + s).collect();
    let best = crate::backend::cpu::ops::argmax(&y);
    pick(best, y[best], log_sum_exp(y.iter().copied()))
}

/// The whole adapted log-distribution, `log_softmax(log_softmax(logits) + scores)` computed as
/// `y − lse(y)` with `y = logits + scores` (just `log_softmax(logits)` without scores). Its
/// argmax is [`greedy_pick`]'s token.
pub fn adapted_log_probs(logits: &[f32], scores: Option<&[f32]>) -> Vec<f32> {
    let mut y: Vec<f32> = logits.to_vec();
    if let Some(scores) = scores {
        for (v, &s) in y.iter_mut().zip(scores) {
            *v += s;
        }
    }
    let lse = log_sum_exp(y.iter().copied()) as f32;
    for v in y.iter_mut() {
        *v -= lse;
    }
    y
}

/// The `k` most likely tokens of a log-distribution, most likely first (lower id first on ties).
pub fn top_k(logprobs: &[f32], k: usize) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let better = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &lp) in logprobs.iter().enumerate() {
        let cand = (i as u32, lp);
        if top.len() == k && better(&cand, &top[k - 1]).is_ge() {
            continue;
        }
        let pos = top
            .binary_search_by(|probe| better(probe, &cand))
            .unwrap_or_else(|p| p);
        top.insert(pos, cand);
        top.truncate(k);
    }
    top
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_pick_agrees_with_the_full_distribution() {
        let logits = [0.5f32, 2.0, 1.9, -3.0, 1.0];
        let p = greedy_pick(&logits, None);
        assert_eq!(p.token, 1);
        let lp = adapted_log_probs(&logits, None);
        assert!((p.logprob - lp[1]).abs() < 1e-6);
        assert_eq!(p.logprob, p.base_logprob);
        assert!((lp.iter().map(|v| v.exp()).sum::<f32>() - 1.0).abs() < 1e-5);

        let scores = [0.0f32, -1.0, 0.0, 0.0, 0.5];
        let p = greedy_pick(&logits, Some(&scores));
        let lp = adapted_log_probs(&logits, Some(&scores));
        assert_eq!(p.token, 2, "1.9 beats 2.0 - 1.0");
        assert!((p.logprob - lp[2]).abs() < 1e-6);
        let base = adapted_log_probs(&logits, None);
        assert!((p.base_logprob - base[2]).abs() < 1e-6);
        // The product of experts: log p_a = log p_base + scores − log Z.
        let z: f64 = base
            .iter()
            .zip(&scores)
            .map(|(&b, &s)| ((b + s) as f64).exp())
            .sum();
        assert!((p.logprob as f64 - (base[2] as f64 + scores[2] as f64 - z.ln())).abs() < 1e-6);
        assert!((lp.iter().map(|v| v.exp()).sum::<f32>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn top_k_is_sorted_and_breaks_ties_by_id() {
        let lp = [-1.0f32, -0.5, -2.0, -0.5, -0.1];
        assert_eq!(top_k(&lp, 3), vec![(4, -0.1), (1, -0.5), (3, -0.5)]);
        assert_eq!(top_k(&lp, 0), vec![]);
        assert_eq!(top_k(&lp, 10).len(), 5);
    }
}
