//! Response ranking (the paper's Section 4.2): for each instruction, is its own response more
//! likely under the model than responses written for other instructions?
//!
//! The protocol follows the paper's code, john-hewitt/implicit-ins:
//! `open_instruct/ratio_eval.py` (`shuffleify_dataset`, the scoring loop) and `plot_ratios.py`
//! (the fraction), run as the README's "Response Ranking Experiment" does
//! (`--max_seq_length 1024 --per_device_train_batch_size 1 --max_examples 1000` on Stanford
//! Alpaca in Tulu `messages` format):
//!
//! * the examples are the first `max_examples` rows (`select(range(max_examples))`), and the pool
//!   of negatives is every assistant message of those rows, in order (all turns);
//! * `random.seed(0)`, then for each instruction in order, 5 draws of
//!   `random.randint(0, len(pool) - 1)`; a negative is the row with `messages[1]` (its first
//!   response) replaced by the drawn message, so later turns of multi-turn rows stay;
//! * a draw whose pool index equals the instruction's index is the "real" pair to
//!   `plot_ratios.py` (it matches `pair == [[i, i]]`), so it is not a negative and that
//!   instruction has fewer than 5 pairs. For single-turn data (the paper's Alpaca, or LIMA's
//!   first 1000 rows) that index is exactly the instruction's own response;
//! * each sequence is encoded exactly as for training (open-instruct's
//!   `encode_with_messages_format`, here [`encode_example`] with [`Mode::Instruction`], cut at
//!   `max_len`) and scored by `exp(-loss)`, the loss being HF's mean token cross-entropy over
//!   the response tokens and EOS (labels shifted by one, batch size 1);
//! * the fraction counts pairs with `true - negative > 0` (`plot_ratios.py`), so ties lose.
//!
//! **Responses that `max_len` cuts off.** The cut keeps the first `max_len` tokens (HF's
//! default right-side truncation: `tokenizer(..., max_length=max_seq_length, truncation=True)` in
//! `encode_with_messages_format`), so an instruction of `max_len` tokens or more leaves no
//! response token to score. The paper's code as last changed (ratio_eval.py in 158fe94 "update
//! ratio eval", which also set the 5 draws; plot_ratios.py's logic as of then; HEAD fe1c2d8)
//! scores such a sequence anyway: `open_instruct/ratio_eval.py` line 604 has the filter
//! `lm_datasets.filter(lambda example: (example['labels'] != -100).any())` commented out, HF's
//! mean cross-entropy over zero tokens is NaN, and `prob = torch.exp(-outputs.loss)` (line 634)
//! writes NaN; `plot_ratios.py` forms `real_likelihood - x` (line 49), and `x > 0` is False for
//! NaN while the pair stays in `len(sft_ratios)` (line 56): the pair counts as a loss. Before
//! 158fe94 (10 draws) the filter was active: such sequences were dropped unscored, so a dropped
//! negative's pair was skipped, and a dropped true response left `plot_ratios.py` (lines 16-23)
//! comparing the negatives with the previous instruction's `real_elt`, a stale loop variable.
//!
//! Here such pairs are **skipped and counted**, as the filter did for negatives: a sequence
//! without loss targets is not run; if it is the instruction's own, the instruction and all its
//! pairs are skipped (`skipped_instructions`); if a negative, its pair is. Skipped pairs are in
//! no fraction or interval; `skipped_pairs` counts them, and `fraction_skipped_as_losses`, wins /
//! (pairs + skipped pairs), is what the last `plot_ratios.py` would print. No score is NaN: a
//! non-finite score (NaN or infinite logits) is an error.
//!
//! The 95% interval is ours (the paper reports none): a percentile bootstrap over instructions,
//! which resamples an instruction with all its pairs and so respects that the 5 pairs of one
//! instruction share its true response. A Wilson interval, which treats pairs as independent,
//! is reported alongside.

use super::pyrandom::PyRandom;
use super::Progress;
use crate::bail;
use crate::data::{encode_example, EncodedExample, Example, Message, Mode};
use crate::error::{Context, Result};
use crate::io::tokenizer::Tokenizer;
use crate::model::{LanguageModel, Logits};
use serde::Serialize;
use std::time::Instant;

