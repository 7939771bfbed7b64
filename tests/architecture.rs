//! The floors of the crate: `backend` (the ops, CPU and CUDA) is the lowest and imports nothing
//! from the floors above it. This test reads every `src/backend/**/*.rs` and fails, naming
//! file:line, on a path into `model`, `train`, `optim`, `experiment`, `eval`, `serve`, `cli`,
//! `generate`, `data` or `adapter`, in any form: `crate::model::…` anywhere (a `use`, an
//! expression, a type, `$crate::…` in a macro, a doc link), `crate::{…, model::…}`, or a
//! `super::super::…` chain that climbs out of `backend` into one of them.

use std::path::{Path, PathBuf};

/// The modules above the backend.
const UPPER_FLOORS: &[&str] = &[
    "model",
    "train",
    "optim",
    "experiment",
    "eval",
    "serve",
    "cli",
    "generate",
    "data",
    "adapter",
];

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The module path of a file under src/ (`src/backend/cuda/decode/kv_cache.rs` →
/// backend, cuda, decode, kv_cache; `mod.rs` is its folder's module).
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().expect("a file name");
    let stem = file.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// The identifier starting at byte `i` of `text` (empty if none).
fn ident_at(text: &str, i: usize) -> &str {
    let rest = &text[i..];
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Skips spaces, newlines and `::` after byte `i`; returns where the next token starts and
/// whether a `::` was crossed.
fn skip_path_sep(text: &str, mut i: usize) -> (usize, bool) {
    let bytes = text.as_bytes();
    let mut crossed = false;
    loop {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if text[i..].starts_with("::") {
            crossed = true;
            i += 2;
        } else {
            return (i, crossed);
        }
    }
}

/// The top-level items of the `{…}` group opening at byte `open`, each with its offset.
fn group_items(text: &str, open: usize) -> Vec<(usize, &str)> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut start = open + 1;
    for (i, c) in text[open..].char_indices() {
        let at = open + i;
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    items.push((start, &text[start..at]));
                    break;
                }
            }
            ',' if depth == 1 => {
                items.push((start, &text[start..at]));
                start = at + 1;
            }
            _ => {}
        }
    }
    items
}

/// Whether a path (or `use` tree) starting at byte `i`, right after the crate root, names an
/// upper floor: `model…` or `{…, model…}`.
fn reaches_up(text: &str, i: usize) -> Option<(usize, String)> {
    if text[i..].starts_with('{') {
        for (at, item) in group_items(text, i) {
            let lead = item.len() - item.trim_start().len();
            if let Some(hit) = reaches_up(text, at + lead) {
                return Some(hit);
            }
        }
        return None;
    }
    let name = ident_at(text, i);
    UPPER_FLOORS.contains(&name).then(|| (i, name.to_string()))
}

/// Every reach into an upper floor in `text` (the source of module `module`): (line, what).
fn violations(text: &str, module: &[String]) -> Vec<(usize, String)> {
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut found = Vec::new();
    // `crate::…` and `$crate::…`.
    for (at, _) in text.match_indices("crate") {
        if text[..at].chars().next_back().is_some_and(is_ident)
            || text[at + 5..].chars().next().is_some_and(is_ident)
        {
            continue;
        }
        let (next, crossed) = skip_path_sep(text, at + 5);
        if !crossed {
            continue;
        }
        if let Some((_, name)) = reaches_up(text, next) {
            found.push((line_of(at), format!("crate::{name}")));
        }
    }
    // `super::super::…` climbing out of the backend: from a module `depth` deep (backend is 1),
    // `depth` supers reach the crate root.
    let mut at = 0;
    while let Some(found_at) = text[at..].find("super") {
        let start = at + found_at;
        at = start + 5;
        if text[..start].chars().next_back().is_some_and(is_ident)
            || text[..start].trim_end().ends_with("::")
        {
            continue; // part of a longer word, or a later `super` of a chain already read
        }
        let mut supers = 0;
        let mut i = start;
        loop {
            if ident_at(text, i) != "super" {
                break;
            }
            supers += 1;
            let (next, crossed) = skip_path_sep(text, i + 5);
            i = next;
            if !crossed {
                break;
            }
        }
        if supers >= module.len() {
            if let Some((_, name)) = reaches_up(text, i) {
                found.push((
                    line_of(start),
                    format!("{}{name}", "super::".repeat(supers)),
                ));
            }
        }
    }
    found
}

#[test]
fn backend_imports_no_upper_floor() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = rust_files(&src.join("backend"));
    assert!(
        files.len() > 10,
        "src/backend: only {} .rs files found",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let text =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let rel = file.strip_prefix(&src).expect("under src/");
        for (line, what) in violations(&text, &module_path(rel)) {
            failures.push(format!("src/{}:{line}: {what}", rel.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "the backend (ops only) reaches up into the floors above it:\n  {}",
        failures.join("\n  ")
    );
}

/// The scanner itself: each form it must catch, and what it must let through.
#[test]
fn scanner_catches_every_form() {
    let cuda_file: Vec<String> = ["backend", "cuda", "adamw"].map(String::from).to_vec();
    let caught = |text: &str| violations(text, &cuda_file);
    assert_eq!(
        caught("use crate::model::ModelConfig;"),
        vec![(1, "crate::model".to_string())]
    );
    assert_eq!(
        caught("\n\nlet c = crate::optim::AdamWConfig::default();").len(),
        1
    );
    assert_eq!(
        caught("fn f(x: &crate :: train::plan::MemoryPlan) {}").len(),
        1
    );
    assert_eq!(caught("$crate::experiment::run()").len(), 1);
    assert_eq!(caught("/// [`crate::eval::winrate`]").len(), 1);
    assert_eq!(
        caught("use crate::{\n    error::Result,\n    data::Mode,\n};"),
        vec![(1, "crate::data".to_string())]
    );
    assert_eq!(
        caught("use crate::{error::{Error, Result}, io::{cli::X}};").len(),
        0
    );
    assert_eq!(
        caught("use super::super::super::serve::Server;"),
        vec![(1, "super::super::super::serve".to_string())]
    );
    assert_eq!(caught("use super::super::{cli, error};").len(), 0);
    assert_eq!(
        caught("use super::super::super::{error, adapter::Rule};").len(),
        1
    );
    // Within the backend, and words that only contain a floor's name: allowed.
    for ok in [
        "use crate::backend::cpu::attention::AttentionShape;",
        "use crate::error::Result;",
        "use super::{model_attention, train_step};",
        "let model = mycrate::model::x; let supercrate = 1;",
        "use crate::modeling::X; use crate::training::Y;",
        "use super::super::model::X;",
    ] {
        assert_eq!(caught(ok), vec![], "{ok}");
    }
    assert_eq!(
        module_path(Path::new("backend/cuda/decode/kv_cache.rs")),
        ["backend", "cuda", "decode", "kv_cache"]
    );
    assert_eq!(
        module_path(Path::new("backend/cuda/mod.rs")),
        ["backend", "cuda"]
    );
}
