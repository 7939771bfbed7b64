//! The judge as a model run in-process: the AlpacaEval messages rendered in the paper's chat
//! format (`<|system|>\n{system}\n<|user|>\n{user}\n<|assistant|>\n` after BOS, as
//! open-instruct's `_concat_messages` writes a conversation), one forward pass, and the
//! next-token log-probabilities of the tokens "m" and "M".
//!
//! The reply mimics an OpenAI choice so that annotations.json looks the same: the first token is
//! the most likely one, and `top_logprobs` holds the 5 most likely tokens plus "m" and "M" when
//! they are not among them (an API would leave them out; keeping them makes the preference exact
//! and lets alpaca_eval's `logprob_parser` re-parse the stored completion to the same value).

use super::judge::{ChatMessage, Judge, JudgeReply};
use super::ranking::log_softmax_at;
use crate::bail;
use crate::data::encode::concat_messages;
use crate::data::Message;
use crate::error::Result;
use crate::io::tokenizer::Tokenizer;
use crate::model::{LanguageModel, Logits, Transformer};
use serde_json::{json, Value};

/// The judge on a model `M` (the CPU's `&Transformer` by default, or `&mut CudaTransformer`).
pub struct LocalJudge<'a, M = &'a Transformer> {
    model: M,
    /// What [`Judge::name`] says (the model folder).
    name: String,
    tok: &'a Tokenizer,
    /// Token ids of "m" and "M" as the first token of a reply.
    m_id: u32,
    big_m_id: u32,
    /// Prompts longer than this (tokens) are an error rather than a silent cut.
    max_len: usize,
    /// Upper bound on prompt tokens per forward pass.
    batch_tokens: usize,
}

impl<'a> LocalJudge<'a> {
    /// The judge on a CPU model, named by its folder.
    pub fn new(
        model: &'a Transformer,
        tok: &'a Tokenizer,
        max_len: usize,
    ) -> Result<LocalJudge<'a>> {
        LocalJudge::with_name(model, model.path.display().to_string(), tok, max_len)
    }
}

impl<'a, M: LanguageModel> LocalJudge<'a, M> {
    /// The judge on any model; `name` is what the annotations record as the judge (the model
    /// folder).
    pub fn with_name(
        model: M,
        name: String,
        tok: &'a Tokenizer,
        max_len: usize,
    ) -> Result<LocalJudge<'a, M>> {
        Ok(LocalJudge {
            model,
            name,
            tok,
            m_id: label_token(tok, "m")?,
            big_m_id: label_token(tok, "M")?,
            max_len,
            batch_tokens: 8192,
        })
    }

    /// BOS + the paper's chat rendering of `messages`, ending with the assistant tag.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let msgs: Vec<Message> = messages
            .iter()
            .map(|m| Message::new(&m.role, m.content.clone()))
            .collect();
        let mut text = concat_messages(&msgs, "")?;
        text.push_str("<|assistant|>\n");
        self.tok.encode_prompt(&text)
    }

    fn reply(&self, logits: &[f32]) -> Result<JudgeReply> {
        let lp = |id: u32| log_softmax_at(logits, id as usize);
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let k = 5.min(order.len());
        order.select_nth_unstable_by(k - 1, |&a, &b| {
            logits[b as usize].total_cmp(&logits[a as usize])
        });
        let mut top: Vec<u32> = order[..k].to_vec();
        top.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        let first = top[0];
        for id in [self.m_id, self.big_m_id] {
            if !top.contains(&id) {
                top.push(id);
            }
        }
        let mut top_logprobs = Vec::new();
        let mut entries = Vec::new();
        for &id in &top {
            let token = self.token_text(id)?;
            let logprob = lp(id);
            entries.push(json!({"token": token, "bytes": token.as_bytes(), "logprob": logprob}));
            top_logprobs.push((token, logprob));
        }
        let first_text = self.token_text(first)?;
        let raw: Value = json!({
            "finish_reason": "length",
            "index": 0,
            "logprobs": {"content": [{
                "token": first_text,
                "bytes": first_text.as_bytes(),
                "logprob": lp(first),
                "top_logprobs": entries,
            }]},
            "message": {"content": first_text, "role": "assistant"},
            "text": first_text,
        });
        Ok(JudgeReply {
            top_logprobs,
            raw_completion: raw,
        })
    }

    /// The text of one token: "m" and "M" by name, others decoded (falling back to the
    /// vocabulary's piece, e.g. for a lone byte).
    fn token_text(&self, id: u32) -> Result<String> {
        if id == self.m_id {
            return Ok("m".into());
        }
        if id == self.big_m_id {
            return Ok("M".into());
        }
        let text = self.tok.decode(&[id])?;
        if text.is_empty() || text.contains('\u{FFFD}') {
            return Ok(self.tok.id_to_token(id).unwrap_or_default());
        }
        Ok(text)
    }
}

/// The id of the vocabulary entry that is exactly `label` (what follows "\n" without a space),
/// or the single token `label` encodes to.
fn label_token(tok: &Tokenizer, label: &str) -> Result<u32> {
    if let Some(id) = tok.token_id(label) {
        return Ok(id);
    }
    match tok.encode(label)?.as_slice() {
        [id] => Ok(*id),
        ids => bail!(
            "{}: the judge label {label:?} is not one token (encodes to {ids:?})",
            tok.path.display()
        ),
    }
}

impl<M: LanguageModel> Judge for LocalJudge<'_, M> {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn judge(&mut self, prompts: &[Vec<ChatMessage>]) -> Result<Vec<JudgeReply>> {
        let encoded: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| self.render(p))
            .collect::<Result<_>>()?;
        for (i, ids) in encoded.iter().enumerate() {
            if ids.len() > self.max_len {
                bail!(
                    "judge prompt {i} has {} tokens, over --judge-max-len {}",
                    ids.len(),
                    self.max_len
                );
            }
        }
        let mut replies = Vec::with_capacity(prompts.len());
        let mut start = 0;
        while start < encoded.len() {
            let mut end = start;
            let mut tokens = 0;
            while end < encoded.len()
                && (end == start || tokens + encoded[end].len() <= self.batch_tokens)
            {
                tokens += encoded[end].len();
                end += 1;
            }
            let mut caches: Vec<M::Cache> = (start..end).map(|_| self.model.new_cache()).collect();
            let mut batch: Vec<(&[u32], &mut M::Cache)> = encoded[start..end]
                .iter()
                .zip(caches.iter_mut())
                .map(|(ids, c)| (ids.as_slice(), c))
                .collect();
            for logits in self.model.forward(&mut batch, Logits::Last)? {
                replies.push(self.reply(&logits)?);
            }
            start = end;
        }
        Ok(replies)
    }
}
