//! `implicit eval`: response ranking, the AlpacaEval judge and win rates.

use crate::backend::Device;
use crate::bail;
use crate::data::read_messages_jsonl;
use crate::data::Example;
use crate::error::Result;
use crate::eval::endpoint::EndpointJudge;
use crate::eval::http::ClientOptions;
use crate::eval::judge::{run_judge, Annotation, Judge, JudgeOptions, ANNOTATOR};
use crate::eval::judge_local::LocalJudge;
use crate::eval::ranking::{run_ranking, RankingOptions, RankingReport};
use crate::eval::winrate::{length_controlled, raw_winrate, read_annotations, Difficulty};
use crate::eval::write_json_atomic;
use crate::io::tokenizer::Tokenizer;
use crate::model::{DeviceModel, DeviceRuntime, LanguageModel};
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Response ranking (the paper's Section 4.2): how often an instruction's own response is
    /// more likely than responses drawn from other instructions.
    Ranking(RankingArgs),
    /// AlpacaEval 2's weighted judge (weighted_alpaca_eval_gpt4_turbo): annotate model outputs
    /// against reference outputs, writing annotations.json.
    Judge(JudgeArgs),
    /// Raw and length-controlled win rates from an AlpacaEval annotations.json.
    Winrate(WinrateArgs),
}

#[derive(Args)]
pub struct RankingArgs {
    /// Model folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Tulu `messages` JSONL (e.g. LIMA, or Stanford Alpaca as the paper used).
    #[arg(long)]
    data: PathBuf,
    /// Negatives drawn per instruction (the paper: 5).
    #[arg(long, default_value_t = 5, value_parser = super::numbers::positive_usize)]
    negatives: usize,
    /// Seed of Python's random.seed for the draws (the paper: 0).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use only the first N examples (the pool of negatives too), as --max_examples does.
    #[arg(long, value_parser = super::numbers::positive_usize)]
    max_examples: Option<usize>,
    /// Sequences are cut to this many tokens (the paper's run: 1024).
    #[arg(long, default_value_t = 1024, value_parser = super::numbers::positive_usize)]
    max_len: usize,
    /// At most this many new tokens per forward pass (bounds memory: logits are tokens x vocab).
    #[arg(long, default_value_t = 2048, value_parser = super::numbers::positive_usize)]
    batch_tokens: usize,
    /// Bootstrap resamples for the 95% interval.
    #[arg(long, default_value_t = 10_000, value_parser = super::numbers::positive_usize)]
    bootstrap: usize,
    /// Write the full result (fraction, intervals, per-instruction scores) here, atomically.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where the model runs (cuda: a `--features cuda` build and a GPU).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
}

#[derive(Args)]
pub struct JudgeArgs {
    /// The model's outputs: AlpacaEval model_outputs.json ([{instruction, output, generator,
    /// dataset}]); they become output_2.
    #[arg(long)]
    outputs: PathBuf,
    /// The reference outputs (same format), paired by instruction; they become output_1.
    #[arg(long)]
    reference: PathBuf,
    /// Base URL of an OpenAI-compatible server (http:// or https://, e.g.
    /// https://api.openai.com): POST {URL}/v1/chat/completions. Its replies are journaled in
    /// OUT's folder (annotations.journal.jsonl for annotations.json), and a rerun reuses them.
    #[arg(long, requires = "judge_model", conflicts_with = "judge_local")]
    endpoint: Option<String>,
    /// Model name sent to the endpoint.
    #[arg(long)]
    judge_model: Option<String>,
    /// Environment variable holding an API key for the endpoint, sent as a bearer token (e.g.
    /// OPENAI_API_KEY; the key itself is never taken as an argument, nor printed).
    #[arg(long)]
    api_key_env: Option<String>,
    /// PEM file of the CA certificates to trust for an https endpoint, instead of the built-in
    /// Mozilla roots (default: the file named by SSL_CERT_FILE, if set).
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Retries of 429, 5xx and connection errors (exponential backoff with jitter, honouring
    /// Retry-After) stop after this many seconds.
    #[arg(long, default_value_t = 300.0, value_parser = super::numbers::non_negative_f64)]
    max_retry_seconds: f64,
    /// Time limit of one request to the endpoint, from connecting to the end of the response.
    #[arg(long, default_value_t = 300.0, value_parser = super::numbers::positive_f64)]
    request_timeout_seconds: f64,
    /// Judge with a model folder run in-process instead of an endpoint.
    #[arg(long)]
    judge_local: Option<PathBuf>,
    /// Longest judge prompt (tokens) the local judge accepts.
    #[arg(long, default_value_t = 16_384, value_parser = super::numbers::positive_usize)]
    judge_max_len: usize,
    /// Where --judge-local runs (cuda: a `--features cuda` build and a GPU).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// Prompts handed to the judge at once (a local judge runs them in one forward pass).
    #[arg(long, default_value_t = 8, value_parser = super::numbers::positive_usize)]
    batch: usize,
    /// Where to write annotations.json (atomically).
    #[arg(long)]
    out: PathBuf,
    /// Annotate only the first N model outputs.
    #[arg(long, value_parser = super::numbers::positive_usize)]
    max_examples: Option<usize>,
    /// The seed in AlpacaEval's output-order switch ("is_switched_outputs" + instruction + seed).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The annotator name written in each record.
    #[arg(long, default_value = ANNOTATOR)]
    annotator: String,
}

#[derive(Args)]
pub struct WinrateArgs {
    /// AlpacaEval annotations.json (output_1 the reference, output_2 the model).
    #[arg(long)]
    annotations: PathBuf,
    /// Instruction difficulty for the GLM: JSON object {instruction: value}, JSON list, or CSV
    /// (alpaca_eval's instruction_difficulty.csv).
    #[arg(long)]
    difficulty: Option<PathBuf>,
    /// Write the metrics here, atomically.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Ranking(args) => ranking(args),
        EvalCommand::Judge(args) => judge(args),
        EvalCommand::Winrate(args) => winrate(args),
    }
}

