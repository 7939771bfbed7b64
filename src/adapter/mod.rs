//! The rule-based adapter of Hewitt et al. (2024), §6 and Appendix E: a hand-written "language
//! model" whose scores r are added to the base model's log-probabilities (a product of
//! experts), so that greedy decoding picks `argmax(log_softmax(logits) + r)`.
//!
//! The three rules, as the paper's code (Listing 1; `InsTunerModel` in
//! open_instruct/combined_model.py of john-hewitt/implicit-ins) computes them at each step:
//! 1. **uniform** token changes: 15 tokens get a fixed score (`output[id] = v`);
//! 2. **diversity**: every distinct token id from just after the first `\n<|user|>\n` tag to the
//!    end of the input (instruction, assistant tag and response so far) gets −1.5
//!    (`set(idlist[first_token_index:])`, `output[w] -= 1.5`); with no user tag at all, every
//!    token of the input (`idlist[None:]`);
//! 3. **eos**: with L = tokens after the first `\n<|assistant|>\n` tag, EOS is *set* to
//!    15·L/250 for 0 < L < 250 (`output[eos_id] = score * 15`, overriding rules 1 and 2), so
//!    nothing on the first response token and nothing from L = 250 on. (Listing 1 also sets EOS
//!    to 100 past L = 1024; in the repository's code that vector is never added, and the author
//!    notes it never triggered, so it is left out.)
//!
//! The tags are matched as in the paper: `tokenizer("\n<|user|>\n")[-5:]`, i.e. the last tokens
//! of the tag that are the same wherever it stands. Here that is the common suffix (at most the
//! paper's 5 tokens) of the tag tokenised after a newline and at the start of a text, which gives
//! exactly the paper's `[29989, 1792, 29989, 29958, 13]` and `[465, 22137, 29989, 29958, 13]`
//! for Llama-2, and works for any vocabulary. Without an assistant tag in the prompt (a raw
//! completion), L counts the generated tokens.

pub mod spec;

pub use spec::{AdapterSpec, EosSchedule, Rule, RuleSet, TokenBias, TokenRef, PAPER_RULES_TOML};

use crate::bail;
use crate::error::Result;
use crate::generate::vocab::VocabText;
use crate::generate::{ScoreAdjuster, SequenceScores};
use crate::io::tokenizer::Tokenizer;
use std::sync::Arc;

/// The paper matches its tags by their last 5 tokens.
const PAPER_TAG_TOKENS: usize = 5;

/// The rules resolved against one tokenizer.
#[derive(Debug)]
struct Resolved {
    rules: RuleSet,
    /// Rule 1 (uniform) as `(id, score)`, in the spec's order, each id once (a later entry for
    /// the same id replaces the earlier one, as the paper's assignments do).
    uniform: Vec<(u32, f32)>,
    eos: Option<EosSchedule>,
    eos_ids: Vec<u32>,
    diversity: Option<f32>,
    user_tag: Vec<u32>,
    assistant_tag: Vec<u32>,
}

/// The rule adapter for one tokenizer: a [`ScoreAdjuster`] for `crate::generate`.
#[derive(Clone, Debug)]
pub struct RuleAdapter {
    inner: Arc<Resolved>,
    /// Token texts of the spec that are no single token of this vocabulary (skipped).
    unresolved: Vec<String>,
    description: String,
}

/// The tokens of `tag` that are the same after a newline and at the start of a text.
fn tag_ids(tok: &Tokenizer, tag: &str) -> Result<Vec<u32>> {
    let inline = tok.encode(&format!("\n{tag}\n"))?;
    let at_start = tok.encode(&format!("{tag}\n"))?;
    let common = inline
        .iter()
        .rev()
        .zip(at_start.iter().rev())
        .take_while(|(a, b)| a == b)
        .count()
        .min(PAPER_TAG_TOKENS);
    if common == 0 {
        bail!(
            "{}: the tag {tag:?} tokenizes differently after a newline and at the start",
            tok.path.display()
        );
    }
    Ok(inline[inline.len() - common..].to_vec())
}

