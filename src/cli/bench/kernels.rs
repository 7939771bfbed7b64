//! `implicit bench kernels`: every CUDA kernel at Llama-2-7B's shapes, against ceilings measured
//! in the same run (device-to-device copy bandwidth, cuBLAS at the same GEMM shapes) and, for
//! attention, PyTorch SDPA's times from tools/bench_sdpa.py. Prints a table as it goes and
//! writes the full results as JSON (`--json`). The measuring is in `bench`.

#[cfg(feature = "cuda")]
use super::{command_line, commit, utc_iso8601};
use crate::error::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct KernelsArgs {
    /// Write the results (device, commit, date, command, ceilings, results) here, atomically.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Micro-batch 1 only, and 10 samples per kernel.
    #[arg(long)]
    quick: bool,
    /// tools/bench_sdpa.py's JSON: PyTorch SDPA's times at the same attention shapes.
    #[arg(long)]
    sdpa: Option<PathBuf>,
    /// Micro-batches of 2048-token sequences (tokens per launch = micro-batch x 2048; attention
    /// runs that many sequences). Default 1,4,8 (1 with --quick).
    #[arg(long, value_delimiter = ',')]
    micro_batches: Vec<usize>,
    /// Timed samples per kernel (median, min, max over them). Default 30 (10 with --quick).
    #[arg(long)]
    samples: Option<usize>,
    /// Only kernels whose name contains one of these (comma-separated), e.g. gemm,flash,rmsnorm.
    /// The ceilings are always measured.
    #[arg(long, value_delimiter = ',')]
    filter: Vec<String>,
    /// Leave out the Hopper GEMM's rows (kernels/gemm_wgmma.cu, timed beside each GEMM row on
    /// compute capability 9.0 by default), e.g. when its tests (`cuda_kernels wgmma`) failed.
    #[arg(long)]
    no_wgmma: bool,
}

#[cfg(not(feature = "cuda"))]
pub fn run(_args: KernelsArgs) -> Result<()> {
    Err(crate::backend::built_without_cuda("bench kernels", ""))
}

