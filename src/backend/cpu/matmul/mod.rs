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
//!
//! Where things are:
//! * `mod.rs` (this file): the public API ([`gemm`], [`gemm_reference`]), the description of
//!   one call's operands (`Gemm`), run-time kernel selection (`Isa`), the dispatch between the
//!   two paths, and the helpers they share (dtype conversion, per-thread scratch buffers).
//! * `blocked.rs`: the blocked path's driver: tiling, threading, the loops around the
//!   micro-kernel, and edge tiles.
//! * `pack.rs`: packing A and B into the blocked path's contiguous panels (converting B to
//!   f32), portable code; x86 has a faster transposing B pack in `kernel_avx2.rs`.
//! * `gemv.rs`: the small-m path's driver: splitting outputs across threads and choosing the
//!   row- or column-streaming kernel.
//! * `kernel_portable.rs`: the portable micro-kernel and GEMV bodies.
//! * `kernel_avx2.rs` (x86-64): the AVX2+FMA micro-kernel, the in-register transposing B pack
//!   and the small-m dot-product kernels (with F16C conversion of bf16/f16 weights).
//! * `kernel_avx512.rs` (x86-64): the AVX-512F micro-kernel.
//! * `tests.rs`: every kernel set against [`gemm_reference`], over shapes, layouts and dtypes.

use super::parallel::{num_threads, parallel_for, SendPtr};
use crate::tensor::Elems;
use half::slice::HalfFloatSliceExt;
use std::cell::Cell;
use std::sync::OnceLock;

mod blocked;
mod gemv;
#[cfg(target_arch = "x86_64")]
mod kernel_avx2;
#[cfg(target_arch = "x86_64")]
mod kernel_avx512;
mod kernel_portable;
mod pack;
#[cfg(test)]
mod tests;

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
// Helpers shared by the paths.

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
