//! Random-initialised model folders of exact preset shapes (`implicit init`), for benchmarks:
//! speed does not depend on the weights, so a Llama-2-7B-shaped folder needs no download.
//!
//! A folder holds config.json (the Hugging Face config, completed by
//! `presets::complete_config`), generation_config.json, optionally a copied tokenizer, and the
//! weights as safetensors (written by `shards`). Everything goes into a temporary sibling
//! folder that is renamed into place at the end and removed on error, so `--out` is either
//! complete or untouched.

mod shards;

use super::config::ModelConfig;
use super::presets::{complete_config, WeightDtype};
use crate::bail;
use crate::error::{Context, Error, Result};
use serde_json::{json, Map, Value};
use shards::{plan_shards, write_weights};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The shard size the CLI uses (Hugging Face's `max_shard_size="5GB"`).
pub const DEFAULT_SHARD_BYTES: u64 = 5_000_000_000;

/// What `init_model` does besides the config.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub seed: u64,
    pub dtype: WeightDtype,
    /// Weights larger than this are sharded into files of at most this many bytes each (a
    /// tensor larger than it gets a shard of its own).
    pub shard_bytes: u64,
    /// A folder whose tokenizer.json / tokenizer_config.json / tokenizer.model are copied.
    pub tokenizer: Option<PathBuf>,
    /// Report progress on stderr (only for models of at least 1 GB).
    pub progress: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            seed: 0,
            dtype: WeightDtype::Bf16,
            shard_bytes: DEFAULT_SHARD_BYTES,
            tokenizer: None,
            progress: false,
        }
    }
}

/// What `init_model` wrote.
#[derive(Clone, Debug)]
pub struct InitReport {
    pub out: PathBuf,
    pub config: ModelConfig,
    pub parameters: usize,
    pub tensors: usize,
    /// Bytes of tensor data (the index's `total_size`).
    pub weight_bytes: u64,
    /// Bytes of every file written.
    pub total_bytes: u64,
    /// The files of the folder, by name.
    pub files: Vec<String>,
    pub seconds: f64,
}

impl std::fmt::Display for InitReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shards = self
            .files
            .iter()
            .filter(|n| n.ends_with(".safetensors"))
            .count();
        write!(
            f,
            "wrote {}: {} parameters in {} tensors, {} bytes ({:.2} GB) in {} file{} \
             ({} safetensors), {:.2} s ({:.2} GB/s)",
            self.out.display(),
            group_digits(self.parameters as u64),
            self.tensors,
            group_digits(self.total_bytes),
            self.total_bytes as f64 / 1e9,
            self.files.len(),
            if self.files.len() == 1 { "" } else { "s" },
            shards,
            self.seconds,
            self.total_bytes as f64 / 1e9 / self.seconds.max(1e-9),
        )
    }
}

fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Writes a random-initialised model folder at `out` for `config` (a Hugging Face config.json,
/// completed by `complete_config`). Refuses when `out` exists and is not an empty folder.
pub fn init_model(config: &Value, out: &Path, opts: &InitOptions) -> Result<InitReport> {
    let start = Instant::now();
    if opts.shard_bytes == 0 {
        bail!("shard size must be positive");
    }
    let (config_json, parsed) = complete_config(config, opts.dtype)?;
    let init_std = config_json["initializer_range"]
        .as_f64()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .context("config.json: initializer_range must be a non-negative number")?
        as f32;
    check_out(out)?;
    let tokenizer_files = match &opts.tokenizer {
        Some(dir) => tokenizer_files(dir, parsed.vocab_size)?,
        None => vec![],
    };

    let tmp = TempDir::create(out)?;
    write_json(&tmp.0.join("config.json"), &config_json)?;
    write_json(
        &tmp.0.join("generation_config.json"),
        &generation_config(&config_json),
    )?;
    for src in &tokenizer_files {
        let name = src.file_name().context("tokenizer file name")?;
        std::fs::copy(src, tmp.0.join(name))
            .with_context(|| format!("cannot copy {} to {}", src.display(), tmp.0.display()))?;
    }
    let plan = plan_shards(&parsed, opts.dtype, opts.shard_bytes);
    write_weights(&tmp.0, &plan, opts, init_std)?;
    if plan.shards.len() > 1 {
        let weight_map: Map<String, Value> = plan
            .shards
            .iter()
            .flat_map(|s| s.tensors.iter().map(|t| (t.name.clone(), json!(s.file))))
            .collect();
        write_json(
            &tmp.0.join("model.safetensors.index.json"),
            &json!({"metadata": {"total_size": plan.weight_bytes}, "weight_map": weight_map}),
        )?;
    }

    let mut files = Vec::new();
    let mut total_bytes = 0;
    for entry in std::fs::read_dir(&tmp.0).with_context(|| tmp.0.display().to_string())? {
        let entry = entry.with_context(|| tmp.0.display().to_string())?;
        total_bytes += entry
            .metadata()
            .with_context(|| entry.path().display().to_string())?
            .len();
        files.push(entry.file_name().to_string_lossy().into_owned());
    }
    files.sort();
    tmp.commit(out)?;
    Ok(InitReport {
        out: out.to_path_buf(),
        parameters: parsed.num_parameters(),
        config: parsed,
        tensors: plan.shards.iter().map(|s| s.tensors.len()).sum(),
        weight_bytes: plan.weight_bytes,
        total_bytes,
        files,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// `out` must not exist, or be an empty folder.
fn check_out(out: &Path) -> Result<()> {
    match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => bail!("{}: {e}", out.display()),
        Ok(m) if !m.is_dir() => bail!(
            "{}: exists and is not a folder; choose another --out",
            out.display()
        ),
        Ok(_) => {
            let mut entries = std::fs::read_dir(out)
                .with_context(|| format!("{}: cannot list", out.display()))?;
            if entries.next().is_some() {
                bail!(
                    "{}: exists and is not empty; nothing was written (remove it or choose another --out)",
                    out.display()
                );
            }
            Ok(())
        }
    }
}

/// A temporary folder beside the target, removed on drop unless committed.
struct TempDir(PathBuf);

impl TempDir {
    fn create(out: &Path) -> Result<TempDir> {
        let name = out
            .file_name()
            .with_context(|| format!("{}: not a folder name", out.display()))?
            .to_string_lossy()
            .into_owned();
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("{}: cannot create folder", parent.display()))?;
        // A run killed before it finished leaves its temporary folder: say so, delete nothing.
        let prefix = format!(".{name}.init-tmp-");
        if let Ok(entries) = std::fs::read_dir(&parent) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    eprintln!(
                        "warning: {} is left from an interrupted init; remove it to free its space",
                        e.path().display()
                    );
                }
            }
        }
        for i in 0..1000 {
            let tmp = parent.join(format!(".{name}.init-tmp-{}-{i}", std::process::id()));
            match std::fs::create_dir(&tmp) {
                Ok(()) => return Ok(TempDir(tmp)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => bail!("{}: cannot create folder: {e}", tmp.display()),
            }
        }
        bail!("{}: no free temporary folder name", parent.display())
    }

    /// Renames the folder to `out` (which may be an empty folder, replaced).
    fn commit(self, out: &Path) -> Result<()> {
        std::fs::rename(&self.0, out).with_context(|| {
            format!(
                "{}: cannot rename {} into place (was it created meanwhile?)",
                out.display(),
                self.0.display()
            )
        })?;
        std::mem::forget(self);
        Ok(())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("JSON")?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("{}: cannot write", path.display()))
}

