//! `implicit serve`: an OpenAI-compatible HTTP server over a model, on the CPU or the GPU
//! (`--device`), each request through the paper's rule adapter or not (the body's `rules`).
//!
//! Endpoints: `POST /v1/chat/completions` (messages rendered in the model's own chat template,
//! or the paper's Tulu format: `--chat-format`, see `io::chat_template`),
//! `POST /v1/completions` (raw prompts), `GET /v1/models`, `GET /health`. Both generation
//! endpoints take `max_tokens`, `temperature` (0 = greedy; OpenAI's default is 1), `top_p`,
//! `seed`, `stop`, `stream` (server-sent events ending in `data: [DONE]`, with
//! `stream_options.include_usage`) and logprobs (chat: `logprobs: true, top_logprobs: k`;
//! completions: `logprobs: k`), and report token usage; `presence_penalty`,
//! `frequency_penalty` and `logit_bias` only at their neutral values; and this server's own
//! `rules` (true: decode through the rule adapter, false: the plain model; absent: on when the
//! server was started with `--adapter`, else off). Bad requests get
//! OpenAI-style JSON errors naming the field (400, 404 also for another `model`, 405, 408,
//! 413, 429/503 when full; 500 when decoding fails).
//!
//! HTTP/1.1 is hyper's (keep-alive, a header read timeout, duplicate Content-Length refused)
//! with axum routing, on tokio. Limits ([`Limits`]): the body size (checked before anything is
//! parsed or tokenized), the time to send headers and body, open connections (more get 503)
//! and generation requests admitted at once, running or queued (more get 429 with
//! Retry-After). A prompt with more bytes of text than the model's context can hold (see
//! `openai::max_prompt_bytes`) is refused (400 `context_length_exceeded`) before tokenizing. SIGINT/SIGTERM
//! stop accepting, let in-flight requests finish (up to [`SHUTDOWN_GRACE`]) and return.
//!
//! Each request's tokenizing and waiting runs on a blocking worker thread; every request's
//! sequences are decoded by one scheduler thread that batches all concurrent sequences into
//! one forward per step, each with its own KV cache, adapter state and sampler (see
//! `scheduler`): a request arriving while others decode joins at the next step (its prompt's
//! prefill shares that step, within `--prefill-tokens` a step), one that ends leaves.

pub mod completion;
pub mod events;
pub mod openai;
pub mod scheduler;

use crate::adapter::{AdapterSpec, RuleAdapter, RuleSet};
use crate::backend::Device;
use crate::error::{Context, Result};
use crate::generate::vocab::VocabText;
use crate::generate::ScoreAdjuster;
use crate::io::chat_template::{ChatFormat, ChatTemplate};
use crate::io::tokenizer::Tokenizer;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State as AxumState};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use completion::{Answer, Ctx};
use events::{EventBody, Head, Reply};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use openai::ApiError;
use scheduler::Scheduler;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

/// After SIGINT/SIGTERM, how long in-flight requests may take to finish before the server
/// returns anyway (their sequences stop with the process).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

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

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub model: PathBuf,
    /// Where the forward pass runs.
    pub device: Device,
    /// "rules" (the paper's adapter) or a rules file, on for requests that do not say
    /// otherwise; None: requests decode the plain model unless they ask for `"rules": true`
    /// (then the paper's adapter).
    pub adapter: Option<String>,
    pub rules: RuleSet,
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// Sequences decoded together at most.
    pub max_batch: usize,
    /// Prompt tokens of joining requests prefilled in one step while others decode (at least
    /// one request joins per step whatever its length); see `scheduler::joining`.
    pub prefill_tokens: usize,
    /// The model's name in responses (default: the model folder's name).
    pub model_name: Option<String>,
    /// How chat messages become a prompt: the model's own template or the paper's Tulu format.
    pub chat_format: ChatFormat,
    pub limits: Limits,
}

