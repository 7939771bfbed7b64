//! Causal self-attention with grouped-query heads over a KV cache: the CPU reference.

use super::ops::softmax_in_place;
use super::parallel::parallel_chunks_mut;
use crate::tensor::Real;

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    /// New query tokens.
    pub queries: usize,
    /// Keys/values in the cache, the new tokens' included (queries <= keys).
    pub keys: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// out = softmax(q·kᵀ/√d + causal mask)·v for every query head (Vaswani et al. 2017, eq. 1).
///
/// `q` is `[queries, heads, head_dim]`, `k` and `v` are `[keys, kv_heads, head_dim]`, `out` is
/// `[queries, heads, head_dim]`. Query i sits at position keys − queries + i and attends to keys
/// 0..=that position. Query head h reads KV head h / (heads / kv_heads) (grouped-query attention).
pub fn causal_attention<T: Real>(q: &[T], k: &[T], v: &[T], s: AttentionShape, out: &mut [T]) {
    let AttentionShape {
        queries,
        keys,
        heads,
        kv_heads,
        head_dim: hd,
    } = s;
    assert!(
        queries <= keys && heads.is_multiple_of(kv_heads),
        "attention shape {s:?}"
    );
    let group = heads / kv_heads;
    let start = keys - queries;
    // Heads run in parallel; each writes its own [queries, head_dim] block, scattered after.
    let mut by_head = vec![T::zero(); heads * queries * hd];
    parallel_chunks_mut(&mut by_head, queries * hd, |h, block| {
        let kvh = h / group;
        let mut scores = vec![T::zero(); keys];
        for i in 0..queries {
            let visible = start + i + 1;
            attention_probabilities(q, k, s, h, i, &mut scores[..visible]);
            let oi = &mut block[i * hd..][..hd];
            oi.fill(T::zero());
            for (j, &p) in scores[..visible].iter().enumerate() {
                let vj = &v[(j * kv_heads + kvh) * hd..][..hd];
                for (o, &x) in oi.iter_mut().zip(vj) {
                    *o += p * x;
                }
            }
        }
    });
    for h in 0..heads {
        for i in 0..queries {
            out[(i * heads + h) * hd..][..hd]
                .copy_from_slice(&by_head[(h * queries + i) * hd..][..hd]);
        }
    }
}

/// softmax_j(q_i·k_j / √d) over the keys query `i` of head `h` sees (`probs.len()` of them).
fn attention_probabilities<T: Real>(
    q: &[T],
    k: &[T],
    s: AttentionShape,
    h: usize,
    i: usize,
    probs: &mut [T],
) {
    let hd = s.head_dim;
    let kvh = h / (s.heads / s.kv_heads);
    let scale = T::one() / T::from_f64(hd as f64).sqrt();
    let qi = &q[(i * s.heads + h) * hd..][..hd];
    for (j, p) in probs.iter_mut().enumerate() {
        let kj = &k[(j * s.kv_heads + kvh) * hd..][..hd];
        *p = qi.iter().zip(kj).map(|(&a, &b)| a * b).sum::<T>() * scale;
    }
    softmax_in_place(probs);
}

fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).map(|(&x, &y)| x * y).sum()
}

