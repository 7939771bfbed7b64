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
//! [`openai::max_prompt_bytes`]) is refused (400 `context_length_exceeded`) before tokenizing.
//! SIGINT/SIGTERM stop accepting, let in-flight requests finish (up to [`SHUTDOWN_GRACE`]) and
//! return.
//!
//! Each request's tokenizing and waiting runs on a blocking worker thread; every request's
//! sequences are decoded by one scheduler thread that batches all concurrent sequences into
//! one forward per step, each with its own KV cache, adapter state and sampler (see
//! `scheduler`): a request arriving while others decode joins at the next step (its prompt's
//! prefill shares that step, within `--prefill-tokens` a step), one that ends leaves.
//!
//! The files: `server` (binding, the accept loop, shutdown), `routes` (routing, a generation
//! request from body to answer), `limits` (what one client may cost, and where it is refused),
//! `openai` (the request side of the API: validation, errors), `completion` (a validated
//! request run into an OpenAI response), `events` (the worker's answer, streamed as
//! server-sent events), `scheduler` (the one decoding thread, continuous batching).

pub mod completion;
pub mod events;
mod limits;
pub mod openai;
mod routes;
pub mod scheduler;
mod server;

pub use limits::Limits;
pub use server::{Server, SHUTDOWN_GRACE};

use crate::adapter::RuleSet;
use crate::backend::Device;
use crate::io::chat_template::ChatFormat;
use std::path::PathBuf;

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
