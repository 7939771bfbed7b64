//! Running a validated request: its sequences go to the scheduler, their tokens come back and
//! are turned into text (stop strings applied, logprobs kept in step with the text), then into
//! an OpenAI response, whole or as server-sent events.

use super::events::{EventStream, Reply};
use super::openai::{ApiError, Endpoint, GenParams, PromptInput};
use super::scheduler::{Event, Job, Scheduler};
use crate::generate::detok::IncrementalDecoder;
use crate::generate::vocab::VocabText;
use crate::generate::{Finish, Sampler, ScoreAdjuster, SequenceRequest, TokenChoice};
use crate::io::tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// How often a worker waiting for tokens checks whether its client is still there.
const CLIENT_CHECK: Duration = Duration::from_millis(200);

/// What a request needs from the server.
pub struct Ctx<'a> {
    pub tok: &'a Tokenizer,
    pub vocab: &'a VocabText,
    pub model_id: &'a str,
    pub vocab_size: usize,
    pub context_len: usize,
    pub scheduler: &'a Scheduler,
    pub adjuster: Option<Arc<dyn ScoreAdjuster>>,
    /// The response id ("chatcmpl-..." / "cmpl-...") and creation time.
    pub id: String,
    pub created: u64,
    /// Seed for sampling when the request gives none.
    pub default_seed: u64,
}

/// A generated token with where its text starts in the choice's text.
#[derive(Clone, Debug)]
pub struct TokenRecord {
    pub choice: TokenChoice,
    /// Offset of the token's text, in characters.
    pub char_offset: usize,
    byte_offset: usize,
}

/// New text and the tokens that produced it.
#[derive(Default)]
pub struct Delta {
    pub text: String,
    pub tokens: Vec<TokenRecord>,
}

impl Delta {
    fn is_empty(&self) -> bool {
        self.text.is_empty() && self.tokens.is_empty()
    }
}

/// Turns one choice's tokens into text: EOS is not text, a stop string ends the text just
/// before it, and text that may be the beginning of a stop string is held back until it is
/// known not to be one. Token records are released with the text they start in.
pub struct Assembler {
    decoder: IncrementalDecoder,
    text: String,
    chars: usize,
    sent: usize,
    stops: Vec<String>,
    records: Vec<TokenRecord>,
    records_sent: usize,
    stopped: bool,
    /// Generated tokens, EOS excluded.
    pub completion_tokens: usize,
}

impl Assembler {
    pub fn new(prompt: &[u32], stops: &[String]) -> Assembler {
        Assembler {
            decoder: IncrementalDecoder::new(prompt),
            text: String::new(),
            chars: 0,
            sent: 0,
            stops: stops.to_vec(),
            records: Vec::new(),
            records_sent: 0,
            stopped: false,
            completion_tokens: 0,
        }
    }

    /// Whether a stop string has ended the text.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    fn release(&mut self, upto: usize) -> Delta {
        let text = self.text[self.sent..upto].to_string();
        self.sent = upto;
        let mut tokens = Vec::new();
        while let Some(r) = self.records.get(self.records_sent) {
            if r.byte_offset >= upto {
                break;
            }
            tokens.push(r.clone());
            self.records_sent += 1;
        }
        Delta { text, tokens }
    }

    pub fn push(&mut self, tok: &Tokenizer, choice: TokenChoice) -> crate::Result<Delta> {
        if self.stopped || tok.is_eos(choice.token) {
            return Ok(Delta::default());
        }
        self.completion_tokens += 1;
        let piece = self.decoder.push(tok, choice.token)?;
        self.records.push(TokenRecord {
            choice,
            char_offset: self.chars,
            byte_offset: self.text.len(),
        });
        self.text.push_str(&piece);
        self.chars += piece.chars().count();
        // Any stop string not yet seen must end in the unsent text (see `hold_back`).
        let unsent = &self.text[self.sent..];
        let cut = self
            .stops
            .iter()
            .filter_map(|s| unsent.find(s.as_str()))
            .min()
            .map(|p| self.sent + p);
        if let Some(cut) = cut {
            self.text.truncate(cut);
            self.stopped = true;
            return Ok(self.release(cut));
        }
        let upto = self.text.len() - self.hold_back();
        Ok(self.release(upto))
    }

    /// Bytes at the end of the text that are a proper prefix of some stop string: they are
    /// held back, so no stop string can begin before the unsent text.
    fn hold_back(&self) -> usize {
        let unsent = &self.text[self.sent..];
        let mut longest = 0;
        for stop in &self.stops {
            for (i, _) in unsent.char_indices() {
                let tail = &unsent[i..];
                if tail.len() > longest && tail.len() < stop.len() && stop.starts_with(tail) {
                    longest = tail.len();
                }
            }
        }
        longest
    }

    /// At the end of the sequence: everything held back, and the remaining token records.
    pub fn finish(&mut self, tok: &Tokenizer) -> crate::Result<Delta> {
        if self.stopped {
            return Ok(Delta::default());
        }
        let rest = self.decoder.flush(tok)?;
        self.text.push_str(&rest);
        let upto = self.text.len();
        let mut delta = self.release(upto);
        delta.tokens.extend(self.records.drain(self.records_sent..));
        self.records_sent = self.records.len();
        Ok(delta)
    }
}

