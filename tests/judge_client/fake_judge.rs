//! A fake OpenAI-compatible judge on 127.0.0.1 (plain or TLS) whose responses each test
//! writes byte by byte, and the pairs it judges.

use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A request as the fake judge read it.
#[derive(Clone, Debug)]
pub struct Request {
    pub line: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub fn read_request(r: &mut impl BufRead) -> io::Result<Request> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut headers = Vec::new();
    for _ in 0..100 {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length.min(1 << 24)];
    r.read_exact(&mut body)?;
    let body = serde_json::from_slice(&body).map_err(io::Error::other)?;
    Ok(Request {
        line,
        headers,
        body,
    })
}

/// One request seen: it, when it arrived and when its response was written.
pub struct Seen {
    pub request: Request,
    pub arrived: Instant,
    pub answered: Instant,
}

/// What the fake judge writes for request `n` (counted from 0).
pub type Respond = dyn Fn(usize, &Request, &mut dyn Write) -> io::Result<()> + Send + Sync;

/// A fake judge on 127.0.0.1 (with TLS when `tls` is given), serving at most `connections`
/// connections, one request each.
pub fn fake_judge(
    connections: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
    respond: Box<Respond>,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let Ok(tcp) = stream else { continue };
            tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let served = match &tls {
                Some(config) => {
                    let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                    let mut s = rustls::StreamOwned::new(conn, tcp);
                    let r = serve_one(&mut s, &*respond, &log);
                    s.conn.send_close_notify();
                    let _ = s.flush();
                    r
                }
                None => serve_one(&mut &tcp, &*respond, &log),
            };
            // A client that hung up or refused the certificate ends only its connection.
            let _ = served;
        }
    });
    (url, seen)
}

pub fn serve_one<S: Read + Write>(
    stream: &mut S,
    respond: &Respond,
    log: &Mutex<Vec<Seen>>,
) -> io::Result<()> {
    let mut reader = BufReader::new(&mut *stream);
    let request = read_request(&mut reader)?;
    drop(reader);
    let arrived = Instant::now();
    let n = log.lock().unwrap().len();
    let result = respond(n, &request, stream).and_then(|_| stream.flush());
    log.lock().unwrap().push(Seen {
        request,
        arrived,
        answered: Instant::now(),
    });
    result
}

/// The pair's number and whether the model's output sits in the "m" slot, from the prompt.
pub fn pair_of(req: &Request) -> (usize, bool) {
    let user = req.body["messages"][1]["content"].as_str().unwrap();
    let instruction = user.split("\"instruction\": \"\"\"").nth(1).unwrap();
    let number = instruction.split("\"\"\"").next().unwrap();
    let number = number.trim_start_matches("question ").parse().unwrap();
    let m_slot = user.split("\"output\": \"\"\"").nth(1).unwrap();
    (number, m_slot.starts_with("MODEL"))
}

/// The probability the judge gives the model's output for pair `i`.
pub fn p_model(i: usize) -> f64 {
    0.3 + 0.05 * i as f64
}

/// A chat completion with top logprobs for "m" and "M" (the model's output winning with
/// [`p_model`] whichever slot it is in).
pub fn completion(req: &Request) -> Vec<u8> {
    let (i, model_in_m) = pair_of(req);
    let p_m = if model_in_m {
        p_model(i)
    } else {
        1.0 - p_model(i)
    };
    let top =
        json!([{"token": "m", "logprob": p_m.ln()}, {"token": "M", "logprob": (1.0 - p_m).ln()}]);
    serde_json::to_vec(&json!({
        "id": "fake", "object": "chat.completion", "model": req.body["model"],
        "choices": [{"index": 0, "finish_reason": "length",
            "message": {"role": "assistant", "content": "m"},
            "logprobs": {"content": [{"token": "m", "logprob": -0.1, "top_logprobs": top}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}
    }))
    .unwrap()
}

pub fn write_response(
    w: &mut dyn Write,
    status: &str,
    headers: &str,
    body: &[u8],
) -> io::Result<()> {
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n{headers}\r\n",
        body.len()
    )?;
    w.write_all(body)
}

pub fn answer(_: usize, req: &Request, w: &mut dyn Write) -> io::Result<()> {
    write_response(w, "200 OK", "", &completion(req))
}

/// Writes `head`, then spaces until the client hangs up or 256 MiB went out; records whether
/// the client hung up first.
pub fn endless(head: &'static str, hung_up: Arc<AtomicBool>) -> Box<Respond> {
    Box::new(move |_, _, w| {
        w.write_all(head.as_bytes())?;
        let block = vec![b' '; 1 << 20];
        for _ in 0..256 {
            if w.write_all(&block).is_err() {
                hung_up.store(true, Ordering::SeqCst);
                break;
            }
        }
        Ok(())
    })
}

/// A self-signed certificate for 127.0.0.1: (its PEM, a rustls server config serving it).
pub fn self_signed() -> (String, Arc<rustls::ServerConfig>) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
    // The crypto provider is ring's, the only one these builds enable.
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    (cert.pem(), Arc::new(config))
}
