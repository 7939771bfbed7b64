//! The Hopper flash attention forward (kernels/attention_hopper_fwd.cu), called directly through
//! `flash_attention_forward_hopper`, against the CPU reference in f64 (`causal_attention`, and
//! the log-sum-exp computed here) on bf16-rounded random inputs, out and lse poisoned with NaN
//! first. Shapes: every tile edge of its 128-query × 128-key tiles (lengths 1, 17, 127, 128,
//! 129, 300), queries < keys with the first query's position off the tile grid (so that a
//! consumer warpgroup meets key blocks it sees nothing of), GQA groups of 1, 4 and 8, head_dim
//! 64 and 128, batch 2, and Llama-2-7B's s2048 × 32 heads of 128 (a few heads checked).
//!
//! Bounds: the sm80 kernel's (tests/cuda_kernels/attention.rs), since the arithmetic is the
//! same: P rounded to bf16 before P·V, f32 accumulation, out rounded to bf16, so ‖out − ref‖ /
//! ‖ref‖ ≤ 8e-3; lse (f32 sums of ex2.approx terms, rel. error ~2⁻²² each) elementwise
//! |lse − ref| ≤ 1e-4·max(1, |ref|).
//!
//! `hopper_forward_is_what_the_dispatch_runs` checks that `flash_attention_forward` takes this
//! kernel on compute capability 9.0 (bit-identical out and lse) and that the sm80 kernel's bits
//! differ there (so the comparison can tell them apart). Every test skips without a GPU or on a
//! device other than compute capability 9.0, and fails on a 9.0 device where the sm_90a kernels
//! cannot run.

use super::attention::gather;
use super::attention::lse_reference;
use crate::common::gpu::{check, f64s, hopper_gpu, poisoned, Dtype, Rng, BF16_BOUND};
use half::bf16;
use implicit::backend::cpu::attention::{causal_attention, AttentionShape};
use implicit::backend::cuda::{attention_choice, AttentionChoice, CudaBackend, DeviceBuffer};

/// What a test here names when it skips off compute capability 9.0 (`hopper_gpu`).
const KERNEL: &str = "the Hopper attention";

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

/// Random inputs of one call: the bf16 buffers and the same values (f32) for the reference.
struct Inputs {
    q: (DeviceBuffer<bf16>, Vec<f32>),
    k: (DeviceBuffer<bf16>, Vec<f32>),
    v: (DeviceBuffer<bf16>, Vec<f32>),
}

/// `n` random values of standard deviation ~`scale`, rounded to bf16: on the device and as f32
/// (also tests/cuda_kernels/attention_hopper_bwd.rs's).
pub(crate) fn draw(
    gpu: &CudaBackend,
    rng: &mut Rng,
    n: usize,
    scale: f32,
) -> (DeviceBuffer<bf16>, Vec<f32>) {
    let (stored, values) = bf16::quantize(&rng.vec(n, scale));
    (gpu.upload(&stored).unwrap(), values)
}

/// Scores q·k/√d with standard deviation ~1.3 (the sm80 test's inputs): a peaked softmax.
fn inputs(gpu: &CudaBackend, rng: &mut Rng, s: AttentionShape, batch: usize) -> Inputs {
    let q_len = batch * s.queries * s.heads * s.head_dim;
    let kv_len = batch * s.keys * s.kv_heads * s.head_dim;
    Inputs {
        q: draw(gpu, rng, q_len, 2.0),
        k: draw(gpu, rng, kv_len, 2.0),
        v: draw(gpu, rng, kv_len, 1.0),
    }
}

/// out and lse of the direct Hopper call, poisoned first.
fn hopper_forward(
    gpu: &CudaBackend,
    s: AttentionShape,
    batch: usize,
    x: &Inputs,
) -> (Vec<bf16>, Vec<f32>) {
    let mut out = poisoned::<bf16>(gpu, x.q.1.len());
    let mut lse = gpu
        .upload(&vec![f32::NAN; batch * s.heads * s.queries])
        .unwrap();
    gpu.flash_attention_forward_hopper(s, batch, &x.q.0, &x.k.0, &x.v.0, &mut out, &mut lse)
        .unwrap();
    (gpu.download(&out).unwrap(), gpu.download(&lse).unwrap())
}

