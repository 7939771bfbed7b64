//! bf16 products of a few rows on the GPU (kernels/gemv.cu): C (+)= A·Bᵀ for at most
//! [`GEMV_MAX_ROWS`] rows, a decode step's, bound by reading B once: each warp streams two rows
//! of B with eight independent 16-byte loads per lane in flight (32 KB per block; the kernel
//! file works out why that is enough). [`CudaBackend::gemm_bf16`] sends such products here;
//! tests/cuda_kernels/gemm.rs checks them against f64 on the CPU.
//!
//! The norm before a decode product can run inside it ([`CudaBackend::norm_gemv_nt`]): each
//! block normalises the f32 residual rows into shared memory itself, with the arithmetic of
//! [`CudaBackend::norm_rows`], so the products are those of norm-then-GEMV bit for bit, without
//! the norm's launch and its bf16 copy's round trip through memory
//! ([`CudaBackend::norm_gemm_bf16`] picks it where it applies; tests/cuda_kernels/norm_gemv.rs).

use super::decode::RowNorm;
use super::flash_attention::raise_smem_limit;
use super::gemm::{check_shapes, Checked, GemmLayout};
use super::{as_int, kernel_error, CudaBackend, DeviceBuffer, Float};
use crate::bail;
use crate::error::Result;
use cudarc::driver::{sys, DevicePtr, LaunchConfig};
use half::bf16;

/// Products of at most this many rows in the NT layout (a decode step's) take kernels/gemv.cu.
pub const GEMV_MAX_ROWS: usize = 8;
/// Warps per block of kernels/gemv.cu.
const GEMV_WARPS: usize = 8;
/// Output columns each warp of kernels/gemv.cu owns at a time.
const GEMV_COLS: usize = 2;

