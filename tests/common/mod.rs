//! Shared helpers for integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

#[cfg(feature = "cuda")]
pub mod gpu;

/// ../shared/data (or $IMPLICIT_DATA), or None with a message saying the test is skipped.
pub fn data_dir(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("IMPLICIT_DATA")
        .map(PathBuf::from)
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

/// A fresh, empty temporary folder unique to this test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("implicit-test-{}-{name}", std::process::id()));
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

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// stories260k (shared data's GGUF) converted into a model folder in this test's temporary
/// folder, or None with a message saying the test is skipped.
pub fn stories260k(test: &str) -> Option<PathBuf> {
    let data = data_dir(test)?;
    let dir = temp_dir(test).join("stories");
    implicit::io::convert::convert_gguf(&data.join("models/stories260k-f32.gguf"), &dir).unwrap();
    Some(dir)
}