/// Settings of a ranking run.
#[derive(Clone, Debug)]
pub struct RankingOptions {
    /// Negatives drawn per instruction (the paper: 5).
    pub negatives: usize,
    /// Seed of `random.seed` (the paper: 0).
    pub seed: u64,
    /// Use the first N examples (pool included); all when None.
    pub max_examples: Option<usize>,
    /// Sequences are cut here, as HF's truncation (the paper's run: 1024).
    pub max_len: usize,
    /// Upper bound on new tokens per forward pass (memory: logits are tokens x vocab floats).
    pub batch_tokens: usize,
    /// Bootstrap resamples for the interval.
    pub bootstrap: usize,
}

impl Default for RankingOptions {
    fn default() -> Self {
        RankingOptions {
            negatives: 5,
            seed: 0,
            max_examples: None,
            max_len: 1024,
            batch_tokens: 2048,
            bootstrap: 10_000,
        }
    }
}

/// One negative of an instruction.
#[derive(Clone, Debug, Serialize)]
pub struct NegativeResult {
    /// Index of the drawn response in the pool of assistant messages.
    pub pool_index: usize,
    /// The example that response comes from.
    pub source_example: usize,
    /// exp(-mean token loss); None when not scored: `max_len` leaves this sequence no response
    /// token, or its instruction is skipped.
    pub score: Option<f64>,
    /// Whether the true response scored strictly higher; None when the pair is skipped.
    pub true_wins: Option<bool>,
}

/// Everything about one instruction.
#[derive(Clone, Debug, Serialize)]
pub struct InstructionResult {
    pub index: usize,
    pub id: Option<String>,
    /// exp(-mean token loss) of the instruction's own response; None when `max_len` leaves it
    /// no response token (the instruction is skipped).
    pub true_score: Option<f64>,
    pub negatives: Vec<NegativeResult>,
    /// Draws that hit the instruction's own index and so are not negatives.
    pub self_draws: usize,
    pub wins: usize,
    /// Pairs compared (skipped pairs are not).
    pub pairs: usize,
    /// Pairs skipped: one side has no response token within `max_len`.
    pub skipped_pairs: usize,
}

/// The result of a ranking run.
#[derive(Clone, Debug, Serialize)]
pub struct RankingReport {
    /// Fraction of the compared (true, negative) pairs where the true response scores higher.
    pub fraction: f64,
    pub ci95: [f64; 2],
    pub ci_method: String,
    /// Wilson score interval over pairs (treats pairs as independent).
    pub wilson_ci95: [f64; 2],
    pub wins: usize,
    /// Pairs compared: both sides have a response token within `max_len`.
    pub pairs: usize,
    /// Pairs with equal scores (counted as losses, as plot_ratios.py does).
    pub ties: usize,
    /// Sequences with no loss tokens (cut inside the instruction); they are not scored.
    pub no_loss_sequences: usize,
    /// Instructions whose own response `max_len` cuts off entirely: all their pairs skipped.
    pub skipped_instructions: usize,
    /// Pairs skipped (either side without loss tokens); in no fraction or interval.
    pub skipped_pairs: usize,
    /// wins / (pairs + skipped_pairs): skipped pairs counted as losses, as the paper's last
    /// `plot_ratios.py` counts their NaN comparisons.
    pub fraction_skipped_as_losses: f64,
    pub n_instructions: usize,
    pub negatives_per_instruction: usize,
    pub self_draws_dropped: usize,
    pub seed: u64,
    pub max_len: usize,
    pub instructions: Vec<InstructionResult>,
}

/// The negatives of each instruction, drawn as `shuffleify_dataset` does.
pub struct Draws {
    /// Every assistant message of the examples, in order, with the example it belongs to.
    pub pool: Vec<(Message, usize)>,
    /// Per instruction, the drawn pool indices (self-draws included, in draw order).
    pub picks: Vec<Vec<usize>>,
}

/// Draws `negatives` pool indices per example with `random.seed(seed)` + `random.randint`.
pub fn draw_negatives(examples: &[Example], negatives: usize, seed: u64) -> Result<Draws> {
    let pool: Vec<(Message, usize)> = examples
        .iter()
        .enumerate()
        .flat_map(|(i, ex)| {
            ex.messages
                .iter()
                .filter(|m| m.role == "assistant")
                .map(move |m| (m.clone(), i))
        })
        .collect();
    if pool.is_empty() {
        bail!("no assistant messages to draw negatives from");
    }
    let mut rng = PyRandom::from_u64(seed);
    let picks = (0..examples.len())
        .map(|_| {
            (0..negatives)
                .map(|_| rng.randint(0, pool.len() as u64 - 1) as usize)
                .collect()
        })
        .collect();
    Ok(Draws { pool, picks })
}

