//! What these tests add to the HTTP client of tests/common/serve.rs: chunked server-sent
//! events, chat requests, and a read timeout long enough for a debug build's generation.

use super::harness::user;
use crate::common::serve::{self, post};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::Duration;

const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// One request on a new connection: (status, headers, body as JSON or Null).
pub(crate) fn request(port: u16, raw: &str) -> (u16, String, Value) {
    serve::request(port, raw, READ_TIMEOUT)
}

/// The events of a streamed response (`data: ` stripped), the connection closed after it.
pub(crate) fn sse(port: u16, raw: &str) -> Vec<String> {
    let raw = raw.replacen("Host: x\r\n", "Host: x\r\nConnection: close\r\n", 1);
    let mut s = serve::connect(port, READ_TIMEOUT);
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

pub(crate) fn chat_request(message: &str, max_tokens: usize) -> String {
    let body = json!({"model": "stories", "messages": user(message), "max_tokens": max_tokens, "temperature": 0});
    post("/v1/chat/completions", &body.to_string())
}
