//! The small-m path (decode): stream the weight once. Threads split the `n` outputs into
//! column ranges; each runs the row-streaming (`b_trans`) or column-streaming kernel of the
//! selected instruction set over its range.

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
        unsafe { super::kernel_avx2::gemv_rows_avx2(g, a, &mut out) };
        return;
    }
    let _ = isa;
    super::kernel_portable::gemv_rows(g, a, &mut out);
}

/// `!b_trans`: B is `[k, n]`; accumulate `A[i,p] * B[p, cols]` over p, a row of B at a time.
fn cols_of_b(isa: Isa, g: &Gemm, a: &[f32], mut out: OutCols) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable {
        // SAFETY: AVX2 and FMA were detected; this only lets the compiler use them.
        unsafe { super::kernel_avx2::gemv_cols_avx2(g, a, &mut out) };
        return;
    }
    let _ = isa;
    super::kernel_portable::gemv_cols(g, a, &mut out);
}
