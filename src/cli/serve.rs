//! `implicit serve`: the OpenAI-compatible server (see `crate::serve`).

use crate::adapter::RuleSet;
use crate::backend::Device;
use crate::error::Result;
use crate::io::chat_template::ChatFormat;
use crate::serve::{Limits, ServeConfig, Server};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    /// Model folder: config.json, model.safetensors (or shards with an index), tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// Where the forward pass runs: cpu, or cuda (a build with `--features cuda` and a GPU of
    /// compute capability 8.0 or newer; otherwise serve stops at once saying why).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// Decode requests through the paper's rule-based adapter ("rules") or a rules file
    /// (.toml/.json) unless they say `"rules": false`. Without it, requests decode the plain
    /// model unless they say `"rules": true` (then the paper's adapter).
    #[arg(long, value_name = "rules|FILE")]
    adapter: Option<String>,
    /// Which of the adapter's rules apply: a comma-separated subset of eos, uniform, diversity.
    #[arg(long, default_value = "eos,uniform,diversity")]
    rules: RuleSet,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (printed on start).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Sequences of concurrent requests decoded together at most.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    max_batch: u64,
    /// Prompt tokens of joining requests prefilled in one step while other requests decode (a
    /// burst of arrivals joins over several steps instead of stalling the running ones for one
    /// long prefill; one request joins per step whatever its length).
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..))]
    prefill_tokens: u64,
    /// The model's name in responses (default: the model folder's name).
    #[arg(long)]
    model_name: Option<String>,
    /// How /v1/chat/completions renders messages: the model's own chat template
    /// (tokenizer_config.json's chat_template), the paper's Tulu format, or auto (the model's
    /// own when it has one, else Tulu).
    #[arg(long, value_enum, default_value_t = ChatFormat::Auto)]
    chat_format: ChatFormat,
    /// Request bodies over this many bytes get 413 before anything is parsed or tokenized.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    max_body_bytes: u64,
    /// Seconds a client has to send its request headers, and again its body (then 408 or the
    /// connection is closed).
    #[arg(long, default_value_t = 30.0, value_parser = super::numbers::positive_f64)]
    read_timeout: f64,
    /// Open connections at most; more are answered 503 and closed.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Generation requests running or queued at most; more are answered 429 (Retry-After).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    max_requests: u64,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let server = Server::bind(&ServeConfig {
        model: args.model,
        device: args.device,
        adapter: args.adapter,
        rules: args.rules,
        host: args.host,
        port: args.port,
        max_batch: args.max_batch as usize,
        prefill_tokens: usize::try_from(args.prefill_tokens).unwrap_or(usize::MAX),
        model_name: args.model_name,
        chat_format: args.chat_format,
        limits: Limits {
            max_body_bytes: usize::try_from(args.max_body_bytes).unwrap_or(usize::MAX),
            read_timeout: Duration::from_secs_f64(args.read_timeout),
            max_connections: args.max_connections as usize,
            max_requests: args.max_requests as usize,
        },
    })?;
    let addr = server.local_addr()?;
    eprintln!("{}", server.describe());
    // One line on stdout that scripts and tests read to find the port; a closed stdout does not
    // stop the server.
    println!("listening on http://{addr}");
    let _ = std::io::stdout().flush();
    eprintln!("OpenAI base URL: http://{addr}/v1");
    server.run()
}
