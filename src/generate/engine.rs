//! Decoding state per sequence and the batched step shared by every entry point: `generate`
//! (one streamed sequence), `generate_batch` / [`run_batched`] (a whole instruction set with
//! continuous batching) and the OpenAI server (concurrent requests). Generic over the model
//! ([`LanguageModel`]): the CPU `Transformer` or the GPU's `CudaTransformer`, with tokens chosen
//! on the host alike.

use super::scoring::{adapted_log_probs, greedy_pick, top_k, Pick, ScoreAdjuster, SequenceScores};
use super::Sampler;
use crate::bail;
use crate::error::Result;
use crate::model::{KvCache, LanguageModel, Logits};
use std::collections::VecDeque;
use std::sync::Arc;

/// What to generate for one sequence and how.
#[derive(Clone)]
pub struct SequenceRequest {
    /// The prompt's token ids (BOS included when the model wants one).
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    /// Generation stops after any of these (the stop token is reported, then the sequence ends).
    pub stop_tokens: Vec<u32>,
    pub sampler: Sampler,
    /// How many of the most likely alternatives to report with each token (0: none).
    pub top_logprobs: usize,
    /// Scores added to the log-probabilities at every step (the rule adapter), if any.
    pub adjuster: Option<Arc<dyn ScoreAdjuster>>,
}

impl SequenceRequest {
    /// Greedy decoding of `prompt`, no adapter.
    pub fn greedy(prompt: Vec<u32>, max_new_tokens: usize, stop_tokens: Vec<u32>) -> Self {
        SequenceRequest {
            prompt,
            max_new_tokens,
            stop_tokens,
            sampler: Sampler::greedy(),
            top_logprobs: 0,
            adjuster: None,
        }
    }
}

/// One generated token, with its log-probability under the distribution it was chosen from
/// (the adapted one when an adjuster is set) and the requested top alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenChoice {
    pub token: u32,
    pub logprob: f32,
    /// The most likely tokens, most likely first (empty unless `top_logprobs > 0`).
    pub top: Vec<(u32, f32)>,
}

/// Why a sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// A stop token was generated.
    Stop,
    /// `max_new_tokens` or the model's context length was reached.
    Length,
}

/// A sequence being decoded: its KV cache (`C`, the model's [`LanguageModel::Cache`]; the CPU's
/// by default), the tokens to feed next and its decoding rules.
pub struct Sequence<C = KvCache> {
    cache: C,
    pending: Vec<u32>,
    generated: Vec<u32>,
    max_new_tokens: usize,
    context_len: usize,
    stop_tokens: Vec<u32>,
    sampler: Sampler,
    top_logprobs: usize,
    scores: Option<Box<dyn SequenceScores>>,
    finish: Option<Finish>,
}

impl<C> Sequence<C> {
    /// Checks the prompt against the model (non-empty, ids in the vocabulary, shorter than the
    /// context) and sets up the cache and the adjuster's state.
    pub fn new<M>(model: &M, req: SequenceRequest) -> Result<Sequence<C>>
    where
        M: LanguageModel<Cache = C> + ?Sized,
    {
        let c = model.config();
        if req.prompt.is_empty() {
            bail!("the prompt has no tokens");
        }
        if let Some(&bad) = req.prompt.iter().find(|&&t| t as usize >= c.vocab_size) {
            bail!(
                "token id {bad} is outside the vocabulary of {} tokens",
                c.vocab_size
            );
        }
        if req.prompt.len() >= c.max_position_embeddings {
            bail!(
                "the prompt has {} tokens; the model's context is {} tokens",
                req.prompt.len(),
                c.max_position_embeddings
            );
        }
        let scores = req
            .adjuster
            .as_ref()
            .map(|a| a.start(&req.prompt, c.vocab_size));
        Ok(Sequence {
            cache: model.new_cache(),
            finish: (req.max_new_tokens == 0).then_some(Finish::Length),
            pending: req.prompt,
            generated: Vec::new(),
            max_new_tokens: req.max_new_tokens,
            context_len: c.max_position_embeddings,
            stop_tokens: req.stop_tokens,
            sampler: req.sampler,
            top_logprobs: req.top_logprobs,
            scores,
        })
    }

    pub fn finish(&self) -> Option<Finish> {
        self.finish
    }

    /// The tokens generated so far (a final stop token included).
    pub fn generated(&self) -> &[u32] {
        &self.generated
    }

    /// The sampler with its state after the draws made so far.
    pub fn sampler_state(&self) -> Sampler {
        self.sampler.clone()
    }

    /// Whether this sequence's next token is the plain argmax of the model's logits (greedy,
    /// no adjuster, no alternatives asked), which the model may pick itself
    /// ([`LanguageModel::forward_greedy`]).
    fn plain_greedy(&self) -> bool {
        self.sampler.is_greedy() && self.top_logprobs == 0 && self.scores.is_none()
    }

    /// Chooses the next token from this step's logits and records it; `cache_len` is the
    /// cache's length after this step's forward pass.
    fn choose(&mut self, logits: &[f32], cache_len: usize) -> TokenChoice {
        let scores = self.scores.as_mut().map(|s| s.scores());
        let choice = if self.sampler.is_greedy() && self.top_logprobs == 0 {
            let Pick { token, logprob, .. } = greedy_pick(logits, scores);
            TokenChoice {
                token,
                logprob,
                top: Vec::new(),
            }
        } else {
            let lp = adapted_log_probs(logits, scores);
            let token = if self.sampler.is_greedy() {
                // The fused pick, so that asking for logprobs never changes the greedy text.
                greedy_pick(logits, scores).token
            } else {
                self.sampler.sample(&lp)
            };
            TokenChoice {
                token,
                logprob: lp[token as usize],
                top: top_k(&lp, self.top_logprobs),
            }
        };
        self.record(choice, cache_len)
    }

