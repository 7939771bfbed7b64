// Placeholder written by the lead so the crate builds meanwhile; replace this file freely.
use crate::tensor::Elems;
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
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f32;
            for p in 0..k {
                let av = if a_trans { a[p * m + i] } else { a[i * k + p] };
                let bv = if b_trans {
                    b.get(j * k + p)
                } else {
                    b.get(p * n + j)
                };
                s += av * bv;
            }
            c[i * n + j] = if accumulate { c[i * n + j] + s } else { s };
        }
    }
}
