//! `implicit bench generate`'s arguments; the benchmark is `bench::generate`.

use crate::bench::generate::GenerateBenchOptions;
use crate::cli::numbers::positive_usize;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct GenerateBenchArgs {
    /// A Hugging Face model folder: config.json and the safetensors weights (no tokenizer
    /// needed; prompts are random ids).
    #[arg(long)]
    model: PathBuf,
    /// Sequences decoded together, one measurement per size.
    #[arg(long, value_delimiter = ',', default_value = "1,64", value_parser = positive_usize)]
    batch_sizes: Vec<usize>,
    /// Tokens per prompt.
    #[arg(long, default_value_t = 128, value_parser = positive_usize)]
    prompt_len: usize,
    /// Tokens generated per sequence (the first by the prefill, the rest by decode steps).
    #[arg(long, default_value_t = 128, value_parser = positive_usize)]
    new_tokens: usize,
    /// Seed of the prompts' ids (the PyTorch script's --seed draws the same ones).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// tools/bench_generate_torch.py's JSON for the same model and sizes, shown beside.
    #[arg(long)]
    torch: Option<PathBuf>,
    /// Launch each decode step kernel by kernel instead of replaying it as a CUDA graph (to
    /// measure what the graphs gain; also `IMPLICIT_CUDA_GRAPHS=0`).
    #[arg(long)]
    no_cuda_graphs: bool,
    /// Write the results (device, commit, date, command, config, load, per batch, torch) here,
    /// atomically.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl From<GenerateBenchArgs> for GenerateBenchOptions {
    fn from(a: GenerateBenchArgs) -> Self {
        Self {
            model: a.model,
            batch_sizes: a.batch_sizes,
            prompt_len: a.prompt_len,
            new_tokens: a.new_tokens,
            seed: a.seed,
            torch: a.torch,
            no_cuda_graphs: a.no_cuda_graphs,
            json: a.json,
        }
    }
}
