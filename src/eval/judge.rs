//! AlpacaEval 2's pairwise judge, `weighted_alpaca_eval_gpt4_turbo`, reproduced from
//! tatsu-lab/alpaca_eval:
//!
//! * `evaluators_configs/weighted_alpaca_eval_gpt4_turbo/configs.yaml`: prompt template
//!   `alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt`, one completion token with
//!   `logprobs: true, top_logprobs: 5`, parsed by `logprob_parser` with numerator token "m" and
//!   denominator tokens ["m", "M"], `is_binarize: false`, batch size 1;
//! * the template ([`CLF_TEMPLATE`]): its system text and the body of its user turn are those of
//!   the stored `alpaca_eval_clf_cot_gpt4_turbo/alpaca_eval_clf.txt`, with the non-CoT task and
//!   closing "## Best Model Identifier" as in the clf template's copies (the clf file itself is
//!   not in the stored repository);
//! * placeholders filled by `utils.make_prompts`: `{instruction}`, `{output_1}`, `{output_2}`,
//!   each replacing its first occurrence, in that order; then `prompt_to_chatml` splits the text
//!   at `<|im_start|>` into role/content messages with contents stripped;
//! * the order of the two outputs: `RandomSwitchTwoColumnsProcessor` switches output_1 and
//!   output_2 when `random.Random("is_switched_outputs" + instruction + str(seed)).choices(
//!   [False, True])` is True (seed 0 by default: it reproduces all 1605 stored annotations of
//!   alpaca-7b and text_davinci_003), and maps a preference x to 3 - x afterwards;
//! * `logprob_parser`: preference = 2 - P(m) / (P(m) + P(M)) from the first token's top
//!   logprobs, a missing token having probability 0; None (NaN) when neither is there;
//! * identical outputs are a draw (preference 1.5) without asking the judge, as in the stored
//!   annotations (raw_completion null);
//! * records as `annotations.json`: output_1 / generator_1 are the reference, output_2 /
//!   generator_2 the model, so preference 2 means the model wins.

use super::journal::{entry_key, journal_path, Journal, JournalEntry};
use super::pyrandom::PyRandom;
use super::{read_json, write_json_atomic, Progress};
use crate::bail;
use crate::data::encode::py_strip;
use crate::error::Result;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// The annotator name AlpacaEval writes for this protocol.
pub const ANNOTATOR: &str = "weighted_alpaca_eval_gpt4_turbo";

/// `alpaca_eval_clf.txt` of `weighted_alpaca_eval_gpt4_turbo`.
pub const CLF_TEMPLATE: &str = r#"<|im_start|>system
You are a highly efficient assistant, who evaluates and selects the best large language model (LLMs) based on the quality of their responses to a given instruction. This process will be used to create a leaderboard reflecting the most accurate and human-preferred answers.
<|im_end|>
<|im_start|>user
I require a leaderboard for various large language models. I'll provide you with prompts given to these models and their corresponding outputs. Your task is to assess these responses, and select the model that produces the best output from a human perspective.

## Instruction

{
    "instruction": """{instruction}""",
}

## Model Outputs

Here are the unordered outputs from the models. Each output is associated with a specific model, identified by a unique model identifier.

{
    {
        "model_identifier": "m",
        "output": """{output_1}"""
    },
    {
        "model_identifier": "M",
        "output": """{output_2}"""
    }
}

## Task

Evaluate the models based on the quality and relevance of their outputs, and select the model that generated the best output. Answer by providing the model identifier of the best model. We will use your output as the name of the best model, so make sure your output only contains one of the following model identifiers and nothing else (no quotes, no spaces, no new lines, ...): m or M.

## Best Model Identifier
<|im_end|>
"#;

/// One chat message sent to the judge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// `make_prompts` + `prompt_to_chatml` for one pair, outputs in the order shown to the judge.
pub fn judge_messages(instruction: &str, output_1: &str, output_2: &str) -> Vec<ChatMessage> {
    let prompt = CLF_TEMPLATE
        .replacen("{instruction}", instruction, 1)
        .replacen("{output_1}", output_1, 1)
        .replacen("{output_2}", output_2, 1);
    prompt_to_chatml(&prompt)
}

/// alpaca_eval's `prompt_to_chatml`: split at `<|im_start|>`, the role is the first line and the
/// content the rest up to `<|im_end|>`, both stripped.
pub fn prompt_to_chatml(prompt: &str) -> Vec<ChatMessage> {
    py_strip(prompt)
        .split("<|im_start|>")
        .skip(1)
        .map(|part| {
            let (role, rest) = part.split_once('\n').unwrap_or((part, ""));
            let content = rest.split("<|im_end|>").next().unwrap_or("");
            ChatMessage {
                role: py_strip(role).to_string(),
                content: py_strip(content).to_string(),
            }
        })
        .collect()
}

