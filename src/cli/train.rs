//! `implicit train` and `implicit data build`.

use crate::backend::Device;
use crate::data::{build_task, Mode, Task};
use crate::error::{Context, Result};
use crate::model::ModelConfig;
use crate::train::launch::{spawn_ranks, DataParallel};
use crate::train::plan::{CheckpointingChoice, OptimizerPlacement};
use crate::train::{remove_run, train, Recipe, TrainOptions};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Build one of the paper's training sets as Tulu `messages` JSONL (first 1000 rows).
    Build {
        #[arg(long, value_enum)]
        task: Task,
        /// The source file (or the shared data folder holding it).
        #[arg(long)]
        source: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run_data(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Build { task, source, out } => {
            println!("{}", build_task(task, &source, &out)?);
            Ok(())
        }
    }
}

#[derive(Args)]
pub struct TrainArgs {
    /// Model folder to start from (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Training data: Tulu `messages` JSONL (`implicit data build`).
    #[arg(long)]
    data: PathBuf,
    /// `response` replaces every user turn with "" (response tuning).
    #[arg(long, value_enum, default_value_t = Mode::Instruction)]
    mode: Mode,
    #[arg(long)]
    epochs: usize,
    #[arg(long)]
    lr: f32,
    #[command(flatten)]
    recipe: Recipe,
    /// Use only the first N examples of --data.
    #[arg(long)]
    max_examples: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the forward, backward and optimizer run: cpu, or cuda (a build with `--features
    /// cuda` and a GPU of compute capability 8.0 or newer; bf16 precision).
    #[arg(long, value_enum, default_value_t = Device::default())]
    device: Device,
    /// (cuda) Activation checkpointing: `auto` (the default) keeps the activations of as many
    /// layers (the last ones) as the GPU's memory left after the model's state holds and
    /// recomputes the others in the backward; `on` (also the bare flag) recomputes every
    /// layer (one more forward, far less memory), `off` none.
    #[arg(long, value_enum, num_args = 0..=1, default_value_t = CheckpointingChoice::Auto,
          default_missing_value = "on")]
    checkpointing: CheckpointingChoice,
    /// (cuda) Where the fp32 master weights and AdamW moments live: on the GPU (18 bytes per
    /// parameter there), or in page-locked host memory (6 on the GPU; Llama-2-7B on 80 GB); or
    /// bf16: no master, bf16 moments on the GPU, stochastic rounding (10 bytes per parameter;
    /// Llama-2-7B on 80 GB without streaming; other numerics than fp32 master weights).
    #[arg(long, value_enum, default_value_t = OptimizerPlacement::default())]
    optimizer_state: OptimizerPlacement,
    /// (cuda) Print the memory plan before loading and the measured peak after the first step.
    #[arg(long)]
    memory_report: bool,
    /// (cuda) Data parallelism over this many GPUs: one process per GPU, gradients summed and
    /// the optimizer state sharded over NCCL (1 runs the same path on one GPU).
    #[arg(long)]
    gpus: Option<usize>,
    /// Output folder: epoch-N/ checkpoints (loadable by `generate`) and metrics.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// Continue from the newest checkpoint in --out (the recipe, data and model must be the
    /// ones it was trained with).
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Delete the run already in --out (its epoch-N/ checkpoints and metrics.jsonl; other files
    /// stay) and start again. Without it (or --resume), a folder that holds a run is refused.
    #[arg(long)]
    overwrite: bool,
}

pub fn run_train(a: TrainArgs) -> Result<()> {
    let rank = DataParallel::from_env()?;
    let is_rank = rank.is_some();
    let opts = TrainOptions {
        model: a.model,
        data: a.data,
        mode: a.mode,
        epochs: a.epochs,
        lr: a.lr,
        recipe: a.recipe,
        max_examples: a.max_examples,
        seed: a.seed,
        device: a.device,
        checkpointing: a.checkpointing,
        optimizer_state: a.optimizer_state,
        memory_report: a.memory_report,
        data_parallel: rank,
        out: a.out,
        resume: a.resume,
        progress: true,
    };
    // Before anything is deleted or started: a bad number must not cost the old run.
    opts.validate()?;
    // Once, in the process the user started (not again in each rank it starts).
    if a.overwrite && !is_rank {
        let config = ModelConfig::from_file(&opts.model.join("config.json"))?;
        opts.recipe
            .validate_for(&config)
            .with_context(|| opts.model.display().to_string())?;
        let removed = remove_run(&opts.out)?;
        if removed > 0 {
            eprintln!(
                "--overwrite: removed the run in {} ({removed} entries)",
                opts.out.display()
            );
        }
    }
    if let (Some(world), false) = (a.gpus, is_rank) {
        if opts.device != Device::Cuda {
            crate::bail!("--gpus is for --device cuda");
        }
        // This process only starts the ranks (copies of this command) and waits for them.
        return spawn_ranks(world, &opts.out);
    }
    let summary = train(&opts)?;
    println!(
        "trained {} steps; final loss {:.4}; checkpoints: {}",
        summary.steps,
        summary.final_loss,
        summary
            .checkpoints
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::ExperimentConfig;
    use crate::optim::Schedule;
    use crate::train::Precision;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    /// `implicit train` with the required flags and `flags`.
    fn parse(flags: &[&str]) -> TrainArgs {
        let required = [
            "train", "--model", "m", "--data", "d.jsonl", "--epochs", "3", "--lr", "1e-5", "--out",
            "o",
        ];
        Cli::try_parse_from(required.iter().chain(flags))
            .unwrap()
            .train
    }

    #[test]
    fn no_flags_and_an_empty_train_table_give_the_same_recipe() {
        let cli = parse(&[]);
        let config = ExperimentConfig::parse(
            "[train]\n[judge]\nlocal = \"j\"\n[[model]]\nname = \"m\"\npath = \"p\"\n",
        )
        .unwrap()
        .train;
        assert_eq!(cli.recipe, Recipe::default());
        assert_eq!(config.recipe, Recipe::default());
        assert_eq!(
            (cli.device, cli.checkpointing, cli.optimizer_state),
            (config.device, config.checkpointing, config.optimizer_state)
        );
    }

    #[test]
    fn every_recipe_flag_is_read() {
        let a = parse(&[
            "--batch-size",
            "8",
            "--micro-batch",
            "2",
            "--warmup",
            "0",
            "--schedule",
            "cosine",
            "--weight-decay",
            "0.1",
            "--max-grad-norm",
            "2.5",
            "--max-len",
            "96",
            "--precision",
            "f32",
        ]);
        let want = Recipe {
            batch_size: 8,
            micro_batch: 2,
            warmup: 0.0,
            schedule: Schedule::Cosine,
            weight_decay: 0.1,
            max_grad_norm: 2.5,
            max_len: 96,
            precision: Precision::F32,
        };
        assert_eq!(a.recipe, want);
    }
}
