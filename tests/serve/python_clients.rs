//! The official `openai` Python client against the server (tools/openai_client_check.py), and
//! tools/serve_bench.py's concurrent-against-single comparison driven through it. Both skip
//! where `python3 -c 'import openai'` fails, except under CI, where that is a failure.

use super::harness::{greedy, load, user};
use crate::common;
use crate::common::serve::{start_server, ServerGuard};
use implicit::adapter::{RuleAdapter, RuleSet};
use implicit::generate::vocab::VocabText;
use implicit::generate::ScoreAdjuster;
use implicit::io::tokenizer::chat_prompt;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

fn python_has_openai() -> bool {
    Command::new("python3")
        .args(["-c", "import openai"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the `openai` Python client is missing here: then the test says it skips, except
/// under CI (.ci/run installs the client), where that is a failure.
fn openai_client_missing(test: &str) -> bool {
    if python_has_openai() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have the openai client (pip install in .ci/run)"
    );
    eprintln!("SKIPPED {test}: python3 -c 'import openai' fails");
    true
}

/// A client script's stdout, printed, after asserting that it succeeded (its output and the
/// server's log in the failure message otherwise).
fn client_succeeded(script: &str, out: &Output, server: &ServerGuard) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        std::fs::read_to_string(&server.log).unwrap_or_default()
    );
    stdout
}

#[test]
fn the_openai_python_client_talks_to_the_server() {
    if openai_client_missing("the_openai_python_client_talks_to_the_server") {
        return;
    }
    // IMPLICIT_SERVE_TEST_MODEL=DIR runs the same checks on another model folder (e.g. SmolLM2).
    let dir = match std::env::var_os("IMPLICIT_SERVE_TEST_MODEL") {
        Some(d) => PathBuf::from(d),
        None => match common::stories260k("serve-openai") {
            Some(d) => d,
            None => return,
        },
    };
    let (model, tok) = load(&dir);
    let work = common::temp_dir("serve-openai-work");
    // The expected chat text below is built in the paper's Tulu format: ask the server for it,
    // whatever template the model folder carries (SmolLM2's own is the default otherwise).
    let server = start_server(
        &dir,
        &["--model-name", "stories", "--chat-format", "tulu"],
        work.join("server.log"),
    );

    let chat_msg = "Tell me a story about a dog.";
    let prompt = tok.encode_prompt(&chat_prompt(chat_msg)).unwrap();
    let (_, _, chat_text) = greedy(&model, &tok, &prompt, 24, None);
    let adapter: Arc<dyn ScoreAdjuster> =
        Arc::new(RuleAdapter::paper(RuleSet::all(), &tok).unwrap());
    let (_, _, chat_rules) = greedy(&model, &tok, &prompt, 24, Some(adapter));
    assert_ne!(chat_text, chat_rules, "the adapter changes the answer");
    let completion_prompt = "Once upon a time";
    let ids = tok.encode_prompt(completion_prompt).unwrap();
    let (body, logprobs, text) = greedy(&model, &tok, &ids, 20, None);
    let vocab = VocabText::detect(&tok);
    let tokens: Vec<String> = body.iter().map(|&t| vocab.token_text(&tok, t)).collect();
    let concurrent: Vec<Value> = [
        "Tell me about a cat.",
        "What is the sun?",
        "Tell me about a cat.",
        "Write a poem about a frog.",
        "Who was Lily?",
        "What is the sun?",
    ]
    .iter()
    .enumerate()
    .map(|(i, m)| json!({"messages": user(m), "max_tokens": 16 + i, "stream": i % 3 == 1}))
    .collect();
    let expected = json!({
        "model": "stories",
        "chat": {
            "messages": user(chat_msg), "max_tokens": 24, "text": chat_text,
            "text_with_rules": chat_rules,
        },
        "completion": {
            "prompt": completion_prompt, "max_tokens": 20, "text": text,
            "tokens": tokens, "logprobs": logprobs,
        },
        "concurrent": concurrent,
    });
    let expected_path = work.join("expected.json");
    std::fs::write(&expected_path, expected.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/openai_client_check.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg("--base-url")
        .arg(format!("http://127.0.0.1:{}/v1", server.port))
        .arg("--expected")
        .arg(&expected_path)
        .output()
        .unwrap();
    let stdout = client_succeeded("openai_client_check.py", &out, &server);
    assert!(stdout.contains("openai client check:"), "{stdout}");
}

#[test]
fn serve_bench_checks_concurrent_answers_against_single_ones() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/serve_bench.py");
    // The comparison itself, on made-up answers (equal, a flipped near-tie, real mismatches).
    let out = Command::new("python3")
        .arg(&script)
        .arg("--self-test")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("self-test: 7 of 7 passed"), "{stdout}");
    if openai_client_missing("serve_bench_checks_concurrent_answers_against_single_ones") {
        return;
    }
    let Some(dir) = common::stories260k("serve-bench") else {
        return;
    };
    let server = start_server(
        &dir,
        &["--model-name", "stories", "--max-batch", "4"],
        dir.join("../server.log"),
    );
    let json_path = dir.join("../serve.json");
    let out = Command::new("python3")
        .arg(&script)
        .arg("--base-url")
        .arg(format!("http://127.0.0.1:{}/v1", server.port))
        .args([
            "--model",
            "stories",
            "--random-prompts",
            "6",
            "--prompt-tokens",
            "12",
        ])
        .args([
            "--vocab-size",
            "512",
            "--max-tokens",
            "20",
            "--concurrency",
            "1,4",
        ])
        .arg("--json")
        .arg(&json_path)
        .output()
        .unwrap();
    client_succeeded("serve_bench.py", &out, &server);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(v["schema"], "implicit-serve-bench/1");
    assert_eq!(v["mismatches"], 0, "{v}");
    let levels = v["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    for (level, c) in levels.iter().zip([1, 4]) {
        assert_eq!(level["concurrency"], c);
        // --rounds 2: each client sends two requests in turn.
        assert_eq!(level["completed"], 2 * c, "{level}");
        assert!(level["generated_tokens"].as_u64().unwrap() > 0, "{level}");
        assert!(
            level["throughput_tokens_per_s"].as_f64().unwrap() > 0.0,
            "{level}"
        );
        assert!(level["ttft_s"]["p50"].as_f64().unwrap() > 0.0, "{level}");
        // The CPU decodes a sequence alike in any batch: no near-tie flips either.
        assert_eq!(level["accepted_divergences"], json!([]), "{level}");
    }
}
