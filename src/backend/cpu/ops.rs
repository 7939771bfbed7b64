//! Element-wise and row-wise ops of the forward pass: the plain CPU reference of each.
//!
//! Rows are contiguous runs of `dim` f32 values; a `[rows, dim]` activation is a flat slice.

use crate::tensor::Elems;

/// out[t] = table[ids[t]] for each token t; `table` is `[vocab, dim]`.
pub fn embedding(ids: &[u32], table: Elems, dim: usize, out: &mut [f32]) {
    for (row, &id) in out.chunks_exact_mut(dim).zip(ids) {
        table.read_f32(id as usize * dim, row);
    }
}

/// RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x²) + eps) · w, per row.
/// Accumulates in f64 so that the reference is not the least precise thing in a test.
pub fn rms_norm(x: &[f32], weight: Elems, eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (xr, yr) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ms = xr.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / dim as f64;
        let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
        for (i, (y, &v)) in yr.iter_mut().zip(xr).enumerate() {
            *y = v * inv * weight.get(i);
        }
    }
}

/// LayerNorm without weight or bias (OLMo-7B): y = (x − mean) / sqrt(var + eps), per row,
/// with the biased variance as torch's layer_norm uses.
pub fn layer_norm_no_params(x: &[f32], dim: usize, eps: f32, out: &mut [f32]) {
    for (xr, yr) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
        let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for (y, &v) in yr.iter_mut().zip(xr) {
            *y = ((v as f64 - mean) * inv) as f32;
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

/// RoPE (Su et al. 2021) in place on `x` of shape `[tokens, heads, head_dim]`:
/// each pair (a, b) at position p and frequency index i becomes
/// (a·cos θ − b·sin θ, b·cos θ + a·sin θ) with θ = p · base^(−2i/head_dim).
pub fn rope(
    x: &mut [f32],
    positions: &[usize],
    heads: usize,
    head_dim: usize,
    base: f32,
    layout: RopeLayout,
) {
    let half = head_dim / 2;
    // Frequencies as Hugging Face computes them: inv_freq in f32, angle = pos · inv_freq in f32.
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let mut cos = vec![0.0f32; half];
    let mut sin = vec![0.0f32; half];
    for (tok, &pos) in x.chunks_exact_mut(heads * head_dim).zip(positions) {
        for i in 0..half {
            let angle = pos as f32 * inv_freq[i];
            cos[i] = angle.cos();
            sin[i] = angle.sin();
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

/// SiLU(x) = x · sigmoid(x).
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// SwiGLU's gate (Shazeer 2020): out = silu(gate) ⊙ up.
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(g) * u;
    }
}

/// Numerically stable softmax of one row, in place.
pub fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// log_softmax of one row into `out`: x − max − log Σ exp(x − max).
pub fn log_softmax(row: &[f32], out: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = row
        .iter()
        .map(|&v| ((v - max) as f64).exp())
        .sum::<f64>()
        .ln() as f32
        + max;
    for (o, &v) in out.iter_mut().zip(row) {
        *o = v - lse;
    }
}

/// Index of the largest value (the first one on ties, as torch.argmax).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Clamps every value into [−limit, limit] (OLMo's clip_qkv).
pub fn clamp_in_place(x: &mut [f32], limit: f32) {
    for v in x.iter_mut() {
        *v = v.clamp(-limit, limit);
    }
}

/// x += y.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn rms_norm_matches_definition() {
        let x = rand_vec(3 * 8, 1);
        let w = rand_vec(8, 2);
        let mut y = vec![f32::NAN; 24];
        rms_norm(&x, Elems::F32(&w), 1e-5, &mut y);
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
        let x = rand_vec(2 * 16, 3);
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
        let x = rand_vec(3 * heads * hd, 4);
        let perm = |i: usize| if i % 2 == 0 { i / 2 } else { hd / 2 + i / 2 };
        let mut permuted = x.clone();
        for t in 0..3 * heads {
            for i in 0..hd {
                permuted[t * hd + i] = x[t * hd + perm(i)];
            }
        }
        let pos = [0, 5, 17];
        let mut half = x.clone();
        rope(
            &mut half,
            &pos,
            heads,
            hd,
            10000.0,
            RopeLayout::HalfRotation,
        );
        rope(
            &mut permuted,
            &pos,
            heads,
            hd,
            10000.0,
            RopeLayout::Interleaved,
        );
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
    }

    #[test]
    fn softmax_and_log_softmax_agree() {
        let x: Vec<f32> = rand_vec(10, 5).iter().map(|v| v * 30.0).collect();
        let mut p = x.clone();
        softmax_in_place(&mut p);
        let mut lp = vec![0.0; 10];
        log_softmax(&x, &mut lp);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        for i in 0..10 {
            assert!((lp[i].exp() - p[i]).abs() < 1e-6);
        }
        assert_eq!(argmax(&x), argmax(&p));
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }

    #[test]
    fn swiglu_and_embedding() {
        let g = rand_vec(6, 6);
        let u = rand_vec(6, 7);
        let mut o = vec![0.0; 6];
        swiglu(&g, &u, &mut o);
        for i in 0..6 {
            assert!((o[i] - g[i] / (1.0 + (-g[i]).exp()) * u[i]).abs() < 1e-6);
        }
        let table = rand_vec(4 * 3, 8);
        let mut e = vec![0.0; 6];
        embedding(&[2, 0], Elems::F32(&table), 3, &mut e);
        assert_eq!(&e[..3], &table[6..9]);
        assert_eq!(&e[3..], &table[..3]);
    }
}
