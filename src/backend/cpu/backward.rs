//! Backward rules of the row-wise ops: given the forward inputs and the gradient of the output,
//! the gradients of the inputs. Each cites the derivative it implements.

use super::ops::{layer_norm_stats, log_sum_exp, rms_inverse, sigmoid};
use crate::tensor::Real;

/// RMSNorm y = x·r·w, r = (mean(x²) + eps)^−½:
/// dx = r·(w⊙dy) − r³/d · x · Σ(w⊙dy⊙x);  dw += Σ_rows dy⊙x·r.
pub fn rms_norm_backward<T: Real>(
    x: &[T],
    weight: &[T],
    eps: f64,
    dy: &[T],
    dx: &mut [T],
    dw: &mut [T],
) {
    let d = weight.len();
    for ((xr, dyr), dxr) in x
        .chunks_exact(d)
        .zip(dy.chunks_exact(d))
        .zip(dx.chunks_exact_mut(d))
    {
        let r = rms_inverse(xr, eps);
        let dot: f64 = (0..d)
            .map(|i| weight[i].to_f64() * dyr[i].to_f64() * xr[i].to_f64())
            .sum();
        let c = r * r * r / d as f64 * dot;
        for i in 0..d {
            let (xi, gi) = (xr[i].to_f64(), dyr[i].to_f64());
            dxr[i] = T::from_f64(r * weight[i].to_f64() * gi - c * xi);
            dw[i] += T::from_f64(gi * xi * r);
        }
    }
}

/// LayerNorm without parameters, x̂ = (x − μ)·r: dx = r·(dy − mean(dy) − x̂·mean(dy⊙x̂)).
pub fn layer_norm_backward<T: Real>(x: &[T], dim: usize, eps: f64, dy: &[T], dx: &mut [T]) {
    for ((xr, dyr), dxr) in x
        .chunks_exact(dim)
        .zip(dy.chunks_exact(dim))
        .zip(dx.chunks_exact_mut(dim))
    {
        let (mean, r) = layer_norm_stats(xr, eps);
        let n = dim as f64;
        let xhat = |i: usize| (xr[i].to_f64() - mean) * r;
        let mean_dy = dyr.iter().map(|v| v.to_f64()).sum::<f64>() / n;
        let mean_dy_xhat = (0..dim).map(|i| dyr[i].to_f64() * xhat(i)).sum::<f64>() / n;
        for i in 0..dim {
            dxr[i] = T::from_f64(r * (dyr[i].to_f64() - mean_dy - xhat(i) * mean_dy_xhat));
        }
    }
}

/// out = silu(g)⊙u: du = dy⊙silu(g); dg = dy⊙u⊙σ(g)·(1 + g·(1 − σ(g))).
pub fn swiglu_backward<T: Real>(gate: &[T], up: &[T], dy: &[T], d_gate: &mut [T], d_up: &mut [T]) {
    for i in 0..gate.len() {
        let (g, u, d) = (gate[i], up[i], dy[i]);
        let s = sigmoid(g);
        d_up[i] = d * g * s;
        d_gate[i] = d * u * s * (T::one() + g * (T::one() - s));
    }
}

/// clamp(x, −l, l) passes the gradient where −l ≤ x ≤ l (inclusive, as torch.clamp).
pub fn clamp_backward<T: Real>(x: &[T], limit: T, dy: &[T], dx: &mut [T]) {
    for i in 0..x.len() {
        dx[i] = if x[i] >= -limit && x[i] <= limit {
            dy[i]
        } else {
            T::zero()
        };
    }
}

/// Embedding: d_table[ids[t]] += dy[t].
pub fn embedding_backward<T: Real>(ids: &[u32], dy: &[T], dim: usize, d_table: &mut [T]) {
    for (row, &id) in dy.chunks_exact(dim).zip(ids) {
        for (d, &g) in d_table[id as usize * dim..][..dim].iter_mut().zip(row) {
            *d += g;
        }
    }
}

/// Weighted softmax cross-entropy over rows of `logits` (`[rows, vocab]`):
/// loss = Σ_r w_r·(logsumexp(z_r) − z_r[t_r]); rows with weight 0 are skipped.
/// Returns the loss and, when `d_logits` is given, writes dloss/dz = w_r·(softmax(z_r) − onehot(t_r)).
pub fn cross_entropy<T: Real>(
    logits: &[T],
    vocab: usize,
    targets: &[u32],
    weights: &[f64],
    mut d_logits: Option<&mut [T]>,
) -> f64 {
    let mut loss = 0.0;
    for (r, z) in logits.chunks_exact(vocab).enumerate() {
        let w = weights[r];
        if w == 0.0 {
            if let Some(d) = d_logits.as_deref_mut() {
                d[r * vocab..][..vocab].fill(T::zero());
            }
            continue;
        }
        let lse = log_sum_exp(z);
        let t = targets[r] as usize;
        loss += w * (lse - z[t].to_f64());
        if let Some(d) = d_logits.as_deref_mut() {
            let dr = &mut d[r * vocab..][..vocab];
            for (dv, &zv) in dr.iter_mut().zip(z) {
                *dv = T::from_f64(w * (zv.to_f64() - lse).exp());
            }
            dr[t] -= T::from_f64(w);
        }
    }
    loss
}
