//! The shape of the crate (README.md's Architecture), checked so that it cannot rot:
//!
//! - the floors: `backend` (the ops, CPU and CUDA) is the lowest and imports nothing from the
//!   floors above it. Every `src/backend/**/*.rs` is read, and a path into `model`, `train`,
//!   `optim`, `experiment`, `eval`, `serve`, `cli`, `generate`, `data` or `adapter` fails,
//!   naming file:line, in any form: `crate::model::…` anywhere (a `use`, an expression, a type,
//!   `$crate::…` in a macro, a doc link), `crate::{…, model::…}`, or a `super::super::…` chain
//!   that climbs out of `backend` into one of them;
//! - the feature: `feature = "cuda"` is named only in the places `CUDA_PLACES` lists (and the
//!   module door of `CUDA_DOORS`), in src/ and benches/;
//! - the benchmarks: src/cli/bench holds the commands' arguments only, the logic is src/bench;
//! - the pairs: every kernels/X.cu has its launchers in src/backend/cuda/X.rs.

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

/// Where `feature = "cuda"` may be named (a prefix of the path from the checkout), and why.
const CUDA_PLACES: &[(&str, &str)] = &[
    (
        "src/backend/",
        "the ops: backend::cuda (kernels, buffers) is the GPU twin of backend::cpu",
    ),
    ("src/model/cuda/", "the GPU model, beside its CPU twin"),
    (
        "src/train/cuda/",
        "the GPU trainer, beside its CPU twin; its mod.rs is also the door that says why a \
         build without the feature cannot train on the GPU, so that train/mod.rs names none",
    ),
    (
        "src/model/device.rs",
        "the device seam: the one place a model folder is opened on the CPU or the GPU",
    ),
    (
        "src/bench/",
        "the benchmarks time CUDA kernels; without the feature each command checks its \
         arguments and says why nothing runs",
    ),
];

/// Single items elsewhere that may be gated, each a module's door: (file, the item the
/// `#[cfg(feature = "cuda")]` line stands over). `model::cuda` exists only with the feature,
/// and model/device.rs, the seam, is what uses it.
const CUDA_DOORS: &[(&str, &str)] = &[("src/model/mod.rs", "pub mod cuda;")];

/// The lines (1-based) of `text` that name the feature: `feature = "cuda"` with any spacing,
/// in `#[cfg(…)]`, `#[cfg_attr(…)]`, `#![cfg(…)]` or `cfg!(…)` alike.
fn cuda_feature_lines(text: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    for (at, _) in text.match_indices("feature") {
        let is_ident = |c: char| c.is_alphanumeric() || c == '_';
        if text[..at].chars().next_back().is_some_and(is_ident)
            || text[at + 7..].chars().next().is_some_and(is_ident)
        {
            continue; // `features`, `CARGO_FEATURE`, …
        }
        let rest = text[at + 7..].trim_start();
        let Some(rest) = rest.strip_prefix('=') else {
            continue;
        };
        if rest.trim_start().starts_with("\"cuda\"") {
            lines.push(text[..at].matches('\n').count() + 1);
        }
    }
    lines
}

/// Whether line `line` (1-based) of `text` is the gate of `item`: the next line that is not an
/// attribute is `item`.
fn gates(text: &str, line: usize, item: &str) -> bool {
    text.lines()
        .skip(line)
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("#["))
        .is_some_and(|l| l == item)
}

#[test]
fn the_cuda_feature_is_named_only_where_the_gpu_code_lives() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = rust_files(&root.join("src"));
    files.extend(rust_files(&root.join("benches")));
    assert!(files.len() > 50, "only {} .rs files found", files.len());
    let (mut failures, mut allowed) = (Vec::new(), 0);
    for file in &files {
        let text =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let rel = file.strip_prefix(root).expect("under the checkout");
        let rel_str = rel.to_string_lossy().replace('\\', "/");
        for line in cuda_feature_lines(&text) {
            let placed = CUDA_PLACES.iter().any(|(p, _)| rel_str.starts_with(p));
            let door = CUDA_DOORS
                .iter()
                .any(|(f, item)| rel_str == *f && gates(&text, line, item));
            if placed || door {
                allowed += 1;
            } else {
                failures.push(format!("{rel_str}:{line}"));
            }
        }
    }
    // The scan saw the gates that must be there (the backend's, the seam's, the door).
    assert!(allowed > 20, "only {allowed} uses of the feature found");
    let places: Vec<String> = CUDA_PLACES
        .iter()
        .map(|(p, why)| format!("{p} ({why})"))
        .collect();
    assert!(
        failures.is_empty(),
        "`feature = \"cuda\"` named outside the places for GPU code:\n  {}\nmove the GPU code \
         into one of:\n  {}\nor gate a module door (as src/model/mod.rs's `pub mod cuda;`)",
        failures.join("\n  "),
        places.join("\n  ")
    );
}

