//! `implicit serve` on a free port of 127.0.0.1 (killed when dropped) and a minimal HTTP/1.1
//! client over a `TcpStream`, so that the tests see exactly what the server sends. Shared by the
//! `serve` and `serve_limits` test binaries.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The server process; killed when dropped, so also when a test fails.
pub struct ServerGuard {
    pub child: Child,
    pub port: u16,
    /// The server's stderr.
    pub log: PathBuf,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `implicit serve --model model --port 0 extra…` with its stderr in `log`, and waits for
/// the first stdout line, which names the port.
pub fn start_server(model: &Path, extra: &[&str], log: PathBuf) -> ServerGuard {
    let mut child = Command::new(super::implicit_bin())
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

/// A connection to the server that gives up reading after `read_timeout`.
pub fn connect(port: u16, read_timeout: Duration) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(read_timeout)).unwrap();
    stream
}

/// Reads one response: (status, head, body by Content-Length).
pub fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
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
    assert!(head.len() > 12, "no response head: {head:?}");
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

/// One HTTP exchange on `stream`: sends `request`, reads the response as `read_response` does.
pub fn exchange(stream: &mut TcpStream, request: &str) -> (u16, String, String) {
    stream.write_all(request.as_bytes()).unwrap();
    read_response(stream)
}

/// One request on a new connection: (status, head, body as JSON or Null).
pub fn request(port: u16, raw: &str, read_timeout: Duration) -> (u16, String, Value) {
    let mut stream = connect(port, read_timeout);
    let (status, head, body) = exchange(&mut stream, raw);
    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
    (status, head, json)
}

/// A POST of a JSON `body` to `path`.
pub fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}
