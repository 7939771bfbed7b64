//! The blocked path (prefill, training): C cut into tiles, one parallel task each; inside a
//! tile, `KC`-deep slices of B and `MC`-row blocks of A are packed (see `pack.rs`) and
//! multiplied register tile by register tile by the selected micro-kernel.

use super::pack::{pack_a, pack_b};
use super::*;

/// Rows of the register tile: 6 rows x (2 or 1 vectors) of accumulators fill 12 of the 16
/// AVX2 registers, leaving room for the B vectors and the A broadcast.
pub(super) const MR: usize = 6;
/// Depth of a packed slice: a `KC x NR` B panel is 16 KiB (AVX2) or 32 KiB (AVX-512), so it
/// stays in a 32-48 KiB L1d while A panels stream past it.
pub(super) const KC: usize = 256;
/// Rows of a packed A block: `MC x KC` floats = 144 KiB, resident in L2 (512 KiB-2 MiB).
const MC: usize = 144;
/// Largest tile one task owns. Its B slice (`KC x NT_MAX` = 512 KiB) is packed once per
/// tile and reused by all its rows, so packing costs 1 element per `2*MT` flops.
const MT_MAX: usize = 576;
const NT_MAX: usize = 512;
/// Below this many multiply-adds the whole product runs on the calling thread.
const SERIAL_WORK: usize = 1 << 17;

pub(super) fn run(isa: Isa, g: &Gemm, c: &mut [f32]) {
    let (mt, nt) = tile_sizes(g.m, g.n, isa.nr());
    let (tiles_m, tiles_n) = (g.m.div_ceil(mt), g.n.div_ceil(nt));
    let c_ptr = SendPtr(c.as_mut_ptr());
    let task = |t: usize| {
        let (ti, tj) = (t / tiles_n, t % tiles_n);
        let rows = ti * mt..((ti + 1) * mt).min(g.m);
        let cols = tj * nt..((tj + 1) * nt).min(g.n);
        // SAFETY: tiles partition C; this task writes only rows × cols of it, and `c`
        // stays mutably borrowed until every task has returned.
        unsafe { run_tile(isa, g, c_ptr.get(), rows, cols) };
    };
    if g.m * g.n * g.k < SERIAL_WORK {
        // Too little work to repay waking the other threads.
        (0..tiles_m * tiles_n).for_each(task);
    } else {
        parallel_for(tiles_m * tiles_n, task);
    }
}

/// Tile height and width: as large as the caches allow, but cut so that there are enough
/// tiles (a multiple of the thread count when there are few) to keep every thread busy.
fn tile_sizes(m: usize, n: usize, nr: usize) -> (usize, usize) {
    let threads = num_threads();
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
    let kc_max = KC.min(g.k);
    let b_len = kc_max * nc.next_multiple_of(nr);
    let a_len = kc_max * MC.min(rows.len()).next_multiple_of(MR);
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
        let row = unsafe { std::slice::from_raw_parts_mut(tile.c.add(i * tile.ldc), tile.cols) };
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
        Isa::Portable => super::kernel_portable::kernel_6x16(kc, ap, bp, c, ldc, load_c),
        // SAFETY (both): the ISA was detected on this CPU before being selected.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => super::kernel_avx2::kernel_6x16_avx2(kc, ap, bp, c, ldc, load_c),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => super::kernel_avx512::kernel_6x32_avx512(kc, ap, bp, c, ldc, load_c),
    }
}
