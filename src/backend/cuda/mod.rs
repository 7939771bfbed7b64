//! The CUDA backend (feature `cuda`): hand-written kernels from `kernels/*.cu`, compiled by
//! build.rs into fatbins embedded in the binary, launched through cudarc's driver API.
//!
//! The driver library is loaded at run time, so a `cuda` build links and runs on a machine
//! without one: [`CudaBackend::open`] then says why no GPU can be used and callers stay on the
//! CPU. Every kernel has a CPU reference in `backend::cpu` (or in tests/cuda_kernels.rs) and a
//! typed wrapper here that checks the buffer lengths against the shapes, then every CUDA call.
//!
//! Kernel execution is asynchronous: an error inside a kernel surfaces at the next synchronising
//! call ([`CudaBackend::synchronize`], a download). Set `IMPLICIT_CUDA_SYNC=1` to synchronise
//! after every launch, so that such an error names its kernel and shapes.
//!
//! This floor is ops only: it imports nothing from `model`, `train`, `optim` or the floors above
//! (tests/architecture.rs fails on such an import). The GPU model is `model::cuda`, the GPU
//! trainer `train::cuda`, the benchmarks `bench`. What each module defines:
//!
//! - this file: [`CudaBackend`] (context, stream, the loaded kernels of every kernels/*.cu),
//!   `launch!` (timed spans when profiling), the shape checks every launcher uses;
//! - `buffer`: [`DeviceBuffer`], [`HostBuffer`], [`Float`], uploads and downloads;
//! - `staging`: page-locked staging buffers for large uploads;
//! - `memory`: [`MemoryUse`], the memory pool's peak and the device's total;
//! - `nccl`: [`Communicator`], the collectives of data parallelism;
//! - `profile`: the step profile's recorder (timing events around every launch and copy when
//!   on, [`RecordedProfile`]);
//! - `tensor_map`: the TMA tensor maps of the Hopper kernels (`cuTensorMapEncodeTiled`);
//!
//! and one module per kernel file, named after it: kernels/X.cu is launched from X.rs (and its
//! children) only, and tests/architecture.rs fails when a kernel file has no such module:
//!
//! - `gemm` (gemm.cu): [`GemmLayout`], the mma.sync GEMM, the choice of kernel, the cuBLAS
//!   reference;
//! - `gemv` (gemv.cu): products of at most [`GEMV_MAX_ROWS`] rows (a decode step's), also with
//!   the norm before them fused in ([`NormedRows`]);
//! - `gemm_skinny` (gemm_skinny.cu): NT products of a decode batch (up to [`SKINNY_MAX_ROWS`]
//!   rows) on the tensor cores, K split across blocks when the GPU would idle;
//! - `gemm_wgmma` (gemm_wgmma.cu): the Hopper wgmma GEMM and [`gemm_choice`];
//! - `flash_attention` (flash_attention.cu): flash attention, forward and backward;
//! - `attention_hopper_fwd` (attention_hopper_fwd.cu): the Hopper (wgmma, TMA) flash attention
//!   forward, which `flash_attention`'s forward dispatches to on compute capability 9.0;
//! - `attention_hopper_bwd` (attention_hopper_bwd.cu): the Hopper (wgmma, TMA) flash attention
//!   backward that `flash_attention_backward` takes on compute capability 9.0;
//! - `attention_plain` (attention_plain.cu): plain attention for any head_dim up to 256;
//! - `norm` (norm.cu): RMSNorm, forward and backward; `layernorm` (layernorm.cu): the
//!   parameter-free LayerNorm, forward and backward;
//! - `rope` (rope.cu), `swiglu` (swiglu.cu), `embedding` (embedding.cu): forward and backward;
//! - `cross_entropy` (cross_entropy.cu): the fused softmax cross-entropy;
//! - `rule_adapter` (rule_adapter.cu): the rule adapter ([`RuleAdapterOutput`]), a row per block
//!   or split over blocks at decode sizes ([`RulePlan`]);
//! - `elementwise` (elementwise.cu): conversions, an in-place add, clamp's backward;
//! - `adamw` (adamw.cu): grad-norm clipping and the fused AdamW ([`AdamWStep`]);
//! - `decode` (decode.cu): the decode-time kernels: embedding to f32, row norms ([`RowNorm`]),
//!   clamp, KV append, RoPE and SwiGLU on the fused products ([`QkvOutputs`]); its child
//!   `kv_cache`: [`CudaKvCache`], [`KvCacheShape`], [`KvBatch`], [`KvTables`], [`RowList`];
//! - `cached_attention` (cached_attention.cu): the attention over the KV cache ([`KeySplit`]);
//!   its child `split_kv`: the keys split over blocks ([`SplitKvWorkspace`]).

