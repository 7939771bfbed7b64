//! `implicit bench generate` without a GPU: bad arguments, a missing model or torch file, a
//! build without CUDA and a machine without a GPU each fail with one line naming the reason;
//! tools/bench_generate_torch.py compiles and draws the same prompt ids (its pinned check).
//! The figures, the table and the JSON are unit tests in src/bench/generate/tests.rs.

mod common;

use common::{fails, implicit};

use std::process::Command;

fn fixture() -> String {
    common::fixtures()
        .join("llama-gqa")
        .to_str()
        .unwrap()
        .to_string()
}

fn bench(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "bench".into(),
        "generate".into(),
        "--model".into(),
        fixture(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn fails_bench(extra: &[&str]) -> String {
    let args = bench(extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    fails(&refs)
}

#[test]
fn bad_arguments() {
    // Sizes of 0 stop at parsing (cli::numbers), with clap's usage error and exit code 2.
    for (flag, value) in [
        ("--batch-sizes", "1,0"),
        ("--prompt-len", "0"),
        ("--new-tokens", "0"),
    ] {
        let args = bench(&[flag, value]);
        let out = Command::new(env!("CARGO_BIN_EXE_implicit"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid value '0' for '{flag}"))
                && stderr.contains("must be at least 1"),
            "{stderr}"
        );
    }
    let e = fails_bench(&["--batch-sizes", "1,2000"]);
    assert!(
        e.contains("--batch-sizes 2000: each must be 1 to 1024"),
        "{e}"
    );
    let e = fails_bench(&["--batch-sizes", "8,8"]);
    assert!(e.contains("8 is given twice"), "{e}");
    let e = fails_bench(&["--new-tokens", "1"]);
    assert!(e.contains("--new-tokens 1: must be at least 2"), "{e}");
    let e = fails_bench(&["--torch", "/nonexistent/torch.json"]);
    assert!(
        e.contains("--torch /nonexistent/torch.json: cannot read"),
        "{e}"
    );
    // clap's own usage errors exit with 2.
    let out = implicit(&["bench", "generate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--model"));
}

#[test]
fn torch_file_of_other_lengths_is_refused() {
    let dir = common::temp_dir("bench-generate-torch");
    let path = dir.join("torch.json");
    std::fs::write(
        &path,
        r#"{"config":{"prompt_len":16,"new_tokens":8,"seed":0},"results":[]}"#,
    )
    .unwrap();
    let e = fails_bench(&["--torch", path.to_str().unwrap()]);
    assert!(
        e.contains("measured with prompts of 16 tokens and 8 new tokens; this run has 128 and 128"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(not(feature = "cuda"))]
#[test]
fn without_cuda_it_says_to_rebuild() {
    let e = fails_bench(&[]);
    assert!(e.contains("bench generate: this binary was built without CUDA; rebuild with `cargo build --release --features cuda`"), "{e}");
}

#[cfg(feature = "cuda")]
#[test]
fn model_errors_come_before_the_gpu() {
    let e = fails(&["bench", "generate", "--model", "/nonexistent/model"]);
    assert!(
        e.contains("/nonexistent/model/config.json: cannot read"),
        "{e}"
    );
    // The fixture's context is 64 positions.
    let e = fails_bench(&["--prompt-len", "60", "--new-tokens", "8"]);
    assert!(
        e.contains("= 68 positions") && e.contains("context is 64"),
        "{e}"
    );
}

/// Without a GPU: one line naming the reason. With one, the fixture is benchmarked (small).
#[cfg(feature = "cuda")]
#[test]
fn without_a_gpu_it_says_why() {
    let args = bench(&[
        "--batch-sizes",
        "1,2",
        "--prompt-len",
        "8",
        "--new-tokens",
        "4",
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = implicit(&refs);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if out.status.success() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("a GPU is here: the bench ran:\n{stdout}");
        assert!(stdout.contains("decode tok/s"), "{stdout}");
        return;
    }
    let e = fails(&refs);
    assert!(
        e.starts_with("error: bench generate: no GPU found: "),
        "{stderr}"
    );
}

#[test]
fn torch_script_compiles_and_draws_the_same_prompts() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/bench_generate_torch.py");
    let dir = common::temp_dir("bench-generate-py");
    let cfile = dir.join("script.pyc");
    let compiled = Command::new("python3")
        .args([
            "-c",
            "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True)",
            script,
            cfile.to_str().unwrap(),
        ])
        .output();
    let Ok(compiled) = compiled else {
        eprintln!("SKIPPED torch_script_compiles_and_draws_the_same_prompts: no python3");
        return;
    };
    assert!(
        compiled.status.success(),
        "{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    // Runs the module's pinned prompt-id check, then stops at the context check (before
    // importing torch).
    let out = Command::new("python3")
        .args([
            script,
            "--model",
            &fixture(),
            "--prompt-len",
            "60",
            "--new-tokens",
            "8",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("exceed the model's context of 64"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
