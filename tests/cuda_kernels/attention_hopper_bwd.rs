//! The Hopper flash attention backward (kernels/attention_hopper_bwd.cu, called directly as
//! `flash_attention_backward_hopper`) against the CPU reference in f64
//! (`causal_attention_backward`), on the forward's out and lse, inputs bf16-rounded before the
//! reference sees them, dq/dk/dv poisoned with NaN first. Bound ‖out − ref‖/‖ref‖ ≤ 8e-3 for
//! each gradient: the bf16 bound of every attention test (the sm80 backward measured 1.7-2.6e-3
//! against it on the H100, ../shared/gpu-results/h100-2026-12-06/tests/cuda_kernels.log; the
//! output's own bf16 rounding is ~1.1e-3 of it, P rounded to bf16 before dS and dV adds about as
//! much). Every test skips unless the device has compute capability 9.0.

use super::attention::gather;
use super::attention_hopper_fwd::draw;
use crate::common::gpu::{check, f64s, hopper_gpu, poisoned, Rng, BF16_BOUND};
use half::bf16;
use implicit::backend::cpu::attention::{causal_attention_backward, AttentionShape};
use implicit::backend::cuda::{attention_choice, AttentionChoice, CudaBackend, DeviceBuffer};

/// What a test here names when it skips off compute capability 9.0 (`hopper_gpu`).
const KERNEL: &str = "the Hopper attention backward";

struct Case {
    batch: usize,
    shape: AttentionShape,
    /// (sequence, KV head) pairs checked against the CPU (None: all).
    checked: Option<Vec<(usize, usize)>>,
}

impl Case {
    fn new(batch: usize, queries: usize, keys: usize, heads: usize, kv_heads: usize) -> Case {
        let shape = AttentionShape {
            queries,
            keys,
            heads,
            kv_heads,
            head_dim: 64,
        };
        Case {
            batch,
            shape,
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

/// The inputs of one call on the GPU, and q, k, v, dO as the reference sees them.
struct Inputs {
    q: DeviceBuffer<bf16>,
    k: DeviceBuffer<bf16>,
    v: DeviceBuffer<bf16>,
    d_out: DeviceBuffer<bf16>,
    out: DeviceBuffer<bf16>,
    lse: DeviceBuffer<f32>,
    host: [Vec<f32>; 4],
}

/// Random q, k, v, dO (scores with standard deviation ~1.3, as tests/cuda_kernels/attention.rs
/// draws them) and the forward's out and lse on them.
fn inputs(gpu: &CudaBackend, rng: &mut Rng, case: &Case) -> Inputs {
    let s = case.shape;
    let q_len = case.batch * s.queries * s.heads * s.head_dim;
    let kv_len = case.batch * s.keys * s.kv_heads * s.head_dim;
    let (q, hq) = draw(gpu, rng, q_len, 2.0);
    let (k, hk) = draw(gpu, rng, kv_len, 2.0);
    let (v, hv) = draw(gpu, rng, kv_len, 1.0);
    let (d_out, hdo) = draw(gpu, rng, q_len, 1.0);
    let mut out = poisoned::<bf16>(gpu, q_len);
    let mut lse = gpu
        .upload(&vec![f32::NAN; case.batch * s.heads * s.queries])
        .unwrap();
    gpu.flash_attention_forward(s, case.batch, &q, &k, &v, &mut out, &mut lse)
        .unwrap();
    Inputs {
        q,
        k,
        v,
        d_out,
        out,
        lse,
        host: [hq, hk, hv, hdo],
    }
}

/// dq, dk, dv of the Hopper kernel (or of the dispatching call), downloaded.
fn backward(
    gpu: &CudaBackend,
    case: &Case,
    x: &Inputs,
    dispatch: bool,
) -> (Vec<bf16>, Vec<bf16>, Vec<bf16>) {
    let s = case.shape;
    let q_len = case.batch * s.queries * s.heads * s.head_dim;
    let kv_len = case.batch * s.keys * s.kv_heads * s.head_dim;
    let mut dq = poisoned::<bf16>(gpu, q_len);
    let mut dk = poisoned::<bf16>(gpu, kv_len);
    let mut dv = poisoned::<bf16>(gpu, kv_len);
    let args = (&x.q, &x.k, &x.v, &x.out, &x.d_out, &x.lse);
    if dispatch {
        gpu.flash_attention_backward(
            s, case.batch, args.0, args.1, args.2, args.3, args.4, args.5, &mut dq, &mut dk,
            &mut dv,
        )
    } else {
        gpu.flash_attention_backward_hopper(
            s, case.batch, args.0, args.1, args.2, args.3, args.4, args.5, &mut dq, &mut dk,
            &mut dv,
        )
    }
    .unwrap();
    (
        gpu.download(&dq).unwrap(),
        gpu.download(&dk).unwrap(),
        gpu.download(&dv).unwrap(),
    )
}

/// `check`, except where the reference is exactly zero (one query seeing one key: dq = dk = 0),
/// where every output must be within 1e-4 of zero.
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
            "{what}: reference is zero, max |out| {worst:.3e}"
        );
    } else {
        check(what, out, reference, BF16_BOUND);
    }
}