/// How a request ended for the caller: answered (JSON to send) or streamed already.
pub enum Answer {
    Json(Value),
    Streamed,
}

/// Errors once a stream has begun can only be reported inside it.
fn stream_error(events: &mut EventStream, message: &str) -> std::io::Result<()> {
    events.send(&ApiError::status(500, message).to_json().to_string())?;
    events.send("[DONE]")
}

fn finish_reason(f: Option<Finish>) -> Value {
    match f {
        Some(Finish::Stop) => json!("stop"),
        Some(Finish::Length) => json!("length"),
        None => Value::Null,
    }
}

fn chat_logprob(ctx: &Ctx, id: u32, lp: f32) -> Value {
    json!({
        "token": ctx.vocab.token_text(ctx.tok, id),
        "logprob": lp,
        "bytes": ctx.vocab.token_bytes(ctx.tok, id),
    })
}

/// The logprobs object of a choice (or chunk) for these tokens.
fn logprobs_json(ctx: &Ctx, endpoint: Endpoint, tokens: &[TokenRecord]) -> Value {
    match endpoint {
        Endpoint::Chat => {
            let content: Vec<Value> = tokens
                .iter()
                .map(|r| {
                    let mut entry = chat_logprob(ctx, r.choice.token, r.choice.logprob);
                    entry["top_logprobs"] = r
                        .choice
                        .top
                        .iter()
                        .map(|&(id, lp)| chat_logprob(ctx, id, lp))
                        .collect();
                    entry
                })
                .collect();
            json!({ "content": content })
        }
        Endpoint::Completions => {
            let text = |id| ctx.vocab.token_text(ctx.tok, id);
            json!({
                "tokens": tokens.iter().map(|r| text(r.choice.token)).collect::<Vec<_>>(),
                "token_logprobs": tokens.iter().map(|r| r.choice.logprob).collect::<Vec<_>>(),
                "top_logprobs": tokens.iter().map(|r| {
                    let mut top = serde_json::Map::new();
                    for &(id, lp) in &r.choice.top {
                        top.entry(text(id)).or_insert(json!(lp));
                    }
                    Value::Object(top)
                }).collect::<Vec<_>>(),
                "text_offset": tokens.iter().map(|r| r.char_offset).collect::<Vec<_>>(),
            })
        }
    }
}

