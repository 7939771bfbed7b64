//! Element-wise and row-wise ops of the forward pass: the plain CPU reference of each.
//!
//! Rows are contiguous runs of `dim` f32 values; a `[rows, dim]` activation is a flat slice.

use crate::tensor::{Elems, Real};

/// out[t] = table[ids[t]] for each token t; `table` is `[vocab, dim]`.
pub fn embedding(ids: &[u32], table: Elems, dim: usize, out: &mut [f32]) {
    for (row, &id) in out.chunks_exact_mut(dim).zip(ids) {
        table.read_f32(id as usize * dim, row);
    }
}

/// RMSNorm (Zhang & Sennrich 2019): y = x · r · w with r = 1/sqrt(mean(x²) + eps), per row.
/// The sum of squares accumulates in f64 so that the reference is not the least precise thing in
/// a test.
pub fn rms_norm<T: Real>(x: &[T], weight: &[T], eps: f64, out: &mut [T]) {
    let dim = weight.len();
    for (xr, yr) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let r = T::from_f64(rms_inverse(xr, eps));
        for ((y, &v), &w) in yr.iter_mut().zip(xr).zip(weight) {
            *y = v * r * w;
        }
    }
}

/// r = 1/sqrt(mean(x²) + eps) of one row.
pub fn rms_inverse<T: Real>(row: &[T], eps: f64) -> f64 {
    let ms = row.iter().map(|&v| v.to_f64() * v.to_f64()).sum::<f64>() / row.len() as f64;
    1.0 / (ms + eps).sqrt()
}

/// (mean, 1/sqrt(var + eps)) of one row, with the biased variance torch's layer_norm uses.
pub fn layer_norm_stats<T: Real>(row: &[T], eps: f64) -> (f64, f64) {
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| v.to_f64()).sum::<f64>() / n;
    let var = row
        .iter()
        .map(|&v| (v.to_f64() - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// LayerNorm without weight or bias (OLMo-7B): y = (x − mean) / sqrt(var + eps), per row.
pub fn layer_norm_no_params<T: Real>(x: &[T], dim: usize, eps: f64, out: &mut [T]) {
    for (xr, yr) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let (mean, inv) = layer_norm_stats(xr, eps);
        for (y, &v) in yr.iter_mut().zip(xr) {
            *y = T::from_f64((v.to_f64() - mean) * inv);
        }
    }
}

/// Which pairs of a head's dimensions RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Hugging Face: dimension i pairs with i + head_dim/2 ("rotate_half").
    HalfRotation,
    /// Meta's original / GGUF: dimension 2i pairs with 2i + 1.
    Interleaved,
}

/// Where RoPE applies and how.
#[derive(Clone, Copy, Debug)]
pub struct RopeSpec {
    pub heads: usize,
    pub head_dim: usize,
    pub base: f32,
    pub layout: RopeLayout,
}

/// RoPE (Su et al. 2021) in place on `x` of shape `[tokens, heads, head_dim]`:
/// each pair (a, b) at position p and frequency index i becomes
/// (a·cos θ − b·sin θ, b·cos θ + a·sin θ) with θ = p · base^(−2i/head_dim).
/// `inverse` rotates by −θ instead: the transpose of the rotation, i.e. RoPE's backward.
pub fn rope<T: Real>(x: &mut [T], positions: &[usize], spec: RopeSpec, inverse: bool) {
    let RopeSpec {
        heads,
        head_dim,
        base,
        layout,
    } = spec;
    let half = head_dim / 2;
    // Frequencies as Hugging Face computes them: inv_freq in the working precision, angle = pos · inv_freq.
    let base = T::from_f64(base as f64);
    let inv_freq: Vec<T> = (0..half)
        .map(|i| T::one() / base.powf(T::from_f64((2 * i) as f64 / head_dim as f64)))
        .collect();
    let mut cos = vec![T::zero(); half];
    let mut sin = vec![T::zero(); half];
    for (tok, &pos) in x.chunks_exact_mut(heads * head_dim).zip(positions) {
        for i in 0..half {
            let angle = T::from_f64(pos as f64) * inv_freq[i];
            cos[i] = angle.cos();
            sin[i] = if inverse { -angle.sin() } else { angle.sin() };
        }
        for head in tok.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let (ia, ib) = match layout {
                    RopeLayout::HalfRotation => (i, i + half),
                    RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                };
                let (a, b) = (head[ia], head[ib]);
                head[ia] = a * cos[i] - b * sin[i];
                head[ib] = b * cos[i] + a * sin[i];
            }
        }
    }
}

/// sigmoid(x) = 1 / (1 + e^−x).
#[inline]
pub fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

/// SiLU(x) = x · sigmoid(x).
#[inline]
pub fn silu<T: Real>(x: T) -> T {
    x * sigmoid(x)
}

/// SwiGLU's gate (Shazeer 2020): out = silu(gate) ⊙ up.
pub fn swiglu<T: Real>(gate: &[T], up: &[T], out: &mut [T]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(g) * u;
    }
}

