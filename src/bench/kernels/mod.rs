//! `implicit bench kernels`: every CUDA kernel at Llama-2-7B's shapes, against ceilings measured
//! in the same run (device-to-device copy bandwidth, cuBLAS at the same GEMM shapes) and, for
//! attention, PyTorch SDPA's times from tools/bench_sdpa.py. Prints a table as it goes
//! (table.rs) and writes the full results as JSON (`--json`). The measuring is suite.rs.

#[cfg(feature = "cuda")]
mod suite;
#[cfg(feature = "cuda")]
mod table;

#[cfg(feature = "cuda")]
pub use suite::*;
#[cfg(feature = "cuda")]
use table::Table;

use crate::error::Result;
use std::path::PathBuf;

/// What `bench kernels` runs (its command-line arguments, `cli::bench::KernelsArgs`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelsBenchOptions {
    /// Write the results (device, commit, date, command, ceilings, results) here, atomically.
    pub json: Option<PathBuf>,
    /// Micro-batch 1 only, and 10 samples per kernel.
    pub quick: bool,
    /// tools/bench_sdpa.py's JSON: PyTorch SDPA's times at the same attention shapes.
    pub sdpa: Option<PathBuf>,
    /// Micro-batches of 2048-token sequences; empty: 1, 4, 8 (1 with `quick`).
    pub micro_batches: Vec<usize>,
    /// Timed samples per kernel; default 30 (10 with `quick`).
    pub samples: Option<usize>,
    /// Only kernels whose name contains one of these (the ceilings are always measured).
    pub filter: Vec<String>,
    /// Leave out the Hopper GEMM's rows (kernels/gemm_wgmma.cu).
    pub no_wgmma: bool,
}

/// Without the `cuda` feature: nothing to time.
#[cfg(not(feature = "cuda"))]
pub fn run(_: KernelsBenchOptions) -> Result<()> {
    Err(crate::backend::built_without_cuda("bench kernels", ""))
}

#[cfg(feature = "cuda")]
pub fn run(args: KernelsBenchOptions) -> Result<()> {
    use crate::backend::cuda::CudaBackend;
    use crate::bail;
    use crate::bench::record::{command_line, commit, utc_iso8601};

    let micro_batches = match (args.micro_batches.is_empty(), args.quick) {
        (false, _) => args.micro_batches.clone(),
        (true, true) => vec![1],
        (true, false) => vec![1, 4, 8],
    };
    if let Some(&bad) = micro_batches.iter().find(|&&m| m == 0 || m > 64) {
        bail!("bench kernels: --micro-batches {bad}: each must be 1 to 64");
    }
    let samples = args.samples.unwrap_or(if args.quick { 10 } else { 30 });
    if !(3..=10_000).contains(&samples) {
        bail!("bench kernels: --samples {samples}: must be 3 to 10000");
    }
    let sdpa = match &args.sdpa {
        Some(path) => Some(read_sdpa(path)?),
        None => None,
    };
    let gpu = CudaBackend::require(0, "bench kernels: no GPU found")?;
    let config = BenchConfig {
        micro_batches: micro_batches.clone(),
        samples,
        filter: args
            .filter
            .iter()
            .filter(|f| !f.is_empty())
            .cloned()
            .collect(),
        sdpa: sdpa.as_ref().map(|s| s.results.clone()).unwrap_or_default(),
        wgmma: !args.no_wgmma,
    };
    let mut report = new_report(&gpu);
    eprintln!(
        "bench kernels: seed {} (IMPLICIT_BENCH_SEED replays it), micro-batches {:?}, {} samples",
        report.seed, micro_batches, samples
    );
    let mut table = Table::default();
    let outcome = measure(&gpu, &config, &mut report, &mut table);
    table.summary(&report, sdpa.is_some());
    if let Err(e) = &outcome {
        eprintln!("bench kernels: stopped early: {e}");
    }
    if let Some(path) = &args.json {
        let value = serde_json::json!({
            "schema": "implicit-bench-kernels/1",
            "device": report.device.name,
            "sm_count": report.device.sm_count,
            "compute_capability": report.device.compute_capability,
            "driver_version": report.device.driver_version,
            "cuda_driver_api": report.device.cuda_driver_api,
            "l2_bytes": report.device.l2_bytes,
            "memory_bytes": report.device.memory_bytes,
            "cublas_version": report.device.cublas_version,
            "commit": commit(),
            "date": utc_iso8601(std::time::SystemTime::now()),
            "command": command_line(),
            "config": {
                "micro_batches": micro_batches,
                "seq": SEQ,
                "d_model": D_MODEL,
                "ffn": FFN,
                "heads": HEADS,
                "head_dim": HEAD_DIM,
                "vocab": VOCAB,
                "decode_batch": DECODE_BATCH,
                "optimizer_params": OPTIMIZER_PARAMS,
                "samples": samples,
                "filter": config.filter,
                "seed": report.seed,
                "sdpa_file": args.sdpa.as_ref().map(|p| p.display().to_string()),
                "sdpa_torch": sdpa.as_ref().and_then(|s| s.torch.clone()),
                "sdpa_device": sdpa.as_ref().and_then(|s| s.device.clone()),
            },
            "ceilings": report.ceilings,
            "results": report.results,
            "error": outcome.as_ref().err().map(|e| e.to_string()),
        });
        let text = serde_json::to_string_pretty(&value)
            .map_err(|e| crate::error::Error(format!("bench kernels: encoding JSON: {e}")))?;
        crate::io::atomic::write_atomic(path, format!("{text}\n").as_bytes())?;
        eprintln!("bench kernels: wrote {}", path.display());
    }
    outcome
}

/// tools/bench_sdpa.py's JSON, or an error naming the file.
#[cfg(feature = "cuda")]
fn read_sdpa(path: &std::path::Path) -> Result<SdpaFile> {
    use crate::error::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--sdpa {}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "--sdpa {}: not tools/bench_sdpa.py's JSON (results[] of batch, heads, seq, \
             head_dim, fwd_ms, bwd_ms)",
            path.display()
        )
    })
}
