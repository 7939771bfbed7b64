//! The output folder of `train`: which of its entries are a run's (what the trainer writes),
//! refusing to start afresh over a run, and `--overwrite`'s removal of one.

use crate::bail;
use crate::error::{Context, Result};
use std::path::{Path, PathBuf};

/// The names the trainer writes into `--out`: epoch-N/ checkpoints (and their temporary and
/// set-aside forms), metrics.jsonl, and a data-parallel run's NCCL id file.
fn is_run_file(name: &str) -> bool {
    name == "metrics.jsonl"
        || name.starts_with("epoch-")
        || name.starts_with(".epoch-")
        || name.starts_with(".nccl-id-")
}

/// A run's files in `out` (see [`is_run_file`]), sorted; none when `out` does not exist.
fn run_files(out: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(out) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => bail!("{}: cannot list: {e}", out.display()),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(is_run_file))
        .map(|e| e.path())
        .collect();
    files.sort();
    Ok(files)
}

/// Starting afresh in a folder that holds a run would replace its checkpoints and metrics
/// and leave its later epochs beside the new ones: an error naming the way out. Other files
/// in the folder are neither a reason to refuse nor touched.
pub(super) fn refuse_existing_run(out: &Path) -> Result<()> {
    let files = run_files(out)?;
    if let Some(first) = files.first() {
        bail!(
            "{}: holds a run ({}{}); use --resume to continue it, or --overwrite to delete it \
             and start again",
            out.display(),
            first.file_name().unwrap_or_default().to_string_lossy(),
            if files.len() > 1 {
                format!(" and {} more", files.len() - 1)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// `--overwrite`: deletes the run in `out` (the files the trainer writes, see [`is_run_file`];
/// nothing else), so that a fresh run can start there. Returns how many entries went.
pub fn remove_run(out: &Path) -> Result<usize> {
    let files = run_files(out)?;
    for path in &files {
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        removed.with_context(|| format!("{}: cannot remove", path.display()))?;
    }
    Ok(files.len())
}
