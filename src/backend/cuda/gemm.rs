//! bf16 matrix products with fp32 accumulation on the GPU (kernels/gemm.cu: mma.sync tensor
//! cores, ldmatrix, a 4-stage cp.async pipeline), strided-batched, in the three layouts a
//! transformer's forward and backward need, with the choice among it, kernels/gemv.cu (gemv.rs),
//! kernels/gemm_skinny.cu (gemm_skinny.rs) and kernels/gemm_wgmma.cu (gemm_wgmma.rs); and the same products through cuBLAS, the
//! reference the benchmark measures against. References: tests/cuda_kernels/gemm.rs (f64 on
//! the CPU).

use super::gemm_skinny::SkinnySplit;
use super::gemm_wgmma::{gemm_choice, GemmChoice};
use super::gemv::GEMV_MAX_ROWS;
use super::{driver_error, kernel_error, CudaBackend, DeviceBuffer, Float};
use crate::bail;
use crate::error::{Error, Result};
use cudarc::cublas::{result as cublas_result, sys as cublas_sys, CudaBlas};
use cudarc::driver::{sys, DevicePtr, DevicePtrMut, LaunchConfig};
use half::bf16;
use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Which operands are stored transposed. All matrices are row-major and contiguous; a batch
/// of `batch` products lies at strides of one matrix (`m·k`, `k·n`, `m·n` elements).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmLayout {
    /// C[m,n] = Σ_k A[m,k]·B[k,n]: A is `[m, k]`, B is `[k, n]` (e.g. dX = dY·W).
    NN,
    /// C[m,n] = Σ_k A[m,k]·B[n,k]: A is `[m, k]`, B is `[n, k]` (Y = X·Wᵀ with W stored
    /// `[out, in]`, as in Hugging Face checkpoints).
    NT,
    /// C[m,n] = Σ_k A[k,m]·B[k,n]: A is `[k, m]`, B is `[k, n]` (the weight gradient
    /// dW = dYᵀ·X).
    TN,
}

impl GemmLayout {
    /// The contiguous (innermost) dimension of A and of B as stored.
    fn leading_dims(self, m: usize, n: usize, k: usize) -> (usize, usize) {
        match self {
            GemmLayout::NN => (k, n),
            GemmLayout::NT => (k, k),
            GemmLayout::TN => (m, n),
        }
    }

    /// Whether these shapes take the 16-byte `cp.async` path (both operands' contiguous
    /// dimension a multiple of 8 elements); otherwise the `_scalar` kernels (same tiles and
    /// tensor-core math, operands loaded element by element) run. Buffers from
    /// [`CudaBackend::alloc`] and friends are always 16-byte aligned.
    pub fn vectorized(self, m: usize, n: usize, k: usize) -> bool {
        let (lda, ldb) = self.leading_dims(m, n, k);
        lda.is_multiple_of(8) && ldb.is_multiple_of(8)
    }

    /// Shapes of A and B as stored, for messages.
    fn stored_shapes(self, m: usize, n: usize, k: usize) -> ([usize; 2], [usize; 2]) {
        match self {
            GemmLayout::NN => ([m, k], [k, n]),
            GemmLayout::NT => ([m, k], [n, k]),
            GemmLayout::TN => ([k, m], [k, n]),
        }
    }
}

/// Dynamic shared memory of each layout's kernels (kernels/gemm.cu asserts the same numbers):
/// 4 stages of a 128×32 A tile and a 32×128 B tile, rows padded by 16 bytes.
fn smem_bytes(layout: GemmLayout) -> u32 {
    match layout {
        GemmLayout::NN => 75776,
        GemmLayout::NT => 81920,
        GemmLayout::TN => 69632,
    }
}

/// The block tile of kernels/gemm.cu (BM = BN).
const TILE: usize = 128;
/// Most batches one launch takes (gridDim.z).
const MAX_BATCH: usize = 65535;

/// A checked product: the shapes as the kernels' ints.
pub(super) struct Checked {
    pub(super) m: i32,
    pub(super) n: i32,
    pub(super) k: i32,
    /// Nothing to compute (m, n or batch is 0).
    pub(super) empty: bool,
}