/// Gradients of `causal_attention` for the gradient `d_out` of its output, written (not
/// accumulated) into `dq` (`[queries, heads, head_dim]`), `dk`, `dv` (`[keys, kv_heads, head_dim]`).
///
/// With P = softmax(S), S = q·kᵀ/√d, O = P·v: dv = Pᵀ·dO, dP = dO·vᵀ,
/// dS = P ⊙ (dP − rowsum(dP ⊙ P)), dq = dS·k/√d, dk = dSᵀ·q/√d; the query heads of a group
/// add into their shared KV head. P is recomputed rather than stored.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_backward<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    d_out: &[T],
    s: AttentionShape,
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) {
    let AttentionShape {
        queries,
        keys,
        heads,
        kv_heads,
        head_dim: hd,
    } = s;
    let group = heads / kv_heads;
    let start = keys - queries;
    let scale = T::one() / T::from_f64(hd as f64).sqrt();
    // One task per KV head: it owns dk, dv of that head and dq of the query heads in its group.
    let block = group * queries * hd + 2 * keys * hd;
    let mut scratch = vec![T::zero(); kv_heads * block];
    parallel_chunks_mut(&mut scratch, block, |kvh, buf| {
        let (dq_g, rest) = buf.split_at_mut(group * queries * hd);
        let (dk_h, dv_h) = rest.split_at_mut(keys * hd);
        let mut probs = vec![T::zero(); keys];
        let mut dprobs = vec![T::zero(); keys];
        for g in 0..group {
            let h = kvh * group + g;
            for i in 0..queries {
                let visible = start + i + 1;
                let p = &mut probs[..visible];
                attention_probabilities(q, k, s, h, i, p);
                let doi = &d_out[(i * heads + h) * hd..][..hd];
                for j in 0..visible {
                    let vj = &v[(j * kv_heads + kvh) * hd..][..hd];
                    dprobs[j] = dot(doi, vj);
                    for (dvv, &x) in dv_h[j * hd..][..hd].iter_mut().zip(doi) {
                        *dvv += p[j] * x;
                    }
                }
                let row_dot: T = p.iter().zip(&dprobs[..visible]).map(|(&a, &b)| a * b).sum();
                let qi = &q[(i * heads + h) * hd..][..hd];
                let dqi = &mut dq_g[(g * queries + i) * hd..][..hd];
                for j in 0..visible {
                    let ds = p[j] * (dprobs[j] - row_dot) * scale;
                    let kj = &k[(j * kv_heads + kvh) * hd..][..hd];
                    for (d, &x) in dqi.iter_mut().zip(kj) {
                        *d += ds * x;
                    }
                    for (d, &x) in dk_h[j * hd..][..hd].iter_mut().zip(qi) {
                        *d += ds * x;
                    }
                }
            }
        }
    });
    for (kvh, buf) in scratch.chunks_exact(block).enumerate() {
        let (dq_g, rest) = buf.split_at(group * queries * hd);
        let (dk_h, dv_h) = rest.split_at(keys * hd);
        for g in 0..group {
            let h = kvh * group + g;
            for i in 0..queries {
                dq[(i * heads + h) * hd..][..hd]
                    .copy_from_slice(&dq_g[(g * queries + i) * hd..][..hd]);
            }
        }
        for j in 0..keys {
            dk[(j * kv_heads + kvh) * hd..][..hd].copy_from_slice(&dk_h[j * hd..][..hd]);
            dv[(j * kv_heads + kvh) * hd..][..hd].copy_from_slice(&dv_h[j * hd..][..hd]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::rand_vec;

    /// Naive attention over full sequences, repeating KV heads explicitly.
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        t: usize,
        heads: usize,
        kvh: usize,
        hd: usize,
    ) -> Vec<f32> {
        let mut out = vec![0.0; t * heads * hd];
        for h in 0..heads {
            let g = h / (heads / kvh);
            for i in 0..t {
                let mut w: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..hd)
                            .map(|d| {
                                (q[(i * heads + h) * hd + d] * k[(j * kvh + g) * hd + d]) as f64
                            })
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = w.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = w.iter().map(|x| (x - m).exp()).sum();
                w.iter_mut().for_each(|x| *x = (*x - m).exp() / z);
                for d in 0..hd {
                    out[(i * heads + h) * hd + d] = (0..=i)
                        .map(|j| w[j] * v[(j * kvh + g) * hd + d] as f64)
                        .sum::<f64>() as f32;
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_and_cache_split() {
        let (t, heads, kvh, hd) = (9, 4, 2, 8);
        let q = rand_vec::<f32>(t * heads * hd, 1);
        let k = rand_vec::<f32>(t * kvh * hd, 2);
        let v = rand_vec::<f32>(t * kvh * hd, 3);
        let want = naive(&q, &k, &v, t, heads, kvh, hd);
        let mut full = vec![f32::NAN; want.len()];
        let shape = AttentionShape {
            queries: t,
            keys: t,
            heads,
            kv_heads: kvh,
            head_dim: hd,
        };
        causal_attention(&q, &k, &v, shape, &mut full);
        let err: f32 = full
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f32>()
            .sqrt()
            / want.iter().map(|b| b * b).sum::<f32>().sqrt();
        assert!(err < 1e-6, "relative error {err}");
        // The last 3 queries against a cache of 9 keys give the same rows as the full call.
        let split = t - 3;
        let mut tail = vec![f32::NAN; 3 * heads * hd];
        let shape = AttentionShape {
            queries: 3,
            ..shape
        };
        causal_attention(&q[split * heads * hd..], &k, &v, shape, &mut tail);
        for (a, b) in tail.iter().zip(&full[split * heads * hd..]) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