/// One call against the CPU on the (sequence, KV head) pairs `checked` (all when None): each
/// pair covers its whole group of query heads. Every out and lse element must be finite.
fn run_case(
    gpu: &CudaBackend,
    rng: &mut Rng,
    s: AttentionShape,
    batch: usize,
    checked: Option<&[(usize, usize)]>,
) {
    let tag = tag(s, batch);
    let hd = s.head_dim;
    let group = s.heads / s.kv_heads;
    let x = inputs(gpu, rng, s, batch);
    let (out, lse) = hopper_forward(gpu, s, batch, &x);
    let bad = out.iter().filter(|o| !o.to_f32().is_finite()).count();
    assert!(
        bad == 0,
        "hopper fwd {tag}: {bad} elements of out not finite"
    );
    let bad = lse.iter().filter(|l| !l.is_finite()).count();
    assert!(
        bad == 0,
        "hopper fwd {tag}: {bad} elements of lse not finite"
    );

    let all: Vec<(usize, usize)> = (0..batch)
        .flat_map(|b| (0..s.kv_heads).map(move |h| (b, h)))
        .collect();
    let sub = AttentionShape {
        heads: group,
        kv_heads: 1,
        ..s
    };
    let (mut want, mut got) = (Vec::new(), Vec::new());
    let mut worst_lse = 0.0f64;
    for &(b, kvh) in checked.unwrap_or(&all) {
        let heads = (kvh * group, group);
        let sq = f64s(&gather(&x.q.1, b, s.queries, s.heads, heads, hd));
        let sk = f64s(&gather(&x.k.1, b, s.keys, s.kv_heads, (kvh, 1), hd));
        let sv = f64s(&gather(&x.v.1, b, s.keys, s.kv_heads, (kvh, 1), hd));
        let mut o = vec![f64::NAN; sq.len()];
        causal_attention(&sq, &sk, &sv, sub, &mut o);
        want.extend(o);
        got.extend(gather(&out, b, s.queries, s.heads, heads, hd));
        let want_lse = lse_reference(&sq, &sk, sub);
        for g in 0..group {
            for i in 0..s.queries {
                let have = lse[(b * s.heads + heads.0 + g) * s.queries + i] as f64;
                let want = want_lse[g * s.queries + i];
                worst_lse = worst_lse.max((have - want).abs() / want.abs().max(1.0));
            }
        }
    }
    check(&format!("hopper fwd out {tag}"), &got, &want, BF16_BOUND);
    eprintln!("hopper fwd lse {tag}: max err {worst_lse:.2e} (bound {LSE_BOUND:.0e})");
    assert!(
        worst_lse <= LSE_BOUND,
        "hopper fwd lse {tag}: err {worst_lse:.3e} > {LSE_BOUND:.0e}"
    );
}

#[test]
fn hopper_forward_self_attention_matches_cpu() {
    let Some(gpu) = hopper_gpu(KERNEL) else {
        return;
    };
    let mut rng = Rng::new("hopper_forward_self");
    // One key; part of a tile; a tile less one, exactly one, one more; past two (a third,
    // partial key block, masked on the diagonal). GQA 8/2 with batch 2, MHA 4/4, GQA 8/1.
    for hd in [64, 128] {
        for len in [1, 17, 127, 128, 129, 300] {
            run_case(gpu, &mut rng, shape(len, len, 8, 2, hd), 2, None);
            run_case(gpu, &mut rng, shape(len, len, 4, 4, hd), 1, None);
            run_case(gpu, &mut rng, shape(len, len, 8, 1, hd), 1, None);
        }
    }
}

#[test]
fn hopper_forward_kv_cache_matches_cpu() {
    let Some(gpu) = hopper_gpu(KERNEL) else {
        return;
    };
    let mut rng = Rng::new("hopper_forward_cache");
    // queries < keys: query i at position keys − queries + i. (1, 100): one query over a
    // partial block; (17, 257), (100, 257): the first position off the 128-key grid; (5, 130);
    // (130, 389): two query tiles, the second mostly rows past the end; (64, 200): the second
    // consumer warpgroup has no real rows; (200, 1000): positions 800.., 6 full blocks
    // unmasked before the diagonal ones, where the first warpgroup's rows see nothing of the
    // last block.
    for hd in [64, 128] {
        for (queries, keys) in [
            (1, 1),
            (1, 100),
            (17, 257),
            (100, 257),
            (64, 200),
            (5, 130),
            (130, 389),
            (200, 1000),
        ] {
            run_case(gpu, &mut rng, shape(queries, keys, 8, 2, hd), 2, None);
            run_case(gpu, &mut rng, shape(queries, keys, 3, 3, hd), 1, None);
        }
    }
}

