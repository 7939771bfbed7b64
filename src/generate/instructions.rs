//! Instruction sets in and AlpacaEval's `model_outputs.json` out.
//!
//! Inputs: a JSON list of objects with `instruction` (AlpacaEval's own files, e.g. the 805
//! reference outputs `{instruction, output, generator, dataset}`), or JSONL with one
//! `{"instruction": ...}` per line (the paper's val.jsonl). Output: a JSON list of
//! `{instruction, output, generator, dataset}`, the format `alpaca_eval --model_outputs` reads.

use crate::bail;
use crate::error::{Context, Result};
use crate::io::atomic::write_atomic;
use serde::{Deserialize, Serialize};
use std::path::Path;

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
