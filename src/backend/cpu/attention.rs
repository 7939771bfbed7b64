//! Causal self-attention with grouped-query heads over a KV cache: the CPU reference.

use super::ops::softmax_in_place;
use super::parallel::parallel_chunks_mut;

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
pub fn causal_attention(q: &[f32], k: &[f32], v: &[f32], s: AttentionShape, out: &mut [f32]) {
    let AttentionShape {
        queries,
        keys,
        heads,
        kv_heads,
        head_dim: hd,
    } = s;
    assert!(
        queries <= keys && heads % kv_heads == 0,
        "attention shape {s:?}"
    );
    let group = heads / kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let start = keys - queries;
    // Heads run in parallel; each writes its own [queries, head_dim] block, scattered after.
    let mut by_head = vec![0.0f32; heads * queries * hd];
    parallel_chunks_mut(&mut by_head, queries * hd, |h, block| {
        let kvh = h / group;
        let mut scores = vec![0.0f32; keys];
        for i in 0..queries {
            let qi = &q[(i * heads + h) * hd..][..hd];
            let visible = start + i + 1;
            for (j, sc) in scores[..visible].iter_mut().enumerate() {
                let kj = &k[(j * kv_heads + kvh) * hd..][..hd];
                *sc = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
            }
            softmax_in_place(&mut scores[..visible]);
            let oi = &mut block[i * hd..][..hd];
            oi.fill(0.0);
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
        let q = rand_vec(t * heads * hd, 1);
        let k = rand_vec(t * kvh * hd, 2);
        let v = rand_vec(t * kvh * hd, 3);
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
