//! bf16 products of a decode batch on the tensor cores (kernels/gemm_skinny.cu): C (+)= A·Bᵀ
//! (the NT layout, B a weight stored `[out, in]`) for [`GEMV_MAX_ROWS`] < m ≤
//! [`SKINNY_MAX_ROWS`], batch 1, bound by reading B once. Each block streams a slab of 128 of
//! B's rows; when those slabs are too few to keep every SM streaming, K is split across blocks
//! and the last block of each slab adds the f32 partials in a fixed order (deterministic), with
//! the workspace allocated once when the backend opens (a decode step captured as a CUDA graph
//! cannot allocate). [`CudaBackend::gemm_bf16`] sends such products here;
//! tests/cuda_kernels/gemm_skinny.rs checks them against f64 on the CPU.

use super::gemm::{check_shapes, GemmLayout};
use super::gemv::GEMV_MAX_ROWS;
use super::{driver_error, kernel_error, CudaBackend, DeviceBuffer, Float};
use crate::bail;
use crate::error::Result;
use cudarc::driver::{sys, CudaStream, DevicePtr, LaunchConfig};
use half::bf16;
use std::sync::Arc;

/// Most rows of A (a decode batch) the skinny kernels take.
pub const SKINNY_MAX_ROWS: usize = 256;
/// B's rows (output columns) per block (kernels/gemm_skinny.cu's BN).
const SLAB: usize = 128;
/// K per pipeline step (BK).
const K_STEP: usize = 64;
/// Threads per block.
const THREADS: u32 = 256;
/// Fewest K steps a split gets, so that its pipeline fill (3 steps) is not most of its work.
const MIN_SPLIT_STEPS: usize = 4;
/// Most splits of K.
const MAX_SPLITS: usize = 16;
/// Workspace floats per SM: two resident blocks' partial tiles of 128 × 128 (kernels'
/// largest), so every split the planner can choose at one wave fits.
const PARTIAL_FLOATS_PER_SM: usize = 2 * SLAB * 128;
/// Counters per SM: one per slab of the smallest tile (128 × 16) the partials could hold.
const COUNTERS_PER_SM: usize = PARTIAL_FLOATS_PER_SM / (SLAB * 16);

/// How [`CudaBackend::gemm_bf16_skinny`] splits K.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkinnySplit {
    /// Enough splits that the blocks fill the GPU's resident slots ([`skinny_plan`]).
    Auto,
    /// Exactly this many (clamped to the K steps there are), e.g. 1 for no split; for tests.
    Fixed(usize),
}

/// How one skinny product is launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkinnyPlan {
    /// Rows of A per block: 16, 32, 64 or 128.
    pub m_tile: usize,
    /// Blocks per split: ⌈n/128⌉·⌈m/m_tile⌉.
    pub tiles: usize,
    /// Splits of K (gridDim.y).
    pub splits: usize,
    /// K steps of 64 per split (the last may have fewer).
    pub steps_per_split: usize,
}

/// The split workspace: f32 partial tiles and one counter per block of a split (zero between
/// launches: the last block of each slab resets its own).
pub(super) struct SplitWorkspace {
    partials: DeviceBuffer<f32>,
    counters: DeviceBuffer<u32>,
}

impl SplitWorkspace {
    /// Sized for `multiprocessors` SMs (17 MB on a 132-SM H100).
    pub(super) fn new(stream: &Arc<CudaStream>, multiprocessors: u32) -> Result<SplitWorkspace> {
        let sms = multiprocessors as usize;
        let err = |what: &str| {
            let what = format!("allocating the skinny GEMM's split {what}");
            move |e| driver_error(&what, e)
        };
        let partials = stream
            .alloc_zeros::<f32>(sms * PARTIAL_FLOATS_PER_SM)
            .map_err(err("partials"))?;
        let counters = stream
            .alloc_zeros::<u32>(sms * COUNTERS_PER_SM)
            .map_err(err("counters"))?;
        Ok(SplitWorkspace {
            partials: DeviceBuffer { slice: partials },
            counters: DeviceBuffer { slice: counters },
        })
    }
}