impl RuleAdapter {
    /// Resolves `spec`'s rules that are in `rules` against `tok`. Token texts of the built-in
    /// paper rules that a vocabulary lacks are skipped (see [`RuleAdapter::unresolved`]); in a
    /// rules file, such a token is an error naming the file and line.
    pub fn new(spec: &AdapterSpec, rules: RuleSet, tok: &Tokenizer) -> Result<RuleAdapter> {
        let source = spec
            .source
            .as_ref()
            .map_or("the paper's rules".to_string(), |p| p.display().to_string());
        let missing: Vec<&str> = Rule::ALL
            .iter()
            .filter(|&&r| rules.contains(r) && !spec.defined().contains(r))
            .map(|r| r.name())
            .collect();
        if !missing.is_empty() {
            bail!("{source} has no {} rule", missing.join(", "));
        }
        let vocab = VocabText::detect(tok);
        let mut uniform: Vec<(u32, f32)> = Vec::new();
        let mut unresolved = Vec::new();
        if rules.uniform {
            for bias in &spec.uniform {
                let id = match &bias.token {
                    TokenRef::Text(t) => vocab.lookup(tok, t),
                    TokenRef::Vocab(t) => tok.token_id(t),
                    TokenRef::Id(id) => Some(*id).filter(|&i| (i as usize) < tok.vocab_size()),
                };
                match (id, &spec.source) {
                    (Some(id), _) => {
                        uniform.retain(|&(i, _)| i != id);
                        uniform.push((id, bias.score));
                    }
                    (None, None) => unresolved.push(bias.token.to_string()),
                    (None, Some(path)) => bail!(
                        "{}{}: {} is not a single token of {}",
                        path.display(),
                        bias.line.map_or(String::new(), |n| format!(":{n}")),
                        bias.token,
                        tok.path.display()
                    ),
                }
            }
        }
        if rules.eos && tok.eos.is_empty() {
            bail!(
                "{}: the EOS rule needs an EOS token, and the tokenizer has none",
                tok.path.display()
            );
        }
        let needs_tags = rules.eos || rules.diversity;
        let (user_tag, assistant_tag) = if needs_tags {
            (
                tag_ids(tok, &spec.user_tag)?,
                tag_ids(tok, &spec.assistant_tag)?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let eos = spec.eos.filter(|_| rules.eos);
        let diversity = spec.diversity.filter(|_| rules.diversity);
        let mut parts = Vec::new();
        if let Some(e) = eos {
            parts.push(format!(
                "eos +{}·(L-{})/{} for {} < L < {}",
                e.weight,
                e.start,
                e.end - e.start,
                e.start,
                e.end
            ));
        }
        if rules.uniform {
            parts.push(format!("uniform on {} tokens", uniform.len()));
        }
        if let Some(d) = diversity {
            parts.push(format!("diversity {d} per used token"));
        }
        let description = format!("rule adapter ({source}): {}", parts.join("; "));
        Ok(RuleAdapter {
            inner: Arc::new(Resolved {
                rules,
                uniform,
                eos,
                eos_ids: tok.eos.clone(),
                diversity,
                user_tag,
                assistant_tag,
            }),
            unresolved,
            description,
        })
    }

    /// The paper's adapter with the given rules.
    pub fn paper(rules: RuleSet, tok: &Tokenizer) -> Result<RuleAdapter> {
        RuleAdapter::new(&AdapterSpec::paper(), rules, tok)
    }

    /// Rule 2's resolved `(id, score)` pairs, in the spec's order.
    pub fn uniform_biases(&self) -> &[(u32, f32)] {
        &self.inner.uniform
    }
    pub fn user_tag(&self) -> &[u32] {
        &self.inner.user_tag
    }
    pub fn assistant_tag(&self) -> &[u32] {
        &self.inner.assistant_tag
    }
    pub fn rules(&self) -> RuleSet {
        self.inner.rules
    }
    /// Token texts of the paper's list that this vocabulary has no single token for.
    pub fn unresolved(&self) -> &[String] {
        &self.unresolved
    }
    /// One line saying what the adapter does, for logs.
    pub fn describe(&self) -> &str {
        &self.description
    }
}

impl ScoreAdjuster for RuleAdapter {
    fn start(&self, prompt: &[u32], vocab: usize) -> Box<dyn SequenceScores> {
        Box::new(RuleState::new(self.inner.clone(), prompt, vocab))
    }
}

/// Index just past the first occurrence of `tag` in `ids`.
fn find_end(ids: &[u32], tag: &[u32]) -> Option<usize> {
    if tag.is_empty() {
        return None;
    }
    ids.windows(tag.len())
        .position(|w| w == tag)
        .map(|i| i + tag.len())
}

/// The adapter's state for one sequence. The score vector is kept up to date incrementally:
/// the diversity set only grows (until a first user tag appears, see `accept`), so each step
/// costs O(1) besides the EOS entries.
struct RuleState {
    rules: Arc<Resolved>,
    history: Vec<u32>,
    prompt_len: usize,
    /// Just past the first user tag, once seen.
    user_end: Option<usize>,
    /// Just past the first assistant tag, once seen.
    response_start: Option<usize>,
    scores: Vec<f32>,
    /// Tokens already carrying the diversity penalty.
    penalized: Vec<bool>,
}

impl RuleState {
    fn new(rules: Arc<Resolved>, prompt: &[u32], vocab: usize) -> RuleState {
        let mut state = RuleState {
            history: prompt.to_vec(),
            prompt_len: prompt.len(),
            user_end: find_end(prompt, &rules.user_tag),
            response_start: find_end(prompt, &rules.assistant_tag),
            scores: vec![0.0; vocab],
            penalized: vec![false; if rules.diversity.is_some() { vocab } else { 0 }],
            rules,
        };
        state.reset_scores();
        state
    }

    /// Rule 2's fixed scores plus Rule 3's penalty on every token since the user tag.
    fn reset_scores(&mut self) {
        self.scores.fill(0.0);
        self.penalized.fill(false);
        for &(id, s) in &self.rules.uniform {
            if let Some(v) = self.scores.get_mut(id as usize) {
                *v = s;
            }
        }
        let since = self.user_end.unwrap_or(0);
        for i in since..self.history.len() {
            self.penalize(self.history[i]);
        }
    }

    fn penalize(&mut self, token: u32) {
        let Some(penalty) = self.rules.diversity else {
            return;
        };
        let t = token as usize;
        if t < self.penalized.len() && !self.penalized[t] {
            self.penalized[t] = true;
            self.scores[t] += penalty;
        }
    }

    /// A token's score from Rules 2 and 3 alone.
    fn base_score(&self, token: u32) -> f32 {
        let uniform = self
            .rules
            .uniform
            .iter()
            .find(|&&(id, _)| id == token)
            .map_or(0.0, |&(_, s)| s);
        let used = self.penalized.get(token as usize).copied().unwrap_or(false);
        uniform
            + if used {
                self.rules.diversity.unwrap_or(0.0)
            } else {
                0.0
            }
    }
}

impl SequenceScores for RuleState {
    fn scores(&mut self) -> &[f32] {
        if let Some(schedule) = self.rules.eos {
            let start = self.response_start.unwrap_or(self.prompt_len);
            let len = self.history.len().saturating_sub(start);
            for i in 0..self.rules.eos_ids.len() {
                let eos = self.rules.eos_ids[i];
                let value = schedule.score(len).unwrap_or_else(|| self.base_score(eos));
                if let Some(v) = self.scores.get_mut(eos as usize) {
                    *v = value;
                }
            }
        }
        &self.scores
    }

    fn accept(&mut self, token: u32) {
        self.history.push(token);
        let len = self.history.len();
        let tag_ends = |tag: &[u32], h: &[u32]| !tag.is_empty() && h.ends_with(tag);
        if self.user_end.is_none() && tag_ends(&self.rules.user_tag, &self.history) {
            // The first user tag only now: the penalised set restarts after it, as the paper's
            // search over the whole input would find it.
            self.user_end = Some(len);
            if self.rules.diversity.is_some() {
                self.reset_scores();
            }
        } else {
            self.penalize(token);
        }
        if self.response_start.is_none() && tag_ends(&self.rules.assistant_tag, &self.history) {
            self.response_start = Some(len);
        }
    }
}
