//! `implicit init`: a random-initialised model folder of a preset shape (see `model::init`).

use crate::error::{Context, Result};
use crate::model::init::{init_model, InitOptions, DEFAULT_SHARD_BYTES};
use crate::model::presets::{resolve_config, WeightDtype};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct InitArgs {
    /// A preset (llama2-7b, llama2-13b, olmo-7b, smollm2-135m, tiny-llama, tiny-olmo) or the
    /// path of a config.json (or of a folder holding one).
    #[arg(long, value_name = "PRESET|CONFIG.json")]
    config: String,
    /// The folder to create; it must not exist or be empty.
    #[arg(long)]
    out: PathBuf,
    /// Seeds the weights: the same seed gives the same bytes, whatever the thread count.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The weights' dtype in the safetensors (and config.json's torch_dtype).
    #[arg(long, value_enum, default_value_t = WeightDtype::Bf16)]
    dtype: WeightDtype,
    /// Copy tokenizer.json / tokenizer_config.json / tokenizer.model from this folder (its
    /// vocabulary must match the config's vocab_size).
    #[arg(long, value_name = "DIR")]
    tokenizer: Option<PathBuf>,
}

pub fn run(args: InitArgs) -> Result<()> {
    let (label, config) = resolve_config(&args.config)?;
    let opts = InitOptions {
        seed: args.seed,
        dtype: args.dtype,
        shard_bytes: DEFAULT_SHARD_BYTES,
        tokenizer: args.tokenizer,
        progress: true,
    };
    let report = init_model(&config, &args.out, &opts).with_context(|| label.clone())?;
    println!("{label}, seed {}: {report}", args.seed);
    Ok(())
}
