//! Text generation: greedy or temperature sampling with a KV cache, one sequence streamed or a
//! batch of sequences decoded together, optionally through a score adjuster (the paper's rule
//! adapter, `crate::adapter`), on any [`LanguageModel`] (the CPU or the GPU model).

pub mod detok;
pub mod engine;
pub mod instructions;
pub mod scoring;
pub mod vocab;

pub use detok::IncrementalDecoder;
pub use engine::{run_batched, step, Finish, Finished, Sequence, SequenceRequest, TokenChoice};
pub use scoring::{adapted_log_probs, greedy_pick, top_k, Pick, ScoreAdjuster, SequenceScores};

use crate::backend::cpu::ops::{argmax, softmax_in_place};
use crate::bail;
use crate::error::Result;
use crate::model::LanguageModel;
use std::sync::Arc;

/// How the next token is chosen from logits.
#[derive(Clone, Debug)]
pub struct Sampler {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling: only the most likely tokens whose probabilities add up to `top_p`
    /// are drawn from (1 = all).
    pub top_p: f32,
    state: u64,
}

impl Sampler {
    /// A sampler at `temperature` (0: greedy); a NaN, infinite or negative temperature is an
    /// error, whatever front end passed it (a NaN would make every draw the last token).
    pub fn new(temperature: f32, seed: u64) -> Result<Sampler> {
        if !(temperature.is_finite() && temperature >= 0.0) {
            bail!("temperature {temperature} must be a finite number of 0 or more");
        }
        Ok(Sampler {
            temperature,
            top_p: 1.0,
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        })
    }
    pub fn greedy() -> Sampler {
        Sampler {
            temperature: 0.0,
            top_p: 1.0,
            state: 1,
        }
    }
    /// Nucleus sampling over a mass of `top_p`, in [0, 1] (0 keeps only the likeliest token).
    pub fn with_top_p(mut self, top_p: f32) -> Result<Sampler> {
        if !(0.0..=1.0).contains(&top_p) {
            bail!("top_p {top_p} must be a number between 0 and 1");
        }
        self.top_p = top_p;
        Ok(self)
    }
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
    /// An independent sampler for the `index`-th sequence of a batch, derived from this one's
    /// state, so that batch members do not draw the same random numbers.
    pub fn for_sequence(&self, index: usize) -> Sampler {
        let mut s = self.clone();
        s.state = (self.state ^ (index as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)) | 1;
        s
    }

    fn next_uniform(&mut self) -> f32 {
        // xorshift64*: reproducible for a seed, and no crate needed.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let r = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (r >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.is_greedy() {
            return argmax(logits) as u32;
        }
        let mut p: Vec<f32> = logits.iter().map(|&l| l / self.temperature).collect();
        softmax_in_place(&mut p);
        let mut order: Vec<usize> = (0..p.len()).collect();
        let mut mass = 1.0;
        if self.top_p < 1.0 {
            // Keep the smallest set of most likely tokens whose mass reaches top_p.
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            let mut acc = 0.0;
            let keep = order
                .iter()
                .position(|&i| {
                    acc += p[i];
                    acc >= self.top_p
                })
                .map_or(order.len(), |k| k + 1);
            order.truncate(keep);
            mass = acc.min(1.0);
        }
        let u = self.next_uniform() * mass;
        let mut acc = 0.0;
        for &i in &order {
            acc += p[i];
            if u < acc {
                return i as u32;
            }
        }
        *order.last().expect("non-empty vocabulary") as u32
    }
}

/// Options shared by the generation entry points.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Generation of a sequence stops after any of these (the stop token is kept in the output).
    pub stop_tokens: Vec<u32>,
}

/// Generates after `prompt`, calling `on_token` with each new token as it is chosen.
/// Returns the new tokens (a final stop token included).
pub fn generate<M: LanguageModel>(
    model: M,
    prompt: &[u32],
    opts: &GenerateOptions,
    sampler: &mut Sampler,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    generate_adjusted(model, prompt, opts, sampler, None, |c| on_token(c.token))
}

