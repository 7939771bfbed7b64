//! Portable kernels, on plain arrays that the compiler vectorises for the baseline target:
//! the 6x16 micro-kernel of the blocked path and the two small-m GEMV bodies (which
//! `kernel_avx2.rs` also recompiles with AVX2 enabled).

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
