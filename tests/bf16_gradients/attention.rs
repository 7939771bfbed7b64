//! Causal attention as kernels/attention_plain.cu computes it, in f64: the emulation rounds its
//! inputs and outputs; the backward's D_i = Σ dO_i·O_i reads the stored O, as the kernel does.

use super::dot;
use implicit::model::ModelConfig;

/// Causal attention of one sequence (attn_plain_fwd): out `[n, heads, hd]` and lse `[heads, n]`.
pub fn attention(
    c: &ModelConfig,
    n: usize,
    q: &[f64],
    k: &[f64],
    v: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let (heads, kvh, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
    let tau = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0.0; n * heads * hd];
    let mut lse = vec![0.0; heads * n];
    for h in 0..heads {
        let g = h / (heads / kvh);
        for i in 0..n {
            let qi = &q[(i * heads + h) * hd..][..hd];
            let s: Vec<f64> = (0..=i)
                .map(|j| tau * dot(qi, &k[(j * kvh + g) * hd..][..hd]))
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let l = m + s.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            lse[h * n + i] = l;
            let oi = &mut out[(i * heads + h) * hd..][..hd];
            for (j, sj) in s.iter().enumerate() {
                let p = (sj - l).exp();
                for (o, &vv) in oi.iter_mut().zip(&v[(j * kvh + g) * hd..][..hd]) {
                    *o += p * vv;
                }
            }
        }
    }
    (out, lse)
}

/// attn_plain_bwd_dq / _dkv: dq, dk, dv (unrounded) from the stored O and dO, with
/// D_i = Σ dO_i·O_i.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    c: &ModelConfig,
    n: usize,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    o: &[f64],
    d_o: &[f64],
    lse: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (heads, kvh, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
    let tau = 1.0 / (hd as f64).sqrt();
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    for h in 0..heads {
        let g = h / (heads / kvh);
        for i in 0..n {
            let row = (i * heads + h) * hd;
            let (qi, doi) = (&q[row..][..hd], &d_o[row..][..hd]);
            let delta = dot(doi, &o[row..][..hd]);
            let l = lse[h * n + i];
            for j in 0..=i {
                let at = (j * kvh + g) * hd;
                let p = (tau * dot(qi, &k[at..][..hd]) - l).exp();
                let ds = p * (dot(doi, &v[at..][..hd]) - delta);
                for c in 0..hd {
                    dq[row + c] += tau * ds * k[at + c];
                    dk[at + c] += tau * ds * qi[c];
                    dv[at + c] += p * doi[c];
                }
            }
        }
    }
    (dq, dk, dv)
}