/// Runs `f` on the model of `dir` loaded on `device` (`model::device`), with its tokenizer.
fn with_model<R>(
    dir: &Path,
    device: Device,
    f: impl FnOnce(&mut dyn RunModel, &Tokenizer) -> Result<R>,
) -> Result<R> {
    let runtime = DeviceRuntime::open(device, "--device cuda", ", or use --device cpu")?;
    let mut model = runtime.load(dir)?;
    let tok = Tokenizer::load(dir, model.config())?;
    // The judge's name in annotations: the folder the CPU model records, or as given.
    let name = match model.as_cpu() {
        Some(m) => m.path.display().to_string(),
        None => dir.display().to_string(),
    };
    let on = if runtime.is_gpu() {
        eprintln!("{} on {}", dir.display(), runtime.name());
        " on the GPU"
    } else {
        ""
    };
    f(
        &mut LoadedModel {
            model: &mut model,
            name,
            on,
        },
        &tok,
    )
}

/// What `eval` does with a model, on either device.
trait RunModel {
    fn ranking(
        &mut self,
        tok: &Tokenizer,
        examples: &[Example],
        opts: &RankingOptions,
    ) -> Result<RankingReport>;
    fn judge(
        &mut self,
        tok: &Tokenizer,
        max_len: usize,
        run: &mut dyn FnMut(&mut dyn Judge) -> Result<Vec<Annotation>>,
    ) -> Result<Vec<Annotation>>;
}

struct LoadedModel<'m, 'g> {
    model: &'m mut DeviceModel<'g>,
    name: String,
    /// " on the GPU" or nothing, for the judge's start-up line.
    on: &'static str,
}

impl RunModel for LoadedModel<'_, '_> {
    fn ranking(
        &mut self,
        tok: &Tokenizer,
        examples: &[Example],
        opts: &RankingOptions,
    ) -> Result<RankingReport> {
        run_ranking(&mut *self.model, tok, examples, opts)
    }
    fn judge(
        &mut self,
        tok: &Tokenizer,
        max_len: usize,
        run: &mut dyn FnMut(&mut dyn Judge) -> Result<Vec<Annotation>>,
    ) -> Result<Vec<Annotation>> {
        let mut judge = LocalJudge::with_name(&mut *self.model, self.name.clone(), tok, max_len)?;
        eprintln!("judging with {} in-process{}", judge.name(), self.on);
        run(&mut judge)
    }
}

