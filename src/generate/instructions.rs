//! Instruction sets in and AlpacaEval's `model_outputs.json` out.
//!
//! Inputs: a JSON list of objects with `instruction` (AlpacaEval's own files, e.g. the 805
//! reference outputs `{instruction, output, generator, dataset}`), or JSONL with one
//! `{"instruction": ...}` per line (the paper's val.jsonl). Output: a JSON list of
//! `{instruction, output, generator, dataset}`, the format `alpaca_eval --model_outputs` reads.

use super::detok::decode_continuation;
use super::{run_batched, Finish, Sampler, ScoreAdjuster, SequenceRequest};
use crate::bail;
use crate::error::{Context, Result};
use crate::io::atomic::write_atomic;
use crate::io::tokenizer::{chat_prompt, Tokenizer};
use crate::model::LanguageModel;
use crate::progress::Progress;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// One instruction to answer, with the dataset it comes from when the file says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    pub instruction: String,
    pub dataset: Option<String>,
}

/// One row of AlpacaEval's model_outputs.json.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelOutput {
    pub instruction: String,
    pub output: String,
    pub generator: String,
    pub dataset: String,
}

fn row(value: &serde_json::Value, at: impl Fn() -> String) -> Result<Instruction> {
    let Some(obj) = value.as_object() else {
        bail!("{}: expected an object with an \"instruction\"", at());
    };
    let instruction = match obj.get("instruction") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => bail!("{}: \"instruction\" is not a string", at()),
        None => bail!("{}: missing \"instruction\"", at()),
    };
    let dataset = match obj.get("dataset") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => bail!("{}: \"dataset\" is not a string", at()),
    };
    Ok(Instruction {
        instruction,
        dataset,
    })
}

/// Reads a JSON list or JSONL file of instructions (the format is told by the first character).
pub fn read_instructions(path: &Path) -> Result<Vec<Instruction>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let shown = path.display();
    let rows = if text.trim_start().starts_with('[') {
        let list: Vec<serde_json::Value> = serde_json::from_str(&text)
            .with_context(|| format!("{shown}: not a JSON list of instructions"))?;
        list.iter()
            .enumerate()
            .map(|(i, v)| row(v, || format!("{shown}: entry {i}")))
            .collect::<Result<Vec<_>>>()?
    } else {
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = || format!("{shown} line {}", i + 1);
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{}: invalid JSON", at()))?;
            rows.push(row(&v, at)?);
        }
        rows
    };
    if rows.is_empty() {
        bail!("{shown}: no instructions");
    }
    Ok(rows)
}

/// Reads a model_outputs.json back (e.g. to check one).
pub fn read_model_outputs(path: &Path) -> Result<Vec<ModelOutput>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not model outputs", path.display()))
}

/// Writes model_outputs.json atomically (see [`write_atomic`]), so an interrupted run never
/// leaves a truncated file that AlpacaEval would read.
pub fn write_model_outputs(out: &Path, rows: &[ModelOutput]) -> Result<()> {
    let mut json = serde_json::to_string_pretty(rows).context("cannot serialize outputs")?;
    json.push('\n');
    write_atomic(out, json.as_bytes())
}

/// How [`answer_instructions`] decodes, and what it writes in each row.
#[derive(Clone, Debug)]
pub struct AnswerOptions {
    pub max_new_tokens: usize,
    /// Sequences decoded together (continuous batching).
    pub batch_size: usize,
    /// 0 is greedy decoding.
    pub temperature: f32,
    pub seed: u64,
    /// The `generator` field of every row.
    pub generator: String,
    /// The `dataset` field of rows whose instruction names none.
    pub dataset: String,
}

/// Answers every instruction in the paper's chat format (EOS ends an answer and is not kept),
/// optionally through a score adjuster (the rule adapter); progress on stderr. Any model: the
/// CPU's (`&Transformer`) or the GPU's (`&mut CudaTransformer`). The experiments answer through
/// this, so their prompts stay the paper's whatever the model's own chat template.
pub fn answer_instructions<M: LanguageModel>(
    model: M,
    tok: &Tokenizer,
    rows: &[Instruction],
    opts: &AnswerOptions,
    adjuster: Option<Arc<dyn ScoreAdjuster>>,
) -> Result<Vec<ModelOutput>> {
    let prompts = rows
        .iter()
        .map(|r| tok.encode_prompt(&chat_prompt(&r.instruction)))
        .collect::<Result<Vec<_>>>()?;
    Ok(answer_prompts(model, tok, rows, &prompts, opts, adjuster)?.outputs)
}

/// What [`answer_prompts`] gives: a row per instruction and why each answer ended.
pub struct Answers {
    pub outputs: Vec<ModelOutput>,
    /// The stop of each answer, in the rows' order.
    pub stops: Vec<StopReason>,
}

/// Why an answer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model wrote an EOS (stop) token.
    Eos,
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The model's context was full.
    Context,
}

