//! The measuring of `implicit bench kernels`: every kernel at the paper's shapes, timed with CUDA
//! events (`bench::timing`), against ceilings measured in the same run: the device-to-device
//! copy bandwidth for the memory-bound kernels (memory.rs), cuBLAS at the same shape for the
//! GEMMs and, from `tools/bench_sdpa.py`'s JSON, PyTorch's SDPA for attention (compute.rs); a
//! decode step's products at batches of 1..256 rows against both (decode.rs).
//!
//! Inputs are fresh random values (never zeros), drawn from a clock seed (or
//! `IMPLICIT_BENCH_SEED`); several input sets are rotated when one set would fit in L2 three
//! times over. Bytes count each input read once and each output written once (benches/NOTES.md);
//! FLOPs are 2·m·n·k for a GEMM and, for causal attention, 4·s²·d·heads/2 per sequence forward
//! and 2.5 times that backward.

mod compute;
mod decode;
mod memory;

use crate::backend::cuda::{driver_error, CudaBackend, DeviceBuffer, DeviceElem, GemmLayout};
use crate::bench::inputs::{random, Rng, Sample};
use crate::bench::timing::{Timer, Timing, SPACER_BYTES};
use crate::error::Result;
use cudarc::cublas::sys as cublas_sys;
use cudarc::driver::sys;
use half::bf16;
use serde::{Deserialize, Serialize};

/// Llama-2-7B's model width.
pub const D_MODEL: usize = 4096;
/// Llama-2-7B's FFN width.
pub const FFN: usize = 11008;
pub const HEADS: usize = 32;
pub const HEAD_DIM: usize = 128;
/// Tokens per sequence: T = micro-batch × SEQ.
pub const SEQ: usize = 2048;
pub const VOCAB: usize = 32000;
/// Sequences decoded together (the rule adapter's rows).
pub const DECODE_BATCH: usize = 64;
/// The rule adapter's rows: batch 1, [`DECODE_BATCH`], and the largest decode batch (256, the
/// skinny GEMM's limit).
const RULE_ADAPTER_ROWS: [usize; 3] = [1, DECODE_BATCH, 256];
/// Parameters of the AdamW and grad-norm benchmarks (a 7B model's 6.74e9 would need 200 GB).
pub const OPTIMIZER_PARAMS: usize = 1 << 28;
/// The grad-norm benchmark's tensors (each OPTIMIZER_PARAMS / GRAD_TENSORS = 4096² elements).
const GRAD_TENSORS: usize = 16;
const RMS_EPS: f64 = 1e-5;
const EOS_ID: u32 = 2;

/// Targets (issue 17, "Llama-2-7B full finetuning at 50% MFU"): memory-bound kernels at 85% of
/// the copy bandwidth, our GEMM at 92% of cuBLAS, attention forward at SDPA's speed and
/// backward at 0.9× SDPA's.
pub(crate) const MEMORY_TARGET: f64 = 0.85;
pub(crate) const GEMM_TARGET: f64 = 0.92;
pub(crate) const ATTENTION_FWD_TARGET: f64 = 1.0;
pub(crate) const ATTENTION_BWD_TARGET: f64 = 0.9;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Tokens per launch are micro-batch × [`SEQ`]; attention runs `micro-batch` sequences.
    pub micro_batches: Vec<usize>,
    /// Timed samples per kernel.
    pub samples: usize,
    /// Run only kernels whose name (or GEMM label) contains one of these.
    pub filter: Vec<String>,
    /// Also time kernels/gemm_wgmma.cu beside each GEMM row (compute capability 9.0; `bench
    /// kernels --no-wgmma` turns it off). The `gemm_*` rows stay kernels/gemm.cu (mma.sync),
    /// the fallback and the sm_80 path.
    pub wgmma: bool,
    /// PyTorch SDPA times for the same attention shapes (tools/bench_sdpa.py).
    pub sdpa: Vec<SdpaEntry>,
}

/// One shape of tools/bench_sdpa.py's JSON (`results[]`); times in milliseconds.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct SdpaEntry {
    pub batch: usize,
    pub heads: usize,
    pub seq: usize,
    pub head_dim: usize,
    pub fwd_ms: f64,
    #[serde(default)]
    pub bwd_ms: Option<f64>,
}

