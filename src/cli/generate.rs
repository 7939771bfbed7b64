//! `implicit generate`: one prompt streamed to stdout, or a whole instruction set decoded in
//! batches into AlpacaEval's model_outputs.json; either through the rule adapter if asked. The
//! same code runs the CPU model and (`--device cuda`, generate_cuda.rs) the GPU model, through
//! `generate`'s engine.

use crate::adapter::{AdapterSpec, RuleAdapter, RuleSet};
use crate::backend::Device;
use crate::bail;
use crate::error::{Context, Result};
use crate::generate::detok::IncrementalDecoder;
use crate::generate::instructions::{
    answer_instructions, read_instructions, write_model_outputs, AnswerOptions,
};
use crate::generate::{generate_adjusted, GenerateOptions, Sampler, ScoreAdjuster};
use crate::io::tokenizer::{chat_prompt, Tokenizer};
use crate::model::{LanguageModel, Transformer};
use clap::{ArgGroup, Args};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[cfg(feature = "cuda")]
#[path = "generate_cuda.rs"]
mod gpu;

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
    /// Where the forward pass runs: cpu, or cuda (a build with `--features cuda` and a GPU of
    /// compute capability 8.0 or newer; without one, generate fails and says why).
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
        return run_cuda(&args);
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
    run_loaded(&args, &model, &tok, "")
}

/// Runs the prompt or the instruction set on a loaded model, whichever the device; `device`
/// follows the instruction set's summary line (" (GPU)", or nothing on the CPU).
fn run_loaded<M: LanguageModel>(
    args: &GenerateArgs,
    model: M,
    tok: &Tokenizer,
    device: &str,
) -> Result<()> {
    let adapter = load_adapter(args.adapter.as_deref(), args.rules, tok)?;
    let adjuster = adapter
        .clone()
        .map(|a| Arc::new(a) as Arc<dyn ScoreAdjuster>);
    match (&args.prompt, &args.instructions, &args.out) {
        (Some(prompt), _, _) => run_prompt(args, prompt, model, tok, adjuster),
        (None, Some(set), Some(out)) => {
            let name = args.generator.clone().unwrap_or_else(|| {
                default_generator(&args.model, adapter.as_ref(), args.adapter.as_deref())
            });
            run_instructions(args, (set, out), &name, model, tok, adjuster, device)
        }
        _ => bail!("give --prompt, or --instructions with --out"),
    }
}

/// `--device cuda`: the forward pass on the GPU (generate_cuda.rs).
#[cfg(feature = "cuda")]
fn run_cuda(args: &GenerateArgs) -> Result<()> {
    gpu::run(args)
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(_: &GenerateArgs) -> Result<()> {
    Err(crate::backend::built_without_cuda(
        "--device cuda",
        ", or use --device cpu",
    ))
}

fn run_prompt<M: LanguageModel>(
    args: &GenerateArgs,
    prompt_text: &str,
    model: M,
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

/// Answers `--instructions` into `--out` (`(set, out)`); `device` ends the summary line.
fn run_instructions<M: LanguageModel>(
    args: &GenerateArgs,
    (set, out): (&Path, &Path),
    generator: &str,
    model: M,
    tok: &Tokenizer,
    adjuster: Option<Arc<dyn ScoreAdjuster>>,
    device: &str,
) -> Result<()> {
    let mut rows = read_instructions(set)?;
    if let Some(n) = args.limit {
        rows.truncate(n);
    }
    let dataset_default = set
        .file_stem()
        .map_or("instructions".into(), |s| s.to_string_lossy().into_owned());
    eprintln!(
        "{} instructions from {}, batch size {}, at most {} new tokens each{device}",
        rows.len(),
        set.display(),
        args.batch_size,
        args.max_new_tokens
    );
    let opts = AnswerOptions {
        max_new_tokens: args.max_new_tokens,
        batch_size: args.batch_size as usize,
        temperature: args.temperature,
        seed: args.seed,
        generator: generator.to_string(),
        dataset: dataset_default,
    };
    let outputs = answer_instructions(model, tok, &rows, &opts, adjuster)?;
    write_model_outputs(out, &outputs)?;
    eprintln!("wrote {} outputs to {}", outputs.len(), out.display());
    Ok(())
}
