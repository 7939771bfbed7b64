//! Digests of files (the `sha2` crate): a file streamed in 1 MiB pieces, so memory stays
//! constant whatever its size, and the lowercase hex that fingerprints are written in. The
//! experiment store keys its steps on SHA-512, a training run's record on SHA-256 (what
//! `sha256sum` prints).

use crate::error::{Context, Result};
use sha2::Digest;
use std::io::Read;
use std::path::Path;

/// The size of the file at `path` and its digest under `D`, in lowercase hex.
pub fn file_digest<D: Digest>(path: &Path) -> Result<(u64, String)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut hasher = D::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
        };
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex(&hasher.finalize())))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