impl CudaBackend {
    /// C (+)= A·Bᵀ for at most [`GEMV_MAX_ROWS`] rows (kernels/gemv.cu): each warp streams
    /// two of B's rows once for all of A's rows, through the variant with the fewest
    /// accumulator rows (1, 2, 4 or 8) that holds m. Shapes already checked.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemv_nt<O: Float>(
        &self,
        m: usize,
        n: usize,
        k: usize,
        batch: usize,
        checked: &Checked,
        a: &DeviceBuffer<bf16>,
        b: &DeviceBuffer<bf16>,
        c: &mut DeviceBuffer<O>,
        accumulate: bool,
    ) -> Result<()> {
        let kernel = gemv_kernel::<O>(m)?;
        let blocks = n.div_ceil(GEMV_WARPS * GEMV_COLS);
        let cfg = LaunchConfig {
            grid_dim: (blocks.min(i32::MAX as usize) as u32, 1, batch as u32),
            block_dim: (32 * GEMV_WARPS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let acc = accumulate as i32;
        launch!(
            self,
            kernel,
            cfg,
            format!("NT m {m} n {n} k {k} batch {batch} accumulate {accumulate} (gemv)"),
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
}

/// The rows a product's normalised input comes from: row r of the product's A is
/// norm(x[rows[r]]), rounded to bf16, as [`CudaBackend::norm_rows`] writes it.
#[derive(Clone, Copy, Debug)]
pub struct NormedRows<'a> {
    /// The residual stream, `[x_rows, dim]` f32.
    pub x: &'a DeviceBuffer<f32>,
    pub dim: usize,
    /// Which rows of x, in order (a row ≥ x_rows gives a row of NaN).
    pub rows: &'a DeviceBuffer<u32>,
    pub norm: RowNorm<'a>,
    pub eps: f64,
}

impl CudaBackend {
    /// C (+)= norm(x[rows])·Wᵀ (`W` `[n, dim]` bf16, C `[rows, n]`): with `fuse`, in one launch
    /// of [`CudaBackend::norm_gemv_nt`] where it applies ([`CudaBackend::norm_gemv_supports`]);
    /// otherwise [`CudaBackend::norm_rows`] into `h` (`[rows, dim]` bf16) and
    /// [`CudaBackend::gemm_bf16`]. Both give the same bits.
    pub fn norm_gemm_bf16<O: Float>(
        &self,
        input: NormedRows<'_>,
        h: &mut DeviceBuffer<bf16>,
        w: &DeviceBuffer<bf16>,
        c: &mut DeviceBuffer<O>,
        accumulate: bool,
        fuse: bool,
    ) -> Result<()> {
        let (m, k) = (input.rows.len(), input.dim);
        if k == 0 || !w.len().is_multiple_of(k) {
            bail!(
                "norm then GEMM: W has {} elements, not a whole number of rows of dim {k}",
                w.len()
            );
        }
        let n = w.len() / k;
        if fuse {
            if let Ok(budget) = self.norm_gemv_budget(m, n, k, w) {
                return self.launch_norm_gemv(input, w, c, accumulate, budget);
            }
        }
        self.norm_rows(input.x, k, input.rows, input.norm, input.eps, h)?;
        self.gemm_bf16(GemmLayout::NT, m, n, k, 1, h, w, c, accumulate)
    }

    /// Ok when [`CudaBackend::norm_gemv_nt`] takes an `[m, k]`·`[n, k]`ᵀ product with weight
    /// `w`: 1 to [`GEMV_MAX_ROWS`] rows, k a positive multiple of 8, `w` 16-byte aligned, and
    /// the m normalised rows (2·m·k bytes) within a block's shared memory; else why not.
    pub fn norm_gemv_supports(
        &self,
        m: usize,
        n: usize,
        k: usize,
        w: &DeviceBuffer<bf16>,
    ) -> Result<()> {
        self.norm_gemv_budget(m, n, k, w).map(|_| ())
    }

    /// [`CudaBackend::norm_gemv_supports`]'s checks, handing back the dynamic shared memory a
    /// block may have, so that the launch need not ask the driver again.
    fn norm_gemv_budget(
        &self,
        m: usize,
        n: usize,
        k: usize,
        w: &DeviceBuffer<bf16>,
    ) -> Result<usize> {
        let what = || format!("fused norm + GEMV (m {m} n {n} k {k})");
        if m == 0 || m > GEMV_MAX_ROWS {
            bail!("{}: takes 1 to {GEMV_MAX_ROWS} rows", what());
        }
        if n == 0 || k == 0 || !k.is_multiple_of(8) {
            bail!("{}: needs n > 0 and k a positive multiple of 8", what());
        }
        let aligned = {
            let (p, _record) = w.slice.device_ptr(self.stream());
            p % 16 == 0
        };
        if !aligned {
            bail!("{}: W must be 16-byte aligned", what());
        }
        // Both output types' variants have the same static shared memory (the scratch).
        let budget = self.norm_gemv_smem_budget(norm_gemv_kernel::<bf16>(m)?)?;
        if 2 * m * k > budget {
            bail!(
                "{}: the normalised rows need {} bytes of shared memory, a block has {budget}",
                what(),
                2 * m * k
            );
        }
        Ok(budget)
    }

    /// Dynamic shared memory a block of the fused kernels may have (the device's opt-in limit
    /// less the kernel's static shared memory, the reduction's scratch).
    fn norm_gemv_smem_budget(&self, kernel: &'static str) -> Result<usize> {
        let optin = self
            .ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(|e| kernel_error(kernel, "", "reading the device's shared memory", e))?;
        let fixed = self
            .function(kernel)?
            .get_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
            .map_err(|e| kernel_error(kernel, "", "reading the static shared memory", e))?;
        Ok((optin.max(0) as usize).saturating_sub(fixed.max(0) as usize))
    }

    /// C (+)= norm(x[rows])·Wᵀ in one launch (kernels/gemv.cu, `norm_gemv_nt_*`): every block
    /// normalises the rows into shared memory exactly as [`CudaBackend::norm_rows`] does into
    /// bf16, then runs [`CudaBackend::gemm_bf16`]'s GEMV over them, so C equals norm-then-GEMV's
    /// bit for bit. An error if [`CudaBackend::norm_gemv_supports`] refuses the shapes.
    pub fn norm_gemv_nt<O: Float>(
        &self,
        input: NormedRows<'_>,
        w: &DeviceBuffer<bf16>,
        c: &mut DeviceBuffer<O>,
        accumulate: bool,
    ) -> Result<()> {
        let (m, k) = (input.rows.len(), input.dim);
        if k == 0 || !w.len().is_multiple_of(k) {
            bail!(
                "fused norm + GEMV: W has {} elements, not a whole number of rows of dim {k}",
                w.len()
            );
        }
        let budget = self.norm_gemv_budget(m, w.len() / k, k, w)?;
        self.launch_norm_gemv(input, w, c, accumulate, budget)
    }

    /// [`CudaBackend::norm_gemv_nt`] once [`CudaBackend::norm_gemv_budget`] has passed the
    /// shapes and said how much shared memory a block may have.
    fn launch_norm_gemv<O: Float>(
        &self,
        input: NormedRows<'_>,
        w: &DeviceBuffer<bf16>,
        c: &mut DeviceBuffer<O>,
        accumulate: bool,
        budget: usize,
    ) -> Result<()> {
        let NormedRows {
            x,
            dim: k,
            rows,
            norm,
            eps,
        } = input;
        let (m, n) = (rows.len(), w.len() / k);
        let kernel = norm_gemv_kernel::<O>(m)?;
        let checked = check_shapes(kernel, GemmLayout::NT, m, n, k, 1, m * k, w.len(), c.len())?;
        if !x.len().is_multiple_of(k) || x.is_empty() {
            bail!(
                "CUDA kernel {kernel}: x has {} elements, not a positive number of rows of dim {k}",
                x.len()
            );
        }
        let x_rows = as_int(kernel, "x rows", x.len() / k)?;
        // LayerNorm reads no weight: x stands in for the pointer, as in norm_rows.
        let (g, layer_norm) = match norm {
            RowNorm::Rms(g) => {
                if g.len() != k {
                    bail!(
                        "CUDA kernel {kernel}: the norm weight has {} elements, dim is {k}",
                        g.len()
                    );
                }
                (&g.slice, 0i32)
            }
            RowNorm::LayerNorm => (&x.slice, 1i32),
        };
        let smem = 2 * m * k;
        let shapes = || format!("m {m} n {n} k {k} of {x_rows} rows, {norm:?} (norm + gemv)");
        // Over 48 KiB with the static scratch (at most 1 KiB) needs the opt-in; the same limit
        // on every call, so concurrent calls cannot lower it under one another.
        if smem + 32 * GEMV_MAX_ROWS * 4 > 48 * 1024 {
            raise_smem_limit(self, kernel, budget as u32, shapes)?;
        }
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(GEMV_WARPS * GEMV_COLS) as u32, 1, 1),
            block_dim: (32 * GEMV_WARPS as u32, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        let (eps, acc) = (eps as f32, accumulate as i32);
        launch!(
            self,
            kernel,
            cfg,
            shapes(),
            [
                &x.slice,
                &x_rows,
                &rows.slice,
                g,
                &eps,
                &layer_norm,
                &w.slice,
                &mut c.slice,
                &checked.m,
                &checked.n,
                &checked.k,
                &acc
            ]
        )
    }
}

/// The fused norm + GEMV variant (kernels/gemv.cu, `norm_gemv_nt_*`) for `m` rows of `O`
/// output: as [`gemv_kernel`].
fn norm_gemv_kernel<O: Float>(m: usize) -> Result<&'static str> {
    let names = match m {
        1 => ("norm_gemv_nt_f32_r1", "norm_gemv_nt_bf16_r1"),
        2 => ("norm_gemv_nt_f32_r2", "norm_gemv_nt_bf16_r2"),
        3..=4 => ("norm_gemv_nt_f32_r4", "norm_gemv_nt_bf16_r4"),
        5..=GEMV_MAX_ROWS => ("norm_gemv_nt_f32_r8", "norm_gemv_nt_bf16_r8"),
        _ => crate::bail!("norm + gemv: {m} rows; the kernel takes 1 to {GEMV_MAX_ROWS}"),
    };
    Ok(O::pick(names.0, names.1))
}

/// The kernels/gemv.cu variant for `m` rows of `O` output: the fewest accumulator rows ≥ m.
pub(super) fn gemv_kernel<O: Float>(m: usize) -> Result<&'static str> {
    let names = match m {
        1 => ("gemv_nt_f32_r1", "gemv_nt_bf16_r1"),
        2 => ("gemv_nt_f32_r2", "gemv_nt_bf16_r2"),
        3..=4 => ("gemv_nt_f32_r4", "gemv_nt_bf16_r4"),
        5..=GEMV_MAX_ROWS => ("gemv_nt_f32_r8", "gemv_nt_bf16_r8"),
        _ => crate::bail!("gemv: {m} rows; the kernel takes 1 to {GEMV_MAX_ROWS}"),
    };
    Ok(O::pick(names.0, names.1))
}