/// tools/bench_sdpa.py's JSON.
#[derive(Clone, Debug, Deserialize)]
pub struct SdpaFile {
    #[serde(default)]
    pub torch: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
    pub results: Vec<SdpaEntry>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeviceInfo {
    pub name: String,
    pub sm_count: u32,
    /// "9.0" for Hopper.
    pub compute_capability: String,
    /// The kernel module's version (/proc/driver/nvidia/version), e.g. "580.159.04".
    pub driver_version: Option<String>,
    /// The CUDA version the driver supports (cuDriverGetVersion), e.g. "13.0".
    pub cuda_driver_api: Option<String>,
    pub l2_bytes: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// libcublas's version, when it loads.
    pub cublas_version: Option<String>,
    /// The kernels `gemm_bf16` gives the model's large products (`IMPLICIT_GEMM`).
    pub gemm: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct CopyCeiling {
    /// Bytes read plus bytes written by one copy.
    pub bytes: f64,
    pub gb_s: f64,
    pub time: Timing,
}

#[derive(Clone, Debug, Serialize)]
pub struct GemmCeiling {
    /// "NT 4096x4096x4096" (m x n x k), bf16 in and out, f32 accumulation.
    pub shape: String,
    pub tflops: f64,
    pub time: Timing,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Ceilings {
    pub copy: Option<CopyCeiling>,
    /// Why cuBLAS could not be used, if it could not.
    pub cublas_error: Option<String>,
    pub cublas_gemm: Vec<GemmCeiling>,
}

/// The reference a result is compared with (cuBLAS or SDPA at the same shape).
#[derive(Clone, Debug, Serialize)]
pub struct Reference {
    pub name: &'static str,
    pub median_us: f64,
    pub tflops: Option<f64>,
    /// Reference time / our time: above 1, ours is faster.
    pub speed_ratio: f64,
}

/// One kernel at one shape.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub kernel: String,
    /// "memory", "gemm", "attention" or "decode" (decode.rs: GB/s of weights against copy).
    pub group: &'static str,
    pub shape: String,
    /// Tokens per launch, for the shapes that scale with the micro-batch.
    pub tokens: Option<usize>,
    /// Bytes counted (each input read once, each output written once).
    pub bytes: f64,
    pub flops: f64,
    pub time: Timing,
    pub gb_s: f64,
    pub tflops: Option<f64>,
    /// What `ceiling_fraction` is a fraction of: "copy" (GB/s), "cuBLAS" (the same GEMM's
    /// time), "cuBLAS matmul" (the best cuBLAS TFLOP/s of the ceilings).
    pub ceiling: Option<&'static str>,
    pub ceiling_fraction: Option<f64>,
    pub reference: Option<Reference>,
    pub target: Option<String>,
    pub meets_target: Option<bool>,
    /// GEMMs: ‖ours − cuBLAS‖/‖cuBLAS‖ on the leading rows of one product.
    pub check_rel_diff: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub device: DeviceInfo,
    /// The random seed of the inputs (IMPLICIT_BENCH_SEED replays it).
    pub seed: u64,
    pub ceilings: Ceilings,
    pub results: Vec<BenchResult>,
}

/// Where results go as they are measured.
pub trait BenchSink {
    fn ceilings(&mut self, device: &DeviceInfo, ceilings: &Ceilings);
    fn result(&mut self, result: &BenchResult);
    fn note(&mut self, message: &str);
}

/// The device's description; nothing is timed.
pub fn device_info(gpu: &CudaBackend) -> DeviceInfo {
    let attr = |a| gpu.ctx.attribute(a).ok().map(|v| v.max(0) as u64);
    let (major, minor) = gpu.compute_capability;
    let mut version = 0i32;
    // SAFETY: writes one int; the driver library is loaded (the context exists).
    let cuda_driver_api = unsafe { sys::cuDriverGetVersion(&mut version) }
        .result()
        .ok()
        .map(|()| format!("{}.{}", version / 1000, (version % 1000) / 10));
    DeviceInfo {
        name: gpu.device_name.clone(),
        sm_count: gpu.multiprocessors,
        compute_capability: format!("{major}.{minor}"),
        driver_version: kernel_module_version(),
        cuda_driver_api,
        l2_bytes: attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE),
        memory_bytes: gpu.ctx.total_mem().ok().map(|b| b as u64),
        cublas_version: cublas_version(gpu),
        gemm: gpu.large_gemm_kernel(),
    }
}

/// "580.159.04" from /proc/driver/nvidia/version's first line, if there.
fn kernel_module_version() -> Option<String> {
    let text = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
    let line = text.lines().next()?;
    line.split_whitespace()
        .find(|w| {
            w.contains('.')
                && w.split('.').count() >= 2
                && w.split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
}

fn cublas_version(gpu: &CudaBackend) -> Option<String> {
    gpu.cublas_available().ok()?;
    std::panic::catch_unwind(|| {
        let mut parts = [0i32; 3];
        for (i, p) in [
            cublas_sys::libraryPropertyType::MAJOR_VERSION,
            cublas_sys::libraryPropertyType::MINOR_VERSION,
            cublas_sys::libraryPropertyType::PATCH_LEVEL,
        ]
        .into_iter()
        .enumerate()
        {
            // SAFETY: writes one int; libcublas is loaded (cublas_available succeeded).
            let status = unsafe { cublas_sys::cublasGetProperty(p, &mut parts[i]) };
            if status != cublas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return None;
            }
        }
        Some(format!("{}.{}.{}", parts[0], parts[1], parts[2]))
    })
    .ok()
    .flatten()
}

/// A new report for `gpu`: device info and the seed, no results yet.
pub fn new_report(gpu: &CudaBackend) -> BenchReport {
    let seed = std::env::var("IMPLICIT_BENCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            t.map(|d| d.as_nanos() as u64).unwrap_or(1)
        });
    BenchReport {
        device: device_info(gpu),
        seed,
        ceilings: Ceilings::default(),
        results: Vec::new(),
    }
}

/// Runs the whole benchmark, filling `report` (measured ceilings, then one result per kernel
/// and shape, each also handed to `sink` as soon as it is measured). On an error, `report`
/// holds what was measured before it.
pub fn measure(
    gpu: &CudaBackend,
    config: &BenchConfig,
    report: &mut BenchReport,
    sink: &mut dyn BenchSink,
) -> Result<()> {
    if gpu.sync_each_launch {
        sink.note(
            "IMPLICIT_CUDA_SYNC=1: every launch synchronises, so the times include that; \
             unset it to benchmark",
        );
    }
    let mut rng = Rng(report.seed | 1);
    let spacer_src = random::<u32>(gpu, &mut rng, SPACER_BYTES / 4, 0.0, 1.0)?;
    let timer = Timer::new(gpu, spacer_src, config.samples)?;
    let l2 = report.device.l2_bytes.unwrap_or(50 << 20).max(1 << 20) as usize;
    let mut bench = Bench {
        gpu,
        timer,
        config,
        rng,
        l2,
        copy_gb_s: 0.0,
        matmul_tflops: None,
        cublas: false,
        report,
        sink,
    };
    bench.ceilings()?;

    // Shapes that do not depend on the micro-batch.
    bench.rule_adapter::<f32>()?;
    bench.rule_adapter::<bf16>()?;
    bench.grad_norm()?;
    bench.adamw_bf16()?;
    bench.adamw_bf16_sr()?;
    bench.adamw_f32()?;
    for (layout, f32_acc) in [
        (GemmLayout::NT, false),
        (GemmLayout::NN, false),
        (GemmLayout::TN, true),
    ] {
        bench.gemm("4096³", layout, 4096, 4096, 4096, f32_acc, None)?;
    }
    // A decode step's products at batch 1 (kernels/gemv.cu): bound by reading the weight once.
    for (label, d_in, d_out) in [
        ("decode q/k/v/o", D_MODEL, D_MODEL),
        ("decode gate/up", D_MODEL, FFN),
        ("decode down", FFN, D_MODEL),
        ("decode lm_head", D_MODEL, VOCAB),
        // The fused weights the GPU model keeps (src/model/cuda/fused.rs).
        ("decode fused q|k|v", D_MODEL, 3 * D_MODEL),
        ("decode fused gate|up", D_MODEL, 2 * FFN),
    ] {
        bench.gemm(label, GemmLayout::NT, 1, d_out, d_in, false, Some(1))?;
    }
    // The same products at decode batches of 1..256 rows (kernels/gemm_skinny.cu above 8).
    bench.decode_products()?;
    // And a decode step's attention over the KV cache, before and with the split over blocks.
    bench.decode_attentions()?;

    for (i, &mb) in config.micro_batches.iter().enumerate() {
        let tokens = mb * SEQ;
        bench.rmsnorm::<bf16>(tokens)?;
        bench.rope::<bf16>(tokens)?;
        bench.swiglu::<bf16>(tokens)?;
        bench.embedding::<bf16>(tokens)?;
        bench.cross_entropy::<bf16>(tokens)?;
        if i == 0 {
            // The f32 path and OLMo's LayerNorm, at one size.
            bench.rmsnorm::<f32>(tokens)?;
            bench.layernorm::<bf16>(tokens)?;
            bench.layernorm::<f32>(tokens)?; // the trainer's dtype (OLMo's backward rows)
            bench.rope::<f32>(tokens)?;
            bench.cross_entropy::<f32>(tokens)?;
        }
        // Llama-2-7B's projections: forward Y = X·Wᵀ (NT), dX = dY·W (NN), dW += dYᵀ·X (TN).
        for (label, d_in, d_out) in [
            ("q/k/v/o", D_MODEL, D_MODEL),
            ("gate/up", D_MODEL, FFN),
            ("down", FFN, D_MODEL),
            ("lm_head", D_MODEL, VOCAB),
        ] {
            let t = Some(tokens);
            bench.gemm(label, GemmLayout::NT, tokens, d_out, d_in, false, t)?;
            bench.gemm(label, GemmLayout::NN, tokens, d_in, d_out, false, t)?;
            bench.gemm(label, GemmLayout::TN, d_out, d_in, tokens, true, t)?;
        }
        bench.attention(mb, HEAD_DIM)?;
        bench.attention(mb, 64)?;
    }
    gpu.synchronize()
}

/// What [`Bench::time_gemm`] measured.
struct GemmTimes {
    cublas: Option<Timing>,
    ours: Option<Timing>,
    /// ‖ours − cuBLAS‖/‖cuBLAS‖ on one product's leading rows.
    check: Option<f64>,
}

struct Bench<'a> {
    gpu: &'a CudaBackend,
    timer: Timer<'a>,
    config: &'a BenchConfig,
    rng: Rng,
    l2: usize,
    copy_gb_s: f64,
    /// The best cuBLAS TFLOP/s of the ceilings.
    matmul_tflops: Option<f64>,
    cublas: bool,
    report: &'a mut BenchReport,
    sink: &'a mut dyn BenchSink,
}