/// Checks the shapes and the three buffers' lengths; the error names the shapes.
#[allow(clippy::too_many_arguments)]
pub(super) fn check_shapes(
    what: &str,
    layout: GemmLayout,
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    a: usize,
    b: usize,
    c: usize,
) -> Result<Checked> {
    let desc = || format!("{layout:?} m {m} n {n} k {k} batch {batch}");
    let int = |name: &str, v: usize| -> Result<i32> {
        match i32::try_from(v) {
            Ok(v) => Ok(v),
            Err(_) => bail!("{what} ({}): {name} = {v} does not fit in an int", desc()),
        }
    };
    let (mi, ni, ki) = (int("m", m)?, int("n", n)?, int("k", k)?);
    if batch > MAX_BATCH {
        bail!(
            "{what} ({}): batch {batch} is more than one launch takes ({MAX_BATCH})",
            desc()
        );
    }
    let (sa, sb) = layout.stored_shapes(m, n, k);
    for (name, got, shape) in [("A", a, sa), ("B", b, sb), ("C", c, [m, n])] {
        let want = batch
            .checked_mul(shape[0])
            .and_then(|x| x.checked_mul(shape[1]));
        if want != Some(got) {
            let want = want.map_or("more than usize holds".to_string(), |w| w.to_string());
            bail!(
                "{what} ({}): {name} has {got} elements, [{batch} × {} × {}] needs {want}",
                desc(),
                shape[0],
                shape[1]
            );
        }
    }
    let tiles = m.div_ceil(TILE).saturating_mul(n.div_ceil(TILE));
    if i32::try_from(tiles).is_err() {
        bail!("{what} ({}): {tiles} tiles of C are too many", desc());
    }
    Ok(Checked {
        m: mi,
        n: ni,
        k: ki,
        empty: m == 0 || n == 0 || batch == 0,
    })
}

fn is_f32<O: Float>() -> bool {
    TypeId::of::<O>() == TypeId::of::<f32>()
}

/// cuBLAS handles per stream, created on first use. A handle keeps its stream (and so the
/// context) alive until the process exits: this path is for benchmarks and tests.
type BlasHandles = HashMap<usize, std::result::Result<Arc<CudaBlas>, String>>;
static CUBLAS: OnceLock<Mutex<BlasHandles>> = OnceLock::new();

impl CudaBackend {
    /// C = A·B (or C += A·B with `accumulate`) in the `layout` given, for `batch` independent
    /// products: A, B bf16, products summed in f32 on the tensor cores, C written as `O` (bf16
    /// rounded to nearest even, or f32). `m`, `n`, `k` are the product's dimensions
    /// (C is `[batch, m, n]`; see [`GemmLayout`] for A's and B's). Any sizes work; shapes
    /// whose contiguous dimensions are multiples of 8 take the fast path
    /// ([`GemmLayout::vectorized`]); NT products of at most [`GEMV_MAX_ROWS`] rows with k a
    /// multiple of 8 (a decode step's) take kernels/gemv.cu. With f32 output and `accumulate`,
    /// weight gradients add up across micro-batches. k = 0 writes zeros (or leaves C as it is
    /// when accumulating).
    ///
    /// Decode batches: NT products of batch 1 with [`GEMV_MAX_ROWS`] < m ≤ `SKINNY_MAX_ROWS`
    /// that [`CudaBackend::skinny_supports`] accepts go to [`CudaBackend::gemm_bf16_skinny`]
    /// (kernels/gemm_skinny.cu, every device, K split to fill the GPU).
    ///
    /// The Hopper path, by default: products of more than [`GEMV_MAX_ROWS`] rows whose
    /// contiguous dimensions are multiples of 8 go to [`CudaBackend::gemm_bf16_wgmma`]
    /// (kernels/gemm_wgmma.cu: wgmma + TMA, sm_90a) when the device has compute capability 9.0
    /// and [`CudaBackend::wgmma_supports`] accepts the shapes and buffers; anything else, and
    /// every product but the decode batches' with `IMPLICIT_GEMM=mma` (read once per process,
    /// [`gemm_choice`]), goes to [`CudaBackend::gemm_bf16_mma`].
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16<O: Float>(
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
        if self.skinny_supports(layout, m, n, k, batch, a, b).is_ok() {
            return self.gemm_bf16_skinny(m, n, k, a, b, c, accumulate, SkinnySplit::Auto);
        }
        let decode_rows = layout == GemmLayout::NT && m <= GEMV_MAX_ROWS;
        if !decode_rows
            && k > 0
            && gemm_choice()? == GemmChoice::Wgmma
            && self.wgmma_supports(layout, m, n, k, batch, a, b).is_ok()
        {
            return self.gemm_bf16_wgmma(layout, m, n, k, batch, a, b, c, accumulate);
        }
        self.gemm_bf16_mma(layout, m, n, k, batch, a, b, c, accumulate)
    }

