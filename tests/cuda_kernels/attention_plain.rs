//! Plain attention (kernels/attention_plain.cu, any head_dim) against the CPU reference in f64:
//! `causal_attention` for the output, the log-sum-exp computed here, `causal_attention_backward`
//! for dq, dk, dv, per sequence with grouped-query heads. Inputs are bf16-rounded before the
//! reference sees them; outputs are poisoned with NaN first, every element must come out
//! finite, and a second run on the same inputs must give the same bits (no atomics anywhere).
//! Bounds: ‖out − ref‖/‖ref‖ ≤ 8e-3 for every bf16 output and gradient; lse elementwise
//! |lse − ref| ≤ 1e-4·max(1, |ref|). Also: agreement with the flash kernels at head_dim 64, and
//! the error paths.

use crate::common::gpu::{check, gpu, poisoned, Dtype, Rng, BF16_BOUND};
use half::bf16;
use implicit::backend::cpu::attention::{
    causal_attention, causal_attention_backward, AttentionShape,
};
use implicit::backend::cuda::{CudaBackend, DeviceBuffer};

const LSE_BOUND: f64 = 1e-4;

fn shape(queries: usize, keys: usize, heads: usize, kv_heads: usize, hd: usize) -> AttentionShape {
    AttentionShape {
        queries,
        keys,
        heads,
        kv_heads,
        head_dim: hd,
    }
}

fn tag(s: AttentionShape, batch: usize) -> String {
    format!(
        "batch {batch} queries {} keys {} heads {}/{} d {}",
        s.queries, s.keys, s.heads, s.kv_heads, s.head_dim
    )
}

/// Element counts of q, k and lse.
fn lens(s: AttentionShape, batch: usize) -> (usize, usize, usize) {
    (
        batch * s.queries * s.heads * s.head_dim,
        batch * s.keys * s.kv_heads * s.head_dim,
        batch * s.heads * s.queries,
    )
}

/// The bf16 values on the GPU and the same values (as f32) for the reference.
fn draw(gpu: &CudaBackend, rng: &mut Rng, n: usize, scale: f32) -> (DeviceBuffer<bf16>, Vec<f32>) {
    let (stored, values) = bf16::quantize(&rng.vec(n, scale));
    (gpu.upload(&stored).unwrap(), values)
}

struct Inputs {
    q: DeviceBuffer<bf16>,
    k: DeviceBuffer<bf16>,
    v: DeviceBuffer<bf16>,
    d_out: DeviceBuffer<bf16>,
    /// The same values as f32, in the order q, k, v, d_out.
    host: [Vec<f32>; 4],
}

/// Scores q·k/√d with standard deviation ~1.3 at every head_dim: a softmax far from uniform.
fn inputs(gpu: &CudaBackend, rng: &mut Rng, s: AttentionShape, batch: usize) -> Inputs {
    let (q_len, kv_len, _) = lens(s, batch);
    let (q, hq) = draw(gpu, rng, q_len, 2.0);
    let (k, hk) = draw(gpu, rng, kv_len, 2.0);
    let (v, hv) = draw(gpu, rng, kv_len, 1.0);
    let (d_out, hdo) = draw(gpu, rng, q_len, 1.0);
    Inputs {
        q,
        k,
        v,
        d_out,
        host: [hq, hk, hv, hdo],
    }
}

/// A forward and backward's results, downloaded: out, dq, dk, dv, and lse.
struct Outputs {
    bf16s: [Vec<bf16>; 4],
    lse: Vec<f32>,
}

impl Outputs {
    fn bits(&self) -> (Vec<Vec<u16>>, Vec<u32>) {
        let b = self
            .bf16s
            .iter()
            .map(|v| v.iter().map(|x| x.to_bits()).collect());
        (b.collect(), self.lse.iter().map(|x| x.to_bits()).collect())
    }
}