/// Whether AlpacaEval shows the pair switched (the model's output as "m").
pub fn is_switched(instruction: &str, seed: u64) -> bool {
    let key = format!("is_switched_outputs{instruction}{seed}");
    // choices([False, True], k=1)[0]
    PyRandom::from_str_seed(&key).choice_index(2) == 1
}

/// `logprob_parser` (is_binarize false): 2 - P(m) / (P(m) + P(M)) in the order shown, from a
/// token -> logprob list (the last entry wins for repeated tokens, as a dict would).
pub fn preference_from_logprobs(top: &[(String, f64)]) -> Option<f64> {
    let find = |t: &str| top.iter().rev().find(|(tok, _)| tok == t).map(|x| x.1);
    let (m, big_m) = (find("m"), find("M"));
    if m.is_none() && big_m.is_none() {
        return None;
    }
    let m = m.unwrap_or(f64::NEG_INFINITY);
    let big_m = big_m.unwrap_or(f64::NEG_INFINITY);
    let max = m.max(big_m);
    let denominator = max + ((m - max).exp() + (big_m - max).exp()).ln();
    Some(2.0 - (m - denominator).exp())
}

/// The first token's `top_logprobs` of an OpenAI chat completion choice
/// (`choice.logprobs.content[0].top_logprobs`).
pub fn top_logprobs_of_choice(choice: &Value) -> Result<Vec<(String, f64)>> {
    let Some(top) = choice
        .pointer("/logprobs/content/0/top_logprobs")
        .and_then(Value::as_array)
    else {
        bail!("completion has no logprobs.content[0].top_logprobs");
    };
    top.iter()
        .map(|t| {
            let token = t.get("token").and_then(Value::as_str);
            let logprob = t.get("logprob").and_then(Value::as_f64);
            match (token, logprob) {
                (Some(token), Some(lp)) => Ok((token.to_string(), lp)),
                _ => bail!("a top_logprobs entry lacks token or logprob: {t}"),
            }
        })
        .collect()
}

/// What a judge answers for one prompt.
pub struct JudgeReply {
    /// Token -> logprob of the first generated token's alternatives.
    pub top_logprobs: Vec<(String, f64)>,
    /// Stored as `raw_completion` (the OpenAI choice object).
    pub raw_completion: Value,
}

/// A judge: an endpoint or a local model.
pub trait Judge {
    /// Its name, stored with each annotation.
    fn name(&self) -> String;
    /// Answers each prompt (a batch, so a local model can run them together).
    fn judge(&mut self, prompts: &[Vec<ChatMessage>]) -> Result<Vec<JudgeReply>>;
    /// The most prompts it takes at once (the smaller of this and `JudgeOptions::batch`).
    fn max_batch(&self) -> usize {
        usize::MAX
    }
    /// What decides its replies besides the prompt, for a judge whose replies are worth
    /// journaling (see [`super::journal`]); None: not journaled. A local judge is not: its name
    /// is a folder whose weights may change, and its replies cost only time.
    fn journal_fingerprint(&self) -> Option<String> {
        None
    }
}

/// One entry of AlpacaEval's model_outputs.json.
#[derive(Clone, Debug)]
pub struct ModelOutput {
    pub instruction: String,
    pub output: String,
    pub generator: String,
    pub dataset: Option<String>,
}

/// Reads a model_outputs.json list; errors name the file and the entry.
pub fn read_model_outputs(path: &Path) -> Result<Vec<ModelOutput>> {
    let value = read_json(path)?;
    let Some(items) = value.as_array() else {
        bail!(
            "{}: expected a JSON list of {{instruction, output, generator}}",
            path.display()
        );
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = |name: &str| -> Result<Option<String>> {
                match item.get(name) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    Some(other) => bail!(
                        "{} entry {i}: field {name} is not a string ({other})",
                        path.display()
                    ),
                }
            };
            let need = |name: &str| -> Result<String> {
                match field(name)? {
                    Some(s) => Ok(s),
                    None => bail!("{} entry {i}: missing field {name}", path.display()),
                }
            };
            Ok(ModelOutput {
                instruction: need("instruction")?,
                output: need("output")?,
                generator: need("generator")?,
                dataset: field("dataset")?,
            })
        })
        .collect()
}

