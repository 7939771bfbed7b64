//! The CPU GEMM behind every linear layer, forward and backward.
//!
//! `gemm` computes `C[m,n] = op(A)·op(B) (+ C)` with row-major operands; `B` (the weight) may
//! be f32, bf16 or f16 and is converted to f32 on the fly, so weights keep their stored dtype.
//!
//! Two paths:
//! * **small m** (decode, `m <= GEMV_MAX_M`): memory-bound, the weight is read from memory
//!   once. Threads split the `n` outputs; each streams its rows (or columns) of B straight
//!   from the weight, converting in registers, against the few rows of A that stay in L1.
//! * **blocked** (prefill, training): the classic Goto/BLIS scheme. C is cut into tiles, one
//!   parallel task each. Inside a tile, a `KC`-deep slice of B is packed into f32 column panels
//!   `NR` wide, and `MC`-row blocks of A into row panels `MR` high, so that the micro-kernel
//!   reads both operands contiguously: the `MR x NR` accumulator tile lives in registers, one
//!   B panel (`KC x NR`) stays in L1, the A block (`MC x KC`) and the B slice stay in L2.
//!
//! Micro-kernels, chosen once at run time: AVX-512F (6x32), AVX2+FMA (6x16), and a portable
//! one (6x16 on plain arrays, which the compiler vectorises for the baseline target).

use super::parallel::{num_threads, parallel_for, SendPtr};
use crate::tensor::Elems;
use half::slice::HalfFloatSliceExt;
use std::cell::Cell;
use std::sync::OnceLock;

/// `C[m,n] = op(A)·op(B)`, plus the previous `C` when `accumulate`.
///
/// All matrices are row-major and contiguous. `op(A)` is `A[m,k]`, or with `a_trans` the
/// transpose of `A` stored as `[k,m]`. `op(B)` is `B[k,n]`, or with `b_trans` the transpose of
/// `B` stored as `[n,k]` (the PyTorch `Linear` weight: `y = x·Wᵀ` is
/// `gemm(m, out, in, x, false, W, true, y, false)`). Only the first `m*k`, `k*n` and `m*n`
/// elements of `a`, `b` and `c` are used. Without `accumulate`, `C` is only written, never read.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_trans: bool,
    b: Elems,
    b_trans: bool,
    c: &mut [f32],
    accumulate: bool,
) {
    let g = Gemm::new(m, n, k, a, a_trans, b, b_trans, accumulate, c.len());
    gemm_with(detected_isa(), &g, c);
}

/// The test oracle for [`gemm`]: same contract, a plain triple loop accumulating in f64.
#[allow(clippy::too_many_arguments)]
pub fn gemm_reference(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_trans: bool,
    b: Elems,
    b_trans: bool,
    c: &mut [f32],
    accumulate: bool,
) {
    let g = Gemm::new(m, n, k, a, a_trans, b, b_trans, accumulate, c.len());
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k)
                .map(|p| g.a_at(i, p) as f64 * g.b_at(p, j) as f64)
                .sum();
            let base = if accumulate { c[i * n + j] as f64 } else { 0.0 };
            c[i * n + j] = (base + dot) as f32;
        }
    }
}

/// One call's operands and shape.
#[derive(Clone, Copy)]
struct Gemm<'a> {
    m: usize,
    n: usize,
    k: usize,
    a: &'a [f32],
    a_trans: bool,
    b: Elems<'a>,
    b_trans: bool,
    accumulate: bool,
}

impl<'a> Gemm<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        m: usize,
        n: usize,
        k: usize,
        a: &'a [f32],
        a_trans: bool,
        b: Elems<'a>,
        b_trans: bool,
        accumulate: bool,
        c_len: usize,
    ) -> Self {
        assert!(
            a.len() >= m * k,
            "gemm: A has {} elements, needs {m}x{k}",
            a.len()
        );
        assert!(
            b.len() >= k * n,
            "gemm: B has {} elements, needs {k}x{n}",
            b.len()
        );
        assert!(
            c_len >= m * n,
            "gemm: C has {c_len} elements, needs {m}x{n}"
        );
        Gemm {
            m,
            n,
            k,
            a,
            a_trans,
            b,
            b_trans,
            accumulate,
        }
    }
    /// `op(A)[i,p]`.
    fn a_at(&self, i: usize, p: usize) -> f32 {
        if self.a_trans {
            self.a[p * self.m + i]
        } else {
            self.a[i * self.k + p]
        }
    }
    /// `op(B)[p,j]`.
    fn b_at(&self, p: usize, j: usize) -> f32 {
        if self.b_trans {
            self.b.get(j * self.k + p)
        } else {
            self.b.get(p * self.n + j)
        }
    }
}

/// Which micro-kernels to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// Columns of the register tile (the width of a packed B panel).
    fn nr(self) -> usize {
        match self {
            Isa::Portable => 16,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => 16,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => 32,
        }
    }
}

/// The best kernel set this CPU supports, detected once.
fn detected_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| available_isas().pop().unwrap_or(Isa::Portable))
}

/// Every kernel set this CPU can run, worst first.
fn available_isas() -> Vec<Isa> {
    #[allow(unused_mut)]
    let mut v = vec![Isa::Portable];
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        if avx2 {
            v.push(Isa::Avx2);
            if is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
            }
        }
    }
    v
}

/// Above this many rows of A the packed, blocked path wins; at or below it, streaming the
/// weight (GEMV-style) does, since packing B would cost as much as using it. Measured on a
/// 2-core Zen 5 with a 1536x576 bf16 weight: m = 1: 14 µs vs 52 µs; the two meet near m = 8.
/// (Beyond 4 rows, the GEMV re-reads each task's share of B from L2 once per 4 rows of A.)
const GEMV_MAX_M: usize = 8;