    /// [`CudaBackend::gemm_bf16`] on kernels/gemm.cu (mma.sync) and kernels/gemv.cu only,
    /// whatever `IMPLICIT_GEMM` says: what tests/cuda_kernels/gemm.rs checks and `bench
    /// kernels` times as `gemm_*`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16_mma<O: Float>(
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
        let checked = check_shapes(
            "CUDA GEMM",
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
        let aligned = {
            let stream = self.stream();
            let (pa, _ra) = a.slice.device_ptr(stream);
            let (pb, _rb) = b.slice.device_ptr(stream);
            pa % 16 == 0 && pb % 16 == 0
        };
        if layout == GemmLayout::NT && m <= GEMV_MAX_ROWS && k.is_multiple_of(8) && aligned {
            return self.gemv_nt(m, n, k, batch, &checked, a, b, c, accumulate);
        }
        let vec = aligned && layout.vectorized(m, n, k);
        let kernel = match (layout, vec) {
            (GemmLayout::NN, true) => O::pick("gemm_nn_f32", "gemm_nn_bf16"),
            (GemmLayout::NT, true) => O::pick("gemm_nt_f32", "gemm_nt_bf16"),
            (GemmLayout::TN, true) => O::pick("gemm_tn_f32", "gemm_tn_bf16"),
            (GemmLayout::NN, false) => O::pick("gemm_nn_f32_scalar", "gemm_nn_bf16_scalar"),
            (GemmLayout::NT, false) => O::pick("gemm_nt_f32_scalar", "gemm_nt_bf16_scalar"),
            (GemmLayout::TN, false) => O::pick("gemm_tn_f32_scalar", "gemm_tn_bf16_scalar"),
        };
        let shapes =
            || format!("{layout:?} m {m} n {n} k {k} batch {batch} accumulate {accumulate}");
        let smem = smem_bytes(layout);
        // Over 48 KiB of dynamic shared memory needs the opt-in; cheap, so set on every call.
        self.function(kernel)?
            .set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .map_err(|e| kernel_error(kernel, &shapes(), "raising the shared-memory limit", e))?;
        let tiles = m.div_ceil(TILE) * n.div_ceil(TILE);
        let cfg = LaunchConfig {
            grid_dim: (tiles as u32, 1, batch as u32),
            block_dim: (256, 1, 1),
            shared_mem_bytes: smem,
        };
        let acc = accumulate as i32;
        launch!(
            self,
            kernel,
            cfg,
            shapes(),
            [
                &a.slice,
                &b.slice,
                &mut c.slice,
                &checked.m,
                &checked.n,
                &checked.k,
                &acc
            ]
        )
    }

    /// Whether cuBLAS can be used: `Err` says why not (no libcublas, or it failed to start).
    /// The first call loads the library and creates the handle.
    pub fn cublas_available(&self) -> Result<()> {
        self.cublas().map(|_| ())
    }

