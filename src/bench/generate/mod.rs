//! `implicit bench generate`: greedy decoding speed of a model folder on the GPU, as
//! `generate --device cuda` decodes (`CudaTransformer::forward_greedy` over every sequence with
//! its own KV cache, each decode step one CUDA graph, the tokens picked on the GPU), beside the
//! device-to-device copy bandwidth measured in the same run and, with `--torch`, transformers'
//! `generate` from tools/bench_generate_torch.py. The GPU work is on_gpu.rs; this file checks
//! the arguments, draws the prompts and runs the measurements; summary.rs does the arithmetic,
//! report.rs the table and JSON.
//!
//! Per batch size B: B prompts of --prompt-len random ids (xorshift64*, seeded; never an EOS
//! id; the PyTorch script draws the same ids), one prefill forward over all of them (its logits
//! give each sequence's first new token), then --new-tokens − 1 decode steps of all B
//! sequences, EOS ignored. Decode tokens/s = B · steps / the steps' seconds (transformers'
//! `generate(max_new_tokens=N)` also makes N − 1 decode forwards after its prefill).
//!
//! Bytes a decode step must read: every weight matrix once (bf16; the LM head, or the tied
//! embedding, in full), the norms (f32), B rows of the embedding; and each sequence's cached
//! keys and values (bf16), on average over the steps prompt + 1 + N/2 positions per layer
//! (attending prompt + j keys at step j, plus the row written). Bandwidth = bytes / the median
//! step's forward time (its kernels, launches and the picks' download; the host's feeding them
//! back not included). The floor of a step is its weight bytes at the copy bandwidth; the
//! table and the JSON (`bandwidth.floor_ms`, `bandwidth.step_of_floor`) give each batch's
//! median step against it.

// Without the `cuda` feature only the argument checks run; the rest is the tests'.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use crate::bail;
use crate::error::{Context, Result};
use crate::model::{Architecture, ModelConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[cfg(feature = "cuda")]
mod on_gpu;
mod report;
mod summary;
#[cfg(test)]
mod tests;

#[cfg_attr(not(feature = "cuda"), allow(unused_imports))]
pub use report::*;
pub use summary::*;

pub const SCHEMA: &str = "implicit-bench-generate/1";
/// The largest batch size accepted.
pub const MAX_BATCH: usize = 1024;

/// What `bench generate` runs (its command-line arguments, `cli::bench::GenerateBenchArgs`).
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateBenchOptions {
    /// A Hugging Face model folder: config.json and the safetensors weights.
    pub model: PathBuf,
    /// Sequences decoded together, one measurement per size.
    pub batch_sizes: Vec<usize>,
    /// Tokens per prompt.
    pub prompt_len: usize,
    /// Tokens generated per sequence (the first by the prefill, the rest by decode steps).
    pub new_tokens: usize,
    /// Seed of the prompts' ids.
    pub seed: u64,
    /// tools/bench_generate_torch.py's JSON for the same model and sizes, shown beside.
    pub torch: Option<PathBuf>,
    /// Launch each decode step kernel by kernel instead of replaying it as a CUDA graph.
    pub no_cuda_graphs: bool,
    /// Write the report here, atomically.
    pub json: Option<PathBuf>,
}

/// The checked arguments.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub batch_sizes: Vec<usize>,
    pub prompt_len: usize,
    pub new_tokens: usize,
    /// new_tokens − 1.
    pub decode_steps: usize,
    pub seed: u64,
    /// Whether decode steps replay CUDA graphs (off with --no-cuda-graphs).
    pub cuda_graphs: bool,
}

