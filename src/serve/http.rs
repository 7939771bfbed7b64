//! A minimal HTTP/1.1 server side on std::net: request parsing with size limits, persistent
//! connections, `Expect: 100-continue`, fixed-length responses and chunked streams (for
//! server-sent events).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;

/// Request line plus headers.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Request bodies (JSON) beyond this get 413.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

pub struct Request {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed the connection (or went idle) between requests.
    Closed,
    /// A malformed request: answer 400 and close.
    Bad(String),
    /// Head or body over the limits: answer 413 and close.
    TooLarge(String),
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        ReadError::Closed
    }
}

/// Reads one line ending in LF, at most `limit` bytes; None at a clean end of stream.
fn read_line(r: &mut BufReader<TcpStream>, limit: &mut usize) -> Result<Option<String>, ReadError> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(*limit as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if n > *limit || !line.ends_with(b"\n") {
        if n > *limit {
            return Err(ReadError::TooLarge("request head too large".into()));
        }
        return Err(ReadError::Bad("truncated request head".into()));
    }
    *limit -= n;
    while line.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| ReadError::Bad("request head is not UTF-8".into()))
}

/// Reads the next request on a connection. `stream` is used to send `100 Continue`.
pub fn read_request(r: &mut BufReader<TcpStream>) -> Result<Request, ReadError> {
    let mut budget = MAX_HEAD_BYTES;
    // Tolerate blank lines between requests (RFC 9112 §2.2).
    let line = loop {
        match read_line(r, &mut budget)? {
            None => return Err(ReadError::Closed),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad(format!("malformed request line {line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Bad(format!("unsupported protocol {version:?}")));
    }
    let mut headers = Vec::new();
    loop {
        let Some(h) = read_line(r, &mut budget)? else {
            return Err(ReadError::Bad(
                "connection closed inside the headers".into(),
            ));
        };
        if h.is_empty() {
            break;
        }
        let Some((k, v)) = h.split_once(':') else {
            return Err(ReadError::Bad(format!("malformed header {h:?}")));
        };
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut req = Request {
        method: method.to_string(),
        path: target.split('?').next().unwrap_or("").to_string(),
        headers,
        body: Vec::new(),
        keep_alive: true,
    };
    let connection = req.header("connection").map(|c| c.to_ascii_lowercase());
    req.keep_alive = match version {
        "HTTP/1.0" => connection.as_deref() == Some("keep-alive"),
        _ => connection.as_deref() != Some("close"),
    };
    if req
        .header("transfer-encoding")
        .is_some_and(|t| !t.eq_ignore_ascii_case("identity"))
    {
        return Err(ReadError::Bad(
            "chunked request bodies are not supported; send Content-Length".into(),
        ));
    }
    let length = match req.header("content-length") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| ReadError::Bad(format!("invalid Content-Length {v:?}")))?,
    };
    if length > MAX_BODY_BYTES {
        return Err(ReadError::TooLarge(format!(
            "request body of {length} bytes is over the limit of {MAX_BODY_BYTES}"
        )));
    }
    if length > 0
        && req
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        let _ = r.get_mut().write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    req.body = vec![0; length];
    r.read_exact(&mut req.body)
        .map_err(|_| ReadError::Bad("connection closed inside the body".into()))?;
    Ok(req)
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes a complete response with a Content-Length.
pub fn write_response(
    w: &mut impl Write,
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    for (k, v) in extra_headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// A `200 text/event-stream` response sent in chunks: one `data: ...\n\n` event per call.
pub struct EventStream<'a, W: Write> {
    w: &'a mut W,
}

impl<'a, W: Write> EventStream<'a, W> {
    pub fn start(w: &'a mut W) -> io::Result<EventStream<'a, W>> {
        w.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
              Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
        )?;
        w.flush()?;
        Ok(EventStream { w })
    }

    /// Sends `data: {payload}\n\n` as one chunk.
    pub fn send(&mut self, payload: &str) -> io::Result<()> {
        let event = format!("data: {payload}\n\n");
        write!(self.w, "{:x}\r\n{event}\r\n", event.len())?;
        self.w.flush()
    }

    /// The terminating zero-length chunk.
    pub fn end(self) -> io::Result<()> {
        self.w.write_all(b"0\r\n\r\n")?;
        self.w.flush()
    }
}
