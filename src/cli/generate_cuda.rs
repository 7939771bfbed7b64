//! `implicit generate --device cuda`: the same prompts, decoding rules, EOS handling and
//! outputs as the CPU path, with the model's forward pass on the GPU
//! (`backend::cuda::CudaTransformer`). Logits come back to the host as f32 each step and the
//! shared engine (`generate::engine`, through `model::LanguageModel`) chooses each token there
//! exactly as on the CPU (the same `Sampler`, `greedy_pick`, rule adapter and continuous
//! batching); only opening the GPU and loading the model are this file's own.

use super::{run_loaded, GenerateArgs};
use crate::backend::cuda::{CudaBackend, CudaTransformer};
use crate::error::Result;
use crate::io::tokenizer::Tokenizer;
use std::path::Path;
use std::time::Instant;

/// Opens the GPU (or fails with the reason none can be used), loads the model onto it and runs
/// the prompt or the instruction set; `dir` is the model folder (`--model`'s, or its GGUF's
/// conversion).
pub(super) fn run(args: &GenerateArgs, dir: &Path) -> Result<()> {
    let gpu = CudaBackend::require(0, "--device cuda: no usable GPU")?;
    let t0 = Instant::now();
    let mut model = CudaTransformer::from_dir(&gpu, dir)?;
    let tok = Tokenizer::load(dir, &model.config)?;
    eprintln!(
        "loaded {} ({} parameters) onto {} in {:.2}s",
        args.model.display(),
        model.config.num_parameters(),
        gpu.device_name(),
        t0.elapsed().as_secs_f64(),
    );
    run_loaded(args, dir, &mut model, &tok, " (GPU)")
}