/// Runs the plain (or flash) forward, then the plain (or flash) backward on its out and lse.
fn run(gpu: &CudaBackend, s: AttentionShape, batch: usize, x: &Inputs, flash: bool) -> Outputs {
    let (q_len, kv_len, lse_len) = lens(s, batch);
    let mut out = poisoned::<bf16>(gpu, q_len);
    let mut lse = poisoned::<f32>(gpu, lse_len);
    let (mut dq, mut dk, mut dv) = (
        poisoned::<bf16>(gpu, q_len),
        poisoned::<bf16>(gpu, kv_len),
        poisoned::<bf16>(gpu, kv_len),
    );
    if flash {
        gpu.flash_attention_forward(s, batch, &x.q, &x.k, &x.v, &mut out, &mut lse)
            .unwrap();
        gpu.flash_attention_backward(
            s, batch, &x.q, &x.k, &x.v, &out, &x.d_out, &lse, &mut dq, &mut dk, &mut dv,
        )
        .unwrap();
    } else {
        gpu.plain_attention_forward(s, batch, &x.q, &x.k, &x.v, &mut out, &mut lse)
            .unwrap();
        gpu.plain_attention_backward(
            s, batch, &x.q, &x.k, &x.v, &out, &x.d_out, &lse, &mut dq, &mut dk, &mut dv,
        )
        .unwrap();
    }
    let d = |b: &DeviceBuffer<bf16>| gpu.download(b).unwrap();
    Outputs {
        bf16s: [d(&out), d(&dq), d(&dk), d(&dv)],
        lse: gpu.download(&lse).unwrap(),
    }
}

