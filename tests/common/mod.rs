//! Shared helpers for integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

#[cfg(feature = "cuda")]
pub mod gpu;
pub mod serve;

/// The path in environment variable `name`, when it is set and not empty. Paths compiled in with
/// `env!` name the build machine's folders, but the GPU machine runs these test binaries from
/// another checkout (tools/build_gpu_binaries.sh, tools/gpu_check.sh): there the variables say
/// where the carried copies are.
fn path_from_env(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
}

/// ../shared/data (or $IMPLICIT_DATA), or None with a message saying the test is skipped.
pub fn data_dir(test: &str) -> Option<PathBuf> {
    let dir = path_from_env("IMPLICIT_DATA")
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED {test}: {} is absent (set IMPLICIT_DATA)",
            dir.display()
        );
        None
    }
}

/// A fresh, empty temporary folder, new on every call: the name says which test it serves and
/// a per-process counter keeps two calls apart, so a second call with the same name (e.g.
/// `temp_dir(test)` after `stories260k(test)`) cannot remove the first call's folder.
pub fn temp_dir(name: &str) -> PathBuf {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "implicit-test-{}-{call}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((*x as f64) - (*y as f64)).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// The checkout's tests/fixtures, or $IMPLICIT_FIXTURES.
pub fn fixtures() -> PathBuf {
    path_from_env("IMPLICIT_FIXTURES")
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
}

/// The `implicit` binary cargo built with these tests, or $IMPLICIT_BIN.
pub fn implicit_bin() -> PathBuf {
    path_from_env("IMPLICIT_BIN").unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_implicit")))
}

/// stories260k (shared data's GGUF) converted into a model folder in this test's temporary
/// folder, or None with a message saying the test is skipped.
pub fn stories260k(test: &str) -> Option<PathBuf> {
    let data = data_dir(test)?;
    let dir = temp_dir(test).join("stories");
    implicit::io::convert::convert_gguf(&data.join("models/stories260k-f32.gguf"), &dir).unwrap();
    Some(dir)
}

/// Runs the `implicit` binary ([`implicit_bin`]) with `args`.
pub fn implicit(args: &[&str]) -> std::process::Output {
    std::process::Command::new(implicit_bin())
        .args(args)
        .output()
        .unwrap()
}

/// Runs `implicit ARGS`, asserts a clean failure (exit 1, no panic, one `error:` line) and
/// returns that line.
pub fn fails(args: &[&str]) -> String {
    let out = implicit(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "args {args:?}: stderr {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    lines[0].to_string()
}

/// A copy of the committed Llama fixture model (2 layers, f32, no tokenizer), for a test to
/// break.
pub fn fixture_copy(name: &str) -> PathBuf {
    let dir = temp_dir(name);
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("llama-gqa").join(f), dir.join(f)).unwrap();
    }
    dir
}
