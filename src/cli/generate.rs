//! `implicit generate`.

use crate::bail;
use crate::error::{Context, Result};
use crate::generate::{generate, GenerateOptions, Sampler};
use crate::io::tokenizer::{chat_prompt, StreamDecoder, Tokenizer};
use crate::model::Transformer;
use clap::{Args, ValueEnum};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Model folder: config.json, model.safetensors (or shards with an index), tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// The prompt (with --chat: the instruction).
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the paper's chat format: <|user|>\n{prompt}\n<|assistant|>\n
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Seed for sampling at temperature > 0.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    if args.device == Device::Cuda {
        bail!("--device cuda: this build has no CUDA backend yet; use --device cpu");
    }
    let t0 = Instant::now();
    let model = Transformer::load(&args.model)?;
    let tok = Tokenizer::load(&args.model, &model.config)?;
    let text = if args.chat {
        chat_prompt(&args.prompt)
    } else {
        args.prompt.clone()
    };
    let prompt = tok.encode_prompt(&text)?;
    eprintln!(
        "loaded {} ({} parameters) in {:.2}s; prompt of {} tokens",
        args.model.display(),
        model.config.num_parameters(),
        t0.elapsed().as_secs_f64(),
        prompt.len()
    );
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        stop_tokens: tok.eos.clone(),
    };
    let mut sampler = Sampler::new(args.temperature, args.seed);
    let mut stream = StreamDecoder::new();
    let mut stdout = std::io::stdout().lock();
    if !args.chat {
        write!(stdout, "{}", args.prompt).context("stdout")?;
    }
    let t1 = Instant::now();
    let mut first_token_s = None;
    let out = generate(&model, &prompt, &opts, &mut sampler, |id| {
        first_token_s.get_or_insert(t1.elapsed().as_secs_f64());
        if !tok.is_eos(id) {
            write!(stdout, "{}", stream.push(&tok, id)?).context("stdout")?;
            stdout.flush().context("stdout")?;
        }
        Ok(())
    })?;
    writeln!(stdout).context("stdout")?;
    let total = t1.elapsed().as_secs_f64();
    let prefill = first_token_s.unwrap_or(total);
    let decode_tokens = out.len().saturating_sub(1);
    eprintln!(
        "{} tokens; prefill {:.1} tokens/s, decode {:.1} tokens/s",
        out.len(),
        prompt.len() as f64 / prefill.max(1e-9),
        decode_tokens as f64 / (total - prefill).max(1e-9)
    );
    Ok(())
}
