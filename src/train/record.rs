//! What a run was made of, saved in each checkpoint's trainer_state.json so that `--resume`
//! can tell when it would continue another run: the recipe and the per-run settings as text
//! (one entry per field), and fingerprints of the data file and the base model (the size and
//! SHA-256 of each file). A resume compares the saved record with this run's and names every
//! field that changed.
//!
//! Fingerprints hash whole files. sha2's SHA-256 ran at 1.74-1.78 GB/s on the development
//! machine (SHA-NI; `sha256_speed` below), so Llama-2-7B's 13.5 GB of bf16 weights take about
//! 8 s per start, comparable to reading them from disk and small beside an epoch; a
//! size-and-partial-hash shortcut would miss an edited tensor in the middle of a file.

use super::checkpoint::TrainerState;
use super::TrainOptions;
use crate::bail;
use crate::error::{Context, Result};
use crate::io::digest::{file_digest, hex};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// Field name → value as text; compared as text, so f32 values (written with Rust's shortest
/// round-trip formatting) compare bit for bit.
pub type RunRecord = BTreeMap<String, String>;

/// This run's record: the learning rate, epochs, mode, example limit, every recipe field, and
/// the fingerprints of `--data` and `--model`.
pub fn run_record(opts: &TrainOptions) -> Result<RunRecord> {
    let r = &opts.recipe;
    let mut record = RunRecord::new();
    let mut put = |name: &str, value: String| record.insert(name.to_string(), value);
    put("lr", opts.lr.to_string());
    put("epochs", opts.epochs.to_string());
    put("mode", format!("{:?}", opts.mode).to_lowercase());
    put(
        "max_examples",
        opts.max_examples
            .map_or("all".to_string(), |n| n.to_string()),
    );
    put("batch_size", r.batch_size.to_string());
    put("micro_batch", r.micro_batch.to_string());
    put("warmup", r.warmup.to_string());
    put("schedule", format!("{:?}", r.schedule).to_lowercase());
    put("weight_decay", r.weight_decay.to_string());
    put("max_grad_norm", r.max_grad_norm.to_string());
    put("max_len", r.max_len.to_string());
    put("precision", format!("{:?}", r.precision).to_lowercase());
    put("data", file_fingerprint(&opts.data)?);
    put("model", model_fingerprint(&opts.model)?);
    Ok(record)
}

/// "field old → new" for every field whose value differs (a field only one side has shows
/// as "(none)" on the other).
pub fn changes(saved: &RunRecord, now: &RunRecord) -> Vec<String> {
    let none = "(none)".to_string();
    let mut names: Vec<&String> = saved.keys().chain(now.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let (old, new) = (
                saved.get(name).unwrap_or(&none),
                now.get(name).unwrap_or(&none),
            );
            (old != new).then(|| format!("{name} {old} → {new}"))
        })
        .collect()
}

/// A resume must continue the same run: the checkpoint's record (recipe, inputs' fingerprints)
/// must equal this run's. Checkpoints written before the record existed resume with a warning,
/// checked on seed, example count and step count only (as they were before).
pub(super) fn check_same_run(
    dir: &Path,
    state: &TrainerState,
    now: Option<&RunRecord>,
) -> Result<()> {
    let Some(now) = now else {
        return Ok(());
    };
    let Some(saved) = &state.record else {
        eprintln!(
            "warning: {} predates recorded recipes: cannot check that the learning rate, recipe, \
             data and model are the ones it was trained with",
            dir.display()
        );
        return Ok(());
    };
    let changed = changes(saved, now);
    if !changed.is_empty() {
        bail!(
            "{}: --resume would continue another run: {}; train into a new --out (or \
             --overwrite this one) to use these settings",
            dir.display(),
            changed.join("; ")
        );
    }
    Ok(())
}

/// "N bytes, sha256 HEX" of one file.
pub fn file_fingerprint(path: &Path) -> Result<String> {
    let (size, digest) = sha256_file(path)?;
    Ok(format!("{size} bytes, sha256 {digest}"))
}

/// The files of a model folder that make the model (weights, index, config, tokenizer), each as
/// "name N bytes, sha256 HEX", in name order; one SHA-256 over those lines when there are
/// several, so that the record stays one line.
pub fn model_fingerprint(dir: &Path) -> Result<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| {
            name.ends_with(".safetensors")
                || name.ends_with(".json")
                || name.as_str() == "tokenizer.model"
        })
        .collect();
    names.sort();
    let mut total = 0u64;
    let mut lines = String::new();
    for name in &names {
        let (size, digest) = sha256_file(&dir.join(name))?;
        total += size;
        lines += &format!("{name} {size} bytes, sha256 {digest}\n");
    }
    Ok(format!(
        "{} files, {total} bytes, sha256 {}",
        names.len(),
        hex(&Sha256::digest(lines.as_bytes()))
    ))
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    file_digest::<Sha256>(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pairs: &[(&str, &str)]) -> RunRecord {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn changes_name_each_field_old_and_new() {
        let saved = record(&[("lr", "0.001"), ("data", "a"), ("epochs", "3")]);
        let now = record(&[("lr", "0.002"), ("data", "b"), ("epochs", "3"), ("x", "1")]);
        assert_eq!(
            changes(&saved, &now),
            ["data a → b", "lr 0.001 → 0.002", "x (none) → 1"]
        );
        assert!(changes(&saved, &saved).is_empty());
    }

    #[test]
    fn fingerprints_see_one_changed_byte_and_match_sha256sum() {
        let dir = std::env::temp_dir().join(format!("implicit-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        std::fs::write(&path, b"abc").unwrap();
        // FIPS 180-2's "abc" vector.
        assert_eq!(
            file_fingerprint(&path).unwrap(),
            "3 bytes, sha256 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let before = model_fingerprint(&dir).unwrap();
        std::fs::write(&path, b"abd").unwrap();
        let after = model_fingerprint(&dir).unwrap();
        assert_ne!(before, after);
        assert!(after.starts_with("1 files, 3 bytes"), "{after}");
        // Files that are not the model's do not count.
        std::fs::write(dir.join("notes.txt"), b"x").unwrap();
        assert_eq!(model_fingerprint(&dir).unwrap(), after);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `cargo test --lib sha256_speed -- --ignored --nocapture` (sha2 is built at opt-level 2
    /// in every profile): the figure the
    /// module comment quotes.
    #[test]
    #[ignore]
    fn sha256_speed() {
        let data = vec![7u8; 1 << 30];
        let t = std::time::Instant::now();
        let digest = Sha256::digest(&data);
        let s = t.elapsed().as_secs_f64();
        println!(
            "sha256 of 1 GiB: {s:.3} s ({:.2} GB/s) {:x}",
            1.073741824 / s,
            digest[0]
        );
    }
}