/// generation_config.json as transformers derives it from the model config.
fn generation_config(config: &Value) -> Value {
    let mut g = Map::new();
    g.insert("_from_model_config".into(), json!(true));
    for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        if let Some(v) = config.get(key).filter(|v| !v.is_null()) {
            g.insert(key.into(), v.clone());
        }
    }
    Value::Object(g)
}

/// The tokenizer files of `dir` to copy, after checking the vocabulary fits `vocab_size`.
fn tokenizer_files(dir: &Path, vocab_size: usize) -> Result<Vec<PathBuf>> {
    let files: Vec<PathBuf> = ["tokenizer.json", "tokenizer_config.json", "tokenizer.model"]
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.is_file())
        .collect();
    let json_path = dir.join("tokenizer.json");
    let model_path = dir.join("tokenizer.model");
    let (size, from) = if json_path.is_file() {
        let tok = crate::io::tokenizer::Tokenizer::from_file(&json_path)?;
        let size = tok
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&m| m as usize + 1);
        (size, json_path)
    } else if model_path.is_file() {
        (sentencepiece_pieces(&model_path)?, model_path)
    } else {
        bail!(
            "{}: no tokenizer.json or tokenizer.model to copy",
            dir.display()
        );
    };
    // Embedding rows are often padded past the vocabulary (OLMo: 50280 tokens, 50304 rows).
    let padded = size.div_ceil(128) * 128;
    if size == 0 || vocab_size < size || vocab_size > padded {
        bail!(
            "{}: the tokenizer has {size} tokens but the config's vocab_size is {vocab_size} \
             (they must match, up to padding to a multiple of 128)",
            from.display()
        );
    }
    Ok(files)
}

/// The number of pieces of a SentencePiece model (repeated field 1 of `ModelProto`).
fn sentencepiece_pieces(path: &Path) -> Result<usize> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let bad = || Error(format!("{}: not a SentencePiece model", path.display()));
    let varint = |pos: &mut usize| -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *bytes.get(*pos).ok_or_else(bad)?;
            *pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad())
    };
    let (mut pos, mut pieces) = (0, 0);
    while pos < bytes.len() {
        let key = varint(&mut pos)?;
        let skip = match key & 7 {
            0 => {
                varint(&mut pos)?;
                0
            }
            1 => 8,
            2 => varint(&mut pos)? as usize,
            5 => 4,
            _ => return Err(bad()),
        };
        if key >> 3 == 1 && key & 7 == 2 {
            pieces += 1;
        }
        pos = pos
            .checked_add(skip)
            .filter(|&p| p <= bytes.len())
            .ok_or_else(bad)?;
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentencepiece_piece_count() {
        // ModelProto { pieces: [{piece: "a"}, {piece: "b"}], trainer_spec (field 2): {} }.
        let dir = std::env::temp_dir().join(format!("implicit-spm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("tokenizer.model");
        std::fs::write(
            &p,
            [0x0a, 3, 0x0a, 1, b'a', 0x0a, 3, 0x0a, 1, b'b', 0x12, 0],
        )
        .unwrap();
        assert_eq!(sentencepiece_pieces(&p).unwrap(), 2);
        std::fs::write(&p, [0x0a, 9, 0x0a]).unwrap();
        assert!(sentencepiece_pieces(&p).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn group_digits_commas() {
        assert_eq!(group_digits(6_738_415_616), "6,738,415,616");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
    }
}
