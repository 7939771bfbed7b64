//! What one client may cost the server ([`Limits`]) and where each limit is enforced: a
//! connection over `max_connections` is answered 503 ([`refuse`]), a generation request over
//! `max_requests` is not admitted (429, [`Admission`]), and a body over `max_body_bytes` or
//! slower than `read_timeout` is refused (413, 408: [`read_body`]).

use super::openai::ApiError;
use super::server::State;
use axum::body::Bytes;
use axum::extract::Request;
use axum::http::header;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// What one client may cost the server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Request bodies over this many bytes get 413 before anything is parsed or tokenized.
    pub max_body_bytes: usize,
    /// Time to send the request headers, and again the body; slower clients are dropped (408
    /// for the body).
    pub read_timeout: Duration,
    /// Open connections at most; more are answered 503 and closed.
    pub max_connections: usize,
    /// Generation requests admitted at once (decoding or waiting for the scheduler); more get
    /// 429 with Retry-After.
    pub max_requests: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body_bytes: 1 << 20,
            read_timeout: Duration::from_secs(30),
            max_connections: 256,
            max_requests: 64,
        }
    }
}

/// Answers a connection over the limit with 503 (read what it sent first, briefly, so that
/// closing does not reset the connection before the answer is read). Blocking socket calls with
/// short timeouts, on a worker thread.
pub(super) fn refuse(stream: std::net::TcpStream, max: usize) {
    use std::io::{Read, Write};
    let mut stream = stream;
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = stream.read(&mut [0u8; 8192]);
    let err = ApiError::busy(
        503,
        format!("the server has {max} connections open; retry later"),
    );
    let body = err.to_json().to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: \
         {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(format!("{head}{body}").as_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// A generation request admitted under [`Limits::max_requests`]; released when dropped.
pub(super) struct Admission(Arc<State>);

impl Admission {
    pub(super) fn new(state: &Arc<State>) -> Option<Admission> {
        let max = state.limits.max_requests;
        state
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Admission(state.clone()))
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The request's body, within the size and time limits (413, 408 or 400 otherwise). A
/// Content-Length over the limit is refused before any of the body is read.
pub(super) async fn read_body(
    limits: &Limits,
    req: Request,
) -> std::result::Result<Bytes, ApiError> {
    let too_large = |n: &str| {
        ApiError::status(
            413,
            format!(
                "the request body of {n} bytes is over the limit of {} (--max-body-bytes)",
                limits.max_body_bytes
            ),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > limits.max_body_bytes as u64) {
        return Err(too_large(&n.to_string()));
    }
    let read = axum::body::to_bytes(req.into_body(), limits.max_body_bytes);
    match tokio::time::timeout(limits.read_timeout, read).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if is_length_limit(&e) => Err(too_large("more than that")),
        Ok(Err(e)) => Err(ApiError::invalid(
            format!("cannot read the request body: {e}"),
            None,
        )),
        Err(_) => Err(ApiError::status(
            408,
            format!(
                "the request body did not arrive within {}s",
                limits.read_timeout.as_secs_f64()
            ),
        )),
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.to_string().contains("length limit exceeded") {
            return true;
        }
        source = s.source();
    }
    false
}