/// An example with its first response (`messages[1]`) replaced, as ratio_eval.py does.
fn with_response(ex: &Example, response: &Message) -> Example {
    let mut out = ex.clone();
    out.messages[1] = response.clone();
    out
}

/// The sequences of one instruction to score: its own (first) and its negatives, only those
/// with a loss target (none at all when its own response has none).
struct Group {
    seqs: Vec<EncodedExample>,
}

/// Whether a sequence has a loss target (a position t >= 1 whose token carries loss).
fn has_loss_target(seq: &EncodedExample) -> bool {
    seq.loss_mask.iter().skip(1).any(|&m| m)
}

/// exp(-mean token loss) for each sequence of each group, sharing the instruction prefix
/// through a KV cache (when the model's caches can be copied; otherwise every sequence runs
/// from its first token); `on_group` is called as groups finish. Every sequence must have a
/// loss target; a score that is not finite (NaN or infinite logits) is an error.
fn score_groups<M: LanguageModel>(
    mut model: M,
    groups: &[Group],
    batch_tokens: usize,
    mut on_group: impl FnMut(usize),
) -> Result<Vec<Vec<f64>>> {
    let vocab = model.config().vocab_size;
    // Whether caches can be copied (asked of an empty one, which costs nothing to make).
    let share = model.fork_cache(&model.new_cache()).is_some();
    let mut scores = Vec::with_capacity(groups.len());
    let mut start = 0;
    while start < groups.len() {
        // A chunk of whole groups whose suffixes fit the token budget (at least one group).
        let mut end = start;
        let mut tokens = 0;
        let mut prefixes = Vec::new();
        while end < groups.len() {
            let p = if share {
                shared_prefix(&groups[end].seqs)
            } else {
                0
            };
            let t: usize = groups[end].seqs.iter().map(|s| s.ids.len() - p).sum();
            if end > start && tokens + t > batch_tokens {
                break;
            }
            tokens += t;
            prefixes.push(p);
            end += 1;
        }
        let chunk = &groups[start..end];
        // 1. The shared prefixes, one forward for the chunk.
        let mut caches: Vec<M::Cache> = chunk.iter().map(|_| model.new_cache()).collect();
        {
            let mut batch: Vec<(&[u32], &mut M::Cache)> = Vec::new();
            for ((g, &p), cache) in chunk.iter().zip(&prefixes).zip(caches.iter_mut()) {
                if p > 0 {
                    batch.push((&g.seqs[0].ids[..p], cache));
                }
            }
            if !batch.is_empty() {
                model.forward(&mut batch, Logits::Last)?;
            }
        }
        // 2. Every sequence's suffix from a copy of its group's cache, in sub-batches.
        let mut items: Vec<(usize, usize)> = Vec::new(); // (group in chunk, sequence)
        for (gi, g) in chunk.iter().enumerate() {
            items.extend((0..g.seqs.len()).map(|si| (gi, si)));
        }
        // Scores in `items` order (group by group), split per group below.
        let mut chunk_scores: Vec<f64> = Vec::with_capacity(items.len());
        let mut i = 0;
        while i < items.len() {
            let mut j = i;
            let mut t = 0;
            while j < items.len() {
                let (gi, si) = items[j];
                let n = chunk[gi].seqs[si].ids.len() - prefixes[gi];
                if j > i && t + n > batch_tokens {
                    break;
                }
                t += n;
                j += 1;
            }
            let mut seq_caches: Vec<M::Cache> = items[i..j]
                .iter()
                .map(|&(gi, _)| match prefixes[gi] {
                    0 => Ok(model.new_cache()),
                    _ => model
                        .fork_cache(&caches[gi])
                        .context("ranking: the model's KV cache cannot be copied"),
                })
                .collect::<Result<_>>()?;
            let mut batch: Vec<(&[u32], &mut M::Cache)> = items[i..j]
                .iter()
                .zip(seq_caches.iter_mut())
                .map(|(&(gi, si), c)| (&chunk[gi].seqs[si].ids[prefixes[gi]..], c))
                .collect();
            let logits = model.forward(&mut batch, Logits::All)?;
            for (&(gi, si), l) in items[i..j].iter().zip(&logits) {
                let seq = &chunk[gi].seqs[si];
                match sequence_score(seq, prefixes[gi], l, vocab) {
                    Some(score) if score.is_finite() => chunk_scores.push(score),
                    score => bail!(
                        "ranking: instruction {}, scored sequence {si} of {} ({} tokens): score \
                         {score:?} (None: no loss target; NaN or inf: the logits are not finite)",
                        start + gi,
                        chunk[gi].seqs.len(),
                        seq.ids.len()
                    ),
                }
            }
            i = j;
        }
        let mut chunk_scores = chunk_scores.into_iter();
        for (k, g) in chunk.iter().enumerate() {
            scores.push(chunk_scores.by_ref().take(g.seqs.len()).collect());
            on_group(start + k);
        }
        start = end;
    }
    Ok(scores)
}