pub fn plan(a: &GenerateBenchOptions) -> Result<Plan> {
    let b = &a.batch_sizes;
    if b.is_empty() {
        bail!("bench generate: --batch-sizes: give at least one");
    }
    if let Some(&bad) = b.iter().find(|&&n| n == 0 || n > MAX_BATCH) {
        bail!("bench generate: --batch-sizes {bad}: each must be 1 to {MAX_BATCH}");
    }
    if let Some((i, _)) = b.iter().enumerate().find(|(i, n)| b[..*i].contains(n)) {
        bail!("bench generate: --batch-sizes: {} is given twice", b[i]);
    }
    if a.prompt_len == 0 {
        bail!("bench generate: --prompt-len must be at least 1");
    }
    if a.new_tokens < 2 {
        bail!(
            "bench generate: --new-tokens {}: must be at least 2 (the first new token comes \
             from the prefill; the others are the decode steps timed)",
            a.new_tokens
        );
    }
    Ok(Plan {
        batch_sizes: b.clone(),
        prompt_len: a.prompt_len,
        new_tokens: a.new_tokens,
        decode_steps: a.new_tokens - 1,
        seed: a.seed,
        cuda_graphs: !a.no_cuda_graphs,
    })
}

/// The model can hold prompt + new tokens, and has ids that are not EOS.
pub fn check_fits(plan: &Plan, c: &ModelConfig, dir: &Path) -> Result<()> {
    let need = plan.prompt_len + plan.new_tokens;
    if need > c.max_position_embeddings {
        bail!(
            "bench generate: --prompt-len {} + --new-tokens {} = {need} positions; {}'s context \
             is {}",
            plan.prompt_len,
            plan.new_tokens,
            dir.display(),
            c.max_position_embeddings
        );
    }
    let eos_in_vocab = (0..c.vocab_size as u32)
        .filter(|t| c.eos_token_ids.contains(t))
        .count();
    if eos_in_vocab >= c.vocab_size {
        bail!(
            "bench generate: {}: every id of the vocabulary is EOS",
            dir.display()
        );
    }
    Ok(())
}

/// `batch` prompts of `len` ids below `vocab`, none in `avoid`: xorshift64* started from
/// splitmix64(seed) (1 if that is 0), one id per draw (`next % vocab`, drawn again while in
/// `avoid`), prompt after prompt, so a smaller batch's prompts are the larger one's first.
/// tools/bench_generate_torch.py's `prompt_ids` is the same function.
pub fn prompt_ids(
    seed: u64,
    batch: usize,
    len: usize,
    vocab: usize,
    avoid: &[u32],
) -> Vec<Vec<u32>> {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let mut state = (z ^ (z >> 31)).max(1);
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let vocab = vocab.max(1) as u64;
    (0..batch)
        .map(|_| {
            (0..len)
                .map(|_| loop {
                    let id = (next() % vocab) as u32;
                    if !avoid.contains(&id) {
                        break id;
                    }
                })
                .collect()
        })
        .collect()
}

/// Without the `cuda` feature: the arguments and the torch file are checked, then nothing runs.
#[cfg(not(feature = "cuda"))]
pub fn run(args: GenerateBenchOptions) -> Result<()> {
    let plan = plan(&args)?;
    if let Some(path) = &args.torch {
        read_torch(path, &plan)?;
    }
    Err(crate::backend::built_without_cuda("bench generate", ""))
}

#[cfg(feature = "cuda")]
pub fn run(args: GenerateBenchOptions) -> Result<()> {
    use crate::backend::cuda::CudaBackend;
    use crate::bench::kernels::device_info;
    use crate::bench::record::{command_line, commit, utc_iso8601};

    let plan = plan(&args)?;
    let torch = match &args.torch {
        Some(path) => Some(read_torch(path, &plan)?),
        None => None,
    };
    let dir = &args.model;
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    check_fits(&plan, &config, dir)?;
    let files = on_gpu::weight_files(dir)?;
    let gpu = CudaBackend::require(0, "bench generate: no GPU found")?;
    let (torch_parsed, torch_raw) = torch.unzip();
    let mut report = Report {
        schema: SCHEMA,
        device: gpu.device_name().to_string(),
        device_info: serde_json::to_value(device_info(&gpu)).unwrap_or_default(),
        commit: commit(),
        date: utc_iso8601(std::time::SystemTime::now()),
        command: command_line(),
        config: ReportConfig {
            model: dir.display().to_string(),
            plan: plan.clone(),
            shape: model_shape(&config),
            torch_file: args.torch.as_ref().map(|p| p.display().to_string()),
        },
        copy_ceiling: None,
        copy_gb_s: None,
        load: None,
        results: Vec::new(),
        torch: torch_raw,
        torch_parsed,
        error: None,
    };
    let outcome = measure(&gpu, &plan, &config, dir, &files, &mut report);
    if let Err(e) = &outcome {
        report.error = Some(e.to_string());
    }
    if let Some(t) = &report.torch_parsed {
        let t = t.clone();
        attach_torch(&mut report.results, &t, plan.seed);
    }
    print!("{}", render(&report));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| crate::error::Error(format!("bench generate: encoding JSON: {e}")))?;
        crate::io::atomic::write_atomic(path, format!("{text}\n").as_bytes())?;
        eprintln!("bench generate: wrote {}", path.display());
    }
    outcome
}

