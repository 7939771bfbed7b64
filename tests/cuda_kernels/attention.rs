//! Flash attention (kernels/flash_attention.cu) against the CPU reference in f64:
//! `causal_attention` for the output, the log-sum-exp computed here, `causal_attention_backward`
//! for dq, dk, dv. Inputs are bf16-rounded before the reference sees them, so the reference
//! computes the same function exactly; outputs and gradients are poisoned with NaN first.
//! Bounds: ‖out − ref‖/‖ref‖ ≤ 8e-3 for every bf16 output and gradient; lse elementwise
//! |lse − ref| ≤ 1e-4·max(1, |ref|).

use crate::common::gpu::{check, f64s, gpu, poisoned, Dtype, Rng, BF16_BOUND};
use half::bf16;
use implicit::backend::cpu::attention::{
    causal_attention, causal_attention_backward, AttentionShape,
};
use implicit::backend::cuda::{CudaBackend, DeviceBuffer};

const LSE_BOUND: f64 = 1e-4;

/// One call's shapes, and which (sequence, KV head) pairs are checked against the CPU (every
/// pair when `None`; a few at the paper's size to keep the f64 reference's time sane). A
/// checked pair covers all the query heads of that KV head's group, so its dk and dv are whole.
struct Case {
    batch: usize,
    shape: AttentionShape,
    checked: Option<Vec<(usize, usize)>>,
}

impl Case {
    fn new(batch: usize, queries: usize, keys: usize, heads: usize, kv_heads: usize) -> Case {
        Case {
            batch,
            shape: AttentionShape {
                queries,
                keys,
                heads,
                kv_heads,
                head_dim: 64,
            },
            checked: None,
        }
    }

    fn hd(mut self, head_dim: usize) -> Case {
        self.shape.head_dim = head_dim;
        self
    }

    fn tag(&self) -> String {
        let s = self.shape;
        format!(
            "batch {} queries {} keys {} heads {}/{} d {}",
            self.batch, s.queries, s.keys, s.heads, s.kv_heads, s.head_dim
        )
    }
}

/// The bf16 values on the GPU and the same values (as f32) for the reference.
fn draw(gpu: &CudaBackend, rng: &mut Rng, n: usize, scale: f32) -> (DeviceBuffer<bf16>, Vec<f32>) {
    let (stored, values) = bf16::quantize(&rng.vec(n, scale));
    (gpu.upload(&stored).unwrap(), values)
}

fn f32_poisoned(gpu: &CudaBackend, n: usize) -> DeviceBuffer<f32> {
    gpu.upload(&vec![f32::NAN; n]).unwrap()
}

/// Rows of `src` (`[batch, rows, heads, hd]`) for sequence `b` and heads `h0..h0+count`, as
/// `[rows, count, hd]`.
pub(crate) fn gather<T: Copy>(
    src: &[T],
    b: usize,
    rows: usize,
    heads: usize,
    (h0, count): (usize, usize),
    hd: usize,
) -> Vec<T> {
    let mut out = Vec::with_capacity(rows * count * hd);
    for i in 0..rows {
        let at = ((b * rows + i) * heads + h0) * hd;
        out.extend_from_slice(&src[at..at + count * hd]);
    }
    out
}

