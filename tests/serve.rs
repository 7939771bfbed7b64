//! `implicit serve` end to end: the official `openai` Python client against the server
//! (tools/openai_client_check.py), and raw HTTP for errors, keep-alive, the adapter and
//! concurrent requests.

mod common;

use implicit::adapter::{RuleAdapter, RuleSet};
use implicit::generate::detok::decode_continuation;
use implicit::generate::vocab::VocabText;
use implicit::generate::{generate_adjusted, GenerateOptions, Sampler, ScoreAdjuster};
use implicit::io::convert::convert_gguf;
use implicit::io::tokenizer::{chat_prompt, Tokenizer};
use implicit::model::Transformer;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// The server process; killed when dropped, so also when a test fails.
struct ServerGuard {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(model: &Path, extra: &[&str], log: PathBuf) -> ServerGuard {
    let mut child = Command::new(env!("CARGO_BIN_EXE_implicit"))
        .arg("serve")
        .arg("--model")
        .arg(model)
        .args(["--port", "0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start implicit serve");
    let stdout = child.stdout.take().unwrap();
    let mut guard = ServerGuard {
        child,
        port: 0,
        log,
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_default();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            let log = std::fs::read_to_string(&guard.log).unwrap_or_default();
            panic!("no port in the server's first line {line:?}; its log:\n{log}")
        });
    assert!(line.starts_with("listening on http://127.0.0.1:"), "{line}");
    guard.port = port;
    guard
}

fn stories260k(test: &str) -> Option<PathBuf> {
    let data = common::data_dir(test)?;
    let dir = common::temp_dir(test);
    convert_gguf(
        &data.join("models/stories260k-f32.gguf"),
        &dir.join("stories"),
    )
    .unwrap();
    Some(dir.join("stories"))
}

fn load(dir: &Path) -> (Transformer, Tokenizer) {
    let model = Transformer::load(dir).unwrap();
    let tok = Tokenizer::load(dir, &model.config).unwrap();
    (model, tok)
}

/// The library's own greedy decoding: (token ids without EOS, log-probabilities, text).
fn greedy(
    model: &Transformer,
    tok: &Tokenizer,
    prompt: &[u32],
    max: usize,
    adapter: Option<Arc<dyn ScoreAdjuster>>,
) -> (Vec<u32>, Vec<f32>, String) {
    let opts = GenerateOptions {
        max_new_tokens: max,
        stop_tokens: tok.eos.clone(),
    };
    let mut logprobs = Vec::new();
    let out = generate_adjusted(model, prompt, &opts, &mut Sampler::greedy(), adapter, |c| {
        logprobs.push(c.logprob);
        Ok(())
    })
    .unwrap();
    let body: Vec<u32> = out.iter().copied().filter(|&t| !tok.is_eos(t)).collect();
    logprobs.truncate(body.len());
    let text = decode_continuation(tok, prompt, &body).unwrap();
    (body, logprobs, text)
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

fn python_has_openai() -> bool {
    Command::new("python3")
        .args(["-c", "import openai"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_openai_python_client_talks_to_the_server() {
    if !python_has_openai() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have the openai client (pip install in .ci/run)"
        );
        eprintln!("SKIPPED the_openai_python_client_talks_to_the_server: python3 -c 'import openai' fails");
        return;
    }
    // IMPLICIT_SERVE_TEST_MODEL=DIR runs the same checks on another model folder (e.g. SmolLM2).
    let dir = match std::env::var_os("IMPLICIT_SERVE_TEST_MODEL") {
        Some(d) => PathBuf::from(d),
        None => match stories260k("serve-openai") {
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "openai_client_check.py failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        std::fs::read_to_string(&server.log).unwrap_or_default()
    );
    assert!(stdout.contains("openai client check:"), "{stdout}");
}

/// One HTTP exchange on `stream`: (status, headers, body), reading the body by Content-Length.
fn exchange(stream: &mut TcpStream, request: &str) -> (u16, String, String) {
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let status = head[9..12].parse().unwrap();
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, head, String::from_utf8(body).unwrap())
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn request(port: u16, raw: &str) -> (u16, String, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let (status, head, body) = exchange(&mut s, raw);
    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
    (status, head, json)
}

/// The events of a streamed response (`data: ` stripped), the connection closed after it.
fn sse(port: u16, raw: &str) -> Vec<String> {
    let raw = raw.replacen("Host: x\r\n", "Host: x\r\nConnection: close\r\n", 1);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let all = String::from_utf8(all).unwrap();
    let (head, mut rest) = all.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains("text/event-stream") && head.contains("chunked"),
        "{head}"
    );
    let mut body = String::new();
    loop {
        let (size, tail) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size, 16).unwrap();
        if size == 0 {
            break;
        }
        body.push_str(&tail[..size]);
        rest = &tail[size + 2..];
    }
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap().to_string())
        .collect()
}

fn chat_request(message: &str, max_tokens: usize) -> String {
    let body = json!({"model": "stories", "messages": user(message), "max_tokens": max_tokens, "temperature": 0});
    post("/v1/chat/completions", &body.to_string())
}

#[test]
fn raw_http_errors_keep_alive_adapter_and_concurrency() {
    let Some(dir) = stories260k("serve-raw") else {
        return;
    };
    let (model, tok) = load(&dir);
    let server = start_server(&dir, &["--adapter", "rules"], dir.join("../server.log"));
    let port = server.port;

    let (status, _, v) = request(port, "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    assert_eq!(v["data"][0]["id"], "stories");

    // The greedy text through the adapter is the library's, with the paper's rules.
    let adapter: Arc<dyn ScoreAdjuster> =
        Arc::new(RuleAdapter::paper(RuleSet::all(), &tok).unwrap());
    let msg = "Tell me a story about a dog.";
    let prompt = tok.encode_prompt(&chat_prompt(msg)).unwrap();
    let (_, _, want) = greedy(&model, &tok, &prompt, 30, Some(adapter.clone()));
    let (plain, _, _) = greedy(&model, &tok, &prompt, 30, None);
    let (with_rules, _, _) = greedy(&model, &tok, &prompt, 30, Some(adapter));
    assert_ne!(plain, with_rules, "the adapter changes the output");
    let (status, _, v) = request(port, &chat_request(msg, 30));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], want.as_str());
    assert_eq!(v["object"], "chat.completion");
    // A request may turn the server's adapter off, and must say it with a boolean.
    let (_, _, plain_text) = greedy(&model, &tok, &prompt, 30, None);
    let off = json!({"messages": user(msg), "max_tokens": 30, "temperature": 0, "rules": false});
    let (status, _, v) = request(port, &post("/v1/chat/completions", &off.to_string()));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], plain_text.as_str());
    let bad = json!({"messages": user(msg), "rules": "off"});
    let (status, _, v) = request(port, &post("/v1/chat/completions", &bad.to_string()));
    assert_eq!(
        (status, &v["error"]["param"]),
        (400, &json!("rules")),
        "{v}"
    );

    // Two requests on one keep-alive connection.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let (a, _, body_a) = exchange(&mut s, &chat_request(msg, 30));
    let (b, _, body_b) = exchange(&mut s, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((a, b), (200, 200), "{body_a} {body_b}");

    // Errors are OpenAI-shaped JSON with the right status.
    let error_cases: Vec<(String, u16, Option<&str>)> = vec![
        ("GET /v1/nope HTTP/1.1\r\n\r\n".into(), 404, None),
        ("GET /v1/completions HTTP/1.1\r\n\r\n".into(), 405, None),
        ("DELETE /v1/models HTTP/1.1\r\n\r\n".into(), 405, None),
        ("GET /v1/models/other HTTP/1.1\r\n\r\n".into(), 404, None),
        (post("/v1/chat/completions", "{not json"), 400, None),
        (post("/v1/chat/completions", "[1, 2]"), 400, None),
        (
            post("/v1/chat/completions", r#"{"model": "stories"}"#),
            400,
            Some("messages"),
        ),
        (
            post("/v1/completions", r#"{"prompt": "x", "n": 2}"#),
            400,
            Some("n"),
        ),
        (
            post("/v1/completions", r#"{"prompt": [99999]}"#),
            400,
            Some("prompt"),
        ),
        (
            post("/v1/completions", r#"{"prompt": "x", "max_tokens": 0}"#),
            400,
            Some("max_tokens"),
        ),
        (
            post("/v1/completions", r#"{"prompt": "x", "stop": 3}"#),
            400,
            Some("stop"),
        ),
        (
            "POST /v1/completions HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n".into(),
            413,
            None,
        ),
        (
            "POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
            400,
            None,
        ),
    ];
    // A request hyper cannot parse gets its plain 400 (no JSON: no handler ran).
    let (status, _, _) = request(port, "NONSENSE\r\n\r\n");
    assert_eq!(status, 400);
    for (raw, want_status, param) in &error_cases {
        let (status, head, v) = request(port, raw);
        assert_eq!(status, *want_status, "{raw:?}: {v}");
        let err = &v["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{raw:?}: {v}"
        );
        assert!(err["type"].is_string(), "{v}");
        assert!(
            err.get("param").is_some() && err.get("code").is_some(),
            "{v}"
        );
        if let Some(p) = param {
            assert_eq!(err["param"], *p, "{raw:?}: {v}");
            assert_eq!(err["type"], "invalid_request_error");
        }
        if *want_status == 405 {
            assert!(head.to_ascii_lowercase().contains("allow: "), "{head}");
        }
    }

    // Stop strings cut the text before them, streamed or not; the stream adds up to the text.
    let body = json!({"prompt": "Once upon a time", "max_tokens": 20, "temperature": 0});
    let (_, _, v) = request(port, &post("/v1/completions", &body.to_string()));
    let full = v["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let stop = format!(" {}", full.split(' ').nth(3).unwrap());
    let cut = full.find(&stop).unwrap();
    let with_stop =
        json!({"prompt": "Once upon a time", "max_tokens": 20, "temperature": 0, "stop": [stop]});
    let (_, _, v) = request(port, &post("/v1/completions", &with_stop.to_string()));
    assert_eq!(v["choices"][0]["text"], &full[..cut], "stop {stop:?}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    for (body, want) in [(body, &full[..]), (with_stop, &full[..cut])] {
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let events = sse(port, &post("/v1/completions", &streamed.to_string()));
        assert_eq!(events.last().unwrap(), "[DONE]");
        let text: String = events[..events.len() - 1]
            .iter()
            .map(|e| {
                serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(text, want);
    }

    // Concurrent requests (one thread each) give the same text as one after another.
    let prompts = [
        "Tell me about a cat.",
        "What is the sun?",
        "Who was Lily?",
        "Tell me about a cat.",
    ];
    let sequential: Vec<Value> = prompts
        .iter()
        .map(|m| request(port, &chat_request(m, 20)).2["choices"][0]["message"]["content"].clone())
        .collect();
    let handles: Vec<_> = prompts
        .iter()
        .map(|m| {
            let raw = chat_request(m, 20);
            std::thread::spawn(move || {
                request(port, &raw).2["choices"][0]["message"]["content"].clone()
            })
        })
        .collect();
    let parallel: Vec<Value> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(parallel, sequential);
    assert_ne!(sequential[0], sequential[1]);
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("rule adapter"), "{log}");
}

#[test]
fn rules_on_or_off_per_request_even_when_decoded_in_one_batch() {
    let Some(dir) = stories260k("serve-rules") else {
        return;
    };
    let (model, tok) = load(&dir);
    // No --adapter: requests decode the plain model unless they ask for the paper's rules.
    let server = start_server(&dir, &[], dir.join("../server.log"));
    let port = server.port;
    let adapter: Arc<dyn ScoreAdjuster> =
        Arc::new(RuleAdapter::paper(RuleSet::all(), &tok).unwrap());
    let max = 100;
    let messages = ["Tell me a story about a dog.", "Who was Lily?"];
    let body = |m: &str, rules: Option<bool>| {
        let mut b = json!({"messages": user(m), "max_tokens": max, "temperature": 0});
        if let Some(r) = rules {
            b["rules"] = json!(r);
        }
        post("/v1/chat/completions", &b.to_string())
    };
    let text = |raw: &str| {
        let (status, _, v) = request(port, raw);
        assert_eq!(status, 200, "{v}");
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Alone, each request's answer is the library's greedy text with or without the adapter.
    let mut cases = Vec::new();
    for m in messages {
        let prompt = tok.encode_prompt(&chat_prompt(m)).unwrap();
        let (_, _, plain) = greedy(&model, &tok, &prompt, max, None);
        let (_, _, ruled) = greedy(&model, &tok, &prompt, max, Some(adapter.clone()));
        assert_ne!(plain, ruled, "the adapter changes {m:?}");
        assert_eq!(text(&body(m, None)), plain, "{m:?} without \"rules\"");
        assert_eq!(text(&body(m, Some(false))), plain, "{m:?} with rules false");
        assert_eq!(text(&body(m, Some(true))), ruled, "{m:?} with rules true");
        cases.push((m, false, plain));
        cases.push((m, true, ruled));
    }
    // Together (one thread each, released at once, so that their sequences share the steps):
    // each is still its single-request answer.
    let barrier = Arc::new(std::sync::Barrier::new(2 * cases.len()));
    let handles: Vec<_> = cases
        .iter()
        .chain(cases.iter())
        .map(|(m, rules, _)| {
            let raw = body(m, Some(*rules));
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let (status, _, v) = request(port, &raw);
                assert_eq!(status, 200, "{v}");
                v["choices"][0]["message"]["content"].clone()
            })
        })
        .collect();
    let together: Vec<Value> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (i, (m, rules, want)) in cases.iter().chain(cases.iter()).enumerate() {
        assert_eq!(together[i], want.as_str(), "{m:?} rules {rules} in a batch");
    }
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("rules off for requests without"), "{log}");
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
    if !python_has_openai() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have the openai client (pip install in .ci/run)"
        );
        eprintln!("SKIPPED serve_bench_checks_concurrent_answers_against_single_ones: python3 -c 'import openai' fails");
        return;
    }
    let Some(dir) = stories260k("serve-bench") else {
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "serve_bench.py failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        std::fs::read_to_string(&server.log).unwrap_or_default()
    );
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
