//! x86-64 AVX2+FMA(+F16C) kernels: the 6x16 micro-kernel of the blocked path, the B pack
//! for weights stored `[n, k]` with an in-register 8x8 transpose, and the small-m GEMV
//! kernels (dot products of weight rows, prefetching ahead; and the portable column-streaming
//! body recompiled for AVX2). bf16/f16 weights are converted to f32 8 at a time (`Load8`).

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
/// [`pack::pack_b_trans_panel`] with the transpose done 8x8 in registers: each B row
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

/// How far ahead of its reads the GEMV prefetches the weight.
const PREFETCH_BYTES: usize = 8 << 10;

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
        // Prefetch the next row group (at least PREFETCH_BYTES ahead): with weights out of
        // cache this lifts one core from ~20 to ~30 GB/s, and two cores from ~35 to 40-47
        // GB/s, near the ~50 GB/s they can read. Further ahead measured worse on two cores.
        let dist = (PREFETCH_BYTES / (group * k * std::mem::size_of::<T>())).max(1);
        let mut j = cols.start;
        while j < cols.end {
            let r = group.min(cols.end - j);
            let (ai, bj) = (&a[i * k..], &b[j * k..(j + r) * k]);
            let ahead = b.as_ptr().wrapping_add((j + dist * group) * k);
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
    super::kernel_portable::gemv_cols(g, a, out)
}
