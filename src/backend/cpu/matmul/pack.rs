//! Packing for the blocked path: `op(A)` into row panels `MR` high and `op(B)` into f32
//! column panels `NR` wide (converting bf16/f16 weights on the way), zero-padded at the edges
//! so that the micro-kernels only ever see full tiles. B stored `[n, k]` needs a transpose:
//! the portable one is here, the faster x86 one (8x8 in registers) is in `kernel_avx2.rs`.

use super::blocked::{KC, MR};
use super::*;

/// Packs `op(A)[ic..ic+mc, pc..pc+kc]` into row panels of `MR`: panel `q` holds
/// `out[q*kc*MR + p*MR + i] = op(A)[ic + q*MR + i, pc + p]`, zero past the last row.
pub(super) fn pack_a(g: &Gemm, ic: usize, mc: usize, pc: usize, kc: usize, out: &mut [f32]) {
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
pub(super) fn pack_b(
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
                unsafe { super::kernel_avx2::pack_b_trans_panel_avx2(g, pc, kc, j0, w, nr, panel) };
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
