//! `implicit generate`: one prompt streamed to stdout, or a whole instruction set decoded in
//! batches into AlpacaEval's model_outputs.json; either through the rule adapter if asked. The
//! same code runs the CPU model and (`--device cuda`) the GPU model, opened by
//! `model::device`, through `generate`'s engine.

use crate::adapter::{AdapterSpec, RuleAdapter, RuleSet};
use crate::backend::Device;
use crate::bail;
use crate::error::{Context, Result};
use crate::generate::detok::IncrementalDecoder;
use crate::generate::instructions::{
    answer_prompts, describe_stops, read_instructions, write_model_outputs, AnswerOptions,
    StopReason,
};
use crate::generate::{generate_adjusted, Finish, GenerateOptions, Sampler, ScoreAdjuster};
use crate::io::chat_template::{ChatFormat, ChatMessage, ChatTemplate};
use crate::io::convert::TempConversion;
use crate::io::tokenizer::Tokenizer;
use crate::model::{DeviceRuntime, LanguageModel};
use clap::{ArgGroup, Args};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Args)]
#[command(group(ArgGroup::new("input").required(true).args(["prompt", "instructions"])))]
pub struct GenerateArgs {
    /// Model folder: config.json, model.safetensors (or shards with an index), tokenizer.json;
    /// or a .gguf file, converted into a temporary folder for this run (`implicit convert-gguf
    /// X.gguf DIR` converts once for all).
    #[arg(long)]
    model: PathBuf,
    /// The prompt (with --chat: the user's message); the output streams to stdout.
    #[arg(long)]
    prompt: Option<String>,
    /// Send --prompt as a user message in a chat format (see --chat-format) and print the
    /// assistant's answer.
    #[arg(long, requires = "prompt")]
    chat: bool,
    /// The chat format: "model" (the model's own chat_template from tokenizer_config.json),
    /// "tulu" (the paper's <|user|>\n{prompt}\n<|assistant|>\n) or "auto" (the model's own when
    /// it has one, else tulu). Default: auto with --chat; tulu with --instructions, the paper's
    /// evaluation format.
    #[arg(long, value_enum)]
    chat_format: Option<ChatFormat>,
    /// An instruction set to answer, each in the paper's chat format (or --chat-format's): a
    /// JSON list of objects with "instruction" (AlpacaEval's files) or JSONL of
    /// {"instruction": ...} (val.jsonl).
    #[arg(long, requires = "out")]
    instructions: Option<PathBuf>,
    /// Where --instructions' answers go, as AlpacaEval's model_outputs.json (list of
    /// {instruction, output, generator, dataset}), written atomically.
    #[arg(long, requires = "instructions")]
    out: Option<PathBuf>,
    /// Only the first N instructions.
    #[arg(long, requires = "instructions", value_parser = super::numbers::positive_usize)]
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
    #[arg(long, default_value_t = 256, value_parser = super::numbers::positive_usize)]
    max_new_tokens: usize,
    /// 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0, value_parser = super::numbers::non_negative_f32)]
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
    if args.chat_format.is_some() && !args.chat && args.instructions.is_none() {
        bail!("--chat-format applies to --chat and --instructions");
    }
    // Before the model loads and every answer is generated, not after.
    if let Some(out) = &args.out {
        check_writable(out)?;
    }
    // A .gguf is converted first; the folder goes away when `conversion` drops, after the run.
    let conversion = if is_gguf(&args.model) {
        let t0 = Instant::now();
        let c = TempConversion::new(&args.model)?;
        eprintln!(
            "converted {} ({}) in {:.2}s (to skip this step: implicit convert-gguf {} DIR)",
            args.model.display(),
            c.report,
            t0.elapsed().as_secs_f64(),
            args.model.display()
        );
        Some(c)
    } else {
        None
    };
    let dir = conversion.as_ref().map_or(args.model.as_path(), |c| &c.dir);
    let runtime = DeviceRuntime::open(args.device, "--device cuda", ", or use --device cpu")?;
    let t0 = Instant::now();
    let mut model = runtime.load(dir)?;
    let tok = Tokenizer::load(dir, model.config())?;
    eprintln!(
        "loaded {} ({} parameters){} in {:.2}s",
        args.model.display(),
        model.config().num_parameters(),
        match args.device {
            Device::Cpu => String::new(),
            Device::Cuda => format!(" onto {}", runtime.name()),
        },
        t0.elapsed().as_secs_f64(),
    );
    let device = if runtime.is_gpu() { " (GPU)" } else { "" };
    run_loaded(&args, dir, &mut model, &tok, device)
}