#[cfg(feature = "cuda")]
pub fn run(args: KernelsArgs) -> Result<()> {
    use crate::backend::cuda::CudaBackend;
    use crate::bail;
    use crate::bench::{self, BenchConfig};

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
    let mut report = bench::new_report(&gpu);
    eprintln!(
        "bench kernels: seed {} (IMPLICIT_BENCH_SEED replays it), micro-batches {:?}, {} samples",
        report.seed, micro_batches, samples
    );
    let mut table = table::Table::default();
    let outcome = bench::run(&gpu, &config, &mut report, &mut table);
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
                "seq": bench::SEQ,
                "d_model": bench::D_MODEL,
                "ffn": bench::FFN,
                "heads": bench::HEADS,
                "head_dim": bench::HEAD_DIM,
                "vocab": bench::VOCAB,
                "decode_batch": bench::DECODE_BATCH,
                "optimizer_params": bench::OPTIMIZER_PARAMS,
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
fn read_sdpa(path: &std::path::Path) -> Result<crate::bench::SdpaFile> {
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

/// The commit measured: $IMPLICIT_COMMIT (the GPU machine has no checkout; the build script
/// writes it beside the binaries), else `git rev-parse HEAD` here, else "unknown".
#[cfg(feature = "cuda")]
mod table {
    use crate::bench::{BenchReport, BenchResult, BenchSink, Ceilings, DeviceInfo};

    /// Whether our GEMM's difference from cuBLAS is beyond bf16 rounding (or not a number).
    fn check_failed(rel_diff: f64) -> bool {
        rel_diff.is_nan() || rel_diff > 2e-2
    }

    /// Prints the ceilings, then one row per result as it comes.
    #[derive(Default)]
    pub struct Table {
        header_printed: bool,
    }

    fn row(cols: [&str; 8]) -> String {
        format!(
            "{:<28} {:<34} {:>9} {:>6} {:>10} {:>10} {:>14} {:>4}",
            cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6], cols[7]
        )
    }

    fn mib(bytes: Option<u64>) -> String {
        bytes.map_or("?".into(), |b| format!("{} MiB", b >> 20))
    }

    impl BenchSink for Table {
        fn ceilings(&mut self, device: &DeviceInfo, ceilings: &Ceilings) {
            println!(
                "device: {}, {} SMs, compute capability {}, driver {} (CUDA {}), L2 {}, memory {}, cuBLAS {}",
                device.name,
                device.sm_count,
                device.compute_capability,
                device.driver_version.as_deref().unwrap_or("?"),
                device.cuda_driver_api.as_deref().unwrap_or("?"),
                mib(device.l2_bytes),
                mib(device.memory_bytes),
                device.cublas_version.as_deref().unwrap_or("-"),
            );
            if let Some(c) = &ceilings.copy {
                println!(
                    "ceiling: device-to-device copy, {:.2} GB read+written: median {:.1} µs \
                     (min {:.1}, max {:.1}) = {:.0} GB/s",
                    c.bytes / 1e9,
                    c.time.median_us,
                    c.time.min_us,
                    c.time.max_us,
                    c.gb_s
                );
            }
            if let Some(e) = &ceilings.cublas_error {
                println!("ceiling: cuBLAS unavailable ({e}): GEMMs have no reference");
            }
            for g in &ceilings.cublas_gemm {
                println!(
                    "ceiling: cuBLAS bf16 {}: median {:.1} µs (min {:.1}, max {:.1}) = {:.1} TFLOP/s",
                    g.shape, g.time.median_us, g.time.min_us, g.time.max_us, g.tflops
                );
            }
        }

        fn result(&mut self, r: &BenchResult) {
            if !self.header_printed {
                self.header_printed = true;
                println!(
                    "{}",
                    row([
                        "kernel",
                        "shape",
                        "median µs",
                        "±%",
                        "achieved",
                        "ceiling",
                        "vs reference",
                        "tgt"
                    ])
                );
            }
            let t = &r.time;
            let median = format!("{:.1}{}", t.median_us, if t.host_bound { "*" } else { "" });
            let spread = format!("{:.0}", 50.0 * (t.max_us - t.min_us) / t.median_us);
            let achieved = match r.tflops {
                Some(tf) => format!("{tf:.1} TF/s"),
                None => format!("{:.0} GB/s", r.gb_s),
            };
            let ceiling = match (r.ceiling, r.ceiling_fraction) {
                (Some(c), Some(f)) => {
                    let c = if c == "cuBLAS matmul" { "matmul" } else { c };
                    format!("{:.0}% {c}", 100.0 * f)
                }
                _ => "-".into(),
            };
            let reference = match &r.reference {
                Some(x) if x.name == "cuBLAS" => {
                    format!("cuBLAS {:.0} TF", x.tflops.unwrap_or(f64::NAN))
                }
                Some(x) => format!("{} {:.2}x", x.name, x.speed_ratio),
                None => "-".into(),
            };
            let target = match r.meets_target {
                Some(true) => "ok",
                Some(false) => "MISS",
                None => "-",
            };
            println!(
                "{}",
                row([
                    &r.kernel, &r.shape, &median, &spread, &achieved, &ceiling, &reference, target
                ])
            );
            if let Some(d) = r.check_rel_diff {
                if check_failed(d) {
                    println!(
                        "  ^ CHECK: ours differs from cuBLAS by {d:.2e} (rel), more than bf16 rounding"
                    );
                }
            }
        }

        fn note(&mut self, message: &str) {
            eprintln!("bench kernels: {message}");
        }
    }

    impl Table {
        /// Targets met and missed, with the misses listed.
        pub fn summary(&self, report: &BenchReport, have_sdpa: bool) {
            let results = &report.results;
            let met = results
                .iter()
                .filter(|r| r.meets_target == Some(true))
                .count();
            let missed: Vec<&BenchResult> = results
                .iter()
                .filter(|r| r.meets_target == Some(false))
                .collect();
            let none = results.len() - met - missed.len();
            println!(
                "\ntargets: {met} met, {} missed, {none} without a reference \
                 (memory ≥80% of copy, GEMM ≥70% of cuBLAS, attention fwd ≥ SDPA, bwd ≤1.5x SDPA)",
                missed.len()
            );
            for r in &missed {
                let how = match (&r.reference, r.ceiling_fraction) {
                    (Some(x), _) if x.name == "SDPA" => format!("{:.2}x SDPA speed", x.speed_ratio),
                    (_, Some(f)) => format!("{:.0}% of {}", 100.0 * f, r.ceiling.unwrap_or("?")),
                    _ => "?".into(),
                };
                println!("  MISS {} {}: {how}", r.kernel, r.shape);
            }
            if results.iter().any(|r| r.time.host_bound) {
                println!(
                    "  * host-bound: queueing a sample's launches took longer than the spacer \
                     copy, so the GPU may have waited for the host"
                );
            }
            if !have_sdpa && results.iter().any(|r| r.group == "attention") {
                println!(
                    "  attention has no SDPA reference: run tools/bench_sdpa.py --json F and pass --sdpa F"
                );
            }
            let bad_checks = results
                .iter()
                .filter(|r| r.check_rel_diff.is_some_and(check_failed))
                .count();
            if bad_checks > 0 {
                println!("  {bad_checks} GEMM(s) differ from cuBLAS beyond bf16 rounding: see CHECK lines");
            }
        }
    }
}

#[cfg(all(test, feature = "cuda"))]
mod table_tests {
    use super::table::Table;
    use crate::bench::timing::Timing;
    use crate::bench::{
        BenchReport, BenchResult, BenchSink, Ceilings, CopyCeiling, DeviceInfo, Reference,
    };

    fn timing(us: f64) -> Timing {
        Timing {
            median_us: us,
            min_us: us * 0.9,
            max_us: us * 1.2,
            samples: 30,
            launches_per_sample: 2,
            host_queue_us: 12.0,
            host_bound: us < 5.0,
        }
    }

    fn result(kernel: &str, group: &'static str, reference: Option<Reference>) -> BenchResult {
        BenchResult {
            kernel: kernel.into(),
            group,
            shape: "[2048, 4096]".into(),
            tokens: Some(2048),
            bytes: 33.5e6,
            flops: if group == "memory" { 0.0 } else { 1e12 },
            time: timing(if group == "memory" { 3.0 } else { 2000.0 }),
            gb_s: 2800.0,
            tflops: (group != "memory").then_some(500.0),
            ceiling: Some(if group == "gemm" { "cuBLAS" } else { "copy" }),
            ceiling_fraction: Some(0.6),
            meets_target: Some(false),
            target: Some("≥80% of copy".into()),
            reference,
            check_rel_diff: (group == "gemm").then_some(f64::NAN),
        }
    }

    #[test]
    fn table_and_json_render() {
        let device = DeviceInfo {
            name: "Test GPU".into(),
            sm_count: 132,
            compute_capability: "9.0".into(),
            driver_version: None,
            cuda_driver_api: Some("13.0".into()),
            l2_bytes: Some(50 << 20),
            memory_bytes: None,
            cublas_version: None,
            gemm: "wgmma (kernels/gemm_wgmma.cu)".into(),
        };
        let ceilings = Ceilings {
            copy: Some(CopyCeiling {
                bytes: 1.07e9,
                gb_s: 3000.0,
                time: timing(357.0),
            }),
            cublas_error: Some("libcublas is not installed".into()),
            cublas_gemm: vec![],
        };
        let sdpa = Reference {
            name: "SDPA",
            median_us: 1000.0,
            tflops: Some(300.0),
            speed_ratio: 0.5,
        };
        let cublas = Reference {
            name: "cuBLAS",
            median_us: 1200.0,
            tflops: Some(700.0),
            speed_ratio: 0.6,
        };
        let report = BenchReport {
            device: device.clone(),
            seed: 7,
            ceilings: ceilings.clone(),
            results: vec![
                result("rmsnorm_fwd_bf16", "memory", None),
                result("gemm_nt_bf16", "gemm", Some(cublas)),
                result("flash_fwd_hd128", "attention", Some(sdpa)),
            ],
        };
        let mut table = Table::default();
        table.ceilings(&device, &ceilings);
        for r in &report.results {
            table.result(r);
        }
        table.summary(&report, false);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["results"][1]["reference"]["name"], "cuBLAS");
        assert!(json["results"][1]["check_rel_diff"].is_null()); // NaN becomes null
        assert_eq!(json["ceilings"]["copy"]["time"]["samples"], 30);
    }
}