#[test]
fn feature_scanner_catches_every_form() {
    for (text, want) in [
        ("#[cfg(feature = \"cuda\")]\nmod x;", vec![1]),
        (
            "\n#![cfg_attr(not(feature=\"cuda\"), allow(dead_code))]",
            vec![2],
        ),
        ("if cfg!(feature =\n    \"cuda\") {}", vec![1]),
        ("#[cfg(all(test, feature = \"cuda\"))]", vec![1]),
        (
            "device = \"cuda\"; features = [\"cuda\"]; CARGO_FEATURE_CUDA",
            vec![],
        ),
        ("/// (feature `cuda`)", vec![]),
    ] {
        assert_eq!(cuda_feature_lines(text), want, "{text}");
    }
    let door = "#[cfg(feature = \"cuda\")]\n#[doc(hidden)]\npub mod cuda;\n";
    assert!(gates(door, 1, "pub mod cuda;"));
    assert!(!gates(
        "#[cfg(feature = \"cuda\")]\nfn f() {}",
        1,
        "pub mod cuda;"
    ));
}

/// `text` without its `#[cfg(test)]` items (a test module's braces, or one item).
fn without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        // The item ends at its closing brace (or at `;` for `mod tests;`).
        let (mut depth, mut end) = (0usize, after.len());
        for (i, c) in after.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The functions a src/cli/bench file may define outside its tests: the dispatch into
/// src/bench (`run`) and each command's arguments turned into src/bench's options (`from`).
const CLI_BENCH_FNS: &[&str] = &["run", "from"];
/// The lines of src/cli/bench outside tests: its argument structs with their help text, and
/// the glue; about 200 today, so a benchmark's logic moved back here shows.
const CLI_BENCH_LINES: usize = 300;

/// (line, name) of every `fn` in `text` not in [`CLI_BENCH_FNS`].
fn logic_fns(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut words = line.split(|c: char| !(c.is_alphanumeric() || c == '_'));
        while let Some(w) = words.next() {
            if w == "fn" {
                let name = words.find(|w| !w.is_empty()).unwrap_or("").to_string();
                if !CLI_BENCH_FNS.contains(&name.as_str()) {
                    found.push((n + 1, name));
                }
            }
        }
    }
    found
}

#[test]
fn cli_bench_holds_arguments_only() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = rust_files(&root.join("src/cli/bench"));
    assert!(files.len() >= 4, "src/cli/bench: {} files", files.len());
    let (mut failures, mut lines, mut runs) = (Vec::new(), 0, 0);
    for file in &files {
        let text =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let code = without_tests(&text);
        lines += code.lines().count();
        runs += code.matches("fn run(").count();
        let rel = file.strip_prefix(root).expect("under the checkout");
        for (line, name) in logic_fns(&code) {
            failures.push(format!("{}:{line}: fn {name}", rel.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "src/cli/bench holds logic (only {CLI_BENCH_FNS:?} belong there; move the rest to \
         src/bench):\n  {}",
        failures.join("\n  ")
    );
    assert_eq!(
        runs, 1,
        "src/cli/bench: one `fn run`, the call into src/bench"
    );
    assert!(
        lines <= CLI_BENCH_LINES,
        "src/cli/bench has {lines} lines outside tests, more than {CLI_BENCH_LINES}: has \
         benchmark logic come back?"
    );
}

#[test]
fn cli_bench_scanner_finds_logic() {
    let text = "pub fn run(c: C) -> R { bench::run(c.into()) }\n\
                fn summarize(x: f64) -> f64 { x }\n\
                #[cfg(test)]\nmod tests {\n    fn helper() {}\n}\n\
                impl X { pub(crate) fn render(&self) {} }";
    let code = without_tests(text);
    assert!(!code.contains("helper"), "{code}");
    let names: Vec<String> = logic_fns(&code).into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, ["summarize", "render"]);
}

#[test]
fn every_kernel_file_has_its_launchers_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut kernels: Vec<String> = std::fs::read_dir(root.join("kernels"))
        .expect("kernels/")
        .map(|e| e.expect("kernels/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    kernels.sort();
    assert!(kernels.len() >= 10, "only {} kernels/*.cu", kernels.len());
    let mut failures = Vec::new();
    for stem in &kernels {
        let launchers = root.join(format!("src/backend/cuda/{stem}.rs"));
        match std::fs::read_to_string(&launchers) {
            Ok(text) if text.contains(&format!("{stem}.cu")) => {}
            Ok(_) => failures.push(format!(
                "src/backend/cuda/{stem}.rs does not mention {stem}.cu"
            )),
            Err(_) => failures.push(format!(
                "kernels/{stem}.cu has no src/backend/cuda/{stem}.rs"
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "each kernels/X.cu is launched from src/backend/cuda/X.rs (and listed in \
         src/backend/cuda/mod.rs's table of contents):\n  {}",
        failures.join("\n  ")
    );
}