/// How many leading tokens every sequence of a group can share: a common prefix that stops one
/// token before the first loss target of any sequence (the logits predicting it must come from
/// the per-sequence pass) and leaves every sequence at least one new token.
fn shared_prefix(seqs: &[EncodedExample]) -> usize {
    let Some(first) = seqs.first().map(|s| &s.ids) else {
        return 0;
    };
    let mut limit = first.len();
    for s in seqs {
        let common = first.iter().zip(&s.ids).take_while(|(a, b)| a == b).count();
        let first_target = (1..s.ids.len())
            .find(|&t| s.loss_mask[t])
            .unwrap_or(s.ids.len());
        limit = limit.min(common).min(first_target);
    }
    limit.saturating_sub(1)
}

/// exp(-mean over loss targets t >= 1 of -log p(x_t | x_<t)); `logits` are the rows of
/// positions `offset..`, so position t-1 is row t-1-offset. None without loss targets (where
/// HF's loss, and so the paper's score, is NaN).
fn sequence_score(
    seq: &EncodedExample,
    offset: usize,
    logits: &[f32],
    vocab: usize,
) -> Option<f64> {
    let mut total = 0.0f64;
    let mut count = 0usize;
    for t in 1..seq.ids.len() {
        if !seq.loss_mask[t] {
            continue;
        }
        let row = &logits[(t - 1 - offset) * vocab..(t - offset) * vocab];
        total += log_softmax_at(row, seq.ids[t] as usize);
        count += 1;
    }
    (count > 0).then(|| (total / count as f64).exp())
}

/// log softmax(row)[index], in f64.
pub fn log_softmax_at(row: &[f32], index: usize) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[index] as f64 - max - sum.ln()
}

