//! Where a grid's artifacts sit in its results folder (paths relative to it), and the reading
//! of the validation reference answers.

use super::config::Setting;
use crate::bail;
use crate::data::read_messages_jsonl;
use crate::error::{Context, Result};
use crate::generate::instructions::ModelOutput;
use serde_json::{json, Value};
use std::path::Path;

pub fn run_dir(model: &str, setting: Setting, seed: u64, epochs: usize) -> String {
    format!("{model}/{setting}/seed{seed}-e{epochs}")
}
pub fn checkpoint(model: &str, setting: Setting, seed: u64, epochs: usize) -> String {
    format!(
        "{}/train/epoch-{epochs}",
        run_dir(model, setting, seed, epochs)
    )
}
pub fn selection(model: &str, setting: Setting) -> String {
    format!("{model}/{setting}/selection.json")
}
/// Test outputs of a setting that does not train.
pub fn untrained_outputs(model: &str, setting: Setting) -> String {
    format!("{model}/{setting}/test_outputs.json")
}
pub fn untrained_vs_instruction(model: &str, setting: Setting, seed: u64) -> String {
    format!("{model}/{setting}/vs_instruction-seed{seed}.json")
}
pub fn base_ranking(model: &str) -> String {
    format!("{model}/base/ranking.json")
}

/// The reference answers of a validation set: AlpacaEval's model_outputs format as it is, or a
/// JSON list / JSONL of `messages` (the paper's val-gpt-3.5-turbo-ref.json).
pub fn read_reference(path: &Path) -> Result<Vec<ModelOutput>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let rows: Vec<Value> = if text.trim_start().starts_with('[') {
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?
    } else {
        read_messages_jsonl(path)?
            .into_iter()
            .map(|e| json!({"messages": e.messages}))
            .collect()
    };
    let generator = path
        .file_stem()
        .map_or("reference".into(), |s| s.to_string_lossy().into_owned());
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            if r.get("instruction").is_some() {
                return serde_json::from_value(r.clone())
                    .with_context(|| format!("{}: entry {i}: not a model output", path.display()));
            }
            let msgs = r.get("messages").and_then(Value::as_array);
            let get = |role: &str| {
                msgs.and_then(|m| {
                    m.iter()
                        .find(|x| x.get("role").and_then(Value::as_str) == Some(role))
                        .and_then(|x| x.get("content").and_then(Value::as_str))
                })
            };
            match (get("user"), get("assistant")) {
                (Some(u), Some(a)) => Ok(ModelOutput {
                    instruction: u.to_string(),
                    output: a.to_string(),
                    generator: generator.clone(),
                    dataset: "val".into(),
                }),
                _ => bail!(
                    "{}: entry {i}: neither {{instruction, output}} nor messages with a user and an assistant turn",
                    path.display()
                ),
            }
        })
        .collect()
}
