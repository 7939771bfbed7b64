//! The `implicit` command line.

mod bench;
mod eval;
mod experiment;
mod generate;
mod init;
mod numbers;
mod serve;
mod train;

use crate::error::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "implicit",
    version,
    about = "A native transformer runtime for instruction-following experiments"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a Hugging Face model folder (config.json, *.safetensors, tokenizer.json).
    Generate(generate::GenerateArgs),
    /// Fully finetune a model (instruction or response tuning, single-task finetuning).
    Train(train::TrainArgs),
    /// Training data.
    Data {
        #[command(subcommand)]
        command: train::DataCommand,
    },
    /// Serve a model over the OpenAI API (/v1/chat/completions, /v1/completions).
    Serve(serve::ServeArgs),
    /// The paper's evaluations: response ranking, judged pairwise comparisons, win rates.
    Eval {
        #[command(subcommand)]
        command: eval::EvalCommand,
    },
    /// Run the paper's experiment grid from one config, or redraw its tables and plots.
    Experiment {
        #[command(subcommand)]
        command: experiment::ExperimentCommand,
    },
    /// Benchmarks: `bench kernels` times the CUDA kernels at the paper's shapes.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Write a random-initialised model folder of a preset shape (for benchmarks).
    Init(init::InitArgs),
    /// Convert a GGUF file (versions 1-3) into a Hugging Face model folder.
    ConvertGguf {
        /// The .gguf file to read.
        input: PathBuf,
        /// The folder to write model.safetensors, config.json and tokenizer.json into; it must
        /// be missing or empty.
        out_dir: PathBuf,
        /// Replace the model in a folder that holds one: its weights (every .safetensors and
        /// index), config and tokenizer files go; other files stay.
        #[arg(long)]
        overwrite: bool,
    },
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Train(args) => train::run_train(args),
        Command::Data { command } => train::run_data(command),
        Command::Serve(args) => serve::run(args),
        Command::Eval { command } => eval::run(command),
        Command::Experiment { command } => experiment::run(command),
        Command::Bench { command } => bench::run(command),
        Command::Init(args) => init::run(args),
        Command::ConvertGguf {
            input,
            out_dir,
            overwrite,
        } => {
            let report = crate::io::convert::convert_gguf_with(&input, &out_dir, overwrite)?;
            println!("{report}");
            Ok(())
        }
    }
}

/// Runs the CLI and returns the process exit code: 0, 1 on an error (one line on stderr),
/// 2 on bad usage (clap's own message).
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