/// Numerically stable softmax of one row, in place.
pub fn softmax_in_place<T: Real>(row: &mut [T]) {
    let max = row
        .iter()
        .copied()
        .fold(T::from_f64(f64::NEG_INFINITY), T::max);
    let mut sum = T::zero();
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = T::one() / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// log Σ exp(x) of one row, stable, accumulated in f64.
pub fn log_sum_exp<T: Real>(row: &[T]) -> f64 {
    let max = row
        .iter()
        .map(|v| v.to_f64())
        .fold(f64::NEG_INFINITY, f64::max);
    row.iter()
        .map(|&v| (v.to_f64() - max).exp())
        .sum::<f64>()
        .ln()
        + max
}

/// log_softmax of one row into `out`: x − log Σ exp(x).
pub fn log_softmax<T: Real>(row: &[T], out: &mut [T]) {
    let lse = T::from_f64(log_sum_exp(row));
    for (o, &v) in out.iter_mut().zip(row) {
        *o = v - lse;
    }
}

/// Index of the largest value, the first one on ties (as torch.argmax). Unlike torch, NaN never wins, as in
/// the GPU's picks (kernels/rule_adapter.cu), so both pick the same token from the same row; a
/// row of NaN only gives 0.
pub fn argmax<T: Real>(row: &[T]) -> usize {
    // Only NaN is unordered against itself.
    let Some(mut best) = row.iter().position(|v| v.partial_cmp(v).is_some()) else {
        return 0;
    };
    for (i, &v) in row.iter().enumerate().skip(best + 1) {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Clamps every value into [−limit, limit] (OLMo's clip_qkv).
pub fn clamp_in_place<T: Real>(x: &mut [T], limit: T) {
    for v in x.iter_mut() {
        if *v > limit {
            *v = limit;
        } else if *v < -limit {
            *v = -limit;
        }
    }
}

/// x += y.
pub fn add_in_place<T: Real>(x: &mut [T], y: &[T]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::rand_vec;

    #[test]
    fn rms_norm_matches_definition() {
        let x = rand_vec::<f32>(3 * 8, 1);
        let w = rand_vec::<f32>(8, 2);
        let mut y = vec![f32::NAN; 24];
        rms_norm(&x, &w, 1e-5, &mut y);
        for r in 0..3 {
            let xr = &x[r * 8..r * 8 + 8];
            let rms = (xr.iter().map(|v| v * v).sum::<f32>() / 8.0 + 1e-5).sqrt();
            for i in 0..8 {
                assert!((y[r * 8 + i] - xr[i] / rms * w[i]).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn layer_norm_has_zero_mean_unit_variance() {
        let x = rand_vec::<f32>(2 * 16, 3);
        let mut y = vec![f32::NAN; 32];
        layer_norm_no_params(&x, 16, 1e-5, &mut y);
        for r in y.chunks(16) {
            let mean: f32 = r.iter().sum::<f32>() / 16.0;
            let var: f32 = r.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 16.0;
            assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3);
        }
    }

    #[test]
    fn rope_layouts_agree_up_to_a_permutation() {
        // Interleaved RoPE on permuted dims equals half-rotation RoPE on the original dims:
        // this is why GGUF's permuted Q/K weights need the interleaved layout.
        let (heads, hd) = (2, 8);
        let x = rand_vec::<f32>(3 * heads * hd, 4);
        let perm = |i: usize| {
            if i.is_multiple_of(2) {
                i / 2
            } else {
                hd / 2 + i / 2
            }
        };
        let mut permuted = x.clone();
        for t in 0..3 * heads {
            for i in 0..hd {
                permuted[t * hd + i] = x[t * hd + perm(i)];
            }
        }
        let pos = [0, 5, 17];
        let spec = |layout| RopeSpec {
            heads,
            head_dim: hd,
            base: 10000.0,
            layout,
        };
        let mut half = x.clone();
        rope(&mut half, &pos, spec(RopeLayout::HalfRotation), false);
        rope(&mut permuted, &pos, spec(RopeLayout::Interleaved), false);
        for t in 0..3 * heads {
            for i in 0..hd {
                assert!((permuted[t * hd + i] - half[t * hd + perm(i)]).abs() < 1e-6);
            }
        }
        // Position 0 is the identity; rotations keep each pair's norm.
        assert_eq!(&half[..heads * hd], &x[..heads * hd]);
        let n0: f32 = x[16..24].iter().map(|v| v * v).sum();
        let n1: f32 = half[16..24].iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-5);
        // The inverse rotation undoes it.
        rope(&mut half, &pos, spec(RopeLayout::HalfRotation), true);
        for (a, b) in half.iter().zip(&x) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn softmax_and_log_softmax_agree() {
        let x: Vec<f32> = rand_vec::<f32>(10, 5).iter().map(|v| v * 30.0).collect();
        let mut p = x.clone();
        softmax_in_place(&mut p);
        let mut lp = vec![0.0; 10];
        log_softmax(&x, &mut lp);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        for i in 0..10 {
            assert!((lp[i].exp() - p[i]).abs() < 1e-6);
        }
        assert_eq!(argmax(&x), argmax(&p));
        assert_eq!(argmax(&[1.0f32, 3.0, 3.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, 3.0, f32::NAN, 3.0]), 2);
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
    }

    #[test]
    fn swiglu_and_embedding() {
        let g = rand_vec::<f32>(6, 6);
        let u = rand_vec::<f32>(6, 7);
        let mut o = vec![0.0; 6];
        swiglu(&g, &u, &mut o);
        for i in 0..6 {
            assert!((o[i] - g[i] / (1.0 + (-g[i]).exp()) * u[i]).abs() < 1e-6);
        }
        let table = rand_vec::<f32>(4 * 3, 8);
        let mut e = vec![0.0; 6];
        embedding(&[2, 0], Elems::F32(&table), 3, &mut e);
        assert_eq!(&e[..3], &table[6..9]);
        assert_eq!(&e[3..], &table[..3]);
    }
}
