//! Atomic file writes: the whole content goes to a temporary file beside the target, which is
//! synced and then renamed over it, so a reader sees the old file or the new one, never half of
//! one, and an interrupted run leaves no truncated file behind.

use crate::error::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically, creating its folder if missing. The temporary file is
/// `{path}.tmp` (in the same folder, so the rename stays on one file system); it is removed if
/// anything fails. Errors name the file at fault.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)
            .with_context(|| format!("{}: cannot create", tmp.display()))?;
        file.write_all(bytes)
            .with_context(|| format!("{}: cannot write", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("{}: cannot sync", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("{}: cannot rename to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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
}
