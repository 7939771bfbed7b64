//! `implicit generate`: one prompt streamed to stdout, or a whole instruction set decoded in
//! batches into AlpacaEval's model_outputs.json; either through the rule adapter if asked.

use crate::adapter::{AdapterSpec, RuleAdapter, RuleSet};
use crate::bail;
use crate::error::{Context, Result};
use crate::generate::detok::{decode_continuation, IncrementalDecoder};
use crate::generate::instructions::{read_instructions, write_model_outputs, ModelOutput};
use crate::generate::{
    generate_adjusted, run_batched, GenerateOptions, Sampler, ScoreAdjuster, SequenceRequest,
};
use crate::io::tokenizer::{chat_prompt, Tokenizer};
use crate::model::Transformer;
use clap::{ArgGroup, Args, ValueEnum};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
}

#[derive(Args)]
#[command(group(ArgGroup::new("input").required(true).args(["prompt", "instructions"])))]
pub struct GenerateArgs {
    /// Model folder: config.json, model.safetensors (or shards with an index), tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// The prompt (with --chat: the instruction); the output streams to stdout.
    #[arg(long)]
    prompt: Option<String>,
    /// Wrap --prompt in the paper's chat format: <|user|>\n{prompt}\n<|assistant|>\n
    #[arg(long, requires = "prompt")]
    chat: bool,
    /// An instruction set to answer, each in the paper's chat format: a JSON list of objects
    /// with "instruction" (AlpacaEval's files) or JSONL of {"instruction": ...} (val.jsonl).
    #[arg(long, requires = "out")]
    instructions: Option<PathBuf>,
    /// Where --instructions' answers go, as AlpacaEval's model_outputs.json (list of
    /// {instruction, output, generator, dataset}), written atomically.
    #[arg(long, requires = "instructions")]
    out: Option<PathBuf>,
    /// Only the first N instructions.
    #[arg(long, requires = "instructions")]
    limit: Option<usize>,
    /// The name in model_outputs.json's "generator" (default: the model folder's name, plus
    /// "+rules" with the adapter).
    #[arg(long, requires = "instructions")]
    generator: Option<String>,
    /// Sequences decoded together (continuous batching) with --instructions.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,
    /// The paper's rule-based adapter ("rules") or a rules file (.toml, or .json) with custom
    /// rules: next token = argmax(log_softmax(logits) + rule scores).
    #[arg(long, value_name = "rules|FILE")]
    adapter: Option<String>,
    /// Which of the adapter's rules apply: a comma-separated subset of eos, uniform, diversity
    /// (the paper's ablations).
    #[arg(long, requires = "adapter", default_value = "eos,uniform,diversity")]
    rules: RuleSet,
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

/// The adapter named by `--adapter`/`--rules`, resolved against `tok`, with a line on stderr.
pub(crate) fn load_adapter(
    name: Option<&str>,
    rules: RuleSet,
    tok: &Tokenizer,
) -> Result<Option<RuleAdapter>> {
    let Some(name) = name else {
        return Ok(None);
    };
    let spec = AdapterSpec::load(name)?;
    let adapter = RuleAdapter::new(&spec, rules, tok)?;
    eprintln!("{}", adapter.describe());
    if !adapter.unresolved().is_empty() {
        eprintln!(
            "warning: no single token in this vocabulary for {} (skipped)",
            adapter.unresolved().join(", ")
        );
    }
    Ok(Some(adapter))
}

pub fn run(args: GenerateArgs) -> Result<()> {
    if args.device == Device::Cuda {
        bail!("--device cuda: this build has no CUDA backend yet; use --device cpu");
    }
    let t0 = Instant::now();
    let model = Transformer::load(&args.model)?;
    let tok = Tokenizer::load(&args.model, &model.config)?;
    eprintln!(
        "loaded {} ({} parameters) in {:.2}s",
        args.model.display(),
        model.config.num_parameters(),
        t0.elapsed().as_secs_f64(),
    );
    let adapter = load_adapter(args.adapter.as_deref(), args.rules, &tok)?;
    let adjuster = adapter
        .clone()
        .map(|a| Arc::new(a) as Arc<dyn ScoreAdjuster>);
    match (&args.prompt, &args.instructions, &args.out) {
        (Some(prompt), _, _) => run_prompt(&args, prompt, &model, &tok, adjuster),
        (None, Some(set), Some(out)) => {
            let name = args.generator.clone().unwrap_or_else(|| {
                default_generator(&args.model, adapter.as_ref(), args.adapter.as_deref())
            });
            run_instructions(&args, set, out, &name, &model, &tok, adjuster)
        }
        _ => bail!("give --prompt, or --instructions with --out"),
    }
}

fn run_prompt(
    args: &GenerateArgs,
    prompt_text: &str,
    model: &Transformer,
    tok: &Tokenizer,
    adjuster: Option<Arc<dyn ScoreAdjuster>>,
) -> Result<()> {
    let text = if args.chat {
        chat_prompt(prompt_text)
    } else {
        prompt_text.to_string()
    };
    let prompt = tok.encode_prompt(&text)?;
    eprintln!("prompt of {} tokens", prompt.len());
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        stop_tokens: tok.eos.clone(),
    };
    let mut sampler = Sampler::new(args.temperature, args.seed);
    // Decoded in the prompt's context, so that a continuation keeps its leading space.
    let mut stream = IncrementalDecoder::new(&prompt);
    let mut stdout = std::io::stdout().lock();
    if !args.chat {
        write!(stdout, "{prompt_text}").context("stdout")?;
    }
    let t1 = Instant::now();
    let mut first_token_s = None;
    let out = generate_adjusted(model, &prompt, &opts, &mut sampler, adjuster, |c| {
        first_token_s.get_or_insert(t1.elapsed().as_secs_f64());
        if !tok.is_eos(c.token) {
            write!(stdout, "{}", stream.push(tok, c.token)?).context("stdout")?;
            stdout.flush().context("stdout")?;
        }
        Ok(())
    })?;
    writeln!(stdout, "{}", stream.flush(tok)?).context("stdout")?;
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

/// The model folder's name, plus what adapter was used.
fn default_generator(model: &Path, adapter: Option<&RuleAdapter>, name: Option<&str>) -> String {
    let base = std::fs::canonicalize(model)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let (Some(adapter), Some(name)) = (adapter, name) else {
        return base;
    };
    let source = match name {
        "rules" | "paper" => "rules".to_string(),
        file => Path::new(file)
            .file_stem()
            .map_or("rules".into(), |s| s.to_string_lossy().into_owned()),
    };
    if adapter.rules() == RuleSet::all() {
        format!("{base}+{source}")
    } else {
        format!("{base}+{source}({})", adapter.rules().names())
    }
}

fn run_instructions(
    args: &GenerateArgs,
    set: &Path,
    out: &Path,
    generator: &str,
    model: &Transformer,
    tok: &Tokenizer,
    adjuster: Option<Arc<dyn ScoreAdjuster>>,
) -> Result<()> {
    let mut rows = read_instructions(set)?;
    if let Some(n) = args.limit {
        rows.truncate(n);
    }
    let dataset_default = set
        .file_stem()
        .map_or("instructions".into(), |s| s.to_string_lossy().into_owned());
    let prompts = rows
        .iter()
        .map(|r| tok.encode_prompt(&chat_prompt(&r.instruction)))
        .collect::<Result<Vec<_>>>()?;
    let sampler = Sampler::new(args.temperature, args.seed);
    let requests: Vec<SequenceRequest> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| SequenceRequest {
            prompt: p.clone(),
            max_new_tokens: args.max_new_tokens,
            stop_tokens: tok.eos.clone(),
            sampler: sampler.for_sequence(i),
            top_logprobs: 0,
            adjuster: adjuster.clone(),
        })
        .collect();
    let total = rows.len();
    eprintln!(
        "{total} instructions from {}, batch size {}, at most {} new tokens each",
        set.display(),
        args.batch_size,
        args.max_new_tokens
    );
    let mut texts: Vec<Option<String>> = vec![None; total];
    let mut progress = Progress::new(total);
    let tokens = std::cell::Cell::new(0usize);
    run_batched(
        model,
        requests,
        args.batch_size as usize,
        |_, _| {
            tokens.set(tokens.get() + 1);
            Ok(())
        },
        |i, finished| {
            let body: Vec<u32> = finished
                .tokens
                .iter()
                .copied()
                .filter(|&t| !tok.is_eos(t))
                .collect();
            texts[i] = Some(decode_continuation(tok, &prompts[i], &body)?);
            progress.done += 1;
            progress.tokens = tokens.get();
            progress.report(false);
            Ok(())
        },
    )?;
    progress.tokens = tokens.get();
    progress.report(true);
    let outputs: Vec<ModelOutput> = rows
        .into_iter()
        .zip(texts)
        .map(|(r, text)| ModelOutput {
            instruction: r.instruction,
            output: text.unwrap_or_default(),
            generator: generator.to_string(),
            dataset: r.dataset.unwrap_or_else(|| dataset_default.clone()),
        })
        .collect();
    write_model_outputs(out, &outputs)?;
    eprintln!("wrote {} outputs to {}", outputs.len(), out.display());
    Ok(())
}