/// The copy ceiling, two loads, then each batch size; a batch's failure is recorded and the
/// others still run (the first failure is returned at the end).
#[cfg(feature = "cuda")]
fn measure(
    gpu: &crate::backend::cuda::CudaBackend,
    plan: &Plan,
    config: &ModelConfig,
    dir: &Path,
    files: &[(PathBuf, u64)],
    report: &mut Report,
) -> Result<()> {
    let copy = on_gpu::copy_ceiling(gpu, plan.seed, 20)?;
    eprintln!(
        "bench generate: copy ceiling {:.0} GB/s on {}",
        copy.gb_s,
        gpu.device_name()
    );
    report.copy_gb_s = Some(copy.gb_s);
    report.copy_ceiling = serde_json::to_value(&copy).ok();

    let bytes_on_disk: u64 = files.iter().map(|(_, n)| n).sum();
    let mut load = LoadResult {
        files: files.len(),
        bytes_on_disk,
        device_bytes: device_weight_bytes(config),
        loads: Vec::new(),
    };
    let dropped = on_gpu::drop_page_cache(files);
    let resident = on_gpu::resident_fraction(files);
    let (first, seconds) = on_gpu::timed_load(gpu, dir)?;
    drop(first);
    load.loads.push(load_timing(
        "first",
        dropped,
        resident,
        seconds,
        bytes_on_disk,
    ));
    let resident = on_gpu::resident_fraction(files);
    let (mut model, seconds) = on_gpu::timed_load(gpu, dir)?;
    model.decode_graphs &= plan.cuda_graphs;
    load.loads.push(load_timing(
        "second",
        false,
        resident,
        seconds,
        bytes_on_disk,
    ));
    for l in &load.loads {
        eprintln!(
            "bench generate: {} load {:.2} s = {:.2} GB/s ({})",
            l.label, l.seconds, l.gb_s, l.page_cache
        );
    }
    report.load = Some(load);

    let mut first_error = None;
    for &batch in &plan.batch_sizes {
        let bytes = step_bytes(config, batch, plan.prompt_len, plan.new_tokens);
        let prompts = prompt_ids(
            plan.seed,
            batch,
            plan.prompt_len,
            config.vocab_size,
            &config.eos_token_ids,
        );
        match on_gpu::greedy_decode(&mut model, &prompts, plan.new_tokens) {
            Ok(t) => {
                let m = Measured {
                    prefill_s: t.prefill_s,
                    forward_s: t.forward_s,
                    pick_s: t.pick_s,
                    first_tokens: t.first_tokens,
                    peak_memory_bytes: t.peak_memory_bytes,
                };
                let r = summarize(batch, plan, bytes, &m, report.copy_gb_s);
                if let Some(d) = &r.decode {
                    eprintln!(
                        "bench generate: batch {batch}: decode {:.1} tokens/s, step {:.2} ms",
                        d.tokens_per_s, d.step_ms.median
                    );
                }
                report.results.push(r);
            }
            Err(e) => {
                eprintln!("bench generate: batch {batch} failed: {e}");
                first_error.get_or_insert_with(|| format!("batch {batch}: {e}"));
                report
                    .results
                    .push(BatchResult::failed(batch, bytes, e.to_string()));
            }
        }
    }
    match first_error {
        Some(e) => bail!("bench generate: {e}"),
        None => Ok(()),
    }
}