/// ln Σ_j exp(q_i·k_j/√d) over the keys each query sees, for `q` `[queries, heads, hd]` and
/// `k` `[keys, 1, hd]` (one KV head), as `[heads, queries]`.
pub(crate) fn lse_reference(q: &[f64], k: &[f64], s: AttentionShape) -> Vec<f64> {
    let hd = s.head_dim;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = Vec::with_capacity(s.heads * s.queries);
    for h in 0..s.heads {
        for i in 0..s.queries {
            let qi = &q[(i * s.heads + h) * hd..][..hd];
            let scores: Vec<f64> = (0..=s.keys - s.queries + i)
                .map(|j| {
                    let kj = &k[j * hd..][..hd];
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
                |a, b| if b.is_nan() { f64::INFINITY } else { a.max(b) },
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

fn run_case(gpu: &CudaBackend, rng: &mut Rng, case: &Case) {
    let tag = case.tag();
    let s = case.shape;
    let (batch, hd) = (case.batch, s.head_dim);
    let group = s.heads / s.kv_heads;
    let q_len = batch * s.queries * s.heads * hd;
    let kv_len = batch * s.keys * s.kv_heads * hd;
    let lse_len = batch * s.heads * s.queries;

    // Scores q·k/√d with standard deviation ~1.3: peaked enough that the softmax is far from
    // uniform, never overflowing.
    let (gq, q) = draw(gpu, rng, q_len, 2.0);
    let (gk, k) = draw(gpu, rng, kv_len, 2.0);
    let (gv, v) = draw(gpu, rng, kv_len, 1.0);
    let (gdo, d_out) = draw(gpu, rng, q_len, 1.0);

    let mut gout = poisoned::<bf16>(gpu, q_len);
    let mut glse = f32_poisoned(gpu, lse_len);
    gpu.flash_attention_forward(s, batch, &gq, &gk, &gv, &mut gout, &mut glse)
        .unwrap();
    let out = gpu.download(&gout).unwrap();
    let lse = gpu.download(&glse).unwrap();

    let mut gdq = poisoned::<bf16>(gpu, q_len);
    let mut gdk = poisoned::<bf16>(gpu, kv_len);
    let mut gdv = poisoned::<bf16>(gpu, kv_len);
    gpu.flash_attention_backward(
        s, batch, &gq, &gk, &gv, &gout, &gdo, &glse, &mut gdq, &mut gdk, &mut gdv,
    )
    .unwrap();
    let dq = gpu.download(&gdq).unwrap();
    let dk = gpu.download(&gdk).unwrap();
    let dv = gpu.download(&gdv).unwrap();

    let pairs: Vec<(usize, usize)> = match &case.checked {
        Some(p) => p.clone(),
        None => (0..batch)
            .flat_map(|b| (0..s.kv_heads).map(move |h| (b, h)))
            .collect(),
    };
    let sub = AttentionShape {
        heads: group,
        kv_heads: 1,
        ..s
    };
    let (mut want_out, mut got_out) = (Vec::new(), Vec::new());
    let (mut want_dq, mut got_dq) = (Vec::new(), Vec::new());
    let (mut want_dk, mut got_dk) = (Vec::new(), Vec::new());
    let (mut want_dv, mut got_dv) = (Vec::new(), Vec::new());
    let mut worst_lse = 0.0f64;
    for &(b, kvh) in &pairs {
        let h0 = kvh * group;
        let sq = f64s(&gather(&q, b, s.queries, s.heads, (h0, group), hd));
        let sdo = f64s(&gather(&d_out, b, s.queries, s.heads, (h0, group), hd));
        let sk = f64s(&gather(&k, b, s.keys, s.kv_heads, (kvh, 1), hd));
        let sv = f64s(&gather(&v, b, s.keys, s.kv_heads, (kvh, 1), hd));

        let mut o = vec![f64::NAN; sq.len()];
        causal_attention(&sq, &sk, &sv, sub, &mut o);
        want_out.extend(o);
        got_out.extend(gather(&out, b, s.queries, s.heads, (h0, group), hd));

        let want_lse = lse_reference(&sq, &sk, sub);
        for g in 0..group {
            for i in 0..s.queries {
                let got = lse[((b * s.heads) + h0 + g) * s.queries + i] as f64;
                let want = want_lse[g * s.queries + i];
                let err = if got.is_finite() {
                    (got - want).abs() / want.abs().max(1.0)
                } else {
                    f64::INFINITY
                };
                worst_lse = worst_lse.max(err);
            }
        }

        let (mut rdq, mut rdk, mut rdv) = (
            vec![f64::NAN; sq.len()],
            vec![f64::NAN; sk.len()],
            vec![f64::NAN; sk.len()],
        );
        causal_attention_backward(&sq, &sk, &sv, &sdo, sub, &mut rdq, &mut rdk, &mut rdv);
        want_dq.extend(rdq);
        want_dk.extend(rdk);
        want_dv.extend(rdv);
        got_dq.extend(gather(&dq, b, s.queries, s.heads, (h0, group), hd));
        got_dk.extend(gather(&dk, b, s.keys, s.kv_heads, (kvh, 1), hd));
        got_dv.extend(gather(&dv, b, s.keys, s.kv_heads, (kvh, 1), hd));
    }
    // Every element written (the poison gone), including the heads not checked against the CPU.
    for (name, values) in [("out", &out), ("dq", &dq), ("dk", &dk), ("dv", &dv)] {
        let bad = values.iter().filter(|x| !x.to_f32().is_finite()).count();
        assert!(bad == 0, "{tag}: {bad} elements of {name} not finite");
    }
    let bad = lse.iter().filter(|x| !x.is_finite()).count();
    assert!(bad == 0, "{tag}: {bad} elements of lse not finite");
    check(
        &format!("flash fwd out {tag}"),
        &got_out,
        &want_out,
        BF16_BOUND,
    );
    eprintln!("flash fwd lse {tag}: max err {worst_lse:.2e} (bound {LSE_BOUND:.0e})");
    assert!(
        worst_lse <= LSE_BOUND,
        "flash fwd lse {tag}: err {worst_lse:.3e} > {LSE_BOUND:.0e}"
    );
    check_grad(&format!("flash bwd dq {tag}"), &got_dq, &want_dq);
    check_grad(&format!("flash bwd dk {tag}"), &got_dk, &want_dk);
    check(
        &format!("flash bwd dv {tag}"),
        &got_dv,
        &want_dv,
        BF16_BOUND,
    );
}

/// Forward bits, and dk, dv bits (no atomics), equal across two runs on the same inputs.
fn deterministic(gpu: &CudaBackend, rng: &mut Rng, case: &Case) {
    let s = case.shape;
    let batch = case.batch;
    let q_len = batch * s.queries * s.heads * s.head_dim;
    let kv_len = batch * s.keys * s.kv_heads * s.head_dim;
    let lse_len = batch * s.heads * s.queries;
    let (gq, _) = draw(gpu, rng, q_len, 2.0);
    let (gk, _) = draw(gpu, rng, kv_len, 2.0);
    let (gv, _) = draw(gpu, rng, kv_len, 1.0);
    let (gdo, _) = draw(gpu, rng, q_len, 1.0);
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut out = poisoned::<bf16>(gpu, q_len);
        let mut lse = f32_poisoned(gpu, lse_len);
        gpu.flash_attention_forward(s, batch, &gq, &gk, &gv, &mut out, &mut lse)
            .unwrap();
        let mut dq = poisoned::<bf16>(gpu, q_len);
        let mut dk = poisoned::<bf16>(gpu, kv_len);
        let mut dv = poisoned::<bf16>(gpu, kv_len);
        gpu.flash_attention_backward(
            s, batch, &gq, &gk, &gv, &out, &gdo, &lse, &mut dq, &mut dk, &mut dv,
        )
        .unwrap();
        let bits = |v: Vec<bf16>| v.iter().map(|x| x.to_bits()).collect::<Vec<u16>>();
        runs.push((
            bits(gpu.download(&out).unwrap()),
            gpu.download(&lse)
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<u32>>(),
            bits(gpu.download(&dk).unwrap()),
            bits(gpu.download(&dv).unwrap()),
        ));
    }
    let tag = case.tag();
    assert!(runs[0].0 == runs[1].0, "{tag}: out differs between runs");
    assert!(runs[0].1 == runs[1].1, "{tag}: lse differs between runs");
    assert!(runs[0].2 == runs[1].2, "{tag}: dk differs between runs");
    assert!(runs[0].3 == runs[1].3, "{tag}: dv differs between runs");
}

#[test]
fn flash_attention_self_attention_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("flash_attention_self");
    // Lengths 1, 17, 100, 257: one key, part of a tile, under two tiles, past four (tails in
    // both the 64-query and the 32/64-key-query tiles); GQA 8/2 and MHA 4/4; batch 2.
    for hd in [64, 128] {
        for len in [1, 17, 100, 257] {
            run_case(gpu, &mut rng, &Case::new(2, len, len, 8, 2).hd(hd));
            run_case(gpu, &mut rng, &Case::new(1, len, len, 4, 4).hd(hd));
        }
        deterministic(gpu, &mut rng, &Case::new(2, 130, 130, 8, 2).hd(hd));
    }
}

#[test]
fn flash_attention_kv_cache_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("flash_attention_cache");
    // queries < keys: query i at position keys − queries + i (prefill after a cache, decode).
    for hd in [64, 128] {
        for (queries, keys) in [(1, 1), (1, 100), (17, 257), (100, 257), (64, 200), (5, 130)] {
            run_case(gpu, &mut rng, &Case::new(2, queries, keys, 8, 2).hd(hd));
            run_case(gpu, &mut rng, &Case::new(1, queries, keys, 3, 3).hd(hd));
        }
    }
}

#[test]
fn flash_attention_paper_size_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("flash_attention_paper");
    // Llama-2-7B's attention at training length: 2 × 2048 tokens, 32 heads of 128. The f64
    // reference runs on two (sequence, head) pairs only.
    let mut mha = Case::new(2, 2048, 2048, 32, 32).hd(128);
    mha.checked = Some(vec![(0, 0), (1, 31)]);
    run_case(gpu, &mut rng, &mha);
    // Grouped-query at the same length (32 query heads over 8 KV heads), one group checked.
    let mut gqa = Case::new(1, 2048, 2048, 32, 8).hd(128);
    gqa.checked = Some(vec![(0, 5)]);
    run_case(gpu, &mut rng, &gqa);
    // And head_dim 64 at length 2048, one head.
    let mut small = Case::new(1, 2048, 2048, 16, 16).hd(64);
    small.checked = Some(vec![(0, 7)]);
    run_case(gpu, &mut rng, &small);
}

#[test]
fn flash_attention_rejects_bad_shapes() {
    let Some(gpu) = gpu() else { return };
    let shape = AttentionShape {
        queries: 4,
        keys: 4,
        heads: 2,
        kv_heads: 1,
        head_dim: 64,
    };
    let q_len = 4 * 2 * 64;
    let kv_len = 4 * 64;
    let q = gpu.zeros::<bf16>(q_len).unwrap();
    let k = gpu.zeros::<bf16>(kv_len).unwrap();
    let v = gpu.zeros::<bf16>(kv_len).unwrap();
    let mut out = gpu.zeros::<bf16>(q_len).unwrap();
    let mut lse = gpu.zeros::<f32>(8).unwrap();
    let fwd = |s: AttentionShape,
               k: &DeviceBuffer<bf16>,
               out: &mut DeviceBuffer<bf16>,
               lse: &mut DeviceBuffer<f32>| {
        gpu.flash_attention_forward(s, 1, &q, k, &v, out, lse)
            .unwrap_err()
            .to_string()
    };
    let e = fwd(
        AttentionShape {
            head_dim: 96,
            ..shape
        },
        &k,
        &mut out,
        &mut lse,
    );
    assert!(e.contains("head_dim 96"), "{e}");
    let e = fwd(
        AttentionShape {
            queries: 5,
            ..shape
        },
        &k,
        &mut out,
        &mut lse,
    );
    assert!(e.contains("queries 5"), "{e}");
    let e = fwd(
        AttentionShape {
            kv_heads: 3,
            ..shape
        },
        &k,
        &mut out,
        &mut lse,
    );
    assert!(e.contains("multiple of kv_heads"), "{e}");
    let short = gpu.zeros::<bf16>(kv_len - 1).unwrap();
    let e = fwd(shape, &short, &mut out, &mut lse);
    assert!(e.contains("k has 255 elements") && e.contains("256"), "{e}");
    let mut short_lse = gpu.zeros::<f32>(7).unwrap();
    let e = fwd(shape, &k, &mut out, &mut short_lse);
    assert!(e.contains("lse has 7 elements"), "{e}");

    let mut dq = gpu.zeros::<bf16>(q_len).unwrap();
    let mut dk = gpu.zeros::<bf16>(kv_len).unwrap();
    let mut dv = gpu.zeros::<bf16>(kv_len + 1).unwrap();
    let e = gpu
        .flash_attention_backward(
            shape, 1, &q, &k, &v, &out, &q, &lse, &mut dq, &mut dk, &mut dv,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("dv has 257 elements"), "{e}");
    // Batch 2 with buffers for one sequence.
    let e = gpu
        .flash_attention_forward(shape, 2, &q, &k, &v, &mut out, &mut lse)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("batch 2") && e.contains("q has 512 elements"),
        "{e}"
    );
}