/// Tokenises and checks the prompts against the model's vocabulary and context.
fn prompt_ids(ctx: &Ctx, params: &GenParams) -> Result<Vec<(Vec<u32>, usize)>, ApiError> {
    let mut out = Vec::new();
    for p in &params.prompts {
        let ids = match p {
            PromptInput::Text(t) => ctx
                .tok
                .encode_prompt(t)
                .map_err(|e| ApiError::status(500, e.to_string()))?,
            PromptInput::Ids(ids) => ids.clone(),
        };
        if ids.is_empty() {
            return Err(ApiError::invalid("the prompt is empty", Some("prompt")));
        }
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= ctx.vocab_size) {
            return Err(ApiError::invalid(
                format!("token id {bad} is outside the vocabulary"),
                Some("prompt"),
            ));
        }
        let room = ctx.context_len.saturating_sub(ids.len());
        let too_long = |asked: usize| {
            ApiError::invalid(
                format!(
                    "This model's maximum context length is {} tokens. However, you requested \
                     {} tokens ({} in the prompt, {asked} for the completion).",
                    ctx.context_len,
                    ids.len() + asked,
                    ids.len()
                ),
                Some(match params.endpoint {
                    Endpoint::Chat => "messages",
                    Endpoint::Completions => "prompt",
                }),
            )
            .with_code("context_length_exceeded")
        };
        let max = match params.max_tokens {
            Some(m) if m > room => return Err(too_long(m)),
            Some(m) => m,
            None if room == 0 => return Err(too_long(1)),
            // OpenAI's defaults: 16 for completions, the rest of the context for chat.
            None if params.endpoint == Endpoint::Completions => room.min(16),
            None => room,
        };
        out.push((ids, max));
    }
    Ok(out)
}

