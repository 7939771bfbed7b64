//! The Hopper bf16 GEMM (kernels/gemm_wgmma.cu: wgmma.mma_async fed by the tensor memory
//! accelerator, warp-specialised, persistent): tensor maps built here with
//! `cuTensorMapEncodeTiled`, the launch, and the checks that decide whether a product can take
//! it. Same arguments and results as [`CudaBackend::gemm_bf16`].
//!
//! **The default on Hopper.** The first H100 run (commit 981b527) passed the kernel's own tests
//! and the model and training tests through it, at 81-93% of cuBLAS where kernels/gemm.cu
//! (mma.sync) reached 31-42%. So [`CudaBackend::gemm_bf16`] routes a product here unless the
//! environment variable `IMPLICIT_GEMM=mma` (read once per process, [`gemm_choice`]) forces
//! kernels/gemm.cu, provided the device has compute capability 9.0 (H100/H200: the sm_90a
//! image runs nowhere else), the driver has `cuTensorMapEncodeTiled`, the loaded image is the
//! sm_90a one (a one-thread probe kernel, run once per stream and never inside a graph
//! capture), and the shapes qualify ([`CudaBackend::wgmma_supports`]: k > 0, 16-byte row
//! strides and 16-byte aligned A and B, as TMA requires). Anything else takes the mma.sync
//! kernels, which stay the path for sm_80 and the fallback. Tests and the benchmark call
//! [`CudaBackend::gemm_bf16_wgmma`] directly.
//!
//! **Variants** (issue 17 part 3, unmeasured until the next GPU run): per product the host
//! picks the tile, 128 × 256 or 128 × 128 ([`wgmma_tile_for`]: the one with fewer waves on the
//! multiprocessors, ties to the wide tile), and the epilogue: through TMA (C staged in shared
//! memory, stored or, for f32 C += A·B, reduce-added by TMA while the next tile's main loop
//! runs) wherever [`tma_epilogue_problem`] allows, else from registers as before (odd n,
//! unaligned C, bf16 accumulation). [`CudaBackend::gemm_bf16_wgmma_with`] forces either, for
//! the tests (every variant against the f64 reference) and the bench rows.
//!
//! **2-block clusters** (issue 17 part 3, unmeasured): where [`wgmma_cluster_for`] finds that
//! pairs of tiles cost no wave (every model shape), the `_mc` kernels run in clusters of 2
//! blocks whose tiles share B, each block loading half of B and multicasting it to both
//! (gemm_wgmma/cluster.rs launches them with `cuLaunchKernelEx`). `IMPLICIT_GEMM=wgmma-nocluster`
//! keeps the wgmma kernels but turns the clusters off (what tools/gpu_check.sh falls back to
//! when only the cluster tests fail); [`CudaBackend::gemm_bf16_wgmma_variant`] forces either.

use super::gemm::{check_shapes, GemmLayout};
use super::tensor_map::{encode_tiled, TensorMap, MAX_STRIDE_BYTES};
use super::{kernel_error, CudaBackend, DeviceBuffer, Float};
use crate::bail;
use crate::error::{Error, Result};
use cudarc::driver::{sys, DevicePtr, DevicePtrMut, LaunchConfig};
use half::bf16;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

mod choice;
mod cluster;
mod plan;
pub use choice::{gemm_choice, wgmma_clusters_allowed, GemmChoice, GEMM_ENV, GEMM_NO_CLUSTER};
use cluster::CLUSTER_BLOCKS;
pub use plan::{
    tma_epilogue_problem, wgmma_cluster_for, wgmma_tile_for, WgmmaCluster, WgmmaConfig,
    WgmmaEpilogue, WgmmaTile,
};

/// Block tile rows of kernels/gemm_wgmma.cu (K steps of 64).
pub(super) const TILE_M: usize = 128;
/// Threads per block: one producer and two consumer warpgroups.
const THREADS: u32 = 384;
/// Dynamic shared memory: a 192 KiB ring (4 stages of (128 + 256) × 64 bf16 or 6 of
/// (128 + 128) × 64), 2 × 2 epilogue buffers of 8 KiB, plus 1 KiB to align them to the 128-byte
/// swizzle's 1024-byte atom (the kernel asserts the same number).
const SMEM_BYTES: u32 = 230_400;
/// Per stream: whether the wgmma kernels can run there (Err: why not), found on first use.
type Availability = HashMap<usize, std::result::Result<(), String>>;
static AVAILABLE: OnceLock<Mutex<Availability>> = OnceLock::new();