/// ln Σ_j exp(q_i·k_j/√d) over the keys each query sees, for one sequence (`q` `[queries,
/// heads, hd]`, `k` `[keys, kv_heads, hd]`), as `[heads, queries]`.
fn lse_reference(q: &[f64], k: &[f64], s: AttentionShape) -> Vec<f64> {
    let hd = s.head_dim;
    let scale = 1.0 / (hd as f64).sqrt();
    let group = s.heads / s.kv_heads;
    let mut out = Vec::with_capacity(s.heads * s.queries);
    for h in 0..s.heads {
        for i in 0..s.queries {
            let qi = &q[(i * s.heads + h) * hd..][..hd];
            let scores: Vec<f64> = (0..=s.keys - s.queries + i)
                .map(|j| {
                    let kj = &k[(j * s.kv_heads + h / group) * hd..][..hd];
                    qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() * scale
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            out.push(m + scores.iter().map(|x| (x - m).exp()).sum::<f64>().ln());
        }
    }
    out
}

/// `check`, except where the reference is exactly zero (one query seeing one key: dq = dk = 0),
/// where every output must be finite and within 1e-4 of zero.
fn check_grad(what: &str, out: &[bf16], reference: &[f64]) {
    if reference.iter().all(|&r| r == 0.0) {
        let worst = out
            .iter()
            .map(|x| (x.to_f32() as f64).abs())
            .fold(
                0.0f64,
                |a, b| {
                    if b.is_nan() {
                        f64::INFINITY
                    } else {
                        a.max(b)
                    }
                },
            );
        eprintln!("{what}: reference is zero, max |out| {worst:.2e}");
        assert!(
            worst <= 1e-4,
            "{what}: reference is zero but max |out| = {worst:.3e}"
        );
    } else {
        check(what, out, reference, BF16_BOUND);
    }
}

fn run_case(gpu: &CudaBackend, rng: &mut Rng, batch: usize, s: AttentionShape) {
    let tag = tag(s, batch);
    let x = inputs(gpu, rng, s, batch);
    let got = run(gpu, s, batch, &x, false);
    for (name, values) in ["out", "dq", "dk", "dv"].iter().zip(&got.bf16s) {
        let bad = values.iter().filter(|x| !x.to_f32().is_finite()).count();
        assert!(bad == 0, "{tag}: {bad} elements of {name} not finite");
    }
    let bad = got.lse.iter().filter(|x| !x.is_finite()).count();
    assert!(bad == 0, "{tag}: {bad} elements of lse not finite");

    // The reference, one sequence at a time (each is contiguous in every layout).
    let [q, k, v, d_out] = x
        .host
        .each_ref()
        .map(|h| h.iter().map(|&e| e as f64).collect::<Vec<f64>>());
    let (q_len, kv_len, lse_len) = lens(s, batch);
    let (qs, kvs, ls) = (q_len / batch, kv_len / batch, lse_len / batch);
    let mut want = [
        vec![0.0f64; q_len],
        vec![0.0; q_len],
        vec![0.0; kv_len],
        vec![0.0; kv_len],
    ];
    let mut worst_lse = 0.0f64;
    for b in 0..batch {
        let (qb, dob) = (&q[b * qs..][..qs], &d_out[b * qs..][..qs]);
        let (kb, vb) = (&k[b * kvs..][..kvs], &v[b * kvs..][..kvs]);
        let [o, dq, dk, dv] = &mut want;
        causal_attention(qb, kb, vb, s, &mut o[b * qs..][..qs]);
        causal_attention_backward(
            qb,
            kb,
            vb,
            dob,
            s,
            &mut dq[b * qs..][..qs],
            &mut dk[b * kvs..][..kvs],
            &mut dv[b * kvs..][..kvs],
        );
        for (g, w) in got.lse[b * ls..][..ls].iter().zip(lse_reference(qb, kb, s)) {
            worst_lse = worst_lse.max((*g as f64 - w).abs() / w.abs().max(1.0));
        }
    }
    let [out, dq, dk, dv] = &got.bf16s;
    check(&format!("plain fwd out {tag}"), out, &want[0], BF16_BOUND);
    eprintln!("plain fwd lse {tag}: max err {worst_lse:.2e} (bound {LSE_BOUND:.0e})");
    assert!(
        worst_lse <= LSE_BOUND,
        "plain fwd lse {tag}: err {worst_lse:.3e}"
    );
    check_grad(&format!("plain bwd dq {tag}"), dq, &want[1]);
    check_grad(&format!("plain bwd dk {tag}"), dk, &want[2]);
    check(&format!("plain bwd dv {tag}"), dv, &want[3], BF16_BOUND);

    // Deterministic: a second run on the same inputs gives the same bits, dq included.
    assert!(
        run(gpu, s, batch, &x, false).bits() == got.bits(),
        "{tag}: outputs differ between runs"
    );
}

#[test]
fn plain_attention_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("plain_attention");
    // Self-attention and queries < keys (prefill after a cache, decode); lengths that are not
    // multiples of anything; 37 queries × group 4 = 148 (query, head) pairs per key: two chunks
    // of the dk/dv kernel; 131 keys: more keys than threads.
    for hd in [8, 40, 64] {
        for (heads, kv_heads) in [(4, 2), (4, 1)] {
            for (queries, keys) in [(1, 1), (17, 17), (100, 100), (1, 29), (13, 50), (37, 131)] {
                run_case(gpu, &mut rng, 2, shape(queries, keys, heads, kv_heads, hd));
            }
        }
    }
    // head_dim 1 (one column, 128 slices), 130 and 256 (two columns per thread), MHA.
    for hd in [1, 3, 130, 256] {
        run_case(gpu, &mut rng, 2, shape(23, 23, 4, 2, hd));
        run_case(gpu, &mut rng, 1, shape(19, 70, 3, 3, hd));
    }
    // 300 queries over one KV head: 1200 pairs for key 0.
    run_case(gpu, &mut rng, 2, shape(300, 300, 4, 1, 8));
    // 13 000 keys: 52 000 bytes of scores, over the 48 KiB that needs the opt-in.
    run_case(gpu, &mut rng, 1, shape(3, 13_000, 2, 1, 8));
}

#[test]
fn plain_attention_agrees_with_flash_at_head_dim_64() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("plain_attention_flash");
    for (batch, queries, keys, heads, kv_heads) in
        [(2, 100, 100, 4, 2), (2, 37, 131, 4, 1), (1, 200, 200, 8, 8)]
    {
        let s = shape(queries, keys, heads, kv_heads, 64);
        let tag = tag(s, batch);
        let x = inputs(gpu, &mut rng, s, batch);
        let plain = run(gpu, s, batch, &x, false);
        let flash = run(gpu, s, batch, &x, true);
        for (name, (p, f)) in ["out", "dq", "dk", "dv"]
            .iter()
            .zip(plain.bf16s.iter().zip(&flash.bf16s))
        {
            let f64s: Vec<f64> = f.iter().map(|x| x.to_f32() as f64).collect();
            check(
                &format!("plain vs flash {name} {tag}"),
                p,
                &f64s,
                BF16_BOUND,
            );
        }
        let worst = plain
            .lse
            .iter()
            .zip(&flash.lse)
            .fold(0.0f64, |a, (&p, &f)| {
                let e = (p as f64 - f as f64).abs() / (f as f64).abs().max(1.0);
                if e.is_nan() {
                    f64::INFINITY
                } else {
                    a.max(e)
                }
            });
        eprintln!("plain vs flash lse {tag}: max err {worst:.2e}");
        assert!(worst <= 1e-5, "plain vs flash lse {tag}: err {worst:.3e}");
    }
}