/// Times forward and backward (host clock around synchronised launches: median of 7 samples
/// of 5 calls, two input sets alternating) at Llama-2-7B's shape, seq 2048, 32 heads of 128,
/// batch 1 to 8; FLOPs counted as causal: forward 4·s²·d·heads/2 per sequence, backward 2.5×.
/// Not a test of correctness: run with `--ignored flash_attention_speed --nocapture`.
#[test]
#[ignore]
fn flash_attention_speed() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("flash_attention_speed");
    let mut table = vec![format!(
        "{:<28} {:>9} {:>8} {:>9} {:>8}",
        "shape", "fwd ms", "TFLOP/s", "bwd ms", "TFLOP/s"
    )];
    for (batch, heads, kv_heads, hd) in [
        (1, 32, 32, 128),
        (2, 32, 32, 128),
        (4, 32, 32, 128),
        (8, 32, 32, 128),
        (8, 32, 8, 128),
        (8, 32, 32, 64),
    ] {
        let s = AttentionShape {
            queries: 2048,
            keys: 2048,
            heads,
            kv_heads,
            head_dim: hd,
        };
        let q_len = batch * s.queries * heads * hd;
        let kv_len = batch * s.keys * kv_heads * hd;
        let lse_len = batch * heads * s.queries;
        let mut sets: Vec<_> = (0..2)
            .map(|_| {
                (
                    draw(gpu, &mut rng, q_len, 2.0).0,
                    draw(gpu, &mut rng, kv_len, 2.0).0,
                    draw(gpu, &mut rng, kv_len, 1.0).0,
                    draw(gpu, &mut rng, q_len, 1.0).0,
                    poisoned::<bf16>(gpu, q_len),
                    f32_poisoned(gpu, lse_len),
                )
            })
            .collect();
        let (mut dq, mut dk, mut dv) = (
            poisoned::<bf16>(gpu, q_len),
            poisoned::<bf16>(gpu, kv_len),
            poisoned::<bf16>(gpu, kv_len),
        );
        let median = |f: &mut dyn FnMut(usize)| -> f64 {
            for i in 0..2 {
                f(i);
            }
            gpu.synchronize().unwrap();
            let mut samples: Vec<f64> = (0..7)
                .map(|_| {
                    let t = std::time::Instant::now();
                    for i in 0..5 {
                        f(i);
                    }
                    gpu.synchronize().unwrap();
                    t.elapsed().as_secs_f64() / 5.0
                })
                .collect();
            samples.sort_by(f64::total_cmp);
            samples[3]
        };
        let fwd = median(&mut |i| {
            let (q, k, v, _, out, lse) = &mut sets[i % 2];
            gpu.flash_attention_forward(s, batch, q, k, v, out, lse)
                .unwrap();
        });
        let bwd = median(&mut |i| {
            let (q, k, v, d_out, out, lse) = &sets[i % 2];
            gpu.flash_attention_backward(
                s, batch, q, k, v, out, d_out, lse, &mut dq, &mut dk, &mut dv,
            )
            .unwrap();
        });
        let flops = 4.0 * (s.queries * s.keys * hd * heads * batch) as f64 / 2.0;
        table.push(format!(
            "{:<28} {:>9.3} {:>8.1} {:>9.3} {:>8.1}",
            format!("b{batch} s2048 h{heads}/{kv_heads} d{hd}"),
            fwd * 1e3,
            flops / fwd / 1e12,
            bwd * 1e3,
            2.5 * flops / bwd / 1e12
        ));
    }
    println!("{}", table.join("\n"));
}