#[test]
fn hopper_forward_paper_size_matches_cpu() {
    let Some(gpu) = hopper_gpu(KERNEL) else {
        return;
    };
    let mut rng = Rng::new("hopper_forward_paper");
    // Llama-2-7B's attention at training length: 2 × 2048 tokens, 32 heads of 128, two
    // (sequence, head) pairs checked against the f64 reference (all written and finite).
    run_case(
        gpu,
        &mut rng,
        shape(2048, 2048, 32, 32, 128),
        2,
        Some(&[(0, 0), (1, 31)]),
    );
    // Grouped-query at the same length (32 query heads over 8 KV heads), one group checked.
    run_case(
        gpu,
        &mut rng,
        shape(2048, 2048, 32, 8, 128),
        1,
        Some(&[(0, 5)]),
    );
    // head_dim 64 at length 2048, one head checked.
    run_case(
        gpu,
        &mut rng,
        shape(2048, 2048, 16, 16, 64),
        1,
        Some(&[(0, 7)]),
    );
}

#[test]
fn hopper_forward_is_what_the_dispatch_runs() {
    let Some(gpu) = hopper_gpu(KERNEL) else {
        return;
    };
    if attention_choice().unwrap() != AttentionChoice::Hopper {
        println!("SKIPPED (IMPLICIT_ATTENTION forces the sm80 kernel in this process)");
        return;
    }
    let mut rng = Rng::new("hopper_forward_dispatch");
    for (s, batch) in [
        (shape(1000, 1000, 8, 2, 128), 2),
        (shape(300, 700, 4, 4, 64), 1),
    ] {
        let tag = tag(s, batch);
        let x = inputs(gpu, &mut rng, s, batch);
        let direct = hopper_forward(gpu, s, batch, &x);
        let again = hopper_forward(gpu, s, batch, &x);
        assert!(
            direct == again,
            "{tag}: the Hopper forward differs between runs"
        );
        let run = |sm80: bool| {
            let mut out = poisoned::<bf16>(gpu, x.q.1.len());
            let mut lse = gpu
                .upload(&vec![f32::NAN; batch * s.heads * s.queries])
                .unwrap();
            let (q, k, v) = (&x.q.0, &x.k.0, &x.v.0);
            if sm80 {
                gpu.flash_attention_forward_sm80(s, batch, q, k, v, &mut out, &mut lse)
            } else {
                gpu.flash_attention_forward(s, batch, q, k, v, &mut out, &mut lse)
            }
            .unwrap();
            (gpu.download(&out).unwrap(), gpu.download(&lse).unwrap())
        };
        let bits = |(o, l): &(Vec<bf16>, Vec<f32>)| {
            let o: Vec<u16> = o.iter().map(|x| x.to_bits()).collect();
            let l: Vec<u32> = l.iter().map(|x| x.to_bits()).collect();
            (o, l)
        };
        assert!(
            bits(&run(false)) == bits(&direct),
            "{tag}: flash_attention_forward did not run the Hopper kernel on {}",
            gpu.device_name()
        );
        assert!(
            bits(&run(true)) != bits(&direct),
            "{tag}: the sm80 kernel's bits equal the Hopper kernel's, so the check above \
             cannot tell which ran"
        );
    }
}

#[test]
fn hopper_forward_rejects_bad_calls() {
    let Some(gpu) = hopper_gpu(KERNEL) else {
        return;
    };
    let s = shape(4, 4, 2, 1, 64);
    let q = gpu.zeros::<bf16>(4 * 2 * 64).unwrap();
    let k = gpu.zeros::<bf16>(4 * 64).unwrap();
    let v = gpu.zeros::<bf16>(4 * 64).unwrap();
    let mut out = gpu.zeros::<bf16>(4 * 2 * 64).unwrap();
    let mut lse = gpu.zeros::<f32>(8).unwrap();
    let mut call = |s: AttentionShape, k: &DeviceBuffer<bf16>| {
        gpu.flash_attention_forward_hopper(s, 1, &q, k, &v, &mut out, &mut lse)
            .unwrap_err()
            .to_string()
    };
    let e = call(shape(4, 4, 2, 1, 96), &k);
    assert!(e.contains("head_dim 96"), "{e}");
    let e = call(shape(5, 4, 2, 1, 64), &k);
    assert!(e.contains("more queries than keys"), "{e}");
    let e = call(shape(4, 4, 2, 3, 64), &k);
    assert!(e.contains("multiple of kv_heads"), "{e}");
    let short = gpu.zeros::<bf16>(4 * 64 - 1).unwrap();
    let e = call(s, &short);
    assert!(e.contains("k has 255 elements"), "{e}");
}