/// One record of annotations.json, fields in AlpacaEval's order.
#[derive(Clone, Debug, Serialize)]
pub struct Annotation {
    pub instruction: String,
    pub output_1: String,
    pub generator_1: String,
    pub dataset: Option<String>,
    pub output_2: String,
    pub generator_2: String,
    pub annotator: String,
    /// In [1, 2]: 1 the reference (output_1) wins, 2 the model (output_2); None if unparsable.
    pub preference: Option<f64>,
    pub price_per_example: Option<f64>,
    pub time_per_example: Option<f64>,
    pub raw_completion: Value,
    /// Which endpoint model or local folder judged (not in AlpacaEval's records).
    pub judge: String,
}

/// Settings of a judge run.
pub struct JudgeOptions {
    pub max_examples: Option<usize>,
    /// The seed in the switch's key (AlpacaEval's default 0).
    pub seed: u64,
    /// Prompts handed to the judge at once.
    pub batch: usize,
    pub annotator: String,
}

/// What [`annotate`] did.
pub struct Annotated {
    pub annotations: Vec<Annotation>,
    /// Replies taken from the journal instead of asking the judge.
    pub reused: usize,
    /// Prompts the judge answered in this run.
    pub asked: usize,
}

/// Annotates every model output against the reference with the same instruction. With a
/// journal, replies found in it are reused and each new reply is appended as it arrives.
pub fn annotate(
    outputs: &[ModelOutput],
    references: &[ModelOutput],
    judge: &mut dyn Judge,
    opts: &JudgeOptions,
    mut journal: Option<&mut Journal>,
) -> Result<Annotated> {
    let mut by_instruction: HashMap<&str, &ModelOutput> = HashMap::new();
    for r in references.iter().rev() {
        by_instruction.insert(r.instruction.as_str(), r); // the first occurrence wins
    }
    let n = opts
        .max_examples
        .unwrap_or(outputs.len())
        .min(outputs.len());
    let mut pending = Vec::with_capacity(n);
    for (i, out) in outputs[..n].iter().enumerate() {
        let Some(reference) = by_instruction.get(out.instruction.as_str()) else {
            let shown: String = out.instruction.chars().take(200).collect();
            bail!("model output {i}: the reference has no output for instruction {shown:?}");
        };
        pending.push((out, *reference));
    }
    let judge_name = judge.name();
    let fingerprint = judge.journal_fingerprint();
    let mut annotations = Vec::with_capacity(n);
    let (mut reused, mut asked_total) = (0, 0);
    let mut progress = Progress::new("judge", n);
    let batch = opts.batch.max(1).min(judge.max_batch().max(1));
    for chunk in pending.chunks(batch) {
        // Per pair: None for identical outputs (a draw), else the reply and whether switched.
        let mut answers: Vec<Option<(JudgeReply, bool, Option<f64>)>> =
            (0..chunk.len()).map(|_| None).collect();
        let mut prompts = Vec::new();
        let mut asked = Vec::new();
        for (k, (out, reference)) in chunk.iter().enumerate() {
            if out.output == reference.output {
                continue;
            }
            let switched = is_switched(&out.instruction, opts.seed);
            let (first, second) = if switched {
                (&out.output, &reference.output)
            } else {
                (&reference.output, &out.output)
            };
            let messages = judge_messages(&out.instruction, first, second);
            let key = fingerprint.as_deref().map(|f| entry_key(f, &messages));
            let journaled = match (&journal, &key) {
                (Some(j), Some(key)) => j.get(key),
                _ => None,
            };
            if let Some(entry) = journaled {
                let reply = entry.reply().map_err(|e| {
                    let path = journal.as_ref().map(|j| j.path().display().to_string());
                    crate::Error(format!("{}: {e}", path.unwrap_or_default()))
                })?;
                answers[k] = Some((reply, switched, entry.seconds));
                reused += 1;
            } else {
                prompts.push(messages);
                asked.push((k, switched, key));
            }
        }
        let t0 = Instant::now();
        let replies = if prompts.is_empty() {
            Vec::new()
        } else {
            judge.judge(&prompts)?
        };
        if replies.len() != prompts.len() {
            bail!(
                "judge {judge_name} answered {} of {} prompts",
                replies.len(),
                prompts.len()
            );
        }
        asked_total += prompts.len();
        let seconds = t0.elapsed().as_secs_f64() / prompts.len().max(1) as f64;
        let mut entries = Vec::new();
        for ((k, switched, key), reply) in asked.into_iter().zip(replies) {
            if let Some(key) = key {
                entries.push(JournalEntry::new(key, &judge_name, &reply, Some(seconds)));
            }
            answers[k] = Some((reply, switched, Some(seconds)));
        }
        if let Some(j) = journal.as_deref_mut() {
            j.append(entries)?;
        }
        for ((out, reference), answer) in chunk.iter().zip(answers) {
            let (preference, time, raw) = match answer {
                None => (Some(1.5), None, Value::Null), // identical outputs: a draw
                Some((reply, switched, time)) => {
                    let p = preference_from_logprobs(&reply.top_logprobs).map(|p| {
                        if switched {
                            3.0 - p
                        } else {
                            p
                        }
                    });
                    (p, time, reply.raw_completion)
                }
            };
            annotations.push(Annotation {
                instruction: out.instruction.clone(),
                output_1: reference.output.clone(),
                generator_1: reference.generator.clone(),
                dataset: out.dataset.clone().or_else(|| reference.dataset.clone()),
                output_2: out.output.clone(),
                generator_2: out.generator.clone(),
                annotator: opts.annotator.clone(),
                preference,
                price_per_example: None,
                time_per_example: time,
                raw_completion: raw,
                judge: judge_name.clone(),
            });
        }
        let done = annotations.len();
        let mean = annotations
            .iter()
            .filter_map(|a| a.preference)
            .map(|p| p - 1.0)
            .sum::<f64>()
            / done as f64;
        progress.update(done, &format!("running win rate {:.1}%", mean * 100.0));
    }
    Ok(Annotated {
        annotations,
        reused,
        asked: asked_total,
    })
}