use crate::bail;
use crate::error::{Error, Result};
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaStream, DriverError, LaunchConfig};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Launches kernel `$kernel` with the arguments in order (each a reference), mapping a failure
/// to an error that names the kernel and `$shapes` (a `String` expression, built only then).
/// While a profile is recorded (profile.rs) the launch is bracketed by timing events.
macro_rules! launch {
    ($backend:expr, $kernel:expr, $cfg:expr, $shapes:expr, [$($arg:expr),* $(,)?]) => {{
        use cudarc::driver::PushKernelArg as _;
        let backend: &$crate::backend::cuda::CudaBackend = $backend;
        let kernel: &'static str = $kernel;
        let func = backend.function(kernel)?;
        let mut builder = backend.stream().launch_builder(func);
        $( builder.arg($arg); )*
        let mark = backend.profile_before(kernel)?;
        // SAFETY: the wrapper checked every buffer's length against the shapes it passes, and
        // the arguments follow the kernel's C signature in kernels/*.cu, type for type.
        unsafe { builder.launch($cfg) }
            .map_err(|e| $crate::backend::cuda::kernel_error(kernel, &$shapes, "launch", e))?;
        backend.profile_after(mark)?;
        backend.after_launch(kernel, || $shapes)
    }};
}

mod adamw;
mod attention_hopper_bwd;
mod attention_hopper_fwd;
mod attention_plain;
mod buffer;
mod cached_attention;
mod cross_entropy;
mod decode;
mod elementwise;
mod embedding;
mod flash_attention;
mod gemm;
mod gemm_skinny;
mod gemm_wgmma;
mod gemv;
mod layernorm;
mod memory;
mod nccl;
mod norm;
mod profile;
mod rope;
mod rule_adapter;
mod staging;
mod swiglu;
mod tensor_map;

pub use adamw::{AdamWStep, AdamWTensor};
pub use buffer::{DeviceBuffer, DeviceElem, Float, HostBuffer};
pub use cached_attention::{KeySplit, SplitKvWorkspace, MAX_KV_SPLITS};
pub use decode::{
    CudaKvCache, KvBatch, KvCacheShape, KvTables, QkvOutputs, RowList, RowNorm, MAX_HEAD_DIM,
};
pub use embedding::EmbeddingGradPlan;
pub use flash_attention::{attention_choice, AttentionChoice, ATTENTION_ENV};
pub use gemm::GemmLayout;
pub use gemm_skinny::{skinny_plan, SkinnyPlan, SkinnySplit, SKINNY_MAX_ROWS};
pub use gemm_wgmma::{
    gemm_choice, tma_epilogue_problem, wgmma_cluster_for, wgmma_clusters_allowed, wgmma_tile_for,
    GemmChoice, WgmmaCluster, WgmmaConfig, WgmmaEpilogue, WgmmaTile, GEMM_ENV, GEMM_NO_CLUSTER,
};
pub use gemv::{NormedRows, GEMV_MAX_ROWS};
pub use memory::MemoryUse;
pub use nccl::{nccl_unique_id, Communicator, NCCL_ID_BYTES};
pub use norm::{NormGradOut, RMS_BWD_REGS_MAX_D};
pub use profile::{ProfileSpan, RecordedProfile};
pub use rule_adapter::{rule_adapter_plan, RuleAdapterKernel, RuleAdapterOutput, RulePlan};

/// Threads per block of every kernel (kernels/common.cuh's ROW_THREADS, and the element-wise
/// kernels' `__launch_bounds__(256)`).
const THREADS: u32 = 256;

type RopeTables = HashMap<(u32, usize), Arc<DeviceBuffer<f32>>>;

/// Whether a usable GPU was found.
// Made once per process and unwrapped at once: boxing the backend would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum CudaAvailability {
    Ready(CudaBackend),
    /// No driver library, no device, or a device older than the kernels' sm_80: the reason.
    NoGpu(String),
}

