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

/// Whether `name` is a checkpoint's temporary folder (`.epoch-N.{pid}-….tmp` from
/// `io::atomic::temp_path`, or the fixed `.epoch-N.tmp` of older versions) that no running
/// process is writing: its process has gone (Linux: no /proc/{pid}; elsewhere only the fixed
/// names count, as liveness is unknown).
fn is_stale_temporary(name: &str, proc_dir: &Path) -> bool {
    let Some(stem) = name
        .strip_prefix(".epoch-")
        .and_then(|s| s.strip_suffix(".tmp"))
    else {
        return false;
    };
    let Some((_, writer)) = stem.split_once('.') else {
        return true;
    };
    let Some(pid) = writer
        .split_once('-')
        .and_then(|(pid, _)| pid.parse::<u32>().ok())
    else {
        return false;
    };
    pid != std::process::id() && proc_dir.is_dir() && !proc_dir.join(pid.to_string()).exists()
}

/// Removes the temporary checkpoint folders that killed runs left in `out` (a kill -9 during a
/// save leaves one, weights and all); the ones of a live process stay.
pub(super) fn remove_stale_temporaries(out: &Path) -> Result<()> {
    for path in run_files(out)? {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if is_stale_temporary(&name, Path::new("/proc")) {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("{}: cannot remove", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_temporaries_of_gone_processes_are_stale() {
        let proc_dir = std::env::temp_dir().join(format!("implicit-proc-{}", std::process::id()));
        std::fs::create_dir_all(proc_dir.join("77")).unwrap();
        let me = std::process::id();
        assert!(is_stale_temporary(".epoch-2.12345-0.tmp", &proc_dir));
        assert!(is_stale_temporary(".epoch-2.tmp", &proc_dir));
        assert!(!is_stale_temporary(".epoch-2.77-3.tmp", &proc_dir), "alive");
        assert!(!is_stale_temporary(
            &format!(".epoch-2.{me}-0.tmp"),
            &proc_dir
        ));
        for other in ["epoch-2", ".epoch-2.12345-0", "metrics.jsonl", ".nccl-id-5"] {
            assert!(!is_stale_temporary(other, &proc_dir), "{other}");
        }
        // Without a /proc, liveness is unknown: only the fixed names go.
        let none = proc_dir.join("absent");
        assert!(!is_stale_temporary(".epoch-2.12345-0.tmp", &none));
        assert!(is_stale_temporary(".epoch-2.tmp", &none));
        std::fs::remove_dir_all(&proc_dir).unwrap();
    }
}