    fn cublas(&self) -> Result<Arc<CudaBlas>> {
        let key = Arc::as_ptr(self.stream()) as usize;
        let handles = CUBLAS.get_or_init(|| Mutex::new(HashMap::new()));
        let mut handles = match handles.lock() {
            Ok(h) => h,
            Err(poisoned) => poisoned.into_inner(), // a cache: any contents are still valid
        };
        let entry = handles.entry(key).or_insert_with(|| {
            let stream = self.stream().clone();
            // cudarc panics on a missing library symbol; treat that as "no cuBLAS" too.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                // SAFETY: only tries to dlopen libcublas.
                if !unsafe { cublas_sys::is_culib_present() } {
                    return Err("libcublas is not installed".to_string());
                }
                CudaBlas::new(stream)
                    .map(Arc::new)
                    .map_err(|e| format!("cublasCreate failed: {e}"))
            }))
            .unwrap_or_else(|_| Err("libcublas lacks a function cudarc needs".to_string()))
        });
        entry
            .clone()
            .map_err(|e| Error(format!("cuBLAS unavailable: {e}")))
    }

    /// [`CudaBackend::gemm_bf16`] through cuBLAS (cublasGemmStridedBatchedEx, bf16 inputs,
    /// CUBLAS_COMPUTE_32F, output bf16 or f32, β = 1 when accumulating): the same arguments
    /// and results, the reference the benchmark measures against. cuBLAS is column-major, so
    /// it computes Cᵀ = Bᵀ·Aᵀ: a row-major `[r, c]` matrix is a column-major `[c, r]` one.
    #[allow(clippy::too_many_arguments)]
    pub fn cublas_gemm_bf16<O: Float>(
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
        let checked = check_shapes(
            "cuBLAS GEMM",
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
        let blas = self.cublas()?;
        let (mi, ni, ki) = (checked.m, checked.n, checked.k);
        let (op_n, op_t) = (
            cublas_sys::cublasOperation_t::CUBLAS_OP_N,
            cublas_sys::cublasOperation_t::CUBLAS_OP_T,
        );
        // Column-major C'[n, m] = op(B')·op(A'), with B' our B and A' our A (as stored):
        //   B [k, n] row-major = col-major [n, k]: op N, ld n;  B [n, k] = col-major [k, n]: op T, ld k
        //   A [m, k] row-major = col-major [k, m]: op N, ld k;  A [k, m] = col-major [m, k]: op T, ld m
        let (op_b, ld_b, op_a, ld_a) = match layout {
            GemmLayout::NN => (op_n, ni, op_n, ki),
            GemmLayout::NT => (op_t, ki, op_n, ki),
            GemmLayout::TN => (op_n, ni, op_t, mi),
        };
        let c_type = if is_f32::<O>() {
            cublas_sys::cudaDataType_t::CUDA_R_32F
        } else {
            cublas_sys::cudaDataType_t::CUDA_R_16BF
        };
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
        let shapes =
            || format!("{layout:?} m {m} n {n} k {k} batch {batch} accumulate {accumulate}");
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_error("binding the context for cuBLAS", e))?;
        let stream = self.stream();
        let (pa, _ra) = a.slice.device_ptr(stream);
        let (pb, _rb) = b.slice.device_ptr(stream);
        let (pc, _rc) = c.slice.device_ptr_mut(stream);
        let mark = self.profile_before("cublasGemmStridedBatchedEx")?;
        // SAFETY: the lengths were checked against the shapes: each of the `batch` products
        // reads m·k and k·n elements and writes m·n, at those strides, inside the buffers.
        // Leading dimensions are at least 1 and at least the rows of each column-major view.
        unsafe {
            cublas_result::gemm_strided_batched_ex(
                *blas.handle(),
                op_b,
                op_a,
                ni,
                mi,
                ki,
                (&alpha) as *const f32 as *const _,
                pb as *const _,
                cublas_sys::cudaDataType_t::CUDA_R_16BF,
                ld_b.max(1),
                (k * n) as i64,
                pa as *const _,
                cublas_sys::cudaDataType_t::CUDA_R_16BF,
                ld_a.max(1),
                (m * k) as i64,
                (&beta) as *const f32 as *const _,
                pc as *mut _,
                c_type,
                ni,
                (m * n) as i64,
                batch as i32,
                cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| Error(format!("cublasGemmStridedBatchedEx ({}): {e}", shapes())))?;
        self.profile_after(mark)?;
        self.after_launch("cublasGemmStridedBatchedEx", shapes)
    }
}