/// One GPU: its context, the stream all work goes to, and the loaded kernels.
///
/// One thread at a time: work from a second thread would land on the same stream, and while a
/// decode step is being captured as a CUDA graph it would be recorded into that graph (or break
/// the capture) instead of running.
pub struct CudaBackend {
    pub(crate) ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
    pub(crate) device_name: String,
    pub(crate) compute_capability: (i32, i32),
    pub(crate) multiprocessors: u32,
    pub(crate) sync_each_launch: bool,
    /// [0, 1]: the "clip state" of a step without clipping (finite norm, coefficient 1).
    unit_clip: DeviceBuffer<f32>,
    /// RoPE's inverse frequencies per (base bits, head_dim), uploaded once.
    rope_tables: Mutex<RopeTables>,
    /// The skinny GEMM's split-K partials and counters (gemm_skinny.rs), allocated here since
    /// a decode step captured as a CUDA graph cannot allocate.
    skinny_workspace: gemm_skinny::SplitWorkspace,
    /// The split rule adapter's records and counters (rule_adapter.rs), for the same reason.
    rule_workspace: rule_adapter::RuleWorkspace,
    /// Page-locked buffers for large uploads (staging.rs), made on first use.
    stages: Mutex<Option<Box<staging::Stages>>>,
    /// Whether a step profile is being recorded (profile.rs): the one branch a launch pays.
    profiling: AtomicBool,
    profiler: Mutex<profile::Recorder>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.device_name)
            .field("compute_capability", &self.compute_capability)
            .field("multiprocessors", &self.multiprocessors)
            .finish()
    }
}

/// The error of a CUDA call made for `kernel` on `shapes`.
pub(crate) fn kernel_error(kernel: &str, shapes: &str, what: &str, e: DriverError) -> Error {
    Error(format!(
        "CUDA kernel {kernel} ({shapes}): {what} failed: {e}"
    ))
}

pub(crate) fn driver_error(what: &str, e: DriverError) -> Error {
    Error(format!("CUDA: {what} failed: {e}"))
}

impl CudaBackend {
    /// The GPU backend on device 0, or `None` when no usable GPU is there (see
    /// [`CudaBackend::open`] for the reason). Errors are faults of a GPU that is there.
    pub fn new() -> Result<Option<CudaBackend>> {
        Ok(match Self::open()? {
            CudaAvailability::Ready(b) => Some(b),
            CudaAvailability::NoGpu(_) => None,
        })
    }

    /// Opens device 0 and loads every kernel, or says why no GPU can be used.
    pub fn open() -> Result<CudaAvailability> {
        Self::open_ordinal(0)
    }

    /// [`CudaBackend::open_ordinal`] for a caller that cannot go on without a GPU: no usable
    /// GPU is the error "{context}: {reason}".
    pub fn require(ordinal: usize, context: &str) -> Result<CudaBackend> {
        match Self::open_ordinal(ordinal)? {
            CudaAvailability::Ready(gpu) => Ok(gpu),
            CudaAvailability::NoGpu(reason) => bail!("{context}: {reason}"),
        }
    }

