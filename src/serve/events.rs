//! How a request's worker (a blocking thread: tokenizing, waiting on the scheduler) hands its
//! answer to the async handler: one [`Head`] (a JSON body, an error, or the start of a stream of
//! server-sent events whose chunks follow over a bounded channel).

use super::openai::ApiError;
use axum::body::Bytes;
use serde_json::Value;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// A client that stops reading a stream for this long is dropped (its sequences with it).
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Events buffered between the worker and the connection.
const STREAM_BUFFER: usize = 64;

/// The first thing a worker answers.
pub enum Head {
    Json(Value),
    Error(ApiError),
    /// A `200 text/event-stream`; its chunks come over this channel.
    Stream(mpsc::Receiver<Bytes>),
}

/// The worker's side of one request.
pub struct Reply {
    head: Option<oneshot::Sender<Head>>,
}

impl Reply {
    pub fn new() -> (Reply, oneshot::Receiver<Head>) {
        let (tx, rx) = oneshot::channel();
        (Reply { head: Some(tx) }, rx)
    }

    /// Whether the client has gone before the answer was sent.
    pub fn gone(&self) -> bool {
        self.head.as_ref().is_some_and(|h| h.is_closed())
    }

    /// Sends the head (nothing if it was sent already).
    pub fn send(&mut self, head: Head) {
        if let Some(tx) = self.head.take() {
            let _ = tx.send(head);
        }
    }
}

/// A stream of `data: ...\n\n` events, one chunk each.
pub struct EventStream {
    tx: mpsc::Sender<Bytes>,
}

fn client_left() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the client left")
}

impl EventStream {
    /// Answers the request with a stream.
    pub fn start(reply: &mut Reply) -> io::Result<EventStream> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let head = reply.head.take().ok_or_else(client_left)?;
        head.send(Head::Stream(rx)).map_err(|_| client_left())?;
        Ok(EventStream { tx })
    }

    /// Whether the client has gone.
    pub fn gone(&self) -> bool {
        self.tx.is_closed()
    }

    /// Sends `data: {payload}\n\n`; an error when the client has left or has not read for
    /// [`WRITE_TIMEOUT`].
    pub fn send(&mut self, payload: &str) -> io::Result<()> {
        let mut event = Bytes::from(format!("data: {payload}\n\n"));
        let t0 = Instant::now();
        loop {
            match self.tx.try_send(event) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(client_left()),
                Err(mpsc::error::TrySendError::Full(back)) => {
                    if t0.elapsed() > WRITE_TIMEOUT {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client stopped reading",
                        ));
                    }
                    event = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}

/// The response body of a stream: the chunks as they come, ending when the worker drops its
/// [`EventStream`].
pub struct EventBody(pub mpsc::Receiver<Bytes>);

impl futures_core::Stream for EventBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(Ok))
    }
}