/// done/total, tokens/s and ETA on stderr, at most twice a second (on one line on a terminal).
struct Progress {
    total: usize,
    done: usize,
    tokens: usize,
    start: Instant,
    last: Option<Instant>,
    /// `done` when the last line was printed.
    shown: Option<usize>,
    terminal: bool,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            done: 0,
            tokens: 0,
            start: Instant::now(),
            last: None,
            shown: None,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn report(&mut self, last: bool) {
        let now = Instant::now();
        let recent = self
            .last
            .is_some_and(|t| now - t < Duration::from_millis(500));
        if (!last && recent) || (last && self.shown == Some(self.done)) {
            if last && self.terminal {
                eprintln!();
            }
            return;
        }
        self.last = Some(now);
        self.shown = Some(self.done);
        let secs = self.start.elapsed().as_secs_f64();
        let eta = if self.done > 0 {
            secs / self.done as f64 * (self.total - self.done) as f64
        } else {
            f64::NAN
        };
        let line = format!(
            "[{:>w$}/{}] {} tokens, {:.1} tokens/s, elapsed {}, ETA {}",
            self.done,
            self.total,
            self.tokens,
            self.tokens as f64 / secs.max(1e-9),
            clock(secs),
            clock(eta),
            w = self.total.to_string().len()
        );
        if self.terminal && !last {
            eprint!("\r{line}");
        } else if self.terminal {
            eprintln!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

fn clock(secs: f64) -> String {
    if !secs.is_finite() {
        return "?".into();
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}