struct State {
    tok: Tokenizer,
    vocab: VocabText,
    /// The rule adapter requests may decode through, or why there is none (a request asking for
    /// it gets a 400 saying so).
    adapter: std::result::Result<Arc<dyn ScoreAdjuster>, String>,
    /// Whether a request that does not set `rules` decodes through the adapter.
    rules_by_default: bool,
    scheduler: Scheduler,
    model_id: String,
    vocab_size: usize,
    context_len: usize,
    /// Prompt text over this many bytes cannot fit the context: refused before tokenizing.
    max_prompt_bytes: usize,
    chat: ChatTemplate,
    started: u64,
    requests: AtomicU64,
    /// Generation requests admitted and not yet finished.
    admitted: AtomicUsize,
    limits: Limits,
}

/// A bound server, ready to [`Server::run`].
pub struct Server {
    listener: std::net::TcpListener,
    state: Arc<State>,
    description: String,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Server {
    /// Opens the device, loads the model (and adapter), starts the decoding thread and binds
    /// the address.
    pub fn bind(cfg: &ServeConfig) -> Result<Server> {
        let (scheduler, loaded) = Scheduler::start(
            cfg.model.clone(),
            cfg.device,
            cfg.max_batch,
            cfg.prefill_tokens,
        )?;
        let config = loaded.config;
        let tok = Tokenizer::load(&cfg.model, &config)?;
        let chat = ChatTemplate::load(&cfg.model, &tok, cfg.chat_format)?;
        // The adapter asked for must load; without one, the paper's is there for requests
        // that ask, and a vocabulary it cannot be built for only refuses those requests.
        let adapter = match &cfg.adapter {
            Some(name) => Ok(RuleAdapter::new(
                &AdapterSpec::load(name)?,
                cfg.rules,
                &tok,
            )?),
            None => RuleAdapter::paper(cfg.rules, &tok)
                .map_err(|e| format!("this server has no rule adapter: {e}")),
        };
        let mut description = format!(
            "{} ({} parameters, context {}) on {}",
            cfg.model.display(),
            config.num_parameters(),
            config.max_position_embeddings,
            loaded.device
        );
        description.push_str(&format!("\n{}", chat.describe()));
        let default_rules = cfg.adapter.is_some();
        match &adapter {
            Ok(a) => description.push_str(&format!(
                "\n{}\nrules {} for requests without \"rules\" (each request may say \"rules\": \
                 true or false)",
                a.describe(),
                if default_rules { "on" } else { "off" }
            )),
            Err(e) => description.push_str(&format!("\n{e}")),
        }
        if let Ok(a) = &adapter {
            if !a.unresolved().is_empty() {
                description.push_str(&format!(
                    "\nwarning: no single token in this vocabulary for {} (skipped)",
                    a.unresolved().join(", ")
                ));
            }
        }
        // The longest vocabulary string bounds the text one token stands for.
        let longest_token = (0..tok.vocab_size().max(config.vocab_size) as u32)
            .filter_map(|id| tok.id_to_token(id))
            .map(|t| t.len())
            .max()
            .unwrap_or(1);
        let max_prompt_bytes =
            openai::max_prompt_bytes(config.max_position_embeddings, longest_token);
        let l = cfg.limits;
        description.push_str(&format!(
            "\nlimits: bodies up to {} bytes, {}s to send headers and body, {} connections, {} \
             generation requests at once; prompts up to {max_prompt_bytes} bytes of text (the \
             context's {} tokens of at most {longest_token} bytes, x4)",
            l.max_body_bytes,
            l.read_timeout.as_secs_f64(),
            l.max_connections,
            l.max_requests,
            config.max_position_embeddings
        ));
        let model_id = cfg.model_name.clone().unwrap_or_else(|| {
            std::fs::canonicalize(&cfg.model)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "model".into())
        });
        let listener = std::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
            .with_context(|| format!("cannot listen on {}:{}", cfg.host, cfg.port))?;
        listener.set_nonblocking(true).context("listening socket")?;
        let state = State {
            scheduler,
            vocab: VocabText::detect(&tok),
            vocab_size: config.vocab_size,
            context_len: config.max_position_embeddings,
            max_prompt_bytes,
            chat,
            adapter: adapter.map(|a| Arc::new(a) as Arc<dyn ScoreAdjuster>),
            rules_by_default: default_rules,
            tok,
            model_id,
            started: now_secs(),
            requests: AtomicU64::new(0),
            admitted: AtomicUsize::new(0),
            limits: cfg.limits,
        };
        Ok(Server {
            listener,
            state: Arc::new(state),
            description,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().context("listening socket")
    }

    /// What is served (model, device, adapter, limits), for the start-up message.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Serves until SIGINT or SIGTERM, then lets in-flight requests finish (up to
    /// [`SHUTDOWN_GRACE`]) and returns.
    pub fn run(self) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("implicit-http")
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(serve(self.listener, self.state))
    }
}

/// Resolves at the first SIGINT or SIGTERM.
async fn shutdown_signal() -> Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

async fn serve(listener: std::net::TcpListener, state: Arc<State>) -> Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener).context("listening socket")?;
    let limits = state.limits;
    let app = Router::new().fallback(dispatch).with_state(state);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let which = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    if let Ok(std_stream) = stream.into_std() {
                        let max = limits.max_connections;
                        tokio::task::spawn_blocking(move || refuse(std_stream, max));
                    }
                    continue;
                };
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.read_timeout)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(permit);
                });
            }
            which = &mut signal => break which?,
        }
    };
    drop(listener);
    eprintln!("{which}: no new connections; waiting for in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => eprintln!("all requests finished; exiting"),
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => eprintln!(
            "requests still running after {}s; exiting",
            SHUTDOWN_GRACE.as_secs()
        ),
    }
    Ok(())
}

