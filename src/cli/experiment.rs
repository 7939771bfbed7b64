//! `implicit experiment run CONFIG` and `implicit experiment report DIR`.

use crate::error::Result;
use crate::experiment::config::ExperimentConfig;
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
    /// Redraw the tables and figures of a results folder from its artifacts.
    Report {
        /// A results folder made by `experiment run` (it holds config.toml).
        results: PathBuf,
    },
}

pub fn run(cmd: ExperimentCommand) -> Result<()> {
    match cmd {
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
