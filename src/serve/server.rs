//! The server's life: [`Server::bind`] loads the model, tokenizer, chat template and adapter,
//! starts the scheduler thread and binds the address; [`Server::run`] accepts connections
//! (hyper's HTTP/1.1, each routed by `routes::dispatch`; over `max_connections`, refused with
//! `limits::refuse`) until SIGINT/SIGTERM, then lets in-flight requests finish.

use super::limits::{refuse, Limits};
use super::routes::dispatch;
use super::scheduler::Scheduler;
use super::{openai, ServeConfig};
use crate::adapter::{AdapterSpec, RuleAdapter};
use crate::error::{Context, Result};
use crate::generate::vocab::VocabText;
use crate::generate::ScoreAdjuster;
use crate::io::chat_template::ChatTemplate;
use crate::io::tokenizer::Tokenizer;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

/// After SIGINT/SIGTERM, how long in-flight requests may take to finish before the server
/// returns anyway (their sequences stop with the process).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What every request reads: the tokenizer, the chat template, the adapter, the scheduler, the
/// limits, and the counters.
pub(super) struct State {
    pub(super) tok: Tokenizer,
    pub(super) vocab: VocabText,
    /// The rule adapter requests may decode through, or why there is none (a request asking for
    /// it gets a 400 saying so).
    pub(super) adapter: std::result::Result<Arc<dyn ScoreAdjuster>, String>,
    /// Whether a request that does not set `rules` decodes through the adapter.
    pub(super) rules_by_default: bool,
    pub(super) scheduler: Scheduler,
    pub(super) model_id: String,
    pub(super) vocab_size: usize,
    pub(super) context_len: usize,
    /// Prompt text over this many bytes cannot fit the context: refused before tokenizing.
    pub(super) max_prompt_bytes: usize,
    pub(super) chat: ChatTemplate,
    pub(super) started: u64,
    pub(super) requests: AtomicU64,
    /// Generation requests admitted and not yet finished.
    pub(super) admitted: AtomicUsize,
    pub(super) limits: Limits,
}

/// A bound server, ready to [`Server::run`].
pub struct Server {
    listener: std::net::TcpListener,
    state: Arc<State>,
    description: String,
}

pub(super) fn now_secs() -> u64 {
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