fn run_case(gpu: &CudaBackend, rng: &mut Rng, case: &Case) {
    let tag = case.tag();
    let s = case.shape;
    let hd = s.head_dim;
    let group = s.heads / s.kv_heads;
    let x = inputs(gpu, rng, case);
    let (dq, dk, dv) = backward(gpu, case, &x, false);
    for (name, values) in [("dq", &dq), ("dk", &dk), ("dv", &dv)] {
        let bad = values.iter().filter(|v| !v.to_f32().is_finite()).count();
        assert!(
            bad == 0,
            "hopper bwd {tag}: {bad} elements of {name} not finite"
        );
    }
    let pairs: Vec<(usize, usize)> = match &case.checked {
        Some(p) => p.clone(),
        None => (0..case.batch)
            .flat_map(|b| (0..s.kv_heads).map(move |h| (b, h)))
            .collect(),
    };
    let sub = AttentionShape {
        heads: group,
        kv_heads: 1,
        ..s
    };
    let [hq, hk, hv, hdo] = &x.host;
    let (mut want, mut got) = ([vec![], vec![], vec![]], [vec![], vec![], vec![]]);
    for &(b, kvh) in &pairs {
        let qh = (kvh * group, group);
        let sq = f64s(&gather(hq, b, s.queries, s.heads, qh, hd));
        let sdo = f64s(&gather(hdo, b, s.queries, s.heads, qh, hd));
        let sk = f64s(&gather(hk, b, s.keys, s.kv_heads, (kvh, 1), hd));
        let sv = f64s(&gather(hv, b, s.keys, s.kv_heads, (kvh, 1), hd));
        let mut r = [
            vec![f64::NAN; sq.len()],
            vec![f64::NAN; sk.len()],
            vec![f64::NAN; sk.len()],
        ];
        let [rq, rk, rv] = &mut r;
        causal_attention_backward(&sq, &sk, &sv, &sdo, sub, rq, rk, rv);
        for (w, r) in want.iter_mut().zip(r) {
            w.extend(r);
        }
        got[0].extend(gather(&dq, b, s.queries, s.heads, qh, hd));
        got[1].extend(gather(&dk, b, s.keys, s.kv_heads, (kvh, 1), hd));
        got[2].extend(gather(&dv, b, s.keys, s.kv_heads, (kvh, 1), hd));
    }
    check_grad(&format!("hopper bwd dq {tag}"), &got[0], &want[0]);
    check_grad(&format!("hopper bwd dk {tag}"), &got[1], &want[1]);
    check(
        &format!("hopper bwd dv {tag}"),
        &got[2],
        &want[2],
        BF16_BOUND,
    );
}

#[test]
fn hopper_attention_backward_self_attention_matches_cpu() {
    let Some(gpu) = hopper_gpu(KERNEL) else {
        return;
    };
    let mut rng = Rng::new("hopper_attention_bwd_self");
    // Lengths 1 (one key), 17 (part of a query block), 100 (under one key block of 128), 130
    // (a second key block holding 2 keys: its second half wholly past the end), 257 (three key
    // blocks, a 1-query tail block); GQA ratios 1, 4, 8; batch 2.
    for hd in [64, 128] {
        for len in [1, 17, 100, 130, 257] {
            run_case(gpu, &mut rng, &Case::new(2, len, len, 8, 2).hd(hd));
            run_case(gpu, &mut rng, &Case::new(1, len, len, 4, 4).hd(hd));
            run_case(gpu, &mut rng, &Case::new(2, len, len, 8, 1).hd(hd));
        }
    }
}

