//! A minimal HTTP/1.1 client over a `TcpStream`, so that the tests see exactly what the server
//! sends: status line, headers, Content-Length bodies, chunked server-sent events.

use super::harness::user;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One HTTP exchange on `stream`: (status, headers, body), reading the body by Content-Length.
pub(crate) fn exchange(stream: &mut TcpStream, request: &str) -> (u16, String, String) {
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

pub(crate) fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

pub(crate) fn request(port: u16, raw: &str) -> (u16, String, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let (status, head, body) = exchange(&mut s, raw);
    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
    (status, head, json)
}

/// The events of a streamed response (`data: ` stripped), the connection closed after it.
pub(crate) fn sse(port: u16, raw: &str) -> Vec<String> {
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

pub(crate) fn chat_request(message: &str, max_tokens: usize) -> String {
    let body = json!({"model": "stories", "messages": user(message), "max_tokens": max_tokens, "temperature": 0});
    post("/v1/chat/completions", &body.to_string())
}