    /// Records the chosen token: the adjuster's state, the output, the next pending token and
    /// whether the sequence ends.
    fn record(&mut self, choice: TokenChoice, cache_len: usize) -> TokenChoice {
        if let Some(s) = self.scores.as_mut() {
            s.accept(choice.token);
        }
        self.generated.push(choice.token);
        self.pending = vec![choice.token];
        if self.stop_tokens.contains(&choice.token) {
            self.finish = Some(Finish::Stop);
        } else if self.generated.len() >= self.max_new_tokens || cache_len + 1 >= self.context_len {
            self.finish = Some(Finish::Length);
        }
        choice
    }
}

/// One decoding step for every given (unfinished) sequence: a single forward over all their
/// pending tokens (prompts being prefilled and single decode tokens alike, ragged, no padding),
/// then one token chosen per sequence. When every sequence decodes plain greedy, the model may
/// pick the tokens itself ([`LanguageModel::forward_greedy`]: the same argmax, without the
/// logits coming back).
pub fn step<M: LanguageModel>(
    mut model: M,
    seqs: &mut [&mut Sequence<M::Cache>],
) -> Result<Vec<TokenChoice>> {
    if seqs.iter().any(|s| s.finish.is_some()) {
        bail!("step: a finished sequence was passed");
    }
    let pending: Vec<Vec<u32>> = seqs
        .iter_mut()
        .map(|s| std::mem::take(&mut s.pending))
        .collect();
    let plain_greedy = seqs.iter().all(|s| s.plain_greedy());
    let (picks, logits) = {
        let mut batch: Vec<(&[u32], &mut M::Cache)> = seqs
            .iter_mut()
            .zip(&pending)
            .map(|(s, p)| (p.as_slice(), &mut s.cache))
            .collect();
        match plain_greedy {
            true => match model.forward_greedy(&mut batch)? {
                Some(picks) => (Some(picks), Vec::new()),
                None => (None, model.forward(&mut batch, Logits::Last)?),
            },
            false => (None, model.forward(&mut batch, Logits::Last)?),
        }
    };
    if let Some(picks) = picks {
        if picks.len() != seqs.len() {
            bail!(
                "step: the model picked {} tokens for {} sequences",
                picks.len(),
                seqs.len()
            );
        }
        return Ok(seqs
            .iter_mut()
            .zip(picks)
            .map(|(s, (token, logprob))| {
                let len = M::cache_len(&s.cache);
                let choice = TokenChoice {
                    token,
                    logprob,
                    top: Vec::new(),
                };
                s.record(choice, len)
            })
            .collect());
    }
    Ok(seqs
        .iter_mut()
        .zip(&logits)
        .map(|(s, l)| {
            let len = M::cache_len(&s.cache);
            s.choose(l, len)
        })
        .collect())
}

/// A finished sequence of [`run_batched`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// The generated tokens (a final stop token included).
    pub tokens: Vec<u32>,
    pub finish: Finish,
}

/// Generates for every request with continuous batching: at most `max_batch` sequences are
/// decoded together, and as soon as one ends the next request joins the batch (its prefill
/// shares the step's forward with the others' decode tokens). `on_token(i, choice)` sees each
/// token of request `i` as it is chosen; `on_done(i, finished)` each sequence as it ends.
pub fn run_batched<M: LanguageModel>(
    mut model: M,
    requests: impl IntoIterator<Item = SequenceRequest>,
    max_batch: usize,
    mut on_token: impl FnMut(usize, &TokenChoice) -> Result<()>,
    mut on_done: impl FnMut(usize, Finished) -> Result<()>,
) -> Result<()> {
    let mut queue: VecDeque<(usize, SequenceRequest)> = requests.into_iter().enumerate().collect();
    let mut live: Vec<(usize, Sequence<M::Cache>)> = Vec::new();
    let max_batch = max_batch.max(1);
    loop {
        while live.len() < max_batch {
            let Some((i, req)) = queue.pop_front() else {
                break;
            };
            let seq =
                Sequence::new(&model, req).map_err(|e| crate::Error(format!("prompt {i}: {e}")))?;
            if let Some(finish) = seq.finish {
                on_done(
                    i,
                    Finished {
                        tokens: vec![],
                        finish,
                    },
                )?;
            } else {
                live.push((i, seq));
            }
        }
        if live.is_empty() {
            return Ok(());
        }
        let choices = {
            let mut seqs: Vec<&mut Sequence<M::Cache>> = live.iter_mut().map(|(_, s)| s).collect();
            step(&mut model, &mut seqs)?
        };
        for ((i, _), choice) in live.iter().zip(&choices) {
            on_token(*i, choice)?;
        }
        let mut still = Vec::with_capacity(live.len());
        for (i, seq) in live.drain(..) {
            match seq.finish {
                Some(finish) => on_done(
                    i,
                    Finished {
                        tokens: seq.generated,
                        finish,
                    },
                )?,
                None => still.push((i, seq)),
            }
        }
        live = still;
    }
}
