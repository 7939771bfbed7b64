//! The table `bench kernels` prints as it measures: the device and ceilings, one row per kernel
//! and shape, then the targets met and missed.

use super::{suite, BenchReport, BenchResult, BenchSink, Ceilings, DeviceInfo};

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
            row([&r.kernel, &r.shape, &median, &spread, &achieved, &ceiling, &reference, target])
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
             (memory ≥{:.0}% of copy, GEMM ≥{:.0}% of cuBLAS, attention fwd ≥{:.2}x and bwd \
             ≥{:.2}x SDPA's speed)",
            missed.len(),
            100.0 * suite::MEMORY_TARGET,
            100.0 * suite::GEMM_TARGET,
            suite::ATTENTION_FWD_TARGET,
            suite::ATTENTION_BWD_TARGET,
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
            println!(
                "  {bad_checks} GEMM(s) differ from cuBLAS beyond bf16 rounding: see CHECK lines"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Table;
    use crate::bench::kernels::{
        BenchReport, BenchResult, BenchSink, Ceilings, CopyCeiling, DeviceInfo, Reference,
    };
    use crate::bench::timing::Timing;

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