fn ranking(args: RankingArgs) -> Result<()> {
    let t0 = Instant::now();
    let examples = read_messages_jsonl(&args.data)?;
    let opts = RankingOptions {
        negatives: args.negatives,
        seed: args.seed,
        max_examples: args.max_examples,
        max_len: args.max_len,
        batch_tokens: args.batch_tokens,
        bootstrap: args.bootstrap,
    };
    let report = with_model(&args.model, args.device, |model, tok| {
        eprintln!(
            "loaded {} and {} examples from {} in {:.1}s",
            args.model.display(),
            examples.len(),
            args.data.display(),
            t0.elapsed().as_secs_f64()
        );
        model
            .ranking(tok, &examples, &opts)
            .map_err(|e| crate::Error(format!("{}: {e}", args.data.display())))
    })?;
    println!(
        "response ranking: true response preferred in {}/{} pairs = {:.4} over {} instructions; \
         95% CI [{:.4}, {:.4}] ({}); Wilson [{:.4}, {:.4}]; {} ties",
        report.wins,
        report.pairs,
        report.fraction,
        report.n_instructions,
        report.ci95[0],
        report.ci95[1],
        report.ci_method,
        report.wilson_ci95[0],
        report.wilson_ci95[1],
        report.ties
    );
    println!(
        "skipped: {} pairs ({} instructions, {} sequences) with no response token within max_len \
         {}; counted as losses (the paper's last plot_ratios.py): {}/{} = {:.4}",
        report.skipped_pairs,
        report.skipped_instructions,
        report.no_loss_sequences,
        report.max_len,
        report.wins,
        report.pairs + report.skipped_pairs,
        report.fraction_skipped_as_losses
    );
    if let Some(out) = &args.json {
        let value = json!({
            "model": args.model.display().to_string(),
            "data": args.data.display().to_string(),
            "result": report,
        });
        write_json_atomic(out, &value)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

fn judge(args: JudgeArgs) -> Result<()> {
    let opts = JudgeOptions {
        max_examples: args.max_examples,
        seed: args.seed,
        batch: args.batch,
        annotator: args.annotator.clone(),
    };
    let annotations = match (&args.endpoint, &args.judge_local) {
        (Some(url), None) => {
            let name = args.judge_model.as_deref().unwrap_or_default();
            let key = match &args.api_key_env {
                Some(var) => match std::env::var(var) {
                    Ok(key) if !key.is_empty() => Some(key),
                    _ => bail!("--api-key-env {var}: the variable is not set or empty"),
                },
                None => None,
            };
            let seconds = |option: &str, s: f64| match Duration::try_from_secs_f64(s) {
                Ok(d) => Ok(d),
                Err(_) => bail!("--{option} {s}: not a number of seconds"),
            };
            let client = ClientOptions {
                max_retry_time: seconds("max-retry-seconds", args.max_retry_seconds)?,
                request_timeout: seconds("request-timeout-seconds", args.request_timeout_seconds)?,
                ca_file: args.ca_cert.clone(),
                ..ClientOptions::default()
            };
            let mut judge = EndpointJudge::with_options(url, name, key, client)?;
            run_judge(&args.outputs, &args.reference, &mut judge, &opts, &args.out)?
        }
        (None, Some(dir)) => with_model(dir, args.device, |model, tok| {
            model.judge(tok, args.judge_max_len, &mut |judge| {
                run_judge(&args.outputs, &args.reference, judge, &opts, &args.out)
            })
        })?,
        _ => bail!("give a judge: --endpoint URL --judge-model NAME, or --judge-local DIR"),
    };
    let prefs: Vec<Option<f64>> = annotations.iter().map(|a| a.preference).collect();
    let w = raw_winrate(&prefs);
    println!(
        "wrote {} annotations to {}: win rate {:.2} ± {:.2} ({}, {}, {}, {} without a preference)",
        annotations.len(),
        args.out.display(),
        w.win_rate,
        w.standard_error,
        counted(w.n_wins, "win", "wins"),
        counted(w.n_wins_base, "loss", "losses"),
        counted(w.n_draws, "draw", "draws"),
        annotations.len() - w.n_total
    );
    Ok(())
}

/// "1 draw", "2 draws".
fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn winrate(args: WinrateArgs) -> Result<()> {
    let rows = read_annotations(&args.annotations)?;
    let difficulty = args
        .difficulty
        .as_deref()
        .map(Difficulty::read)
        .transpose()?;
    let prefs: Vec<Option<f64>> = rows.iter().map(|r| r.preference).collect();
    let raw = raw_winrate(&prefs);
    let lc = length_controlled(&rows, difficulty.as_ref())
        .map_err(|e| crate::Error(format!("{}: {e}", args.annotations.display())))?;
    let model = rows
        .first()
        .and_then(|r| r.generator_2.clone())
        .unwrap_or_default();
    let baseline = rows
        .first()
        .and_then(|r| r.generator_1.clone())
        .unwrap_or_default();
    println!(
        "{model} vs {baseline} ({} annotations): win rate {:.4} ± {:.4} ({}, {}, {}, {} with a preference); discrete win rate {:.4}",
        rows.len(),
        raw.win_rate,
        raw.standard_error,
        counted(raw.n_wins, "win", "wins"),
        counted(raw.n_wins_base, "loss", "losses"),
        counted(raw.n_draws, "draw", "draws"),
        raw.n_total,
        raw.discrete_win_rate
    );
    let note = lc.comparability_note();
    println!(
        "length-controlled win rate {:.4} ({})",
        lc.length_controlled_winrate,
        note.unwrap_or("the baseline against itself: 50 by construction")
    );
    if !lc.terms.is_empty() {
        let terms: Vec<String> = lc
            .terms
            .iter()
            .map(|t| format!("{} {:.4}", t.name, t.coefficient))
            .collect();
        println!(
            "  logistic fit, C = {:.4} by cross-validation: {}",
            lc.best_c,
            terms.join(", ")
        );
    }
    if let Some(out) = &args.json {
        let value = json!({
            "annotations": args.annotations.display().to_string(),
            "model": model,
            "baseline": baseline,
            "win_rate": raw.win_rate,
            "standard_error": raw.standard_error,
            "n_wins": raw.n_wins,
            "n_wins_base": raw.n_wins_base,
            "n_draws": raw.n_draws,
            "n_total": raw.n_total,
            "discrete_win_rate": raw.discrete_win_rate,
            "length_controlled_winrate": lc.length_controlled_winrate,
            "length_controlled_note": note,
            "glm": lc,
        });
        write_json_atomic(out, &value)?;
    }
    Ok(())
}
