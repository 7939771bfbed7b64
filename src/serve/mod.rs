//! `implicit serve`: an OpenAI-compatible HTTP server over a model, optionally through the
//! paper's rule adapter.
//!
//! Endpoints: `POST /v1/chat/completions` (messages rendered in the model's own chat template,
//! or the paper's Tulu format: `--chat-format`, see `io::chat_template`),
//! `POST /v1/completions` (raw prompts), `GET /v1/models`, `GET /health`. Both generation
//! endpoints take `max_tokens`, `temperature` (0 = greedy; OpenAI's default is 1), `top_p`,
//! `seed`, `stop`, `stream` (server-sent events ending in `data: [DONE]`, with
//! `stream_options.include_usage`) and logprobs (chat: `logprobs: true, top_logprobs: k`;
//! completions: `logprobs: k`), and report token usage. Bad requests get OpenAI-style JSON
//! errors (400, 404, 405, 413; 500 when decoding fails).
//!
//! Each connection has its own thread; every request's sequences are decoded by one scheduler
//! thread that batches all concurrent sequences into one forward per step, each with its own
//! KV cache (see `scheduler`).

pub mod completion;
pub mod http;
pub mod openai;
pub mod scheduler;

use crate::adapter::{AdapterSpec, RuleAdapter, RuleSet};
use crate::error::{Context, Result};
use crate::generate::vocab::VocabText;
use crate::generate::ScoreAdjuster;
use crate::io::chat_template::{ChatFormat, ChatTemplate};
use crate::io::tokenizer::Tokenizer;
use crate::model::Transformer;
use completion::{Answer, Ctx};
use http::{read_request, write_response, ReadError, Request};
use openai::ApiError;
use scheduler::Scheduler;
use serde_json::{json, Value};
use std::io::BufReader;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long an idle keep-alive connection is kept open.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A client that stops reading a response for this long is dropped (its sequences with it).
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub model: PathBuf,
    /// "rules" (the paper's adapter) or a rules file; None: the plain model.
    pub adapter: Option<String>,
    pub rules: RuleSet,
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// Sequences decoded together at most.
    pub max_batch: usize,
    /// The model's name in responses (default: the model folder's name).
    pub model_name: Option<String>,
    /// How chat messages become a prompt: the model's own template or the paper's Tulu format.
    pub chat_format: ChatFormat,
}

struct State {
    model: Arc<Transformer>,
    tok: Tokenizer,
    vocab: VocabText,
    adjuster: Option<Arc<dyn ScoreAdjuster>>,
    scheduler: Scheduler,
    model_id: String,
    chat: ChatTemplate,
    started: u64,
    requests: AtomicU64,
}