/// Reads both files, annotates and writes `out` atomically; returns the annotations. A judge
/// with a journal fingerprint (an endpoint) journals its replies beside `out`
/// ([`journal_path`]), and a rerun reuses them.
pub fn run_judge(
    outputs_path: &Path,
    reference_path: &Path,
    judge: &mut dyn Judge,
    opts: &JudgeOptions,
    out: &Path,
) -> Result<Vec<Annotation>> {
    let outputs = read_model_outputs(outputs_path)?;
    let references = read_model_outputs(reference_path)?;
    let mut journal = match judge.journal_fingerprint() {
        Some(_) => Some(Journal::open(&journal_path(out))?),
        None => None,
    };
    let result = annotate(&outputs, &references, judge, opts, journal.as_mut());
    let annotated = result.map_err(|e| {
        let kept = match &journal {
            Some(j) if !j.is_empty() => format!(
                " ({} replies are kept in {}; a rerun reuses them)",
                j.len(),
                j.path().display()
            ),
            _ => String::new(),
        };
        crate::Error(format!(
            "{} vs {}: {e}{kept}",
            outputs_path.display(),
            reference_path.display()
        ))
    })?;
    if let Some(j) = &journal {
        eprintln!(
            "judge: reused {} replies from {}, asked the judge for {}",
            annotated.reused,
            j.path().display(),
            annotated.asked
        );
    }
    write_json_atomic(out, &annotated.annotations)?;
    Ok(annotated.annotations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_has_two_messages() {
        let m = judge_messages("Say hi", "hi", "hello {output_2}");
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].role, "system");
        assert!(m[0]
            .content
            .starts_with("You are a highly efficient assistant"));
        assert_eq!(m[1].role, "user");
        assert!(m[1]
            .content
            .contains("\"instruction\": \"\"\"Say hi\"\"\","));
        assert!(m[1].content.contains("\"output\": \"\"\"hi\"\"\""));
        // Each placeholder is replaced once, so text in an output stays as it is.
        assert!(m[1].content.contains("\"\"\"hello {output_2}\"\"\""));
        assert!(m[1].content.ends_with("## Best Model Identifier"));
    }

    #[test]
    fn logprob_parser() {
        let tok = |t: &str, lp: f64| (t.to_string(), lp);
        // P(m) = P(M): halfway.
        let p = preference_from_logprobs(&[tok("m", -0.7), tok("M", -0.7)]).unwrap();
        assert!((p - 1.5).abs() < 1e-12);
        // Only M present: output 2 wins outright.
        assert_eq!(
            preference_from_logprobs(&[tok("M", -0.1), tok("The", -3.0)]),
            Some(2.0)
        );
        assert_eq!(preference_from_logprobs(&[tok("m", -2.0)]), Some(1.0));
        assert_eq!(preference_from_logprobs(&[tok("The", -0.1)]), None);
        let p = preference_from_logprobs(&[tok("m", (0.25f64).ln()), tok("M", (0.5f64).ln())]);
        assert!((p.unwrap() - (2.0 - 1.0 / 3.0)).abs() < 1e-12);
    }
}
