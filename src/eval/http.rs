//! A minimal HTTP/1.1 client over `std::net::TcpStream`, enough to POST JSON to an
//! OpenAI-compatible server: `http://` only (no TLS), `Connection: close`, responses framed by
//! Content-Length, chunked transfer encoding or the end of the stream.

use crate::bail;
use crate::error::{Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// An `http://host[:port][/path]` URL, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" for the root).
    pub path: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url> {
        let Some(rest) = url.strip_prefix("http://") else {
            if url.starts_with("https://") {
                bail!("{url}: https is not supported (plain http:// only; put a local proxy in front)");
            }
            bail!("{url}: not an http:// URL");
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            bail!("{url}: no host");
        }
        // [v6addr]:port, host:port or host.
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((h, after)) = v6.split_once(']') else {
                bail!("{url}: unclosed [ in the host");
            };
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .with_context(|| format!("{url}: bad port {p:?}"))?,
            None => 80,
        };
        Ok(Url {
            host,
            port,
            path: path.trim_end_matches('/').to_string(),
        })
    }
}

/// A response: status code and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// POSTs `body` (JSON) to `url` + `path` and returns the response, whatever its status.
pub fn post_json(
    url: &Url,
    path: &str,
    body: &[u8],
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<Response> {
    let target = format!("{}:{}", url.host, url.port);
    let addr = target
        .to_socket_addrs()
        .with_context(|| format!("{target}: cannot resolve"))?
        .next()
        .with_context(|| format!("{target}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("{target}: cannot connect"))?;
    stream.set_read_timeout(Some(timeout)).context("socket")?;
    stream.set_write_timeout(Some(timeout)).context("socket")?;
    let host = if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let mut head = format!(
        "POST {}{} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Accept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        url.path,
        path,
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(body))
        .and_then(|_| stream.flush())
        .with_context(|| format!("{target}: cannot send the request"))?;
    read_response(BufReader::new(stream)).with_context(|| format!("{target}: bad response"))
}

/// Parses a status line, headers and body from `r`.
pub fn read_response(mut r: impl BufRead) -> Result<Response> {
    let mut line = String::new();
    r.read_line(&mut line).context("reading the status line")?;
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/") {
        bail!("not an HTTP response: {:?}", line.trim_end());
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {:?}", line.trim_end()))?;
    let mut content_length = None;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line).context("reading headers")? == 0 {
            bail!("connection closed inside the headers");
        }
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                content_length = Some(
                    value
                        .parse::<usize>()
                        .with_context(|| format!("bad Content-Length {value:?}"))?,
                );
            } else if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).context("reading a chunk size")?;
            let size_text = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text, 16)
                .with_context(|| format!("bad chunk size {size_text:?}"))?;
            if size == 0 {
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])
                .context("reading a chunk")?;
            line.clear();
            r.read_line(&mut line).context("reading a chunk end")?;
        }
    } else if let Some(n) = content_length {
        body.resize(n, 0);
        r.read_exact(&mut body).context("reading the body")?;
    } else {
        r.read_to_end(&mut body).context("reading the body")?;
    }
    Ok(Response { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8080, "")
        );
        let u = Url::parse("http://example.org/api/v1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("example.org", 80, "/api/v1")
        );
        let u = Url::parse("http://[::1]:9000").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9000));
        assert!(Url::parse("https://api.openai.com")
            .unwrap_err()
            .to_string()
            .contains("https is not supported"));
        assert!(Url::parse("http://h:port").is_err());
    }

    #[test]
    fn responses() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello trailing";
        let r = read_response(&raw[..]).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let raw = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let r = read_response(&raw[..]).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"abcde"[..]));
        let raw = b"HTTP/1.0 500 Oops\r\n\r\nuntil close";
        assert_eq!(read_response(&raw[..]).unwrap().body, b"until close");
        assert!(read_response(&b"garbage\r\n"[..]).is_err());
    }
}
