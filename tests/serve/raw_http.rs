//! Raw HTTP against a server started with `--adapter rules`: the adapter's greedy answer and a
//! request turning it off, keep-alive, OpenAI-shaped errors with the right status (and hyper's
//! own 400 for what it cannot parse), stop strings streamed or not, and concurrent requests
//! answered as one after another.

use super::harness::{greedy, load, user};
use super::http_client::{chat_request, request, sse};
use crate::common;
use crate::common::serve::{exchange, post, start_server};
use implicit::adapter::{RuleAdapter, RuleSet};
use implicit::generate::ScoreAdjuster;
use implicit::io::tokenizer::chat_prompt;
use serde_json::{json, Value};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn raw_http_errors_keep_alive_adapter_and_concurrency() {
    let Some(dir) = common::stories260k("serve-raw") else {
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