/// A bound server, ready to [`Server::run`].
pub struct Server {
    listener: TcpListener,
    state: Arc<State>,
    description: String,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Server {
    /// Loads the model (and adapter), starts the decoding thread and binds the address.
    pub fn bind(cfg: &ServeConfig) -> Result<Server> {
        let model = Arc::new(Transformer::load(&cfg.model)?);
        let tok = Tokenizer::load(&cfg.model, &model.config)?;
        let chat = ChatTemplate::load(&cfg.model, &tok, cfg.chat_format)?;
        let adapter = match &cfg.adapter {
            Some(name) => Some(RuleAdapter::new(
                &AdapterSpec::load(name)?,
                cfg.rules,
                &tok,
            )?),
            None => None,
        };
        let mut description = format!(
            "{} ({} parameters, context {})",
            cfg.model.display(),
            model.config.num_parameters(),
            model.config.max_position_embeddings
        );
        description.push_str(&format!("\n{}", chat.describe()));
        if let Some(a) = &adapter {
            description.push_str(&format!("\n{}", a.describe()));
            if !a.unresolved().is_empty() {
                description.push_str(&format!(
                    "\nwarning: no single token in this vocabulary for {} (skipped)",
                    a.unresolved().join(", ")
                ));
            }
        }
        let model_id = cfg.model_name.clone().unwrap_or_else(|| {
            std::fs::canonicalize(&cfg.model)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "model".into())
        });
        let listener = TcpListener::bind((cfg.host.as_str(), cfg.port))
            .with_context(|| format!("cannot listen on {}:{}", cfg.host, cfg.port))?;
        let state = State {
            scheduler: Scheduler::start(model.clone(), cfg.max_batch)?,
            vocab: VocabText::detect(&tok),
            chat,
            adjuster: adapter.map(|a| Arc::new(a) as Arc<dyn ScoreAdjuster>),
            model,
            tok,
            model_id,
            started: now_secs(),
            requests: AtomicU64::new(0),
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

    /// What is served (model, adapter), for the start-up message.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Accepts connections forever, one thread each.
    pub fn run(self) -> Result<()> {
        for conn in self.listener.incoming() {
            let Ok(stream) = conn else { continue };
            let state = self.state.clone();
            let spawned = std::thread::Builder::new()
                .name("implicit-conn".into())
                .spawn(move || serve_connection(&state, stream));
            if let Err(e) = spawned {
                eprintln!("cannot start a connection thread: {e}");
            }
        }
        Ok(())
    }
}

fn serve_connection(state: &State, stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    loop {
        let req = match read_request(&mut reader) {
            Ok(req) => req,
            Err(ReadError::Closed) => return,
            Err(ReadError::Bad(m)) => {
                let _ = send_error(&mut writer, &ApiError::status(400, m), false);
                return;
            }
            Err(ReadError::TooLarge(m)) => {
                let _ = send_error(&mut writer, &ApiError::status(413, m), false);
                return;
            }
        };
        let t0 = Instant::now();
        let (status, ok) = handle(state, &req, &mut writer);
        eprintln!(
            "{} {} {status} {:.2}s",
            req.method,
            req.path,
            t0.elapsed().as_secs_f64()
        );
        if !ok || !req.keep_alive {
            return;
        }
    }
}

fn send_json(w: &mut TcpStream, status: u16, body: &Value, keep_alive: bool) -> bool {
    send_json_with(w, status, body, keep_alive, &[])
}

fn send_json_with(
    w: &mut TcpStream,
    status: u16,
    body: &Value,
    keep_alive: bool,
    extra: &[(&str, &str)],
) -> bool {
    write_response(
        w,
        status,
        "application/json",
        extra,
        body.to_string().as_bytes(),
        keep_alive,
    )
    .is_ok()
}

fn send_error(w: &mut TcpStream, err: &ApiError, keep_alive: bool) -> bool {
    send_json(w, err.status, &err.to_json(), keep_alive)
}

/// Answers one request; returns the status and whether the connection is still usable.
fn handle(state: &State, req: &Request, w: &mut TcpStream) -> (u16, bool) {
    let path = req.path.trim_end_matches('/');
    let keep = req.keep_alive;
    let model_json = |id: &str| json!({"id": id, "object": "model", "created": state.started, "owned_by": "implicit"});
    let result: std::result::Result<Value, ApiError> = match (req.method.as_str(), path) {
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
            return generate(state, req, path == "/v1/chat/completions", w);
        }
        (_, "/v1/chat/completions") | (_, "/v1/completions") => Err(ApiError::status(
            405,
            format!("{} is not allowed on {path}; use POST", req.method),
        )),
        (_, "/v1/models") => Err(ApiError::status(
            405,
            format!("{} is not allowed on {path}", req.method),
        )),
        _ => Err(ApiError::status(
            404,
            format!("no such endpoint: {} {}", req.method, req.path),
        )),
    };
    match result {
        Ok(v) => (200, send_json(w, 200, &v, keep)),
        Err(e) if e.status == 405 => {
            let allow = if path.starts_with("/v1/models") {
                "GET"
            } else {
                "POST"
            };
            let sent = send_json_with(w, 405, &e.to_json(), keep, &[("Allow", allow)]);
            (405, sent)
        }
        Err(e) => (e.status, send_error(w, &e, keep)),
    }
}

fn generate(state: &State, req: &Request, chat: bool, w: &mut TcpStream) -> (u16, bool) {
    let keep = req.keep_alive;
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(e) => {
            let err = ApiError::invalid(format!("the body is not valid JSON: {e}"), None);
            return (400, send_error(w, &err, keep));
        }
    };
    let parsed = if chat {
        openai::parse_chat(&body, |turns| state.chat.encode(&state.tok, turns))
    } else {
        openai::parse_completion(&body)
    };
    let params = match parsed {
        Ok(p) => p,
        Err(e) => return (e.status, send_error(w, &e, keep)),
    };
    let n = state.requests.fetch_add(1, Ordering::Relaxed);
    let created = now_secs();
    let ctx = Ctx {
        tok: &state.tok,
        vocab: &state.vocab,
        model_id: &state.model_id,
        vocab_size: state.model.config.vocab_size,
        context_len: state.model.config.max_position_embeddings,
        scheduler: &state.scheduler,
        adjuster: state.adjuster.clone(),
        id: format!(
            "{}-{created:x}{n:06x}",
            if chat { "chatcmpl" } else { "cmpl" }
        ),
        created,
        default_seed: created ^ n.wrapping_mul(0x9E37_79B9),
    };
    match completion::run(&ctx, &params, w) {
        Ok(Answer::Json(v)) => (200, send_json(w, 200, &v, keep)),
        Ok(Answer::Streamed) => (200, keep),
        Err(e) => (e.status, send_error(w, &e, keep)),
    }
}