/// The kernel of a layout, output type, (chosen, not Auto) tile, and clusters (Pair) or not.
fn kernel_name<O: Float>(layout: GemmLayout, tile: WgmmaTile, pair: bool) -> &'static str {
    let square = tile == WgmmaTile::Square;
    match (layout, square, pair) {
        (GemmLayout::NT, false, false) => O::pick("gemm_wgmma_nt_f32", "gemm_wgmma_nt_bf16"),
        (GemmLayout::NN, false, false) => O::pick("gemm_wgmma_nn_f32", "gemm_wgmma_nn_bf16"),
        (GemmLayout::TN, false, false) => O::pick("gemm_wgmma_tn_f32", "gemm_wgmma_tn_bf16"),
        (GemmLayout::NT, true, false) => {
            O::pick("gemm_wgmma_nt_f32_n128", "gemm_wgmma_nt_bf16_n128")
        }
        (GemmLayout::NN, true, false) => {
            O::pick("gemm_wgmma_nn_f32_n128", "gemm_wgmma_nn_bf16_n128")
        }
        (GemmLayout::TN, true, false) => {
            O::pick("gemm_wgmma_tn_f32_n128", "gemm_wgmma_tn_bf16_n128")
        }
        (GemmLayout::NT, false, true) => O::pick("gemm_wgmma_nt_f32_mc", "gemm_wgmma_nt_bf16_mc"),
        (GemmLayout::NN, false, true) => O::pick("gemm_wgmma_nn_f32_mc", "gemm_wgmma_nn_bf16_mc"),
        (GemmLayout::TN, false, true) => O::pick("gemm_wgmma_tn_f32_mc", "gemm_wgmma_tn_bf16_mc"),
        (GemmLayout::NT, true, true) => {
            O::pick("gemm_wgmma_nt_f32_n128_mc", "gemm_wgmma_nt_bf16_n128_mc")
        }
        (GemmLayout::NN, true, true) => {
            O::pick("gemm_wgmma_nn_f32_n128_mc", "gemm_wgmma_nn_bf16_n128_mc")
        }
        (GemmLayout::TN, true, true) => {
            O::pick("gemm_wgmma_tn_f32_n128_mc", "gemm_wgmma_tn_bf16_n128_mc")
        }
    }
}

/// One operand as TMA sees it: `rows` rows of `inner` contiguous elements, `batch` such
/// matrices back to back, read in boxes of 64 (inner) × `box_rows`.
struct Operand {
    inner: usize,
    rows: usize,
    box_rows: u32,
}

/// A's and B's tensor-map shapes for a layout (kernels/gemm_wgmma.cu's boxes: a K-major A tile
/// is one 64 × 128 box, a K-major B tile one 64 × `b_rows` box (the tile's width, or half of it
/// per block of a 2-block cluster), an MN-major tile 64 × 64 boxes).
fn operands(layout: GemmLayout, m: usize, n: usize, k: usize, b_rows: usize) -> (Operand, Operand) {
    let k_major = |rows: usize, box_rows: u32| Operand {
        inner: k,
        rows,
        box_rows,
    };
    let mn_major = |inner: usize| Operand {
        inner,
        rows: k,
        box_rows: 64,
    };
    match layout {
        GemmLayout::NT => (k_major(m, TILE_M as u32), k_major(n, b_rows as u32)),
        GemmLayout::NN => (k_major(m, TILE_M as u32), mn_major(n)),
        GemmLayout::TN => (mn_major(m), mn_major(n)),
    }
}