impl Bench<'_> {
    fn wants(&self, names: &[&str]) -> bool {
        self.config.filter.is_empty()
            || self
                .config
                .filter
                .iter()
                .any(|f| names.iter().any(|n| n.contains(f.as_str())))
    }

    /// Input sets to rotate for `bytes` of inputs per set: enough to exceed 3× the L2 cache,
    /// at most 8.
    fn sets(&self, bytes: usize) -> usize {
        (3 * self.l2).div_ceil(bytes.max(1)).clamp(1, 8)
    }

    fn random<T: Sample>(&mut self, n: usize, lo: f32, hi: f32) -> Result<DeviceBuffer<T>> {
        random(self.gpu, &mut self.rng, n, lo, hi)
    }

    fn randoms<T: Sample>(
        &mut self,
        sets: usize,
        n: usize,
        lo: f32,
        hi: f32,
    ) -> Result<Vec<DeviceBuffer<T>>> {
        (0..sets).map(|_| self.random(n, lo, hi)).collect()
    }

    /// `n` ids below `below`.
    fn ids(&mut self, n: usize, below: usize) -> Result<DeviceBuffer<u32>> {
        let host: Vec<u32> = (0..n).map(|_| self.rng.below(below) as u32).collect();
        self.gpu.upload(&host)
    }

    /// The first `n` elements of `buf`.
    fn download_prefix<T: DeviceElem>(&self, buf: &DeviceBuffer<T>, n: usize) -> Result<Vec<T>> {
        let n = n.min(buf.len());
        let raw = self
            .gpu
            .stream()
            .clone_dtoh(&buf.slice.slice(0..n))
            .map_err(|e| driver_error(&format!("copying {n} elements from the GPU"), e))?;
        self.gpu.synchronize()?;
        Ok(T::from_raw(raw))
    }

    fn push(&mut self, result: BenchResult) {
        self.sink.result(&result);
        self.report.results.push(result);
    }
}