/// Rows of A per block for `m` rows: the smallest tile that holds them, 128 above that.
fn m_tile(m: usize) -> usize {
    [16, 32, 64].into_iter().find(|&t| m <= t).unwrap_or(128)
}

/// Dynamic shared memory of the m_tile's kernel (kernels/gemm_skinny.cu asserts the same):
/// 4 stages of a 128-row and an m_tile-row tile of 64 k, rows padded to 144 bytes.
fn smem_bytes(m_tile: usize) -> u32 {
    (4 * (SLAB + m_tile) * 144) as u32
}

fn kernel_name<O: Float>(m_tile: usize) -> &'static str {
    match m_tile {
        16 => O::pick("gemm_skinny_m16_f32", "gemm_skinny_m16_bf16"),
        32 => O::pick("gemm_skinny_m32_f32", "gemm_skinny_m32_bf16"),
        64 => O::pick("gemm_skinny_m64_f32", "gemm_skinny_m64_bf16"),
        _ => O::pick("gemm_skinny_m128_f32", "gemm_skinny_m128_bf16"),
    }
}

/// The launch of an `m × n × k` product on `sms` SMs holding `blocks_per_sm` of its blocks
/// each, with a workspace of `partial_floats` floats and `counters` counters. `Auto` picks the
/// splits S (at most 16, at least 4 K steps each, within the workspace) that minimise the
/// waves per unit of work, ⌈tiles·S / resident⌉ / S, the fewest on a tie (fewer partials); a
/// plan that needs more workspace than there is is an error.
pub fn skinny_plan(
    (m, n, k): (usize, usize, usize),
    split: SkinnySplit,
    sms: usize,
    blocks_per_sm: usize,
    (partial_floats, counters): (usize, usize),
) -> Result<SkinnyPlan> {
    let m_tile = m_tile(m);
    let tiles = n.div_ceil(SLAB) * m.div_ceil(m_tile);
    let k_steps = k.div_ceil(K_STEP);
    let fits =
        |s: usize| s == 1 || (s * tiles * SLAB * m_tile <= partial_floats && tiles <= counters);
    let wanted = match split {
        SkinnySplit::Fixed(s) => {
            let s = s.clamp(1, k_steps.max(1));
            if !fits(s) {
                bail!(
                    "skinny GEMM m {m} n {n} k {k}: {s} splits of {tiles} blocks need {} \
                     partial floats and {tiles} counters, the workspace has {partial_floats} and \
                     {counters}",
                    s * tiles * SLAB * m_tile
                );
            }
            s
        }
        SkinnySplit::Auto => {
            let resident = (sms * blocks_per_sm).max(1);
            let most = (k_steps / MIN_SPLIT_STEPS).clamp(1, MAX_SPLITS);
            let cost = |s: usize| (tiles * s).div_ceil(resident) as f64 / s as f64;
            (1..=most)
                .filter(|&s| fits(s))
                .fold(1, |best, s| if cost(s) < cost(best) { s } else { best })
        }
    };
    // Whole steps per split, and no split left empty.
    let steps_per_split = k_steps.div_ceil(wanted);
    let splits = if steps_per_split == 0 {
        1
    } else {
        k_steps.div_ceil(steps_per_split)
    };
    Ok(SkinnyPlan {
        m_tile,
        tiles,
        splits,
        steps_per_split,
    })
}