/// Runs the ranking test on `examples` (all of them; cut to `max_examples` by the caller or
/// here) and summarises it, on any model (`&Transformer`, or `&mut CudaTransformer`).
pub fn run_ranking<M: LanguageModel>(
    model: M,
    tok: &Tokenizer,
    examples: &[Example],
    opts: &RankingOptions,
) -> Result<RankingReport> {
    let n = opts
        .max_examples
        .unwrap_or(examples.len())
        .min(examples.len());
    let examples = &examples[..n];
    if examples.is_empty() {
        bail!("no examples to rank");
    }
    if opts.negatives == 0 {
        bail!("--negatives must be at least 1");
    }
    if opts.bootstrap == 0 {
        bail!("--bootstrap must be at least 1 (the interval is a percentile of the resamples)");
    }
    for (i, ex) in examples.iter().enumerate() {
        if ex.messages.len() < 2 {
            bail!(
                "example {i} ({}): needs an instruction and a response (messages[1] is replaced \
                 by the negatives), has {} message(s)",
                ex.id.as_deref().unwrap_or("no id"),
                ex.messages.len()
            );
        }
    }
    let draws = draw_negatives(examples, opts.negatives, opts.seed)?;
    let mut groups = Vec::with_capacity(n);
    // Per instruction: the kept picks, and whether each sequence (own, then each pick) has a
    // loss target, i.e. is scored.
    let mut kept: Vec<Vec<usize>> = Vec::with_capacity(n);
    let mut scorable: Vec<Vec<bool>> = Vec::with_capacity(n);
    for (i, ex) in examples.iter().enumerate() {
        let name = || format!("example {i} ({})", ex.id.as_deref().unwrap_or("no id"));
        let own = encode_example(tok, ex, Mode::Instruction, opts.max_len)
            .with_context(name)?
            .0;
        let mut seqs = vec![own];
        let mut picks = Vec::new();
        for &p in &draws.picks[i] {
            if p == i {
                continue; // plot_ratios.py takes it for the real pair
            }
            let neg = with_response(ex, &draws.pool[p].0);
            seqs.push(
                encode_example(tok, &neg, Mode::Instruction, opts.max_len)
                    .with_context(name)?
                    .0,
            );
            picks.push(p);
        }
        let has_loss: Vec<bool> = seqs.iter().map(has_loss_target).collect();
        // Without its own score an instruction has nothing to compare: none of it is run.
        let own_scored = has_loss[0];
        let seqs = seqs
            .into_iter()
            .zip(&has_loss)
            .filter(|&(_, &h)| own_scored && h)
            .map(|(s, _)| s)
            .collect();
        groups.push(Group { seqs });
        kept.push(picks);
        scorable.push(has_loss);
    }
    let no_loss_sequences = scorable.iter().flatten().filter(|&&h| !h).count();

    let total_tokens: usize = groups
        .iter()
        .flat_map(|g| g.seqs.iter().map(|s| s.ids.len()))
        .sum();
    eprintln!(
        "ranking {n} instructions x (1 + up to {}) responses: {} sequences, {total_tokens} tokens",
        opts.negatives,
        groups.iter().map(|g| g.seqs.len()).sum::<usize>()
    );
    let t0 = Instant::now();
    let mut progress = Progress::new("ranking", n);
    let mut tokens_done = 0usize;
    let scores = score_groups(model, &groups, opts.batch_tokens, |gi| {
        tokens_done += groups[gi].seqs.iter().map(|s| s.ids.len()).sum::<usize>();
        let rate = tokens_done as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        progress.update(gi + 1, &format!("{rate:.0} tokens/s"));
    })?;

    let mut instructions = Vec::with_capacity(n);
    let (mut wins, mut pairs, mut ties, mut self_draws_dropped) = (0, 0, 0, 0);
    let (mut skipped_instructions, mut skipped_pairs) = (0, 0);
    for (i, ((s, picks), has_loss)) in scores.iter().zip(&kept).zip(&scorable).enumerate() {
        // Back from the scored sequences to every sequence (None: not scored).
        let mut s = s.iter().copied();
        let per_seq: Vec<Option<f64>> = has_loss
            .iter()
            .map(|&h| if h && has_loss[0] { s.next() } else { None })
            .collect();
        let true_score = per_seq[0];
        let mut negatives = Vec::new();
        for (&p, &score) in picks.iter().zip(&per_seq[1..]) {
            let true_wins = true_score.zip(score).map(|(t, s)| t - s > 0.0);
            ties += usize::from(true_score.is_some() && true_score == score);
            negatives.push(NegativeResult {
                pool_index: p,
                source_example: draws.pool[p].1,
                score,
                true_wins,
            });
        }
        let w = negatives
            .iter()
            .filter(|x| x.true_wins == Some(true))
            .count();
        let compared = negatives.iter().filter(|x| x.true_wins.is_some()).count();
        let self_draws = draws.picks[i].len() - picks.len();
        wins += w;
        pairs += compared;
        skipped_pairs += picks.len() - compared;
        skipped_instructions += usize::from(true_score.is_none());
        self_draws_dropped += self_draws;
        instructions.push(InstructionResult {
            index: i,
            id: examples[i].id.clone(),
            true_score,
            negatives,
            self_draws,
            wins: w,
            pairs: compared,
            skipped_pairs: picks.len() - compared,
        });
    }
    if pairs == 0 {
        bail!(
            "no (true, negative) pairs to compare: {self_draws_dropped} draws hit the instruction \
             itself and {skipped_pairs} pairs were skipped ({skipped_instructions} instructions \
             and {no_loss_sequences} sequences have no response token within max_len {})",
            opts.max_len
        );
    }
    // Skipped instructions have no pairs: the bootstrap resamples those that were compared.
    let per: Vec<(usize, usize)> = instructions
        .iter()
        .filter(|r| r.pairs > 0)
        .map(|r| (r.wins, r.pairs))
        .collect();
    Ok(RankingReport {
        fraction: wins as f64 / pairs as f64,
        ci95: bootstrap_ci(&per, opts.bootstrap, opts.seed),
        ci_method: format!(
            "percentile bootstrap over instructions ({} resamples, seed {})",
            opts.bootstrap, opts.seed
        ),
        wilson_ci95: wilson_ci(wins, pairs),
        wins,
        pairs,
        ties,
        no_loss_sequences,
        skipped_instructions,
        skipped_pairs,
        fraction_skipped_as_losses: wins as f64 / (pairs + skipped_pairs) as f64,
        n_instructions: n,
        negatives_per_instruction: opts.negatives,
        self_draws_dropped,
        seed: opts.seed,
        max_len: opts.max_len,
        instructions,
    })
}