/// Why a product of these shapes cannot take the wgmma kernels (None: it can). `pa`, `pb`:
/// the device addresses of A and B.
fn shape_problem(
    layout: GemmLayout,
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    pa: u64,
    pb: u64,
) -> Option<String> {
    if k == 0 {
        return Some("k = 0 (nothing to multiply: kernels/gemm.cu writes the zeros)".into());
    }
    // The kernel's tile and box coordinates are ints that run up to a tile past m and n.
    if m.max(n) > i32::MAX as usize - 256 {
        return Some(format!(
            "m or n over {} (tile coordinates overflow an int)",
            i32::MAX as usize - 256
        ));
    }
    // The box shapes do not matter here: only the strides and the base.
    let (a, b) = operands(layout, m, n, k, 256);
    for (name, op, ptr) in [("A", &a, pa), ("B", &b, pb)] {
        if !op.inner.is_multiple_of(8) {
            return Some(format!(
                "{name}'s rows are {} elements, TMA needs a multiple of 8 (16-byte strides)",
                op.inner
            ));
        }
        if !ptr.is_multiple_of(16) {
            return Some(format!("{name} is not 16-byte aligned (address {ptr:#x})"));
        }
        let matrix_bytes = (op.inner as u64)
            .checked_mul(op.rows as u64)
            .and_then(|e| e.checked_mul(2));
        if matrix_bytes.is_none_or(|b| b >= MAX_STRIDE_BYTES) {
            return Some(format!(
                "{name} is {} × {} elements, over TMA's 2^40-byte stride limit",
                op.rows, op.inner
            ));
        }
    }
    // Counted in the narrower tile, which has more of them.
    let tiles = m
        .div_ceil(TILE_M)
        .checked_mul(n.div_ceil(128))
        .and_then(|t| t.checked_mul(batch));
    if tiles.is_none_or(|t| i32::try_from(t).is_err()) {
        return Some("more 128 × 128 tiles than an int counts".into());
    }
    None
}

/// `cuTensorMapEncodeTiled` for one bf16 operand: 3-D (inner, rows, batch), 128-byte swizzle,
/// out-of-bounds elements read as zeros.
fn encode(op: &Operand, batch: usize, ptr: u64) -> std::result::Result<TensorMap, String> {
    encode_3d(
        sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        2,
        [op.inner, op.rows, batch],
        [64, op.box_rows],
        ptr,
    )
}

/// The tensor map of C (`[batch, m, n]` of `O`) for the TMA epilogue: boxes of one 128-byte
/// swizzle row (64 bf16 or 32 f32 columns) × 64 rows, one consumer warpgroup's rows.
fn encode_c<O: Float>(
    m: usize,
    n: usize,
    batch: usize,
    ptr: u64,
) -> std::result::Result<TensorMap, String> {
    let bytes = std::mem::size_of::<O>();
    let dtype = if bytes == 4 {
        sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT32
    } else {
        sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
    };
    encode_3d(dtype, bytes, [n, m, batch], [(128 / bytes) as u32, 64], ptr)
}

/// `cuTensorMapEncodeTiled`: 3-D (inner, rows, batch) of `elem_bytes`-byte elements, boxes of
/// `box_2d` (inner, rows) × 1, 128-byte swizzle, out-of-bounds elements read as zeros (and
/// not written by stores). The address and strides were checked (16-byte aligned, multiples of
/// 16, below 2^40) by `shape_problem` or `tma_epilogue_problem`.
fn encode_3d(
    dtype: sys::CUtensorMapDataType,
    elem_bytes: usize,
    [inner, rows, batch]: [usize; 3],
    box_2d: [u32; 2],
    ptr: u64,
) -> std::result::Result<TensorMap, String> {
    let dims: [u64; 3] = [inner as u64, rows as u64, batch as u64];
    // Bytes between rows and between matrices (dimension 0 is contiguous and not given).
    let e = elem_bytes as u64;
    let strides: [u64; 2] = [e * inner as u64, e * (inner * rows) as u64];
    encode_tiled(dtype, ptr, dims, &strides, [box_2d[0], box_2d[1], 1])
}

/// Whether the driver library has `cuTensorMapEncodeTiled` (CUDA 12.0+ drivers). cudarc
/// panics on a missing symbol, so look first.
fn driver_has_tensor_maps() -> bool {
    // SAFETY: only looks a symbol up in the driver library, which is loaded (a context exists).
    std::panic::catch_unwind(|| unsafe {
        sys::culib()
            .get::<unsafe extern "C" fn()>(b"cuTensorMapEncodeTiled\0")
            .is_ok()
    })
    .unwrap_or(false)
}

