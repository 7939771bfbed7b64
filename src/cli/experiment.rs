//! `implicit experiment run CONFIG` and `implicit experiment report DIR`.

use crate::error::Result;
use crate::experiment::config::ExperimentConfig;
use crate::experiment::plan::{describe, plan, Throughputs};
use crate::experiment::report::{tables, write_report};
use crate::experiment::{run_experiment, RunOptions};
use clap::Subcommand;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand)]
pub enum ExperimentCommand {
    /// Run (or continue) every cell of a grid: data, training with epoch selection,
    /// generation, judging, ranking; then write tables/ and figures/. Finished cells are
    /// never recomputed, so a killed run continues where it stopped.
    Run {
        /// The experiment config (see configs/).
        config: PathBuf,
        /// The results folder (default: results/<name from the config>).
        #[arg(long)]
        results: Option<PathBuf>,
    },
    /// What a grid costs before it runs: training runs and tokens, answers, comparisons and
    /// ranked sequences counted from the config, its data and the tokenizer; training memory;
    /// and GPU hours at measured throughputs.
    Plan(PlanArgs),
    /// Redraw the tables and figures of a results folder from its artifacts.
    Report {
        /// A results folder made by `experiment run` (it holds config.toml).
        results: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct PlanArgs {
    /// The experiment config (see configs/).
    config: PathBuf,
    /// A tokenizer folder for models that are not on this machine.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// A config.json of the models' shape when they are not here (configs/models/).
    #[arg(long)]
    shape: Option<PathBuf>,
    /// `bench train --json`: its tokens/s for training.
    #[arg(long)]
    bench_train: Option<PathBuf>,
    /// `bench generate --json`: prefill and decode tokens/s at the config's batch size.
    #[arg(long)]
    bench_generate: Option<PathBuf>,
    /// Training tokens/s to plan with (overrides --bench-train's), e.g. from another run.
    #[arg(long, value_parser = super::numbers::positive_f64)]
    train_tokens_per_s: Option<f64>,
    /// Prompt (prefill) tokens/s of generation and ranking (overrides --bench-generate's).
    #[arg(long, value_parser = super::numbers::positive_f64)]
    prefill_tokens_per_s: Option<f64>,
    /// Generated (decode) tokens/s at the config's batch size (overrides --bench-generate's).
    #[arg(long, value_parser = super::numbers::positive_f64)]
    decode_tokens_per_s: Option<f64>,
    /// Write the plan as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    use crate::error::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
}

/// The throughputs of the command line, else of the benchmark files.
fn throughputs(a: &PlanArgs, cfg: &ExperimentConfig) -> Result<Throughputs> {
    let mut t = Throughputs {
        train: a.train_tokens_per_s,
        prefill: a.prefill_tokens_per_s,
        decode: a.decode_tokens_per_s,
        generation_basis: None,
    };
    if let Some(p) = &a.bench_train {
        let v = read_json(p)?;
        t.train = t.train.or(v["tokens_per_s"].as_f64());
        if t.train.is_none() {
            crate::bail!(
                "{}: no tokens_per_s (a `bench train --json` file?)",
                p.display()
            );
        }
    }
    if let Some(p) = &a.bench_generate {
        let (prefill, decode, basis) =
            crate::experiment::rates::generation_rates(&read_json(p)?, cfg.generate.batch_size, p)?;
        if t.prefill.is_none() || t.decode.is_none() {
            t.generation_basis = Some(basis);
        }
        t.prefill = t.prefill.or(prefill);
        t.decode = t.decode.or(Some(decode));
    }
    // The flags are checked by clap; a benchmark file's figures are checked here.
    for (what, x) in [
        ("training", t.train),
        ("prefill", t.prefill),
        ("decode", t.decode),
    ] {
        if let Some(x) = x.filter(|x| !(x.is_finite() && *x > 0.0)) {
            crate::bail!("{what} throughput {x} tokens/s (from a benchmark file) is not positive");
        }
    }
    Ok(t)
}

pub fn run(cmd: ExperimentCommand) -> Result<()> {
    match cmd {
        ExperimentCommand::Plan(a) => {
            let cfg = ExperimentConfig::from_file(&a.config)?;
            let t = throughputs(&a, &cfg)?;
            let scratch =
                std::env::temp_dir().join(format!("implicit-plan-{}", std::process::id()));
            let plans = plan(&cfg, a.tokenizer.as_deref(), a.shape.as_deref(), &scratch);
            let _ = std::fs::remove_dir_all(&scratch);
            let plans = plans?;
            println!("# Plan of {}\n\n{}", cfg.name, describe(&plans, &t));
            if let Some(path) = &a.json {
                let value = serde_json::json!({"config": a.config.display().to_string(), "throughputs": t, "models": plans});
                let text = serde_json::to_string_pretty(&value).unwrap_or_default();
                crate::io::atomic::write_atomic(path, text.as_bytes())?;
            }
            Ok(())
        }
        ExperimentCommand::Run { config, results } => {
            let t0 = Instant::now();
            let cfg = ExperimentConfig::from_file(&config)?;
            let results = results.unwrap_or_else(|| PathBuf::from("results").join(&cfg.name));
            eprintln!(
                "experiment {}: {} model(s), settings {}, seeds {:?}, epoch sweep {:?} -> {}",
                cfg.name,
                cfg.models.len(),
                cfg.settings
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                cfg.seeds,
                cfg.epochs,
                results.display()
            );
            let store = run_experiment(
                &cfg,
                &RunOptions {
                    results: results.clone(),
                },
            )?;
            for t in tables(&cfg, &store.root)? {
                println!("{}", t.markdown());
            }
            println!(
                "experiment {} finished in {:.1}s: {} steps recorded; tables in {}",
                cfg.name,
                t0.elapsed().as_secs_f64(),
                store.manifest.steps.len(),
                results.join("tables").display()
            );
            Ok(())
        }
        ExperimentCommand::Report { results } => {
            let cfg = ExperimentConfig::from_file(&results.join("config.toml"))?;
            if !results.join("manifest.json").is_file() {
                crate::bail!(
                    "{}: no manifest.json: not a results folder of `experiment run`",
                    results.display()
                );
            }
            let written = write_report(&cfg, &results)?;
            for t in tables(&cfg, &results)? {
                println!("{}", t.markdown());
            }
            println!("wrote {} files under {}", written.len(), results.display());
            Ok(())
        }
    }
}