#[test]
fn plain_attention_rejects_bad_shapes() {
    let Some(gpu) = gpu() else { return };
    let s = shape(4, 4, 2, 1, 8);
    let (q_len, kv_len) = (4 * 2 * 8, 4 * 8);
    let q = gpu.zeros::<bf16>(q_len).unwrap();
    let k = gpu.zeros::<bf16>(kv_len).unwrap();
    let v = gpu.zeros::<bf16>(kv_len).unwrap();
    let mut out = gpu.zeros::<bf16>(q_len).unwrap();
    let mut lse = gpu.zeros::<f32>(8).unwrap();
    let fwd =
        |s: AttentionShape, batch: usize, k: &DeviceBuffer<bf16>, lse: &mut DeviceBuffer<f32>| {
            let mut out = gpu.zeros::<bf16>(q_len).unwrap();
            gpu.plain_attention_forward(s, batch, &q, k, &v, &mut out, lse)
                .unwrap_err()
                .to_string()
        };
    for hd in [0, 257] {
        let e = fwd(AttentionShape { head_dim: hd, ..s }, 1, &k, &mut lse);
        assert!(
            e.contains(&format!("head_dim {hd} is not supported")),
            "{e}"
        );
    }
    let e = fwd(AttentionShape { queries: 5, ..s }, 1, &k, &mut lse);
    assert!(
        e.contains("queries 5") && e.contains("more queries than keys"),
        "{e}"
    );
    let e = fwd(AttentionShape { kv_heads: 3, ..s }, 1, &k, &mut lse);
    assert!(e.contains("multiple of kv_heads"), "{e}");
    let short = gpu.zeros::<bf16>(kv_len - 1).unwrap();
    let e = fwd(s, 1, &short, &mut lse);
    assert!(e.contains("k has 31 elements") && e.contains("32"), "{e}");
    let mut short_lse = gpu.zeros::<f32>(7).unwrap();
    let e = fwd(s, 1, &k, &mut short_lse);
    assert!(e.contains("lse has 7 elements"), "{e}");
    let e = fwd(s, 2, &k, &mut lse);
    assert!(
        e.contains("batch 2") && e.contains("q has 64 elements"),
        "{e}"
    );

    let mut dq = gpu.zeros::<bf16>(q_len).unwrap();
    let mut dk = gpu.zeros::<bf16>(kv_len).unwrap();
    let mut dv = gpu.zeros::<bf16>(kv_len + 1).unwrap();
    let e = gpu
        .plain_attention_backward(s, 1, &q, &k, &v, &out, &q, &lse, &mut dq, &mut dk, &mut dv)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("plain attention backward") && e.contains("dv has 33 elements"),
        "{e}"
    );
    let e = gpu
        .plain_attention_backward(
            AttentionShape { head_dim: 300, ..s },
            1,
            &q,
            &k,
            &v,
            &out,
            &q,
            &lse,
            &mut dq,
            &mut dk,
            &mut dv,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("head_dim 300"), "{e}");

    // A row of a million scores (4 MB) fits in no block's shared memory: a clear error, no
    // launch.
    let keys = 1_000_000;
    let big = shape(1, keys, 1, 1, 1);
    let (bq, bk) = (
        gpu.zeros::<bf16>(1).unwrap(),
        gpu.zeros::<bf16>(keys).unwrap(),
    );
    let mut bout = gpu.zeros::<bf16>(1).unwrap();
    let mut blse = gpu.zeros::<f32>(1).unwrap();
    let e = gpu
        .plain_attention_forward(big, 1, &bq, &bk, &bk, &mut bout, &mut blse)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("attn_plain_fwd") && e.contains("shared memory") && e.contains("keys 1000000"),
        "{e}"
    );
    // The good shape still runs after all the errors.
    gpu.plain_attention_forward(s, 1, &q, &k, &v, &mut out, &mut lse)
        .unwrap();
    gpu.synchronize().unwrap();
}