impl CudaBackend {
    /// Whether the wgmma kernels can run on this device at all: Ok, or why not (compute
    /// capability other than 9.0, a driver without tensor maps, or the driver loaded a non-sm_90a
    /// image of kernels/gemm_wgmma.cu). The first call on a stream runs a one-thread probe.
    pub fn wgmma_available(&self) -> Result<()> {
        let (major, minor) = self.compute_capability;
        if (major, minor) != (9, 0) {
            bail!(
                "wgmma GEMM unavailable: it is built for sm_90a only, and {} has compute \
                 capability {major}.{minor}",
                self.device_name
            );
        }
        let key = Arc::as_ptr(self.stream()) as usize;
        let cache = AVAILABLE.get_or_init(|| Mutex::new(HashMap::new()));
        let mut cache = match cache.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(), // a cache: any contents are still valid
        };
        if !cache.contains_key(&key) && self.capturing() {
            // The probe copies and synchronises, which a graph capture forbids: not decided
            // yet, so this product takes kernels/gemm.cu (model::cuda::decode_graph captures).
            bail!("wgmma GEMM unavailable until its probe runs outside a CUDA graph capture");
        }
        match cache.entry(key).or_insert_with(|| self.probe_wgmma()) {
            Ok(()) => Ok(()),
            Err(why) => Err(Error(format!("wgmma GEMM unavailable: {why}"))),
        }
    }

    /// Which kernels [`CudaBackend::gemm_bf16`] gives the large products on this device, and
    /// why: what benchmarks record beside their figures.
    pub fn large_gemm_kernel(&self) -> String {
        match gemm_choice() {
            Err(e) => format!("none ({e})"),
            Ok(GemmChoice::Mma) => format!("mma.sync (kernels/gemm.cu; {GEMM_ENV}=mma)"),
            Ok(GemmChoice::Wgmma) => {
                match (self.wgmma_available(), wgmma_clusters_allowed()) {
                    (Ok(()), Ok(true)) => {
                        "wgmma (kernels/gemm_wgmma.cu, 2-block clusters where they fit)".to_string()
                    }
                    (Ok(()), _) => {
                        format!("wgmma (kernels/gemm_wgmma.cu, no clusters: {GEMM_ENV}={GEMM_NO_CLUSTER})")
                    }
                    (Err(e), _) => format!("mma.sync (kernels/gemm.cu; {e})"),
                }
            }
        }
    }

    fn probe_wgmma(&self) -> std::result::Result<(), String> {
        if !driver_has_tensor_maps() {
            return Err("the CUDA driver has no cuTensorMapEncodeTiled (older than 12.0)".into());
        }
        let ran = (|| -> Result<u32> {
            let mut out = self.upload(&[u32::MAX])?;
            let cfg = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (1, 1, 1),
                shared_mem_bytes: 0,
            };
            launch!(
                self,
                "gemm_wgmma_probe",
                cfg,
                String::from("one thread"),
                [&mut out.slice]
            )?;
            Ok(self.download(&out)?[0])
        })();
        match ran {
            Ok(1) => Ok(()),
            Ok(v) => Err(format!(
                "the driver loaded a non-sm_90a image of kernels/gemm_wgmma.cu (probe says {v}); \
                 its kernels only trap there"
            )),
            Err(e) => Err(format!("the probe kernel failed: {e}")),
        }
    }

    /// Whether a product of these shapes on these buffers can take the wgmma kernels on this
    /// device: Ok, or why not. [`CudaBackend::gemm_bf16`] (unless `IMPLICIT_GEMM=mma`) falls
    /// back to kernels/gemm.cu on Err.
    #[allow(clippy::too_many_arguments)]
    pub fn wgmma_supports(
        &self,
        layout: GemmLayout,
        m: usize,
        n: usize,
        k: usize,
        batch: usize,
        a: &DeviceBuffer<bf16>,
        b: &DeviceBuffer<bf16>,
    ) -> Result<()> {
        self.wgmma_available()?;
        let stream = self.stream();
        let (pa, _ra) = a.slice.device_ptr(stream);
        let (pb, _rb) = b.slice.device_ptr(stream);
        match shape_problem(layout, m, n, k, batch, pa, pb) {
            None => Ok(()),
            Some(why) => {
                bail!("wgmma GEMM ({layout:?} m {m} n {n} k {k} batch {batch}) cannot run: {why}")
            }
        }
    }

    /// [`CudaBackend::gemm_bf16`] on the Hopper kernels (kernels/gemm_wgmma.cu): C = A·B or
    /// C += A·B for `batch` products in `layout`, bf16 in, f32 accumulation, C as `O`. Unlike
    /// `gemm_bf16` this never falls back: shapes or devices it cannot take
    /// ([`CudaBackend::wgmma_supports`]) are errors naming the kernel and the shapes. The tile
    /// ([`wgmma_tile_for`]) and the epilogue ([`tma_epilogue_problem`]) are chosen per product.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16_wgmma<O: Float>(
        &self,
        layout: GemmLayout,
        m: usize,
        n: usize,
        k: usize,
        batch: usize,
        a: &DeviceBuffer<bf16>,
        b: &DeviceBuffer<bf16>,
        c: &mut DeviceBuffer<O>,
        accumulate: bool,
    ) -> Result<()> {
        self.gemm_bf16_wgmma_with(
            WgmmaConfig::AUTO,
            layout,
            m,
            n,
            k,
            batch,
            a,
            b,
            c,
            accumulate,
        )
    }

    /// The tile and epilogue [`CudaBackend::gemm_bf16_wgmma`] would run for this product on
    /// this device (neither is Auto); Err where C cannot take a forced TMA epilogue.
    #[doc(hidden)]
    pub fn wgmma_config<O: Float>(
        &self,
        config: WgmmaConfig,
        m: usize,
        n: usize,
        batch: usize,
        c: &DeviceBuffer<O>,
        accumulate: bool,
    ) -> std::result::Result<WgmmaConfig, String> {
        let tile = match config.tile {
            WgmmaTile::Auto => wgmma_tile_for(m, n, batch, self.multiprocessors as usize),
            forced => forced,
        };
        let (pc, _rc) = c.slice.device_ptr(self.stream());
        let problem = tma_epilogue_problem(std::mem::size_of::<O>(), m, n, accumulate, pc);
        let epilogue = match (config.epilogue, problem) {
            (WgmmaEpilogue::Registers, _) | (WgmmaEpilogue::Auto, Some(_)) => {
                WgmmaEpilogue::Registers
            }
            (WgmmaEpilogue::Auto | WgmmaEpilogue::Tma, None) => WgmmaEpilogue::Tma,
            (WgmmaEpilogue::Tma, Some(why)) => return Err(format!("no TMA epilogue: {why}")),
        };
        Ok(WgmmaConfig { tile, epilogue })
    }

    /// [`CudaBackend::gemm_bf16_wgmma`] with the tile and epilogue forced (Auto: chosen as
    /// there), clusters as [`WgmmaCluster::Auto`] decides: what the tests use to cover every
    /// variant, and the benchmark to time each.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16_wgmma_with<O: Float>(
        &self,
        config: WgmmaConfig,
        layout: GemmLayout,
        m: usize,
        n: usize,
        k: usize,
        batch: usize,
        a: &DeviceBuffer<bf16>,
        b: &DeviceBuffer<bf16>,
        c: &mut DeviceBuffer<O>,
        accumulate: bool,
    ) -> Result<()> {
        self.gemm_bf16_wgmma_variant(
            config,
            WgmmaCluster::Auto,
            layout,
            m,
            n,
            k,
            batch,
            a,
            b,
            c,
            accumulate,
        )
    }

    /// Over 48 KiB of dynamic shared memory needs the opt-in; cheap, so set before every use.
    fn raise_shared_limit(&self, kernel: &'static str, shapes: &dyn Fn() -> String) -> Result<()> {
        self.function(kernel)?
            .set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                SMEM_BYTES as i32,
            )
            .map_err(|e| kernel_error(kernel, &shapes(), "raising the shared-memory limit", e))
    }

    /// [`CudaBackend::gemm_bf16_wgmma_with`] with the clusters forced too (Auto: as there):
    /// what the cluster tests and the benchmark's cluster rows use.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16_wgmma_variant<O: Float>(
        &self,
        config: WgmmaConfig,
        cluster: WgmmaCluster,
        layout: GemmLayout,
        m: usize,
        n: usize,
        k: usize,
        batch: usize,
        a: &DeviceBuffer<bf16>,
        b: &DeviceBuffer<bf16>,
        c: &mut DeviceBuffer<O>,
        accumulate: bool,
    ) -> Result<()> {
        let shapes =
            || format!("{layout:?} m {m} n {n} k {k} batch {batch} accumulate {accumulate}");
        let pair_asked = cluster == WgmmaCluster::Pair;
        let chosen = self
            .wgmma_config(config, m, n, batch, c, accumulate)
            .map_err(|e| {
                let kernel = kernel_name::<O>(layout, config.tile, pair_asked);
                Error(format!("CUDA kernel {kernel} ({}): {e}", shapes()))
            })?;
        let named = kernel_name::<O>(layout, chosen.tile, pair_asked);
        let checked = check_shapes(
            &format!("CUDA GEMM {named}"),
            layout,
            m,
            n,
            k,
            batch,
            a.len(),
            b.len(),
            c.len(),
        )?;
        if checked.empty {
            return Ok(());
        }
        if let Err(e) = self.wgmma_supports(layout, m, n, k, batch, a, b) {
            bail!("CUDA kernel {named} ({}): {e}", shapes());
        }
        let pair = self
            .wgmma_cluster::<O>(cluster, layout, chosen.tile, m, n, batch)
            .map_err(|e| Error(format!("CUDA kernel {named} ({}): {e}", shapes())))?
            == WgmmaCluster::Pair;
        let kernel = kernel_name::<O>(layout, chosen.tile, pair);
        let stream = self.stream();
        // The guards keep the buffers' stream-ordering records alive until after the launch.
        let (pa, _ra) = a.slice.device_ptr(stream);
        let (pb, _rb) = b.slice.device_ptr(stream);
        let tile_n = chosen.tile.columns();
        // With a cluster, each block loads half of a K-major B tile.
        let b_rows = if pair {
            tile_n / CLUSTER_BLOCKS as usize
        } else {
            tile_n
        };
        let (op_a, op_b) = operands(layout, m, n, k, b_rows);
        let map_a = encode(&op_a, batch, pa)
            .map_err(|e| Error(format!("CUDA kernel {kernel} ({}): A: {e}", shapes())))?;
        let map_b = encode(&op_b, batch, pb)
            .map_err(|e| Error(format!("CUDA kernel {kernel} ({}): B: {e}", shapes())))?;
        let tma_epilogue = chosen.epilogue == WgmmaEpilogue::Tma;
        let map_c = if tma_epilogue {
            let (pc, _rc) = c.slice.device_ptr(stream);
            encode_c::<O>(m, n, batch, pc)
                .map_err(|e| Error(format!("CUDA kernel {kernel} ({}): C: {e}", shapes())))?
        } else {
            // Not read by the kernel's register epilogue.
            TensorMap::unused()
        };
        self.raise_shared_limit(kernel, &shapes)?;
        let tiles = m.div_ceil(TILE_M) * n.div_ceil(tile_n) * batch;
        let batch_i = batch as i32; // ≤ 65535 (check_shapes)
        let acc = accumulate as i32;
        let tma_i = tma_epilogue as i32;
        if pair {
            // Persistent: one cluster per pair of tiles (one above the other), at most as many
            // as fit at once; `wgmma_cluster` found that at least one fits.
            let pairs = m.div_ceil(2 * TILE_M) * n.div_ceil(tile_n) * batch;
            let slots = self.cluster_slots(kernel, THREADS, SMEM_BYTES)?;
            let blocks = pairs.min(slots).max(1) as u32 * CLUSTER_BLOCKS;
            let (mut pc, _wc) = c.slice.device_ptr_mut(stream);
            let (mut m_i, mut n_i, mut k_i) = (checked.m, checked.n, checked.k);
            let (mut batch_i, mut acc, mut tma_i) = (batch_i, acc, tma_i);
            let (mut map_a, mut map_b, mut map_c) = (map_a, map_b, map_c);
            let mut args: [*mut std::ffi::c_void; 10] = [
                (&mut map_a as *mut TensorMap).cast(),
                (&mut map_b as *mut TensorMap).cast(),
                (&mut map_c as *mut TensorMap).cast(),
                (&mut pc as *mut sys::CUdeviceptr).cast(),
                (&mut m_i as *mut i32).cast(),
                (&mut n_i as *mut i32).cast(),
                (&mut k_i as *mut i32).cast(),
                (&mut batch_i as *mut i32).cast(),
                (&mut acc as *mut i32).cast(),
                (&mut tma_i as *mut i32).cast(),
            ];
            // SAFETY: the ten pointers follow kernels/gemm_wgmma.cu's WGMMA_KERNEL signature
            // type for type (three CUtensorMaps, C's device pointer, six ints) and live until
            // the call returns; check_shapes checked C's length against the shapes, and the
            // tensor maps bound every read of A and B.
            return unsafe {
                self.launch_clustered(kernel, blocks, THREADS, SMEM_BYTES, &mut args, &shapes)
            };
        }
        // Persistent: one block per multiprocessor (225 KiB of shared memory each), at most one
        // per tile. `shape_problem` checked that the tile count fits an int.
        let blocks = tiles.min(self.multiprocessors as usize).max(1);
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: SMEM_BYTES,
        };
        launch!(
            self,
            kernel,
            cfg,
            shapes(),
            [
                &map_a,
                &map_b,
                &map_c,
                &mut c.slice,
                &checked.m,
                &checked.n,
                &checked.k,
                &batch_i,
                &acc,
                &tma_i
            ]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_that_tma_cannot_read_are_refused() {
        // NT needs k % 8 == 0; NN k and n; TN m and n.
        assert!(shape_problem(GemmLayout::NT, 7, 13, 24, 1, 0, 0).is_none());
        assert!(shape_problem(GemmLayout::NT, 8, 8, 12, 1, 0, 0).is_some());
        assert!(shape_problem(GemmLayout::NN, 7, 16, 24, 1, 0, 0).is_none());
        assert!(shape_problem(GemmLayout::NN, 8, 12, 24, 1, 0, 0).is_some());
        assert!(shape_problem(GemmLayout::TN, 16, 24, 5, 1, 0, 0).is_none());
        assert!(shape_problem(GemmLayout::TN, 12, 24, 8, 1, 0, 0).is_some());
        // k = 0, misaligned bases, too many tiles.
        assert!(shape_problem(GemmLayout::NT, 8, 8, 0, 1, 0, 0).is_some());
        assert!(shape_problem(GemmLayout::NT, 8, 8, 8, 1, 8, 0).is_some());
        assert!(shape_problem(GemmLayout::NT, 8, 8, 8, 1, 0, 24).is_some());
        assert!(shape_problem(GemmLayout::NT, 1 << 24, 1 << 24, 8, 1, 0, 0).is_some());
    }

    #[test]
    fn operand_boxes_match_the_kernel() {
        let (a, b) = operands(GemmLayout::NT, 100, 200, 300, 256);
        assert_eq!((a.inner, a.rows, a.box_rows), (300, 100, 128));
        assert_eq!((b.inner, b.rows, b.box_rows), (300, 200, 256));
        let (_, b) = operands(GemmLayout::NT, 100, 200, 300, 128);
        assert_eq!((b.inner, b.rows, b.box_rows), (300, 200, 128));
        let (a, b) = operands(GemmLayout::NN, 100, 200, 300, 128);
        assert_eq!((a.inner, a.rows, a.box_rows), (300, 100, 128));
        assert_eq!((b.inner, b.rows, b.box_rows), (200, 300, 64));
        let (a, b) = operands(GemmLayout::TN, 100, 200, 300, 256);
        assert_eq!((a.inner, a.rows, a.box_rows), (100, 300, 64));
        assert_eq!((b.inner, b.rows, b.box_rows), (200, 300, 64));
    }
}
