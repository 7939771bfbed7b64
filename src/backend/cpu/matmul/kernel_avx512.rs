//! x86-64 AVX-512F kernel: the 6x32 micro-kernel of the blocked path.

use super::*;
use std::arch::x86_64::*;

const MR: usize = blocked::MR;

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