fn gemm_with(isa: Isa, g: &Gemm, c: &mut [f32]) {
    let (m, n, k) = (g.m, g.n, g.k);
    let c = &mut c[..m * n];
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !g.accumulate {
            c.fill(0.0);
        }
        return;
    }
    if m <= GEMV_MAX_M {
        gemv::run(isa, g, c);
    } else {
        blocked::run(isa, g, c);
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers.

/// Converts `out.len()` elements of `src` starting at `start` to f32 (vectorised by `half`).
#[inline]
fn convert(src: Elems, start: usize, out: &mut [f32]) {
    let end = start + out.len();
    match src {
        Elems::F32(s) => out.copy_from_slice(&s[start..end]),
        Elems::BF16(s) => s[start..end].convert_to_f32_slice(out),
        Elems::F16(s) => s[start..end].convert_to_f32_slice(out),
    }
}

/// Runs `f` with a scratch buffer of at least `len` floats aligned to 64 bytes (a cache line,
/// so that packed panels never straddle lines), reusing one allocation per thread and slot.
fn with_scratch<R>(
    slot: &'static std::thread::LocalKey<Cell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    // Taking the Vec out (rather than borrowing) keeps this correct even if `f` re-enters.
    let mut v = slot.with(|s| s.take());
    if v.len() < len + 16 {
        v = vec![0.0; len + 16];
    }
    let off = v.as_ptr().align_offset(64).min(16);
    let r = f(&mut v[off..off + len]);
    slot.with(|s| s.set(v));
    r
}

thread_local! {
    static SCRATCH_A: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static SCRATCH_B: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

// ---------------------------------------------------------------------------------------------
// Blocked path.

mod blocked {
    use super::*;

    /// Rows of the register tile: 6 rows x (2 or 1 vectors) of accumulators fill 12 of the 16
    /// AVX2 registers, leaving room for the B vectors and the A broadcast.
    pub(super) const MR: usize = 6;
    /// Depth of a packed slice: a `KC x NR` B panel is 16 KiB (AVX2) or 32 KiB (AVX-512), so it
    /// stays in a 32-48 KiB L1d while A panels stream past it.
    const KC: usize = 256;
    /// Rows of a packed A block: `MC x KC` floats = 144 KiB, resident in L2 (512 KiB-2 MiB).
    const MC: usize = 144;
    /// Largest tile one task owns. Its B slice (`KC x NT_MAX` = 512 KiB) is packed once per
    /// tile and reused by all its rows, so packing costs 1 element per `2*MT` flops.
    const MT_MAX: usize = 576;
    const NT_MAX: usize = 512;
    /// Below this many multiply-adds the whole product runs on the calling thread.
    const SERIAL_WORK: usize = 1 << 17;

    pub(super) fn run(isa: Isa, g: &Gemm, c: &mut [f32]) {
        let nr = isa.nr();
        let (mt, nt) = tile_sizes(g.m, g.n, g.k, nr);
        let (tiles_m, tiles_n) = (g.m.div_ceil(mt), g.n.div_ceil(nt));
        let c_ptr = SendPtr(c.as_mut_ptr());
        parallel_for(tiles_m * tiles_n, |t| {
            let (ti, tj) = (t / tiles_n, t % tiles_n);
            let rows = ti * mt..((ti + 1) * mt).min(g.m);
            let cols = tj * nt..((tj + 1) * nt).min(g.n);
            // SAFETY: tiles partition C; this task writes only rows × cols of it, and `c`
            // stays mutably borrowed until `parallel_for` returns after every task.
            unsafe { run_tile(isa, g, c_ptr.get(), rows, cols) };
        });
    }

    /// Tile height and width: as large as the caches allow, but cut so that there are enough
    /// tiles (a multiple of the thread count when there are few) to keep every thread busy.
    fn tile_sizes(m: usize, n: usize, k: usize, nr: usize) -> (usize, usize) {
        let threads = num_threads();
        if m * n * k < SERIAL_WORK || threads == 1 {
            return (m, n);
        }
        let tiles_m = m.div_ceil(MT_MAX);
        let mt = m.div_ceil(tiles_m).next_multiple_of(MR);
        let mut want = tiles_m * n.div_ceil(NT_MAX);
        if want < 4 * threads {
            want = want.next_multiple_of(threads);
        }
        let tiles_n = want.div_ceil(tiles_m);
        let nt = n.div_ceil(tiles_n).next_multiple_of(nr);
        (mt, nt)
    }

    /// Computes the C tile `rows × cols` over the whole depth k.
    ///
    /// # Safety
    /// `c` points to the m×n output; no other thread accesses this tile meanwhile.
    unsafe fn run_tile(
        isa: Isa,
        g: &Gemm,
        c: *mut f32,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) {
        let nr = isa.nr();
        let nc = cols.len();
        let b_len = KC * nc.next_multiple_of(nr);
        let a_len = KC * MC.next_multiple_of(MR);
        with_scratch(&SCRATCH_B, b_len, |bbuf| {
            with_scratch(&SCRATCH_A, a_len, |abuf| {
                for pc in (0..g.k).step_by(KC) {
                    let kc = KC.min(g.k - pc);
                    pack_b(isa, g, pc, kc, cols.clone(), bbuf);
                    // The first slice writes C (or adds to it when accumulating), later ones add.
                    let load_c = g.accumulate || pc > 0;
                    for ic in rows.clone().step_by(MC) {
                        let mc = MC.min(rows.end - ic);
                        pack_a(g, ic, mc, pc, kc, abuf);
                        // SAFETY: the block ic..ic+mc × cols lies inside this task's tile.
                        unsafe {
                            block(
                                isa,
                                kc,
                                mc,
                                nc,
                                abuf,
                                bbuf,
                                c.add(ic * g.n + cols.start),
                                g.n,
                                load_c,
                            )
                        };
                    }
                }
            })
        });
    }

    /// Multiplies a packed `mc x kc` A block by a packed `kc x nc` B slice into C.
    ///
    /// # Safety
    /// `c` addresses an `mc x nc` block (row stride `ldc`) owned by the caller.
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        isa: Isa,
        kc: usize,
        mc: usize,
        nc: usize,
        abuf: &[f32],
        bbuf: &[f32],
        c: *mut f32,
        ldc: usize,
        load_c: bool,
    ) {
        let nr = isa.nr();
        // B panel outer, A panels inner: the B panel stays in L1 while A panels stream from L2.
        for jr in (0..nc).step_by(nr) {
            let bp = &bbuf[jr * kc..][..kc * nr];
            for ir in (0..mc).step_by(MR) {
                let ap = &abuf[ir * kc..][..kc * MR];
                let tile = Tile {
                    c: c.add(ir * ldc + jr),
                    ldc,
                    rows: MR.min(mc - ir),
                    cols: nr.min(nc - jr),
                };
                micro_tile(isa, kc, ap, bp, tile, load_c);
            }
        }
    }

    /// Where one register tile lands in C; `rows`/`cols` are smaller than `MR`/`NR` at edges.
    #[derive(Clone, Copy)]
    struct Tile {
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
    }

    /// Runs the micro-kernel for one tile. Edge tiles go through a full-size buffer on the
    /// stack (packing zero-padded the operands), so kernels only handle full tiles.
    ///
    /// # Safety
    /// `tile` addresses memory owned by the caller; `ap` holds `kc*MR`, `bp` `kc*NR` floats.
    unsafe fn micro_tile(isa: Isa, kc: usize, ap: &[f32], bp: &[f32], tile: Tile, load_c: bool) {
        let nr = isa.nr();
        if tile.rows == MR && tile.cols == nr {
            kernel(isa, kc, ap, bp, tile.c, tile.ldc, load_c);
            return;
        }
        let mut buf = [0.0f32; MR * 32];
        kernel(isa, kc, ap, bp, buf.as_mut_ptr(), nr, false);
        for i in 0..tile.rows {
            // SAFETY: row i of the tile has `cols` valid elements inside the caller's block.
            let row =
                unsafe { std::slice::from_raw_parts_mut(tile.c.add(i * tile.ldc), tile.cols) };
            for (o, &v) in row.iter_mut().zip(&buf[i * nr..]) {
                *o = if load_c { *o + v } else { v };
            }
        }
    }

    /// # Safety
    /// `c` addresses a full `MR x NR` tile with row stride `ldc`.
    unsafe fn kernel(
        isa: Isa,
        kc: usize,
        ap: &[f32],
        bp: &[f32],
        c: *mut f32,
        ldc: usize,
        load_c: bool,
    ) {
        match isa {
            Isa::Portable => super::portable::kernel_6x16(kc, ap, bp, c, ldc, load_c),
            // SAFETY (both): the ISA was detected on this CPU before being selected.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => super::x86::kernel_6x16_avx2(kc, ap, bp, c, ldc, load_c),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => super::x86::kernel_6x32_avx512(kc, ap, bp, c, ldc, load_c),
        }
    }

    /// Packs `op(A)[ic..ic+mc, pc..pc+kc]` into row panels of `MR`: panel `q` holds
    /// `out[q*kc*MR + p*MR + i] = op(A)[ic + q*MR + i, pc + p]`, zero past the last row.
    fn pack_a(g: &Gemm, ic: usize, mc: usize, pc: usize, kc: usize, out: &mut [f32]) {
        for (q, panel) in out.chunks_mut(kc * MR).take(mc.div_ceil(MR)).enumerate() {
            let r0 = ic + q * MR;
            let h = MR.min(ic + mc - r0);
            if g.a_trans {
                // A is [k, m]: the panel's rows are contiguous for each p.
                for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
                    let src = &g.a[(pc + p) * g.m + r0..][..h];
                    dst[..h].copy_from_slice(src);
                    dst[h..].fill(0.0);
                }
            } else {
                // A is [m, k]: read each row contiguously, scatter with stride MR.
                for i in 0..MR {
                    if i < h {
                        let src = &g.a[(r0 + i) * g.k + pc..][..kc];
                        for (p, &v) in src.iter().enumerate() {
                            panel[p * MR + i] = v;
                        }
                    } else {
                        (0..kc).for_each(|p| panel[p * MR + i] = 0.0);
                    }
                }
            }
        }
    }

    /// Packs `op(B)[pc..pc+kc, cols]` into column panels of `nr`: panel `q` holds
    /// `out[q*kc*nr + p*nr + j] = op(B)[pc + p, cols.start + q*nr + j]`, zero past the last
    /// column, converting to f32 on the way.
    fn pack_b(
        isa: Isa,
        g: &Gemm,
        pc: usize,
        kc: usize,
        cols: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        let (nc, nr) = (cols.len(), isa.nr());
        for (q, panel) in out.chunks_mut(kc * nr).take(nc.div_ceil(nr)).enumerate() {
            let j0 = cols.start + q * nr;
            let w = nr.min(cols.end - j0);
            if g.b_trans {
                #[cfg(target_arch = "x86_64")]
                if isa != Isa::Portable {
                    // SAFETY: AVX2 and F16C were detected (Avx512 implies them).
                    unsafe { super::x86::pack_b_trans_panel_avx2(g, pc, kc, j0, w, nr, panel) };
                    continue;
                }
                pack_b_trans_panel(g, pc, kc, j0, w, nr, panel);
            } else {
                // B is [k, n]: each panel row is a contiguous run of w weights.
                for (p, dst) in panel.chunks_exact_mut(nr).enumerate() {
                    convert(g.b, (pc + p) * g.n + j0, &mut dst[..w]);
                    dst[w..].fill(0.0);
                }
            }
        }
    }

    /// One panel from B stored `[n, k]`: a transpose. Rows of B are converted 8 at a time
    /// into a small staging buffer, then interleaved, so reads and writes stay sequential.
    /// (x86 uses an in-register 8x8 transpose instead, several times faster.)
    #[allow(clippy::too_many_arguments)]
    pub(super) fn pack_b_trans_panel(
        g: &Gemm,
        pc: usize,
        kc: usize,
        j0: usize,
        w: usize,
        nr: usize,
        panel: &mut [f32],
    ) {
        const G: usize = 8;
        let mut stage = [[0.0f32; KC]; G];
        for jg in (0..nr).step_by(G) {
            let gw = G.min(w.saturating_sub(jg));
            for (r, row) in stage.iter_mut().enumerate() {
                if r < gw {
                    convert(g.b, (j0 + jg + r) * g.k + pc, &mut row[..kc]);
                } else {
                    row[..kc].fill(0.0);
                }
            }
            for (p, dst) in panel.chunks_exact_mut(nr).enumerate().take(kc) {
                let dst: &mut [f32; G] = (&mut dst[jg..jg + G]).try_into().expect("G columns");
                for (r, d) in dst.iter_mut().enumerate() {
                    *d = stage[r][p];
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small-m path (decode): stream the weight once.

mod gemv {
    use super::*;

    /// Each task streams at least this many bytes of weight, so per-task overhead (~1 µs) is
    /// small next to the transfer (~30 KiB at 20-40 GB/s per core).
    const MIN_TASK_BYTES: usize = 32 << 10;

    pub(super) fn run(isa: Isa, g: &Gemm, c: &mut [f32]) {
        // op(A) as a contiguous [m, k] block (it is tiny: m <= GEMV_MAX_M rows).
        let a_rows: Vec<f32>;
        let a = if g.a_trans {
            a_rows = (0..g.m * g.k)
                .map(|x| g.a[(x % g.k) * g.m + x / g.k])
                .collect();
            &a_rows[..]
        } else {
            &g.a[..g.m * g.k]
        };
        let weight_bytes = g.n * g.k * g.b.dtype().size();
        let tasks = (weight_bytes / MIN_TASK_BYTES).clamp(1, 4 * num_threads());
        // Outputs per task: a multiple of 64 keeps row groups and column vectors whole.
        let per_task = g.n.div_ceil(tasks).next_multiple_of(64);
        let c_ptr = SendPtr(c.as_mut_ptr());
        parallel_for(g.n.div_ceil(per_task), |t| {
            let cols = t * per_task..((t + 1) * per_task).min(g.n);
            // SAFETY: tasks own disjoint column ranges of C (every row), and `c` stays borrowed
            // until `parallel_for` returns.
            let out = unsafe { OutCols::new(c_ptr.get(), g.n, cols) };
            if g.b_trans {
                rows_of_b(isa, g, a, out);
            } else {
                cols_of_b(isa, g, a, out);
            }
        });
    }

    /// Columns `cols` of every row of the m×n output, written by one task.
    pub(super) struct OutCols {
        c: *mut f32,
        ldc: usize,
        pub(super) cols: std::ops::Range<usize>,
    }

    impl OutCols {
        /// # Safety
        /// `c` addresses an output with row stride `ldc` whose `cols` columns no one else
        /// accesses while this value lives.
        unsafe fn new(c: *mut f32, ldc: usize, cols: std::ops::Range<usize>) -> Self {
            OutCols { c, ldc, cols }
        }
        /// Row i's slice of this task's columns.
        pub(super) fn row(&mut self, i: usize) -> &mut [f32] {
            // SAFETY: by `new`'s contract these elements are ours; `&mut self` prevents aliases.
            unsafe {
                std::slice::from_raw_parts_mut(
                    self.c.add(i * self.ldc + self.cols.start),
                    self.cols.len(),
                )
            }
        }
    }

    /// `b_trans`: B is `[n, k]`, output j is the dot product of B's row j with each A row.
    fn rows_of_b(isa: Isa, g: &Gemm, a: &[f32], mut out: OutCols) {
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Portable {
            // SAFETY: AVX2, FMA and F16C were detected (Avx512 implies them in `available_isas`).
            unsafe { super::x86::gemv_rows_avx2(g, a, &mut out) };
            return;
        }
        let _ = isa;
        super::portable::gemv_rows(g, a, &mut out);
    }

    /// `!b_trans`: B is `[k, n]`; accumulate `A[i,p] * B[p, cols]` over p, a row of B at a time.
    fn cols_of_b(isa: Isa, g: &Gemm, a: &[f32], mut out: OutCols) {
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Portable {
            // SAFETY: AVX2 and FMA were detected; this only lets the compiler use them.
            unsafe { super::x86::gemv_cols_avx2(g, a, &mut out) };
            return;
        }
        let _ = isa;
        super::portable::gemv_cols(g, a, &mut out);
    }
}

// ---------------------------------------------------------------------------------------------
// Portable kernels (also the bodies that the x86 module recompiles with AVX2 enabled).

mod portable {
    use super::gemv::OutCols;
    use super::*;

    const MR: usize = blocked::MR;
    const NR: usize = 16;

    /// `C[6x16] (+)= Apanel · Bpanel` on plain arrays; auto-vectorised for the baseline target.
    ///
    /// # Safety
    /// `c` addresses a full 6x16 tile with row stride `ldc`.
    pub(super) unsafe fn kernel_6x16(
        kc: usize,
        ap: &[f32],
        bp: &[f32],
        c: *mut f32,
        ldc: usize,
        load_c: bool,
    ) {
        let mut acc = [[0.0f32; NR]; MR];
        for (a, b) in ap.chunks_exact(MR).zip(bp.chunks_exact(NR)).take(kc) {
            for (row, &ai) in acc.iter_mut().zip(a) {
                for (x, &bj) in row.iter_mut().zip(b) {
                    *x += ai * bj;
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: row i of the tile is inside the caller's block.
            let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), NR) };
            for (d, &v) in dst.iter_mut().zip(row) {
                *d = if load_c { *d + v } else { v };
            }
        }
    }

    /// Dot products of B rows (converted into a staging row) with each A row.
    #[inline(always)]
    pub(super) fn gemv_rows(g: &Gemm, a: &[f32], out: &mut OutCols) {
        let k = g.k;
        let mut brow = vec![0.0f32; k];
        for (jj, j) in out.cols.clone().enumerate() {
            convert(g.b, j * k, &mut brow);
            for i in 0..g.m {
                let v = dot(&a[i * k..][..k], &brow);
                let o = &mut out.row(i)[jj];
                *o = if g.accumulate { *o + v } else { v };
            }
        }
    }

    /// A dot product with 8 independent partial sums, so it vectorises and pipelines.
    #[inline(always)]
    pub(super) fn dot(x: &[f32], y: &[f32]) -> f32 {
        let mut acc = [0.0f32; 8];
        let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
        let tail: f32 = xc
            .remainder()
            .iter()
            .zip(yc.remainder())
            .map(|(a, b)| a * b)
            .sum();
        for (xs, ys) in xc.zip(yc) {
            for l in 0..8 {
                acc[l] += xs[l] * ys[l];
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    /// Column-streaming GEMV for B stored `[k, n]`: accumulators for a strip of columns stay
    /// in L1 while B's rows go by once.
    #[inline(always)]
    pub(super) fn gemv_cols(g: &Gemm, a: &[f32], out: &mut OutCols) {
        const W: usize = 256;
        let (m, k) = (g.m, g.k);
        let mut acc = [[0.0f32; W]; super::GEMV_MAX_M];
        let mut brow = [0.0f32; W];
        let cols = out.cols.clone();
        for j0 in cols.clone().step_by(W) {
            let w = W.min(cols.end - j0);
            acc.iter_mut().for_each(|r| r[..w].fill(0.0));
            for p in 0..k {
                convert(g.b, p * g.n + j0, &mut brow[..w]);
                for (i, row) in acc.iter_mut().enumerate().take(m) {
                    let ai = a[i * k + p];
                    for (x, &b) in row[..w].iter_mut().zip(&brow[..w]) {
                        *x += ai * b;
                    }
                }
            }
            for (i, row) in acc.iter().enumerate().take(m) {
                let dst = &mut out.row(i)[j0 - cols.start..][..w];
                for (d, &v) in dst.iter_mut().zip(&row[..w]) {
                    *d = if g.accumulate { *d + v } else { v };
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// x86-64 kernels: AVX2+FMA(+F16C) and AVX-512F.

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::gemv::OutCols;
    use super::*;
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    const MR: usize = blocked::MR;

    /// `C[6x16] (+)= Apanel · Bpanel`: 12 ymm accumulators; per k step two B loads, six
    /// broadcasts and twelve FMAs, enough independent FMAs to cover their 4-cycle latency
    /// on two FMA pipes.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `ap`/`bp` hold `kc*6`/`kc*16` floats; `c` addresses a
    /// full 6x16 tile with row stride `ldc`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel_6x16_avx2(
        kc: usize,
        ap: &[f32],
        bp: &[f32],
        c: *mut f32,
        ldc: usize,
        load_c: bool,
    ) {
        assert!(ap.len() >= kc * MR && bp.len() >= kc * 16);
        let (a, b) = (ap.as_ptr(), bp.as_ptr());
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        for p in 0..kc {
            // SAFETY: p < kc, and the asserts above bound both panels.
            unsafe {
                let b0 = _mm256_loadu_ps(b.add(p * 16));
                let b1 = _mm256_loadu_ps(b.add(p * 16 + 8));
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai = _mm256_broadcast_ss(&*a.add(p * MR + i));
                    row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                    row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (h, &v) in row.iter().enumerate() {
                // SAFETY: the tile is 6x16 at row stride ldc, owned by the caller.
                unsafe {
                    let dst = c.add(i * ldc + h * 8);
                    let v = if load_c {
                        _mm256_add_ps(_mm256_loadu_ps(dst), v)
                    } else {
                        v
                    };
                    _mm256_storeu_ps(dst, v);
                }
            }
        }
    }

    /// `C[6x32] (+)= Apanel · Bpanel`: the AVX2 kernel with 512-bit vectors (12 of the 32 zmm).
    ///
    /// # Safety
    /// AVX-512F must be available; `ap`/`bp` hold `kc*6`/`kc*32` floats; `c` addresses a full
    /// 6x32 tile with row stride `ldc`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn kernel_6x32_avx512(
        kc: usize,
        ap: &[f32],
        bp: &[f32],
        c: *mut f32,
        ldc: usize,
        load_c: bool,
    ) {
        assert!(ap.len() >= kc * MR && bp.len() >= kc * 32);
        let (a, b) = (ap.as_ptr(), bp.as_ptr());
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..kc {
            // SAFETY: p < kc, and the asserts above bound both panels.
            unsafe {
                let b0 = _mm512_loadu_ps(b.add(p * 32));
                let b1 = _mm512_loadu_ps(b.add(p * 32 + 16));
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai = _mm512_set1_ps(*a.add(p * MR + i));
                    row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
                    row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (h, &v) in row.iter().enumerate() {
                // SAFETY: the tile is 6x32 at row stride ldc, owned by the caller.
                unsafe {
                    let dst = c.add(i * ldc + h * 16);
                    let v = if load_c {
                        _mm512_add_ps(_mm512_loadu_ps(dst), v)
                    } else {
                        v
                    };
                    _mm512_storeu_ps(dst, v);
                }
            }
        }
    }

    /// [`blocked::pack_b_trans_panel`] with the transpose done 8x8 in registers: each B row
    /// is read 8 elements (one load, converted) at a time, each panel row written 8 at a time.
    ///
    /// # Safety
    /// AVX2 and F16C must be available.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn pack_b_trans_panel_avx2(
        g: &Gemm,
        pc: usize,
        kc: usize,
        j0: usize,
        w: usize,
        nr: usize,
        panel: &mut [f32],
    ) {
        let at = PanelAt {
            k: g.k,
            pc,
            kc,
            j0,
            w,
            nr,
        };
        // SAFETY (all three): forwarded from this function's contract.
        match g.b {
            Elems::F32(b) => unsafe { pack_t(b, at, panel) },
            Elems::BF16(b) => unsafe { pack_t(b, at, panel) },
            Elems::F16(b) => unsafe { pack_t(b, at, panel) },
        }
    }

    /// Which panel to pack: B rows `j0..j0+w` (of length k), columns `pc..pc+kc`, into a panel
    /// `nr` wide.
    #[derive(Clone, Copy)]
    struct PanelAt {
        k: usize,
        pc: usize,
        kc: usize,
        j0: usize,
        w: usize,
        nr: usize,
    }

    /// The body of [`pack_b_trans_panel_avx2`] for one weight dtype.
    ///
    /// # Safety
    /// AVX2 and F16C must be available (slices are bounds-checked up front).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pack_t<T: Load8>(b: &[T], at: PanelAt, panel: &mut [f32]) {
        let PanelAt {
            k,
            pc,
            kc,
            j0,
            w,
            nr,
        } = at;
        assert!(panel.len() >= kc * nr && w <= nr && pc + kc <= k && (j0 + w) * k <= b.len());
        let (rows8, kc8) = (w / 8 * 8, kc / 8 * 8);
        let (bp, out) = (b.as_ptr(), panel.as_mut_ptr());
        for jg in (0..rows8).step_by(8) {
            for p in (0..kc8).step_by(8) {
                // SAFETY: rows j0+jg..j0+jg+8 <= j0+w and columns pc+p..pc+p+8 <= pc+kc are
                // inside B; panel rows p..p+8 < kc at columns jg..jg+8 <= nr are inside the
                // panel (all by the assert).
                unsafe {
                    let rows: [__m256; 8] =
                        std::array::from_fn(|r| T::load8(bp.add((j0 + jg + r) * k + pc + p)));
                    for (q, v) in transpose8(rows).into_iter().enumerate() {
                        _mm256_storeu_ps(out.add((p + q) * nr + jg), v);
                    }
                }
            }
            for p in kc8..kc {
                for r in 0..8 {
                    panel[p * nr + jg + r] = b[(j0 + jg + r) * k + pc + p].to_f32();
                }
            }
        }
        // Ragged rows (w not a multiple of 8), then zero padding up to nr.
        for jj in rows8..nr {
            for p in 0..kc {
                panel[p * nr + jj] = if jj < w {
                    b[(j0 + jj) * k + pc + p].to_f32()
                } else {
                    0.0
                };
            }
        }
    }

    /// Transposes an 8x8 block held as 8 row vectors.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    /// Weight element types that can be loaded 8 at a time as f32.
    trait Load8: Copy {
        /// # Safety
        /// AVX2 and F16C available; `p` points to 8 readable elements.
        unsafe fn load8(p: *const Self) -> __m256;
        fn to_f32(self) -> f32;
    }

    impl Load8 for f32 {
        #[inline]
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn load8(p: *const f32) -> __m256 {
            // SAFETY: the caller guarantees 8 readable floats.
            unsafe { _mm256_loadu_ps(p) }
        }
        fn to_f32(self) -> f32 {
            self
        }
    }

    impl Load8 for bf16 {
        #[inline]
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn load8(p: *const bf16) -> __m256 {
            // SAFETY: the caller guarantees 8 readable bf16 (16 bytes). bf16 is the top half of
            // an f32, so widening to 32 bits and shifting left by 16 converts exactly.
            unsafe {
                let h = _mm_loadu_si128(p as *const __m128i);
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
            }
        }
        fn to_f32(self) -> f32 {
            bf16::to_f32(self)
        }
    }

    impl Load8 for f16 {
        #[inline]
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn load8(p: *const f16) -> __m256 {
            // SAFETY: the caller guarantees 8 readable f16 (16 bytes); F16C converts exactly.
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
        }
        fn to_f32(self) -> f32 {
            f16::to_f32(self)
        }
    }

    /// Sum of the 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// `b_trans` GEMV over this task's output columns, dispatched on the weight dtype.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn gemv_rows_avx2(g: &Gemm, a: &[f32], out: &mut OutCols) {
        // SAFETY (all three): forwarded from this function's contract.
        match g.b {
            Elems::F32(b) => unsafe { rows_typed(g, a, b, out) },
            Elems::BF16(b) => unsafe { rows_typed(g, a, b, out) },
            Elems::F16(b) => unsafe { rows_typed(g, a, b, out) },
        }
    }

    /// Walks A's rows in chunks of `M` = 4, 2 or 1 and B's rows in groups of `R` = 8 / M:
    /// 8 accumulators either way, enough to hide FMA latency, while each B element is loaded
    /// and converted once per chunk of A rows.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows_typed<T: Load8>(g: &Gemm, a: &[f32], b: &[T], out: &mut OutCols) {
        let cols = out.cols.clone();
        let k = g.k;
        let mut i = 0;
        while i < g.m {
            let mc = match g.m - i {
                1 => 1,
                2 | 3 => 2,
                _ => 4,
            };
            let group = 8 / mc;
            let mut j = cols.start;
            while j < cols.end {
                let r = group.min(cols.end - j);
                let (ai, bj) = (&a[i * k..], &b[j * k..(j + r) * k]);
                // Two row groups ahead: far enough to cover DRAM latency (~8-16 KiB in flight).
                let ahead = b.as_ptr().wrapping_add((j + 2 * group) * k);
                // SAFETY: forwarded; slices are bounds-checked inside.
                let sums = unsafe {
                    match mc {
                        1 => block_dots::<T, 1, 8>(ai, bj, k, ahead),
                        2 => block_dots::<T, 2, 4>(ai, bj, k, ahead),
                        _ => block_dots::<T, 4, 2>(ai, bj, k, ahead),
                    }
                };
                for (di, row_sums) in sums.iter().enumerate().take(mc) {
                    let dst = &mut out.row(i + di)[j - cols.start..][..r];
                    for (d, &v) in dst.iter_mut().zip(row_sums) {
                        *d = if g.accumulate { *d + v } else { v };
                    }
                }
                j += r;
            }
            i += mc;
        }
    }

    /// Sums for `M` rows of A against the `b.len() / k` (at most `R`) rows of B in `b`, padded
    /// to `[4][8]`. A short group (the end of a task's range) goes one B row at a time.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_dots<T: Load8, const M: usize, const R: usize>(
        a: &[f32],
        b: &[T],
        k: usize,
        ahead: *const T,
    ) -> [[f32; 8]; 4] {
        let mut w = [[0.0; 8]; 4];
        let r = b.len() / k;
        if r == R {
            // SAFETY: forwarded; `dots` bounds-checks its slices.
            let s = unsafe { dots::<T, M, R>(a, b, k, ahead) };
            for (wi, si) in w.iter_mut().zip(&s) {
                wi[..R].copy_from_slice(si);
            }
        } else {
            for jr in 0..r {
                // SAFETY: as above.
                let s = unsafe { dots::<T, M, 1>(a, &b[jr * k..][..k], k, std::ptr::null()) };
                for (wi, si) in w.iter_mut().zip(&s) {
                    wi[jr] = si[0];
                }
            }
        }
        w
    }

    /// `out[i][r] = A[i,:] · B[r,:]` for `M` rows of A (stride k) and `R` rows of B (stride k).
    ///
    /// `ahead` (possibly null or past the end of B: prefetches never fault) is the start of
    /// the `R x k` block to be read next-but-one; it is pulled towards L1 in step with this
    /// block, since hardware prefetchers ramp up too slowly on 8 short interleaved streams.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available (slices are bounds-checked).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dots<T: Load8, const M: usize, const R: usize>(
        a: &[f32],
        b: &[T],
        k: usize,
        ahead: *const T,
    ) -> [[f32; R]; M] {
        assert!(a.len() >= (M - 1) * k + k && b.len() >= R * k);
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        let k8 = k / 8 * 8;
        let step_bytes = R * 8 * std::mem::size_of::<T>();
        let mut acc = [[_mm256_setzero_ps(); R]; M];
        for p in (0..k8).step_by(8) {
            if !ahead.is_null() {
                let at = (ahead as *const i8).wrapping_add(p * R * std::mem::size_of::<T>());
                for line in (0..step_bytes).step_by(64) {
                    // Only a hint: it never faults, whatever the address.
                    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line));
                }
            }
            // SAFETY: p + 8 <= k, and the assert bounds all M and R rows.
            unsafe {
                let bv: [__m256; R] = std::array::from_fn(|r| T::load8(bp.add(r * k + p)));
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    let av = _mm256_loadu_ps(ap.add(i * k + p));
                    for (x, &bvr) in acc_i.iter_mut().zip(&bv) {
                        *x = _mm256_fmadd_ps(av, bvr, *x);
                    }
                }
            }
        }
        let mut out = [[0.0f32; R]; M];
        for (i, out_i) in out.iter_mut().enumerate() {
            for (r, o) in out_i.iter_mut().enumerate() {
                let tail: f32 = (k8..k).map(|p| a[i * k + p] * b[r * k + p].to_f32()).sum();
                *o = hsum(acc[i][r]) + tail;
            }
        }
        out
    }

    /// The portable column-streaming GEMV, compiled with AVX2+FMA so its loops vectorise wide.
    ///
    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn gemv_cols_avx2(g: &Gemm, a: &[f32], out: &mut OutCols) {
        super::portable::gemv_cols(g, a, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// xorshift64*: deterministic values in [-1, 1), never exactly zero.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let x = (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
            let v = 2.0 * x - 1.0;
            if v == 0.0 {
                0.5
            } else {
                v
            }
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.next()).collect()
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Bt {
        F32,
        Bf16,
        F16,
    }

    /// Runs `gemm` with the given kernel set against the reference (on the same rounded B).
    #[allow(clippy::too_many_arguments)]
    fn check(
        isa: Isa,
        m: usize,
        n: usize,
        k: usize,
        at: bool,
        bt: bool,
        dt: Bt,
        acc: bool,
        seed: u64,
    ) {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let a = rng.vec(m * k);
        let bf = rng.vec(k * n);
        let (b16, h16): (Vec<bf16>, Vec<f16>) = (
            bf.iter().map(|&x| bf16::from_f32(x)).collect(),
            bf.iter().map(|&x| f16::from_f32(x)).collect(),
        );
        let b = match dt {
            Bt::F32 => Elems::F32(&bf),
            Bt::Bf16 => Elems::BF16(&b16),
            Bt::F16 => Elems::F16(&h16),
        };
        let init = rng.vec(m * n);
        let mut want = init.clone();
        gemm_reference(m, n, k, &a, at, b, bt, &mut want, acc);
        let got_init = init.clone();
        let mut got = if acc { init } else { vec![f32::NAN; m * n] };
        let g = Gemm::new(m, n, k, &a, at, b, bt, acc, got.len());
        gemm_with(isa, &g, &mut got);
        let err: f64 = got
            .iter()
            .zip(&want)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = if m * n >= 16 {
            want.iter().map(|&y| (y as f64).powi(2)).sum::<f64>().sqrt()
        } else {
            // A handful of outputs can cancel to far below the size of their terms, and f32
            // rounding error scales with the terms: measure against ‖|op(A)|·|op(B)| + |C|‖.
            let mut abs = if acc {
                got_init.iter().map(|x| x.abs() as f64).collect()
            } else {
                vec![0.0f64; m * n]
            };
            let g = Gemm::new(m, n, k, &a, at, b, bt, acc, m * n);
            for (ij, s) in abs.iter_mut().enumerate() {
                let (i, j) = (ij / n, ij % n);
                *s += (0..k)
                    .map(|p| (g.a_at(i, p) * g.b_at(p, j)).abs() as f64)
                    .sum::<f64>();
            }
            abs.iter().map(|y| y * y).sum::<f64>().sqrt()
        };
        let rel = if norm > 0.0 { err / norm } else { err };
        assert!(
            rel < 1e-5,
            "{isa:?} m={m} n={n} k={k} a_trans={at} b_trans={bt} {dt:?} acc={acc}: relative error {rel:e}"
        );
    }

    fn all(m: usize, n: usize, k: usize) {
        for isa in available_isas() {
            for (s, (at, bt)) in [(false, false), (false, true), (true, false), (true, true)]
                .into_iter()
                .enumerate()
            {
                for dt in [Bt::F32, Bt::Bf16, Bt::F16] {
                    for acc in [false, true] {
                        check(
                            isa,
                            m,
                            n,
                            k,
                            at,
                            bt,
                            dt,
                            acc,
                            (m * 31 + n * 7 + k + s) as u64,
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn small_m_paths() {
        for m in 1..=GEMV_MAX_M + 1 {
            for (n, k) in [(1, 1), (7, 17), (33, 100), (129, 7), (300, 64), (17, 259)] {
                all(m, n, k);
            }
        }
    }

    #[test]
    fn odd_sizes() {
        let sizes = [1, 7, 17, 33, 100, 129];
        for &m in &sizes {
            for &n in &sizes {
                for &k in &[1, 17, 129] {
                    all(m, n, k);
                }
            }
        }
    }

    #[test]
    fn multi_block_and_multi_tile() {
        // k > KC (several packed slices), m > MC and n > NT_MAX (several tiles and blocks).
        all(150, 70, 300);
        all(7, 600, 40);
        for isa in available_isas() {
            check(isa, 600, 530, 260, false, true, Bt::Bf16, false, 1);
            check(isa, 64, 1536, 576, false, true, Bt::F32, true, 2);
            check(isa, 200, 1030, 70, true, false, Bt::F16, false, 3);
        }
    }

    #[test]
    fn decode_shapes() {
        for isa in available_isas() {
            for (n, k) in [(1536, 576), (576, 576), (576, 1536)] {
                for dt in [Bt::F32, Bt::Bf16, Bt::F16] {
                    check(isa, 1, n, k, false, true, dt, false, 4);
                    check(isa, 1, n, k, false, false, dt, true, 5);
                }
            }
        }
    }

    #[test]
    fn empty_dimensions() {
        let mut c = vec![f32::NAN; 6];
        gemm(2, 3, 0, &[], false, Elems::F32(&[]), true, &mut c, false);
        assert!(c.iter().all(|&x| x == 0.0));
        let mut c = vec![1.0; 6];
        gemm(2, 3, 0, &[], false, Elems::F32(&[]), true, &mut c, true);
        assert!(c.iter().all(|&x| x == 1.0));
        gemm(
            0,
            3,
            4,
            &[],
            false,
            Elems::F32(&[0.5; 12]),
            true,
            &mut [],
            false,
        );
    }

    #[test]
    fn linear_layer_layout() {
        // y = x·Wᵀ with W [out=2, in=3].
        let x = [1.0, 2.0, 3.0];
        let w = [1.0, 0.0, -1.0, 0.5, 0.5, 0.5];
        let mut y = [0.0; 2];
        gemm(1, 2, 3, &x, false, Elems::F32(&w), true, &mut y, false);
        assert_eq!(y, [-2.0, 3.0]);
    }
}
