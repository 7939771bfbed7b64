//! The OpenAI API's request side: validating `/v1/chat/completions` and `/v1/completions`
//! bodies into [`GenParams`], rendering chat messages (the model's own template or the paper's
//! Tulu format, see `io::chat_template`), and OpenAI-style errors. The files: `error`
//! ([`ApiError`]), `precheck` (what is refused before any tokenizing: another model, tools,
//! prompts too long for the context), `params` (the fields both endpoints share), `parse`
//! (each endpoint's body).

mod error;
mod params;
mod parse;
mod precheck;

pub use error::ApiError;
pub use parse::{parse_chat, parse_completion};
pub use precheck::{check_prompt_bytes, check_request, max_prompt_bytes};

type ApiResult<T> = std::result::Result<T, ApiError>;

/// Which endpoint a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// A prompt as text (tokenised with BOS by the server) or as token ids (used as they are).
#[derive(Clone, Debug, PartialEq)]
pub enum PromptInput {
    Text(String),
    Ids(Vec<u32>),
}

/// A validated generation request.
#[derive(Clone, Debug, PartialEq)]
pub struct GenParams {
    pub endpoint: Endpoint,
    /// One per choice (several only for `/v1/completions` with a list of prompts).
    pub prompts: Vec<PromptInput>,
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// None: no logprobs; Some(k): logprobs with the k most likely alternatives.
    pub logprobs: Option<usize>,
    /// The body's `rules` (this server's extension): decode through the rule adapter (true) or
    /// the plain model (false); None: the server's default (on when started with `--adapter`).
    pub rules: Option<bool>,
}

/// The most alternatives a request may ask for.
pub const MAX_TOP_LOGPROBS: usize = 20;