    /// [`CudaBackend::open`] on device `ordinal` (data parallelism: one process per GPU).
    pub fn open_ordinal(ordinal: usize) -> Result<CudaAvailability> {
        // cudarc panics on a missing driver symbol; an unusable driver means "no GPU" too.
        let probe = std::panic::catch_unwind(|| -> std::result::Result<_, String> {
            // SAFETY: only tries to dlopen the driver library.
            if !unsafe { sys::is_culib_present() } {
                return Err("the CUDA driver library (libcuda.so) is not installed".into());
            }
            let count = CudaContext::device_count()
                .map_err(|e| format!("the CUDA driver found no usable device: {e}"))?;
            if count < 1 {
                return Err("the CUDA driver reports no device".into());
            }
            if ordinal >= count as usize {
                return Err(format!(
                    "device {ordinal} asked for, the driver reports {count}"
                ));
            }
            CudaContext::new(ordinal)
                .map_err(|e| format!("cannot create a context on device {ordinal}: {e}"))
        });
        let ctx = match probe {
            Ok(Ok(ctx)) => ctx,
            Ok(Err(reason)) => return Ok(CudaAvailability::NoGpu(reason)),
            Err(_) => {
                return Ok(CudaAvailability::NoGpu(
                    "the CUDA driver library lacks a function cudarc needs (driver too old?)"
                        .into(),
                ))
            }
        };
        let device_name = ctx.name().map_err(|e| driver_error("cuDeviceGetName", e))?;
        let compute_capability = ctx
            .compute_capability()
            .map_err(|e| driver_error("reading the compute capability", e))?;
        if compute_capability.0 < 8 {
            return Ok(CudaAvailability::NoGpu(format!(
                "{device_name} has compute capability {}.{}; the kernels need 8.0 or newer",
                compute_capability.0, compute_capability.1
            )));
        }
        let multiprocessors = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| driver_error("reading the multiprocessor count", e))?
            .max(1) as u32;
        // SAFETY: all work goes to one stream, so no cross-stream events are needed; this is
        // called before any allocation.
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own rather than the legacy default stream, which cannot be captured
        // into a CUDA graph (decode steps are, model/cuda/decode_graph.rs). Everything the backend
        // does goes to this one stream, so its order is the program's order.
        let stream = ctx
            .new_stream()
            .map_err(|e| driver_error("creating the CUDA stream", e))?;
        let mut functions = HashMap::new();
        for &(module, fatbin, kernels) in MODULES {
            let loaded = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(fatbin.to_vec()))
                .map_err(|e| driver_error(&format!("loading kernels/{module}.cu's fatbin"), e))?;
            for &kernel in kernels {
                let f = loaded.load_function(kernel).map_err(|e| {
                    driver_error(&format!("finding {kernel} in kernels/{module}.cu"), e)
                })?;
                functions.insert(kernel, f);
            }
        }
        let sync_each_launch = std::env::var("IMPLICIT_CUDA_SYNC").is_ok_and(|v| v == "1");
        let unit_clip = DeviceBuffer::from_slice(&stream, &[0.0f32, 1.0])?;
        let skinny_workspace = gemm_skinny::SplitWorkspace::new(&stream, multiprocessors)?;
        let rule_workspace = rule_adapter::RuleWorkspace::new(&stream, multiprocessors)?;
        let backend = CudaBackend {
            ctx,
            stream,
            functions,
            device_name,
            compute_capability,
            multiprocessors,
            sync_each_launch,
            unit_clip,
            rope_tables: Mutex::new(HashMap::new()),
            skinny_workspace,
            rule_workspace,
            stages: Mutex::new(None),
            profiling: AtomicBool::new(false),
            profiler: Mutex::new(profile::Recorder::default()),
        };
        // Speed only: without it the pool still works, returning memory at each synchronisation.
        if let Err(e) = backend.keep_pool_memory() {
            eprintln!("warning: the CUDA memory pool will not keep freed memory: {e}");
        }
        Ok(CudaAvailability::Ready(backend))
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits for all queued work; reports an error raised inside any kernel since the last sync.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| driver_error("synchronizing the stream", e))?;
        self.ctx
            .check_err()
            .map_err(|e| driver_error("an earlier asynchronous free", e))
    }

    /// Every kernel embedded in the binary, as build.rs listed them from ptxas's report.
    pub fn embedded_kernel_names() -> Vec<&'static str> {
        MODULES
            .iter()
            .flat_map(|&(_, _, kernels)| kernels.iter().copied())
            .collect()
    }

    pub(crate) fn function(&self, kernel: &str) -> Result<&CudaFunction> {
        match self.functions.get(kernel) {
            Some(f) => Ok(f),
            None => bail!("CUDA kernel {kernel} is not in any embedded kernels/*.cu fatbin"),
        }
    }

    pub(crate) fn after_launch(&self, kernel: &str, shapes: impl FnOnce() -> String) -> Result<()> {
        // A capturing stream runs nothing and refuses to synchronise; the graph's replay is
        // checked at the next synchronisation instead.
        if self.sync_each_launch && !self.capturing() {
            self.stream
                .synchronize()
                .map_err(|e| kernel_error(kernel, &shapes(), "execution", e))?;
        }
        Ok(())
    }

    /// Whether the stream is recording a CUDA graph (model/cuda/decode_graph.rs).
    fn capturing(&self) -> bool {
        self.stream
            .capture_status()
            .is_ok_and(|status| status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    }

    /// A grid-stride launch over `units` independent work items: enough blocks to fill the
    /// GPU several times over, never more than the items need.
    pub(crate) fn grid_stride(&self, units: usize) -> LaunchConfig {
        let needed = units.div_ceil(THREADS as usize).max(1);
        let cap = self.multiprocessors as usize * 16;
        LaunchConfig {
            grid_dim: (needed.min(cap) as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// One block of [`THREADS`] per row.
fn per_row(rows: usize, shared_mem_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes,
    }
}

/// `got == want`, or an error naming the kernel, the buffer and both lengths.
fn check_len(kernel: &str, buffer: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        bail!("CUDA kernel {kernel}: {buffer} has {got} elements, the shapes need {want}");
    }
    Ok(())
}

/// A dimension as the kernels' `int`, or an error.
fn as_int(kernel: &str, what: &str, v: usize) -> Result<i32> {
    match i32::try_from(v) {
        Ok(v) => Ok(v),
        Err(_) => bail!("CUDA kernel {kernel}: {what} = {v} does not fit in an int"),
    }
}

/// Rows of a `[rows, dim]` buffer of `len` elements, checking that dim divides it and that the
/// row count fits a grid.
fn rows_of(kernel: &str, buffer: &str, len: usize, dim: usize) -> Result<usize> {
    if dim == 0 || !len.is_multiple_of(dim) {
        bail!("CUDA kernel {kernel}: {buffer} has {len} elements, not a whole number of rows of {dim}");
    }
    let rows = len / dim;
    as_int(kernel, "rows", rows)?;
    Ok(rows)
}
