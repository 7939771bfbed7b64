//! Instruction sets in and AlpacaEval's `model_outputs.json` out.
//!
//! Inputs: a JSON list of objects with `instruction` (AlpacaEval's own files, e.g. the 805
//! reference outputs `{instruction, output, generator, dataset}`), or JSONL with one
//! `{"instruction": ...}` per line (the paper's val.jsonl). Output: a JSON list of
//! `{instruction, output, generator, dataset}`, the format `alpaca_eval --model_outputs` reads.

use crate::bail;
use crate::error::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

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

/// Writes model_outputs.json atomically: to a temporary file beside `out`, synced, then renamed
/// over it, so an interrupted run never leaves a truncated file that AlpacaEval would read.
pub fn write_model_outputs(out: &Path, rows: &[ModelOutput]) -> Result<()> {
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let name = out
        .file_name()
        .with_context(|| format!("{}: not a file name", out.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp: PathBuf = dir.join(tmp_name);
    let result = (|| {
        let json = serde_json::to_string_pretty(rows).context("cannot serialize outputs")?;
        let mut file = std::fs::File::create(&tmp)
            .with_context(|| format!("{}: cannot create", tmp.display()))?;
        file.write_all(json.as_bytes())
            .and_then(|_| file.write_all(b"\n"))
            .and_then(|_| file.sync_all())
            .with_context(|| format!("{}: cannot write", tmp.display()))?;
        std::fs::rename(&tmp, out)
            .with_context(|| format!("{}: cannot rename to {}", tmp.display(), out.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