/// 95% percentile bootstrap of sum(wins)/sum(pairs), resampling instructions with replacement.
pub fn bootstrap_ci(per_instruction: &[(usize, usize)], resamples: usize, seed: u64) -> [f64; 2] {
    let n = per_instruction.len();
    if n == 0 || resamples == 0 {
        return [f64::NAN, f64::NAN];
    }
    let mut rng = PyRandom::from_u64(seed);
    let mut stats: Vec<f64> = (0..resamples)
        .filter_map(|_| {
            let (mut w, mut p) = (0usize, 0usize);
            for _ in 0..n {
                let (wi, pi) = per_instruction[rng.randbelow(n as u64) as usize];
                w += wi;
                p += pi;
            }
            (p > 0).then(|| w as f64 / p as f64)
        })
        .collect();
    stats.sort_by(|a, b| a.total_cmp(b));
    [percentile(&stats, 2.5), percentile(&stats, 97.5)]
}

/// numpy's default (linear) percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Wilson score interval (95%) for `k` successes in `n` trials.
pub fn wilson_ci(k: usize, n: usize) -> [f64; 2] {
    if n == 0 {
        return [f64::NAN, f64::NAN];
    }
    let z = 1.959_963_984_540_054_f64;
    let (p, n) = (k as f64 / n as f64, n as f64);
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    [centre - half, centre + half]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(user: &str, assistant: &str) -> Example {
        Example {
            messages: vec![
                Message::new("user", user),
                Message::new("assistant", assistant),
            ],
            id: None,
        }
    }

    #[test]
    fn draws_follow_python() {
        // random.seed(0); [[random.randint(0, 15) for _ in range(5)] for _ in range(16)][:2]
        let examples: Vec<Example> = (0..16).map(|i| ex(&format!("q{i}"), "a")).collect();
        let d = draw_negatives(&examples, 5, 0).unwrap();
        assert_eq!(d.pool.len(), 16);
        assert_eq!(d.picks[0], [12, 13, 1, 8, 15]);
        assert_eq!(d.picks[1], [12, 9, 15, 11, 6]);
    }

    #[test]
    fn intervals() {
        let [lo, hi] = wilson_ci(80, 100);
        assert!(
            (lo - 0.7111).abs() < 1e-3 && (hi - 0.8666).abs() < 1e-3,
            "{lo} {hi}"
        );
        let per = vec![(5, 5); 20];
        assert_eq!(bootstrap_ci(&per, 200, 0), [1.0, 1.0]);
        let mixed: Vec<(usize, usize)> = (0..40).map(|i| (i % 6, 5)).collect();
        let [lo, hi] = bootstrap_ci(&mixed, 2000, 0);
        assert!(lo < 0.5 && hi > 0.5 && hi - lo < 0.3, "{lo} {hi}");
    }

    #[test]
    fn prefix_stops_before_first_target() {
        let a = EncodedExample {
            ids: vec![1, 5, 6, 7, 8],
            loss_mask: vec![false, false, false, true, true],
        };
        let b = EncodedExample {
            ids: vec![1, 5, 6, 9],
            loss_mask: vec![false, false, false, true],
        };
        assert_eq!(shared_prefix(&[a.clone(), b]), 2);
        assert_eq!(shared_prefix(&[a]), 2);
        // A skipped instruction's group is empty.
        assert_eq!(shared_prefix(&[]), 0);
    }

    #[test]
    fn no_loss_target_no_score() {
        // max_len cut inside the prompt: no position carries loss, so no score (not NaN).
        let cut = EncodedExample {
            ids: vec![1, 5, 6],
            loss_mask: vec![false; 3],
        };
        assert!(!has_loss_target(&cut));
        assert_eq!(sequence_score(&cut, 0, &[0.0; 3 * 8], 8), None);
        // One target: exp(log softmax) of uniform logits over 8 is 1/8.
        let one = EncodedExample {
            ids: vec![1, 5, 6],
            loss_mask: vec![false, false, true],
        };
        assert!(has_loss_target(&one));
        let score = sequence_score(&one, 0, &[0.0; 3 * 8], 8).unwrap();
        assert!((score - 0.125).abs() < 1e-12, "{score}");
    }
}