impl StopReason {
    /// From the engine's finish and the number of tokens generated.
    pub fn of(finish: Finish, generated: usize, max_new_tokens: usize) -> StopReason {
        match finish {
            Finish::Stop => StopReason::Eos,
            Finish::Length if generated >= max_new_tokens => StopReason::MaxTokens,
            Finish::Length => StopReason::Context,
        }
    }
}

/// One line counting how answers ended, e.g. "stopped: 50 at EOS, 6 at the 256-token limit
/// (instructions 3, 17, ...)", naming (up to 10 of) the cut-off ones by their 0-based index.
pub fn describe_stops(stops: &[StopReason], max_new_tokens: usize) -> String {
    let count = |r: StopReason| stops.iter().filter(|&&s| s == r).count();
    let mut parts = vec![format!("{} at EOS", count(StopReason::Eos))];
    let cut: Vec<usize> = (0..stops.len())
        .filter(|&i| stops[i] != StopReason::Eos)
        .collect();
    for (reason, what) in [
        (
            StopReason::MaxTokens,
            format!("the {max_new_tokens}-token limit"),
        ),
        (
            StopReason::Context,
            "the model's context length".to_string(),
        ),
    ] {
        let n = count(reason);
        if n > 0 {
            parts.push(format!("{n} at {what}"));
        }
    }
    let mut line = format!("stopped: {}", parts.join(", "));
    if !cut.is_empty() {
        let shown: Vec<String> = cut.iter().take(10).map(|i| i.to_string()).collect();
        let more = if cut.len() > 10 { ", ..." } else { "" };
        line.push_str(&format!(
            " (cut off: instructions {}{more})",
            shown.join(", ")
        ));
    }
    line
}

/// Answers `rows` from their already encoded `prompts` (one each, e.g. in the model's own chat
/// template): EOS ends an answer and is not kept; progress on stderr.
pub fn answer_prompts<M: LanguageModel>(
    model: M,
    tok: &Tokenizer,
    rows: &[Instruction],
    prompts: &[Vec<u32>],
    opts: &AnswerOptions,
    adjuster: Option<Arc<dyn ScoreAdjuster>>,
) -> Result<Answers> {
    if prompts.len() != rows.len() {
        bail!("{} prompts for {} instructions", prompts.len(), rows.len());
    }
    let sampler = Sampler::new(opts.temperature, opts.seed)?;
    let requests: Vec<SequenceRequest> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| SequenceRequest {
            prompt: p.clone(),
            max_new_tokens: opts.max_new_tokens,
            stop_tokens: tok.eos.clone(),
            sampler: sampler.for_sequence(i),
            top_logprobs: 0,
            adjuster: adjuster.clone(),
        })
        .collect();
    let total = rows.len();
    let mut texts: Vec<Option<String>> = vec![None; total];
    let mut stops = vec![StopReason::Eos; total];
    let mut done = 0;
    let mut progress = Progress::new("generate", total);
    let tokens = std::cell::Cell::new(0usize);
    let start = Instant::now();
    let tokens_message = |tokens: usize| {
        let rate = tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
        format!("{tokens} tokens, {rate:.1} tokens/s")
    };
    run_batched(
        model,
        requests,
        opts.batch_size.max(1),
        |_, _| {
            tokens.set(tokens.get() + 1);
            Ok(())
        },
        |i, finished| {
            stops[i] = StopReason::of(finished.finish, finished.tokens.len(), opts.max_new_tokens);
            let body: Vec<u32> = finished
                .tokens
                .iter()
                .copied()
                .filter(|&t| !tok.is_eos(t))
                .collect();
            texts[i] = Some(decode_continuation(tok, &prompts[i], &body)?);
            done += 1;
            progress.update(done, &tokens_message(tokens.get()));
            Ok(())
        },
    )?;
    progress.update(done, &tokens_message(tokens.get()));
    progress.finish();
    let outputs = rows
        .iter()
        .zip(texts)
        .map(|(r, text)| ModelOutput {
            instruction: r.instruction.clone(),
            output: text.unwrap_or_default(),
            generator: opts.generator.clone(),
            dataset: r.dataset.clone().unwrap_or_else(|| opts.dataset.clone()),
        })
        .collect();
    Ok(Answers { outputs, stops })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_are_told_apart_and_counted() {
        assert_eq!(StopReason::of(Finish::Stop, 3, 3), StopReason::Eos);
        assert_eq!(StopReason::of(Finish::Length, 3, 3), StopReason::MaxTokens);
        assert_eq!(StopReason::of(Finish::Length, 2, 3), StopReason::Context);
        let stops = [
            StopReason::Eos,
            StopReason::MaxTokens,
            StopReason::Eos,
            StopReason::Context,
        ];
        assert_eq!(
            describe_stops(&stops, 256),
            "stopped: 2 at EOS, 1 at the 256-token limit, 1 at the model's context length \
             (cut off: instructions 1, 3)"
        );
        assert_eq!(describe_stops(&stops[..1], 8), "stopped: 1 at EOS");
    }
}