impl CudaBackend {
    /// Whether [`CudaBackend::gemm_bf16_skinny`] takes this product: `Err` says why not (the
    /// layout is not NT, batch is not 1, m is outside ([`GEMV_MAX_ROWS`],
    /// [`SKINNY_MAX_ROWS`]], k is not a multiple of 8, or A or B is not 16-byte aligned).
    #[allow(clippy::too_many_arguments)]
    pub fn skinny_supports(
        &self,
        layout: GemmLayout,
        m: usize,
        n: usize,
        k: usize,
        batch: usize,
        a: &DeviceBuffer<bf16>,
        b: &DeviceBuffer<bf16>,
    ) -> Result<()> {
        let what = || format!("skinny GEMM ({layout:?} m {m} n {n} k {k} batch {batch})");
        if layout != GemmLayout::NT || batch != 1 {
            bail!("{}: only NT products of batch 1", what());
        }
        if m <= GEMV_MAX_ROWS || m > SKINNY_MAX_ROWS {
            bail!(
                "{}: m must be in {}..={SKINNY_MAX_ROWS}",
                what(),
                GEMV_MAX_ROWS + 1
            );
        }
        if !k.is_multiple_of(8) {
            bail!("{}: k must be a multiple of 8 (16-byte rows)", what());
        }
        let stream = self.stream();
        let (pa, _ra) = a.slice.device_ptr(stream);
        let (pb, _rb) = b.slice.device_ptr(stream);
        if pa % 16 != 0 || pb % 16 != 0 {
            bail!("{}: A and B must be 16-byte aligned", what());
        }
        Ok(())
    }

    /// How [`CudaBackend::gemm_bf16_skinny`] launches an `m × n × k` product on this device
    /// (the blocks resident per SM from the driver's occupancy calculator).
    pub fn skinny_plan(
        &self,
        m: usize,
        n: usize,
        k: usize,
        split: SkinnySplit,
    ) -> Result<SkinnyPlan> {
        let tile = m_tile(m);
        let kernel = kernel_name::<bf16>(tile);
        let blocks_per_sm = self
            .skinny_function(kernel, tile, &|| format!("m {m} n {n} k {k}"))?
            .occupancy_max_active_blocks_per_multiprocessor(
                THREADS,
                smem_bytes(tile) as usize,
                None,
            )
            .map_err(|e| kernel_error(kernel, &format!("m {m} n {n} k {k}"), "occupancy", e))?;
        let ws = &self.skinny_workspace;
        skinny_plan(
            (m, n, k),
            split,
            self.multiprocessors as usize,
            blocks_per_sm.max(1) as usize,
            (ws.partials.len(), ws.counters.len()),
        )
    }

    /// The kernel, with its shared-memory limit raised (cheap, so on every call).
    fn skinny_function(
        &self,
        kernel: &'static str,
        m_tile: usize,
        shapes: &dyn Fn() -> String,
    ) -> Result<&cudarc::driver::CudaFunction> {
        let f = self.function(kernel)?;
        f.set_attribute(
            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem_bytes(m_tile) as i32,
        )
        .map_err(|e| kernel_error(kernel, &shapes(), "raising the shared-memory limit", e))?;
        Ok(f)
    }

