//! Real models, converted from GGUF and run end to end on the CPU.

mod common;

use implicit::generate::{generate, GenerateOptions, Sampler};
use implicit::io::convert::convert_gguf;
use implicit::io::tokenizer::Tokenizer;
use implicit::model::Transformer;
use std::path::{Path, PathBuf};

fn greedy_text(dir: &Path, prompt: &str, max_new_tokens: usize) -> String {
    let model = Transformer::load(dir).unwrap();
    let tok = Tokenizer::load(dir, &model.config).unwrap();
    let ids = tok.encode_prompt(prompt).unwrap();
    let opts = GenerateOptions {
        max_new_tokens,
        stop_tokens: tok.eos.clone(),
    };
    let out = generate(&model, &ids, &opts, &mut Sampler::greedy(), |_| Ok(())).unwrap();
    tok.decode(&out).unwrap()
}

#[test]
fn stories260k_tells_the_story_of_lily() {
    let Some(data) = common::data_dir("stories260k_tells_the_story_of_lily") else {
        return;
    };
    let dir = common::temp_dir("stories260k");
    convert_gguf(&data.join("models/stories260k-f32.gguf"), &dir).unwrap();
    let text = greedy_text(&dir, "", 40);
    println!("stories260k greedy from BOS: {text:?}");
    assert!(
        text.starts_with("Once upon a time, there was a little girl named Lily"),
        "{text:?}"
    );
}

/// SmolLM2-135M-Instruct's GGUF, as tools/fetch_smollm2.sh places it (or $IMPLICIT_SMOLLM2_GGUF).
fn smollm2_gguf() -> Option<PathBuf> {
    let path = std::env::var_os("IMPLICIT_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: {} is absent (run tools/fetch_smollm2.sh)",
            path.display()
        );
        None
    }
}

#[test]
fn smollm2_knows_the_capital_of_france() {
    let Some(gguf) = smollm2_gguf() else { return };
    let dir = common::temp_dir("smollm2");
    convert_gguf(&gguf, &dir).unwrap();
    let text = greedy_text(&dir, "The capital of France is", 3);
    println!("SmolLM2 continues \"The capital of France is\" with {text:?}");
    assert!(text.starts_with(" Paris"), "{text:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cli_converts_and_generates() {
    let Some(data) = common::data_dir("cli_converts_and_generates") else {
        return;
    };
    let dir = common::temp_dir("cli-stories");
    let model = dir.join("model");
    let bin = env!("CARGO_BIN_EXE_implicit");
    let gguf = data.join("models/stories260k-f32.gguf");
    let out = std::process::Command::new(bin)
        .args([
            "convert-gguf",
            gguf.to_str().unwrap(),
            model.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("llama"));
    let out = std::process::Command::new(bin)
        .args([
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "Once upon a time",
            "--max-new-tokens",
            "12",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("Once upon a time, there was"), "{text:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("decode") && stderr.contains("tokens/s"),
        "{stderr}"
    );
}