/// [`generate`] with an optional score adjuster (e.g. the rule adapter); `on_token` also sees
/// each token's log-probability.
pub fn generate_adjusted<M: LanguageModel>(
    mut model: M,
    prompt: &[u32],
    opts: &GenerateOptions,
    sampler: &mut Sampler,
    adjuster: Option<Arc<dyn ScoreAdjuster>>,
    mut on_token: impl FnMut(&TokenChoice) -> Result<()>,
) -> Result<Vec<u32>> {
    let req = SequenceRequest {
        prompt: prompt.to_vec(),
        max_new_tokens: opts.max_new_tokens,
        stop_tokens: opts.stop_tokens.clone(),
        sampler: sampler.clone(),
        top_logprobs: 0,
        adjuster,
    };
    let mut seq = Sequence::new(&model, req)?;
    while seq.finish().is_none() {
        let choice = step(&mut model, &mut [&mut seq])?.remove(0);
        on_token(&choice)?;
    }
    // Hand the sampler's advanced state back, so consecutive calls keep drawing fresh numbers.
    *sampler = seq.sampler_state();
    Ok(seq.generated().to_vec())
}

/// Generates after every prompt at once: each step runs one forward over all sequences still
/// going (ragged lengths, no padding), so the weights are read once per step for the batch.
/// `on_step(done, total)` reports progress each time a sequence ends. Returns each prompt's new
/// tokens (empty for an empty prompt).
pub fn generate_batch<M: LanguageModel>(
    model: M,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    sampler: &mut Sampler,
    mut on_step: impl FnMut(usize, usize),
) -> Result<Vec<Vec<u32>>> {
    let n = prompts.len();
    let mut done = 0;
    generate_batch_adjusted(model, prompts, opts, sampler, None, n, |_, _| {
        done += 1;
        on_step(done, n);
    })
}

/// [`generate_batch`] with an optional score adjuster and at most `max_batch` sequences decoded
/// together (continuous batching: a finished sequence's slot goes to the next prompt at once).
/// `on_done(i, tokens)` sees each sequence as it ends. Empty prompts give empty outputs.
pub fn generate_batch_adjusted<M: LanguageModel>(
    model: M,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    sampler: &mut Sampler,
    adjuster: Option<Arc<dyn ScoreAdjuster>>,
    max_batch: usize,
    mut on_done: impl FnMut(usize, &[u32]),
) -> Result<Vec<Vec<u32>>> {
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let runnable: Vec<usize> = (0..prompts.len())
        .filter(|&i| !prompts[i].is_empty())
        .collect();
    let requests = runnable.iter().map(|&i| SequenceRequest {
        prompt: prompts[i].clone(),
        max_new_tokens: opts.max_new_tokens,
        stop_tokens: opts.stop_tokens.clone(),
        sampler: sampler.for_sequence(i),
        top_logprobs: 0,
        adjuster: adjuster.clone(),
    });
    run_batched(
        model,
        requests,
        max_batch,
        |_, _| Ok(()),
        |k, finished| {
            let i = runnable[k];
            on_done(i, &finished.tokens);
            outputs[i] = finished.tokens;
            Ok(())
        },
    )?;
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            on_done(i, &[]);
        }
    }
    *sampler = sampler.for_sequence(prompts.len());
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_is_greedy_at_zero_and_reproducible_otherwise() {
        let logits = [0.1, 2.0, 1.9, -1.0];
        assert_eq!(Sampler::greedy().sample(&logits), 1);
        let draw = |seed| {
            let mut s = Sampler::new(1.0, seed).unwrap();
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        let d = draw(7);
        assert!(
            d.contains(&1) && d.contains(&2),
            "temperature 1 samples both likely tokens: {d:?}"
        );
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let logits = [0.0, 5.0, 4.9, -5.0];
        let mut s = Sampler::new(1.0, 3).unwrap().with_top_p(0.5).unwrap();
        let d: Vec<u32> = (0..100).map(|_| s.sample(&logits)).collect();
        assert!(d.iter().all(|&t| t == 1), "only the top token: {d:?}");
        let mut s = Sampler::new(1.0, 3).unwrap().with_top_p(0.9).unwrap();
        let d: Vec<u32> = (0..200).map(|_| s.sample(&logits)).collect();
        assert!(d.contains(&1) && d.contains(&2) && !d.contains(&3));
    }

    #[test]
    fn non_finite_or_negative_settings_are_refused() {
        for t in [f32::NAN, f32::INFINITY, -f32::INFINITY, -0.5] {
            let e = Sampler::new(t, 0).unwrap_err().to_string();
            assert!(e.contains("temperature"), "{e}");
        }
        for p in [f32::NAN, -0.1, 1.5] {
            let e = Sampler::new(1.0, 0).unwrap().with_top_p(p).unwrap_err();
            assert!(e.to_string().contains("top_p"), "{e}");
        }
        assert!(Sampler::new(0.0, 0).unwrap().is_greedy());
    }
}