/// Runs a request and answers it (JSON to return, or events already sent through `reply`).
pub fn run(ctx: &Ctx, params: &GenParams, reply: &mut Reply) -> Result<Answer, ApiError> {
    let prompts = prompt_ids(ctx, params)?;
    // The request's numbers were checked by `openai::common`; this is the sampler's own guard.
    let sampler = Sampler::new(params.temperature, params.seed.unwrap_or(ctx.default_seed))
        .and_then(|s| s.with_top_p(params.top_p))
        .map_err(|e| ApiError::invalid(e.to_string(), None))?;
    let (tx, rx) = mpsc::channel();
    let mut cancels = Vec::new();
    for (i, (ids, max)) in prompts.iter().enumerate() {
        let cancel = Arc::new(AtomicBool::new(false));
        cancels.push(cancel.clone());
        let request = SequenceRequest {
            prompt: ids.clone(),
            max_new_tokens: *max,
            stop_tokens: ctx.tok.eos.clone(),
            sampler: sampler.for_sequence(i),
            top_logprobs: params.logprobs.unwrap_or(0),
            adjuster: ctx.adjuster.clone(),
        };
        let job = Job {
            index: i,
            request,
            events: tx.clone(),
            cancel,
        };
        ctx.scheduler
            .submit(job)
            .map_err(|e| ApiError::status(500, e.to_string()))?;
    }
    drop(tx);
    // Whatever happens below, sequences still running are stopped when this returns.
    struct CancelAll(Vec<Arc<AtomicBool>>);
    impl Drop for CancelAll {
        fn drop(&mut self) {
            for c in &self.0 {
                c.store(true, Ordering::Relaxed);
            }
        }
    }
    let cancels = CancelAll(cancels);
    let n = prompts.len();
    let mut asm: Vec<Assembler> = prompts
        .iter()
        .map(|(ids, _)| Assembler::new(ids, &params.stop))
        .collect();
    let mut finish: Vec<Option<Finish>> = vec![None; n];
    let mut texts = vec![String::new(); n];
    let mut records: Vec<Vec<TokenRecord>> = vec![Vec::new(); n];
    let (object, chunk_object) = match params.endpoint {
        Endpoint::Chat => ("chat.completion", "chat.completion.chunk"),
        Endpoint::Completions => ("text_completion", "text_completion"),
    };
    let chunk = |i: usize, delta: &Delta, f: Option<Finish>, first: bool| -> Value {
        let logprobs = match params.logprobs {
            Some(_) if !delta.tokens.is_empty() => {
                logprobs_json(ctx, params.endpoint, &delta.tokens)
            }
            _ => Value::Null,
        };
        let mut choice = match params.endpoint {
            Endpoint::Chat => {
                let mut d = json!({});
                if first {
                    d["role"] = json!("assistant");
                }
                if first || !delta.text.is_empty() {
                    d["content"] = json!(delta.text);
                }
                json!({ "index": i, "delta": d })
            }
            Endpoint::Completions => json!({ "index": i, "text": delta.text }),
        };
        choice["logprobs"] = logprobs;
        choice["finish_reason"] = finish_reason(f);
        json!({
            "id": ctx.id, "object": chunk_object, "created": ctx.created,
            "model": ctx.model_id, "choices": [choice],
        })
    };
    let mut events = if params.stream {
        let Ok(mut s) = EventStream::start(reply) else {
            return Ok(Answer::Streamed); // the client left
        };
        if params.endpoint == Endpoint::Chat {
            let first = chunk(0, &Delta::default(), None, true);
            if s.send(&first.to_string()).is_err() {
                return Ok(Answer::Streamed);
            }
        }
        Some(s)
    } else {
        None
    };
    let mut done = 0;
    while done < n {
        let (i, event) = match rx.recv_timeout(CLIENT_CHECK) {
            Ok(e) => e,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let gone = match &events {
                    Some(s) => s.gone(),
                    None => reply.gone(),
                };
                if gone {
                    return Ok(Answer::Streamed); // nobody to answer; CancelAll stops the rest
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let msg = "the decoding thread stopped";
                return match events.as_mut() {
                    Some(s) => {
                        let _ = stream_error(s, msg);
                        Ok(Answer::Streamed)
                    }
                    None => Err(ApiError::status(500, msg)),
                };
            }
        };
        if finish[i].is_some() {
            continue; // tokens still in flight after a stop string
        }
        let step = match event {
            Event::Token(choice) => asm[i]
                .push(ctx.tok, choice)
                .map(|d| (d, asm[i].stopped().then_some(Finish::Stop)))
                .map_err(|e| e.to_string()),
            Event::Done(f) => asm[i]
                .finish(ctx.tok)
                .map(|d| (d, Some(f)))
                .map_err(|e| e.to_string()),
            Event::Failed(msg) => Err(msg),
        };
        let (delta, ended) = match step {
            Ok(s) => s,
            // Once a stream has begun, an error can only be reported inside it.
            Err(msg) => {
                return match events.as_mut() {
                    Some(s) => {
                        let _ = stream_error(s, &msg);
                        Ok(Answer::Streamed)
                    }
                    None => Err(ApiError::status(500, msg)),
                };
            }
        };
        if let Some(f) = ended {
            finish[i] = Some(f);
            cancels.0[i].store(true, Ordering::Relaxed);
            done += 1;
        }
        match events.as_mut() {
            Some(s) => {
                let sent = (delta.is_empty()
                    || s.send(&chunk(i, &delta, None, false).to_string()).is_ok())
                    && (ended.is_none()
                        || s.send(&chunk(i, &Delta::default(), ended, false).to_string())
                            .is_ok());
                if !sent {
                    return Ok(Answer::Streamed); // the client left; CancelAll stops the rest
                }
            }
            None => {
                texts[i].push_str(&delta.text);
                records[i].extend(delta.tokens);
            }
        }
    }
    let prompt_tokens: usize = prompts.iter().map(|(ids, _)| ids.len()).sum();
    let completion_tokens: usize = asm.iter().map(|a| a.completion_tokens).sum();
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    if let Some(mut s) = events {
        if params.include_usage {
            let last = json!({
                "id": ctx.id, "object": chunk_object, "created": ctx.created,
                "model": ctx.model_id, "choices": [], "usage": usage,
            });
            let _ = s.send(&last.to_string());
        }
        let _ = s.send("[DONE]");
        return Ok(Answer::Streamed);
    }
    let choices: Vec<Value> = (0..n)
        .map(|i| {
            let logprobs = match params.logprobs {
                Some(_) => logprobs_json(ctx, params.endpoint, &records[i]),
                None => Value::Null,
            };
            let mut c = match params.endpoint {
                Endpoint::Chat => json!({
                    "index": i,
                    "message": {"role": "assistant", "content": texts[i]},
                }),
                Endpoint::Completions => json!({ "index": i, "text": texts[i] }),
            };
            c["logprobs"] = logprobs;
            c["finish_reason"] = finish_reason(finish[i]);
            c
        })
        .collect();
    Ok(Answer::Json(json!({
        "id": ctx.id, "object": object, "created": ctx.created, "model": ctx.model_id,
        "choices": choices, "usage": usage,
    })))
}