    /// C = A·Bᵀ (or C += A·Bᵀ with `accumulate`) for A `[m, k]`, B `[n, k]`, C `[m, n]` (bf16
    /// rounded to nearest even, or f32), [`GEMV_MAX_ROWS`] < m ≤ [`SKINNY_MAX_ROWS`], k a
    /// multiple of 8, A and B 16-byte aligned ([`CudaBackend::skinny_supports`]), on
    /// kernels/gemm_skinny.cu, K split as `split` says. The same inputs and plan give the same
    /// bits on every run. k = 0 writes zeros (or leaves C as it is when accumulating).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16_skinny<O: Float>(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: &DeviceBuffer<bf16>,
        b: &DeviceBuffer<bf16>,
        c: &mut DeviceBuffer<O>,
        accumulate: bool,
        split: SkinnySplit,
    ) -> Result<()> {
        let checked = check_shapes(
            "CUDA skinny GEMM",
            GemmLayout::NT,
            m,
            n,
            k,
            1,
            a.len(),
            b.len(),
            c.len(),
        )?;
        self.skinny_supports(GemmLayout::NT, m, n, k, 1, a, b)?;
        if checked.empty {
            return Ok(());
        }
        let plan = self.skinny_plan(m, n, k, split)?;
        let kernel = kernel_name::<O>(plan.m_tile);
        let shapes = || {
            format!(
                "NT m {m} n {n} k {k} accumulate {accumulate} (skinny, {} splits)",
                plan.splits
            )
        };
        // skinny_plan raised this kernel's shared-memory limit (its bf16 twin's, and both
        // outputs' kernels share the m tile's size): raise the f32 one's too.
        self.skinny_function(kernel, plan.m_tile, &shapes)?;
        let cfg = LaunchConfig {
            grid_dim: (plan.tiles as u32, plan.splits as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: smem_bytes(plan.m_tile),
        };
        let steps = plan.steps_per_split as i32;
        let acc = accumulate as i32;
        let ws = &self.skinny_workspace;
        // The workspace is written by the kernel though shared here: one stream runs one
        // product at a time, and each launch leaves the counters at zero.
        launch!(
            self,
            kernel,
            cfg,
            shapes(),
            [
                &a.slice,
                &b.slice,
                &mut c.slice,
                &ws.partials.slice,
                &ws.counters.slice,
                &checked.m,
                &checked.n,
                &checked.k,
                &steps,
                &acc
            ]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100: (usize, usize) = (132, 2);
    const WORKSPACE: (usize, usize) = (132 * PARTIAL_FLOATS_PER_SM, 132 * COUNTERS_PER_SM);

    fn auto(m: usize, n: usize, k: usize, blocks_per_sm: usize) -> SkinnyPlan {
        skinny_plan(
            (m, n, k),
            SkinnySplit::Auto,
            H100.0,
            blocks_per_sm,
            WORKSPACE,
        )
        .unwrap()
    }

    #[test]
    fn decode_shapes_fill_the_gpu() {
        // Llama-2-7B's products at batch 64: 32 slabs of 4096 need 8 splits to fill 264 slots;
        // 86 slabs of 11008 take 3 (258 blocks, one wave); the LM head's 250 need none.
        let p = auto(64, 4096, 4096, H100.1);
        assert_eq!(
            (p.m_tile, p.tiles, p.splits, p.steps_per_split),
            (64, 32, 8, 8)
        );
        let p = auto(64, 11008, 4096, H100.1);
        assert_eq!((p.tiles, p.splits, p.steps_per_split), (86, 3, 22));
        let p = auto(64, 4096, 11008, H100.1);
        assert_eq!((p.splits, p.steps_per_split), (8, 22));
        assert_eq!(auto(64, 32000, 4096, H100.1).splits, 1);
        // m = 200 takes two 128-row blocks per slab, one resident per SM.
        let p = auto(200, 4096, 4096, 1);
        assert_eq!((p.m_tile, p.tiles, p.splits), (128, 64, 2));
        assert_eq!(auto(9, 4096, 4096, H100.1).m_tile, 16);
        assert_eq!(auto(17, 4096, 4096, H100.1).m_tile, 32);
    }

    #[test]
    fn every_split_has_work_and_k_is_covered() {
        for k in [0, 8, 64, 72, 520, 4096, 11008] {
            for s in 1..=20 {
                let p =
                    skinny_plan((64, 300, k), SkinnySplit::Fixed(s), 132, 2, WORKSPACE).unwrap();
                let steps = k.div_ceil(K_STEP);
                assert!(p.splits * p.steps_per_split >= steps, "k {k} s {s}: {p:?}");
                assert!(
                    steps == 0 || (p.splits - 1) * p.steps_per_split < steps,
                    "k {k} s {s}: an empty split in {p:?}"
                );
                assert!(p.splits <= s.max(1));
            }
        }
        // Short K is not split below 4 steps a split.
        assert_eq!(auto(64, 128, 512, 2).splits, 2);
        assert_eq!(auto(64, 128, 128, 2).splits, 1);
    }

    #[test]
    fn a_split_beyond_the_workspace_is_refused() {
        let e = skinny_plan((64, 4096, 4096), SkinnySplit::Fixed(64), 1, 1, (1024, 8))
            .unwrap_err()
            .to_string();
        assert!(e.contains("partial floats"), "{e}");
        // Auto stays within it, down to no split.
        let p = skinny_plan((64, 4096, 4096), SkinnySplit::Auto, 132, 2, (1024, 8)).unwrap();
        assert_eq!(p.splits, 1);
    }
}