#[test]
fn hopper_attention_backward_kv_cache_matches_cpu() {
    let Some(gpu) = hopper_gpu(KERNEL) else {
        return;
    };
    let mut rng = Rng::new("hopper_attention_bwd_cache");
    // queries < keys: query i at position keys − queries + i; key blocks before the first query
    // see every query, and (1, 300) leaves one query for three key blocks.
    for hd in [64, 128] {
        for (queries, keys) in [
            (1, 100),
            (1, 300),
            (17, 257),
            (64, 200),
            (5, 130),
            (100, 257),
        ] {
            run_case(gpu, &mut rng, &Case::new(2, queries, keys, 8, 2).hd(hd));
            run_case(gpu, &mut rng, &Case::new(1, queries, keys, 3, 3).hd(hd));
        }
    }
}

#[test]
fn hopper_attention_backward_paper_size_matches_cpu() {
    let Some(gpu) = hopper_gpu(KERNEL) else {
        return;
    };
    let mut rng = Rng::new("hopper_attention_bwd_paper");
    // Llama-2-7B's attention at training length: 2 × 2048 tokens, 32 heads of 128; the f64
    // reference runs on two (sequence, head) pairs.
    let mut mha = Case::new(2, 2048, 2048, 32, 32).hd(128);
    mha.checked = Some(vec![(0, 0), (1, 31)]);
    run_case(gpu, &mut rng, &mha);
    // Grouped-query at the same length (32 query heads over 8 KV heads), one group checked.
    let mut gqa = Case::new(1, 2048, 2048, 32, 8).hd(128);
    gqa.checked = Some(vec![(0, 5)]);
    run_case(gpu, &mut rng, &gqa);
    let mut small = Case::new(1, 2048, 2048, 16, 16).hd(64);
    small.checked = Some(vec![(0, 7)]);
    run_case(gpu, &mut rng, &small);
}

#[test]
fn hopper_attention_backward_dk_dv_are_deterministic() {
    let Some(gpu) = hopper_gpu(KERNEL) else {
        return;
    };
    let mut rng = Rng::new("hopper_attention_bwd_determinism");
    for hd in [64, 128] {
        let case = Case::new(2, 300, 300, 8, 2).hd(hd);
        let x = inputs(gpu, &mut rng, &case);
        let (_, dk0, dv0) = backward(gpu, &case, &x, false);
        let (_, dk1, dv1) = backward(gpu, &case, &x, false);
        let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<u16>>();
        assert!(
            bits(&dk0) == bits(&dk1),
            "{}: dk differs between runs",
            case.tag()
        );
        assert!(
            bits(&dv0) == bits(&dv1),
            "{}: dv differs between runs",
            case.tag()
        );
    }
}

#[test]
fn flash_attention_backward_takes_the_hopper_kernel_on_hopper() {
    let Some(gpu) = hopper_gpu(KERNEL) else {
        return;
    };
    let mut rng = Rng::new("hopper_attention_bwd_dispatch");
    let case = Case::new(1, 200, 200, 8, 2).hd(128);
    let choice = gpu
        .flash_attention_backward_choice(case.shape, case.batch)
        .unwrap();
    if attention_choice().unwrap() == AttentionChoice::Sm80 {
        // IMPLICIT_ATTENTION=sm80 forces the other kernel: the choice must say so.
        assert_eq!(choice, AttentionChoice::Sm80);
        println!("IMPLICIT_ATTENTION=sm80: the dispatch keeps kernels/flash_attention.cu");
        return;
    }
    assert_eq!(choice, AttentionChoice::Hopper, "{}", case.tag());
    // The dispatching call computes what the Hopper kernel computes, bit for bit in dk and dv
    // (the sm80 kernel sums in another order).
    let x = inputs(gpu, &mut rng, &case);
    let (_, dk_direct, dv_direct) = backward(gpu, &case, &x, false);
    let (_, dk_dispatch, dv_dispatch) = backward(gpu, &case, &x, true);
    let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<u16>>();
    assert!(
        bits(&dk_direct) == bits(&dk_dispatch),
        "dk: the dispatch ran another kernel"
    );
    assert!(
        bits(&dv_direct) == bits(&dv_dispatch),
        "dv: the dispatch ran another kernel"
    );
    // A shape the Hopper kernel does not take goes to the sm80 kernel's errors, unchanged.
    let odd = AttentionShape {
        head_dim: 96,
        ..case.shape
    };
    assert_eq!(
        gpu.flash_attention_backward_choice(odd, 1).unwrap(),
        AttentionChoice::Sm80
    );
}