/// Fails unless a file can be created beside `out` (its folder is created if missing): a
/// uniquely named probe file is created there and removed again.
fn check_writable(out: &Path) -> Result<()> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if out.is_dir() {
        bail!("--out {}: is a folder, not a file", out.display());
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--out {}: cannot create its folder", out.display()))?;
    let name = out
        .file_name()
        .map_or("out".into(), |n| n.to_string_lossy());
    let probe = dir.join(format!(".{name}.{}.writable", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .with_context(|| format!("--out {}: cannot write there", out.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// A path naming a GGUF file rather than a model folder.
fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        && path.is_file()
}

/// Runs the prompt or the instruction set on a loaded model (from the folder `dir`), whichever
/// the device; `device` follows the instruction set's summary line (" (GPU)", or nothing on the
/// CPU).
fn run_loaded<M: LanguageModel>(
    args: &GenerateArgs,
    dir: &Path,
    model: M,
    tok: &Tokenizer,
    device: &str,
) -> Result<()> {
    let adapter = load_adapter(args.adapter.as_deref(), args.rules, tok)?;
    let adjuster = adapter
        .clone()
        .map(|a| Arc::new(a) as Arc<dyn ScoreAdjuster>);
    let gguf = (dir != args.model).then_some(args.model.as_path());
    match (&args.prompt, &args.instructions, &args.out) {
        (Some(prompt), _, _) => {
            let chat = match args.chat {
                true => Some(chat_template(
                    dir,
                    gguf,
                    tok,
                    args.chat_format,
                    ChatFormat::Auto,
                )?),
                false => None,
            };
            run_prompt(args, prompt, chat.as_ref(), model, tok, adjuster)
        }
        (None, Some(set), Some(out)) => {
            let name = args.generator.clone().unwrap_or_else(|| {
                default_generator(&args.model, adapter.as_ref(), args.adapter.as_deref())
            });
            let chat = chat_template(dir, gguf, tok, args.chat_format, ChatFormat::Tulu)?;
            let answer = Answer {
                set,
                out,
                generator: &name,
                chat: &chat,
                device,
            };
            run_instructions(args, &answer, model, tok, adjuster)
        }
        _ => bail!("give --prompt, or --instructions with --out"),
    }
}

/// The chat format `--chat-format` (or `default`) selects for the model folder `dir` (converted
/// from the GGUF `from_gguf`, if given), told on stderr.
fn chat_template(
    dir: &Path,
    from_gguf: Option<&Path>,
    tok: &Tokenizer,
    format: Option<ChatFormat>,
    default: ChatFormat,
) -> Result<ChatTemplate> {
    let mut chat = ChatTemplate::load(dir, tok, format.unwrap_or(default))?;
    if let (ChatTemplate::Tulu { reason, .. }, None, ChatFormat::Tulu) =
        (&mut chat, format, default)
    {
        *reason = "the default with --instructions, as in the paper's evaluation";
    }
    if let (ChatTemplate::Model(t), Some(gguf)) = (&mut chat, from_gguf) {
        t.set_origin(&format!("{} tokenizer.chat_template", gguf.display()));
    }
    eprintln!("{}", chat.describe());
    Ok(chat)
}

/// Streams the answer to `prompt_text` (a user message in `chat`'s format when given).
fn run_prompt<M: LanguageModel>(
    args: &GenerateArgs,
    prompt_text: &str,
    chat: Option<&ChatTemplate>,
    model: M,
    tok: &Tokenizer,
    adjuster: Option<Arc<dyn ScoreAdjuster>>,
) -> Result<()> {
    let prompt = match chat {
        Some(chat) => chat.encode(tok, &[ChatMessage::new("user", prompt_text)])?,
        None => tok.encode_prompt(prompt_text)?,
    };
    eprintln!("prompt of {} tokens", prompt.len());
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        stop_tokens: tok.eos.clone(),
    };
    let mut sampler = Sampler::new(args.temperature, args.seed)?;
    // Decoded in the prompt's context, so that a continuation keeps its leading space.
    let mut stream = IncrementalDecoder::new(&prompt);
    // The answer is the command's output: when stdout closes (`generate ... | head -c 100`),
    // decoding stops and the command ends quietly, as a reader of `head` expects.
    let mut stdout = std::io::stdout().lock();
    let mut closed = false;
    let mut emit = |text: &str, closed: &mut bool| -> Result<()> {
        match write!(stdout, "{text}").and_then(|()| stdout.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                *closed = true;
                bail!("stdout closed")
            }
            r => r.context("stdout"),
        }
    };
    if chat.is_none() {
        match emit(prompt_text, &mut closed) {
            Err(_) if closed => return Ok(()),
            r => r?,
        }
    }
    let t1 = Instant::now();
    let mut first_token_s = None;
    let decoded = generate_adjusted(model, &prompt, &opts, &mut sampler, adjuster, |c| {
        first_token_s.get_or_insert(t1.elapsed().as_secs_f64());
        if !tok.is_eos(c.token) {
            emit(&stream.push(tok, c.token)?, &mut closed)?;
        }
        Ok(())
    });
    let out = match decoded {
        Err(_) if closed => return Ok(()),
        r => r?,
    };
    match emit(&format!("{}\n", stream.flush(tok)?), &mut closed) {
        Err(_) if closed => return Ok(()),
        r => r?,
    }
    let total = t1.elapsed().as_secs_f64();
    let prefill = first_token_s.unwrap_or(total);
    let decode_tokens = out.len().saturating_sub(1);
    let finish = match out.last() {
        Some(&t) if opts.stop_tokens.contains(&t) => Finish::Stop,
        _ => Finish::Length,
    };
    let stop = match StopReason::of(finish, out.len(), args.max_new_tokens) {
        StopReason::Eos => format!(
            "EOS ({})",
            out.last()
                .and_then(|&t| tok.id_to_token(t))
                .unwrap_or_default()
        ),
        StopReason::MaxTokens => format!("the --max-new-tokens limit ({})", args.max_new_tokens),
        StopReason::Context => "the model's context length".to_string(),
    };
    eprintln!("stopped at {stop}");
    eprintln!(
        "{} tokens; prefill {:.1} tokens/s, decode {:.1} tokens/s",
        out.len(),
        prompt.len() as f64 / prefill.max(1e-9),
        decode_tokens as f64 / (total - prefill).max(1e-9)
    );
    Ok(())
}

/// The model folder's (or .gguf file's) name, plus what adapter was used.
fn default_generator(model: &Path, adapter: Option<&RuleAdapter>, name: Option<&str>) -> String {
    let base = std::fs::canonicalize(model)
        .ok()
        .and_then(|p| {
            let name = if is_gguf(&p) {
                p.file_stem()
            } else {
                p.file_name()
            };
            name.map(|n| n.to_string_lossy().into_owned())
        })
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

/// Where `--instructions` come from and go, and how they are put to the model.
struct Answer<'a> {
    set: &'a Path,
    out: &'a Path,
    /// model_outputs.json's "generator".
    generator: &'a str,
    chat: &'a ChatTemplate,
    /// Ends the summary line (" (GPU)" or nothing).
    device: &'a str,
}

/// Answers `--instructions` into `--out`, with how the answers ended on stderr.
fn run_instructions<M: LanguageModel>(
    args: &GenerateArgs,
    answer: &Answer<'_>,
    model: M,
    tok: &Tokenizer,
    adjuster: Option<Arc<dyn ScoreAdjuster>>,
) -> Result<()> {
    let Answer {
        set,
        out,
        generator,
        chat,
        device,
    } = *answer;
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
    let prompts = rows
        .iter()
        .map(|r| chat.encode(tok, &[ChatMessage::new("user", &r.instruction)]))
        .collect::<Result<Vec<_>>>()?;
    let answers = answer_prompts(model, tok, &rows, &prompts, &opts, adjuster)?;
    write_model_outputs(out, &answers.outputs)?;
    eprintln!("{}", describe_stops(&answers.stops, args.max_new_tokens));
    eprintln!(
        "wrote {} outputs to {}",
        answers.outputs.len(),
        out.display()
    );
    Ok(())
}
