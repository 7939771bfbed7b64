//! Atomic file writes: the whole content goes to a temporary file beside the target, which is
//! synced and then renamed over it, so a reader sees the old file or the new one, never half of
//! one, and an interrupted run leaves no truncated file behind. Each write has its own
//! temporary name, so two writers of one path never share (and clobber) a temporary file: the
//! last rename wins, whole.

use crate::error::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes `bytes` to `path` atomically, creating its folder if missing. The temporary file is
/// `.{name}.{pid}-{count}-{nanos}.tmp` in the same folder (so the rename stays on one file
/// system), created anew (never an existing file); it is removed if anything fails. On Unix
/// the folder is synced after the rename, so the new name survives a crash too. Errors name
/// the file at fault.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    }
    let (tmp, mut file) = create_temp(path)?;
    let result = (|| {
        file.write_all(bytes)
            .with_context(|| format!("{}: cannot write", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("{}: cannot sync", tmp.display()))?;
        drop(file);
        std::fs::rename(&tmp, path)
            .with_context(|| format!("{}: cannot rename to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir.unwrap_or(Path::new(".")))
}

/// A temporary name beside `path` that no other writer uses, `.{name}.{pid}-{count}-{nanos}.tmp`:
/// the process id and a per-process count keep writers in this machine's processes apart, the
/// clock's nanoseconds a process that reuses an old pid. Files and checkpoint folders alike.
pub fn temp_path(path: &Path) -> PathBuf {
    static NAMES: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let count = NAMES.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(
        ".{name}.{}-{count}-{nanos:09}.tmp",
        std::process::id()
    ))
}

/// A new temporary file beside `path` ([`temp_path`]).
fn create_temp(path: &Path) -> Result<(PathBuf, std::fs::File)> {
    let mut last_error = None;
    // create_new fails on a name already there; a fresh count makes a fresh name.
    for _ in 0..16 {
        let tmp = temp_path(path);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_error = Some(e),
            Err(e) => {
                return Err(crate::Error(format!(
                    "{}: cannot create: {e}",
                    tmp.display()
                )))
            }
        }
    }
    Err(crate::Error(format!(
        "{}: cannot create a temporary file beside it: {}",
        path.display(),
        last_error.map_or_else(String::new, |e| e.to_string())
    )))
}

/// Syncs folder `dir`, making a rename in it durable (Unix; elsewhere a rename is left to the
/// file system).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    match std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        Ok(()) => {}
        // Some file systems cannot sync a folder (EINVAL): the rename stands, and how durable
        // it is stays theirs to decide.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {}
        Err(e) => {
            return Err(crate::Error(format!(
                "{}: cannot sync folder: {e}",
                dir.display()
            )))
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::write_atomic;

    #[test]
    fn writes_replaces_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("implicit-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("out.json");

        write_atomic(&path, b"first").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out.json"], "temporary file left behind");

        // A folder in the way of the rename: the error names the path, the old contents and
        // the folder stay, and no temporary file is left.
        let blocked = dir.join("sub").join("blocked");
        std::fs::create_dir_all(blocked.join("inner")).unwrap();
        let err = write_atomic(&blocked, b"x").unwrap_err().to_string();
        assert!(err.contains(&blocked.display().to_string()), "{err}");
        assert!(blocked.join("inner").is_dir());
        let mut names: Vec<_> = std::fs::read_dir(dir.join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["blocked", "out.json"], "temporary file left behind");
        assert_eq!(std::fs::read(&path).unwrap(), b"second");

        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_writers_of_one_path_never_collide() {
        let dir = std::env::temp_dir().join(format!("implicit-atomic-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("out.json");
        // Whole contents large enough that a torn or mixed file would show.
        let contents = [vec![b'a'; 64 << 10], vec![b'b'; 96 << 10]];
        let all = &contents;
        std::thread::scope(|scope| {
            for content in all {
                let path = &path;
                scope.spawn(move || {
                    for _ in 0..200 {
                        write_atomic(path, content).unwrap();
                        let seen = std::fs::read(path).unwrap();
                        assert!(
                            all.contains(&seen),
                            "a reader saw {} bytes that are neither content",
                            seen.len()
                        );
                    }
                });
            }
        });
        assert!(contents.contains(&std::fs::read(&path).unwrap()));
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out.json"], "temporary file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
