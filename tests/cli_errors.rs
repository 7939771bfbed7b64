//! Bad input gets one clear line naming the file and the fault, a non-zero exit and no panic.

mod common;

use common::{fails, fixture_copy};

use std::path::Path;
use std::process::Command;

fn generate(dir: &Path) -> String {
    fails(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "hi",
        "--max-new-tokens",
        "2",
    ])
}

fn edit_config(dir: &Path, from: &str, to: &str) {
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "config.json has no {from}");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn truncated_safetensors() {
    let dir = fixture_copy("truncated");
    let file = dir.join("model.safetensors");
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let e = generate(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn tensor_shape_disagrees_with_config() {
    let dir = fixture_copy("shape");
    edit_config(
        &dir,
        "\"intermediate_size\": 64",
        "\"intermediate_size\": 65",
    );
    let e = generate(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("gate_proj") && e.contains("[64, 32]"),
        "{e}"
    );
}

#[test]
fn unknown_model_type() {
    let dir = fixture_copy("model-type");
    edit_config(
        &dir,
        "\"model_type\": \"llama\"",
        "\"model_type\": \"gpt_neox\"",
    );
    let e = generate(&dir);
    assert!(
        e.contains("config.json") && e.contains("unknown model type \"gpt_neox\""),
        "{e}"
    );
}

#[test]
fn missing_tokenizer() {
    let dir = fixture_copy("tokenizer");
    let e = generate(&dir);
    assert!(
        e.contains("tokenizer.json") && e.contains("missing tokenizer"),
        "{e}"
    );
}

#[test]
fn missing_model_folder() {
    let e = generate(Path::new("/nonexistent/model"));
    assert!(e.contains("/nonexistent/model"), "{e}");
}

#[test]
fn corrupt_gguf_header() {
    let dir = common::temp_dir("gguf");
    let file = dir.join("bad.gguf");
    // Right magic, absurd version.
    std::fs::write(&file, b"GGUF\xff\xff\x00\x00garbage").unwrap();
    let e = fails(&[
        "convert-gguf",
        file.to_str().unwrap(),
        dir.join("out").to_str().unwrap(),
    ]);
    assert!(e.contains("bad.gguf") && e.contains("version"), "{e}");
    std::fs::write(&file, b"NOPE0000").unwrap();
    let e = fails(&[
        "convert-gguf",
        file.to_str().unwrap(),
        dir.join("out").to_str().unwrap(),
    ]);
    assert!(e.contains("bad.gguf") && e.contains("magic"), "{e}");
    assert!(!dir.join("out").join("model.safetensors").exists());
}

#[test]
fn malformed_jsonl_line_is_named() {
    let dir = fixture_copy("jsonl");
    let data = dir.join("train.jsonl");
    let good = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#;
    std::fs::write(&data, format!("{good}\n{good}\n{{\"messages\": [oops\n")).unwrap();
    let (m, d, o) = (
        dir.to_str().unwrap(),
        data.to_str().unwrap(),
        dir.join("out"),
    );
    let e = fails(&[
        "train",
        "--model",
        m,
        "--data",
        d,
        "--epochs",
        "1",
        "--lr",
        "1e-5",
        "--out",
        o.to_str().unwrap(),
    ]);
    assert!(e.contains("train.jsonl") && e.contains("line 3"), "{e}");
}

#[test]
fn data_build_of_a_missing_source() {
    let dir = common::temp_dir("build");
    let src = dir.join("nope.jsonl");
    let out = dir.join("gsm.jsonl");
    let e = fails(&[
        "data",
        "build",
        "--task",
        "gsm",
        "--source",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(e.contains("nope.jsonl"), "{e}");
    assert!(!out.exists());
}

#[test]
fn gpu_memory_options_are_refused_on_the_cpu() {
    for extra in [
        ["--checkpointing", ""],
        ["--optimizer-state", "host"],
        ["--optimizer-state", "bf16"],
        ["--gpus", "2"],
    ] {
        let mut args = vec![
            "train", "--model", "m", "--data", "d.jsonl", "--epochs", "1", "--lr", "1e-5", "--out",
            "o",
        ];
        args.extend(extra.iter().filter(|a| !a.is_empty()));
        let line = fails(&args);
        assert!(line.contains("for --device cuda"), "{line}");
    }
}

#[test]
fn eval_device_cuda_says_why_it_cannot_run_here() {
    // A build without CUDA asks for a rebuild; a CUDA build on a machine without a GPU says
    // why there is none.
    let model = common::fixtures().join("llama-gqa");
    let line = fails(&[
        "eval",
        "ranking",
        "--model",
        model.to_str().unwrap(),
        "--data",
        "no-such.jsonl",
        "--device",
        "cuda",
    ]);
    assert!(
        line.contains("no-such.jsonl"),
        "the data is read first: {line}"
    );
    let data = common::temp_dir("eval-device").join("d.jsonl");
    std::fs::write(
        &data,
        r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#,
    )
    .unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_implicit"))
        .args([
            "eval",
            "ranking",
            "--model",
            model.to_str().unwrap(),
            "--data",
        ])
        .args([data.to_str().unwrap(), "--device", "cuda"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    if run.status.success() {
        return; // a CUDA build on a machine with a GPU: it ran there
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("error: --device cuda"), "{stderr}");
}