/// Answers a connection over the limit with 503 (read what it sent first, briefly, so that
/// closing does not reset the connection before the answer is read). Blocking socket calls with
/// short timeouts, on a worker thread.
fn refuse(stream: std::net::TcpStream, max: usize) {
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

fn json_response(status: u16, body: &Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(err: &ApiError) -> Response {
    let mut r = json_response(err.status, &err.to_json());
    if matches!(err.status, 429 | 503) {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// Every request: routed by method and path (a trailing slash ignored), logged on stderr.
async fn dispatch(AxumState(state): AxumState<Arc<State>>, req: Request) -> Response {
    let t0 = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_string();
    let response = route(&state, req, &method, &path).await;
    eprintln!(
        "{method} {path} {} {:.2}s",
        response.status().as_u16(),
        t0.elapsed().as_secs_f64()
    );
    response
}

async fn route(state: &Arc<State>, req: Request, method: &Method, path: &str) -> Response {
    let model_json = |id: &str| json!({"id": id, "object": "model", "created": state.started, "owned_by": "implicit"});
    let result: std::result::Result<Value, ApiError> = match (method.as_str(), path) {
        ("GET", "/v1/models") => {
            Ok(json!({"object": "list", "data": [model_json(&state.model_id)]}))
        }
        ("GET", p) if p.starts_with("/v1/models/") => {
            let id = &p["/v1/models/".len()..];
            if id == state.model_id {
                Ok(model_json(id))
            } else {
                Err(
                    ApiError::status(404, format!("The model '{id}' does not exist"))
                        .with_code("model_not_found"),
                )
            }
        }
        ("GET", "/health") | ("GET", "") => Ok(json!({"status": "ok", "model": state.model_id})),
        ("POST", "/v1/chat/completions") | ("POST", "/v1/completions") => {
            return generate(state.clone(), req, path == "/v1/chat/completions").await;
        }
        (_, "/v1/chat/completions") | (_, "/v1/completions") => Err(ApiError::status(
            405,
            format!("{method} is not allowed on {path}; use POST"),
        )),
        (_, "/v1/models") => Err(ApiError::status(
            405,
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(ApiError::status(
            404,
            format!("no such endpoint: {method} {}", req.uri().path()),
        )),
    };
    match result {
        Ok(v) => json_response(200, &v),
        Err(e) => {
            let mut r = error_response(&e);
            if e.status == 405 {
                let allow = if path.starts_with("/v1/models") {
                    "GET"
                } else {
                    "POST"
                };
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            r
        }
    }
}

/// A generation request admitted under [`Limits::max_requests`]; released when dropped.
struct Admission(Arc<State>);

impl Admission {
    fn new(state: &Arc<State>) -> Option<Admission> {
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
async fn read_body(limits: &Limits, req: Request) -> std::result::Result<Bytes, ApiError> {
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

async fn generate(state: Arc<State>, req: Request, chat: bool) -> Response {
    let Some(admission) = Admission::new(&state) else {
        return error_response(&ApiError::busy(
            429,
            format!(
                "{} generation requests are already running or queued (--max-requests); retry \
                 later",
                state.limits.max_requests
            ),
        ));
    };
    let bytes = match read_body(&state.limits, req).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let body: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            let err = ApiError::invalid(format!("the body is not valid JSON: {e}"), None);
            return error_response(&err);
        }
    };
    drop(bytes);
    if let Err(e) = openai::check_request(&body, &state.model_id)
        .and_then(|()| openai::check_prompt_bytes(&body, state.max_prompt_bytes, state.context_len))
    {
        return error_response(&e);
    }
    // Tokenizing and waiting on the scheduler block: a worker thread does them.
    let (mut reply, head) = Reply::new();
    let worker = tokio::task::spawn_blocking(move || {
        let _admission = admission;
        answer(&state, &body, chat, &mut reply);
    });
    match head.await {
        Ok(Head::Json(v)) => json_response(200, &v),
        Ok(Head::Error(e)) => error_response(&e),
        Ok(Head::Stream(chunks)) => {
            let mut r = Response::new(Body::from_stream(EventBody(chunks)));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        Err(_) => {
            let why = match worker.await {
                Err(e) if e.is_panic() => "the request's worker panicked",
                _ => "the request's worker ended without an answer",
            };
            error_response(&ApiError::status(500, why))
        }
    }
}

/// Validates, tokenizes and runs a generation request (on a worker thread), answering through
/// `reply`.
fn answer(state: &State, body: &Value, chat: bool, reply: &mut Reply) {
    let parsed = if chat {
        openai::parse_chat(body, |turns| state.chat.encode(&state.tok, turns))
    } else {
        openai::parse_completion(body)
    };
    let params = match parsed {
        Ok(p) => p,
        Err(e) => return reply.send(Head::Error(e)),
    };
    let adjuster = match (
        params.rules.unwrap_or(state.rules_by_default),
        &state.adapter,
    ) {
        (false, _) => None,
        (true, Ok(a)) => Some(a.clone()),
        (true, Err(why)) => {
            return reply.send(Head::Error(ApiError::invalid(why.clone(), Some("rules"))));
        }
    };
    let n = state.requests.fetch_add(1, Ordering::Relaxed);
    let created = now_secs();
    let ctx = Ctx {
        tok: &state.tok,
        vocab: &state.vocab,
        model_id: &state.model_id,
        vocab_size: state.vocab_size,
        context_len: state.context_len,
        scheduler: &state.scheduler,
        adjuster,
        id: format!(
            "{}-{created:x}{n:06x}",
            if chat { "chatcmpl" } else { "cmpl" }
        ),
        created,
        default_seed: created ^ n.wrapping_mul(0x9E37_79B9),
    };
    match completion::run(&ctx, &params, reply) {
        Ok(Answer::Json(v)) => reply.send(Head::Json(v)),
        Ok(Answer::Streamed) => {}
        Err(e) => reply.send(Head::Error(e)),
    }
}
