//! `implicit serve`: the OpenAI-compatible server (see `crate::serve`).

use crate::adapter::RuleSet;
use crate::error::{Context, Result};
use crate::io::chat_template::ChatFormat;
use crate::serve::{ServeConfig, Server};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct ServeArgs {
    /// Model folder: config.json, model.safetensors (or shards with an index), tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// Serve through the paper's rule-based adapter ("rules") or a rules file (.toml/.json).
    #[arg(long, value_name = "rules|FILE")]
    adapter: Option<String>,
    /// Which of the adapter's rules apply: a comma-separated subset of eos, uniform, diversity.
    #[arg(long, requires = "adapter", default_value = "eos,uniform,diversity")]
    rules: RuleSet,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (printed on start).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Sequences of concurrent requests decoded together at most.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    max_batch: u64,
    /// The model's name in responses (default: the model folder's name).
    #[arg(long)]
    model_name: Option<String>,
    /// How /v1/chat/completions renders messages: the model's own chat template
    /// (tokenizer_config.json's chat_template), the paper's Tulu format, or auto (the model's
    /// own when it has one, else Tulu).
    #[arg(long, value_enum, default_value_t = ChatFormat::Auto)]
    chat_format: ChatFormat,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let server = Server::bind(&ServeConfig {
        model: args.model,
        adapter: args.adapter,
        rules: args.rules,
        host: args.host,
        port: args.port,
        max_batch: args.max_batch as usize,
        model_name: args.model_name,
        chat_format: args.chat_format,
    })?;
    let addr = server.local_addr()?;
    eprintln!("{}", server.describe());
    // One line on stdout that scripts and tests read to find the port.
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on http://{addr}").context("stdout")?;
    out.flush().context("stdout")?;
    drop(out);
    eprintln!("OpenAI base URL: http://{addr}/v1");
    server.run()
}
