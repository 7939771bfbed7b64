//! The GPU training pass (src/train/cuda/trainer/pass.rs and the kernels it launches) emulated
//! on the CPU in f64, with bf16 rounding at exactly the points where the GPU stores bf16:
//!
//! - forward: the norms' outputs h (matrix-product inputs); the products q, k, v, gate, up,
//!   logits (f32-accumulated GEMMs with bf16 outputs); RoPE's outputs; the attention output;
//!   the SwiGLU product. OLMo's clamp acts on the stored bf16 q, k, v, and its backward takes
//!   the mask from them (`clamp_backward_bf16(&s.q, …)`).
//! - backward: the residual gradient where it meets a matrix product (`to_bf16(dx)`); the
//!   products' input gradients d_act, d_attn; SwiGLU's d_gate, d_up; cross-entropy's d_logits;
//!   attention's dq, dk, dv (its D_i = Σ dO·O reads the stored bf16 O); RoPE's backward.
//!
//! The residual stream, the norms' backward, lse and every weight gradient stay in f32 (rounded
//! to f32 here where the GPU stores them). Without rounding the same code is the f64 reference
//! (checked against `TrainModel::<f64>` on the autograd tape). Sequences run one at a time: the
//! GPU's padding is exact (causal attention, no loss on padding rows).
#![allow(dead_code)] // tests/cuda_train.rs uses only the GPU's own numerics

use half::bf16;
use implicit::backend::cpu::backward::{layer_norm_backward, rms_norm_backward, swiglu_backward};
use implicit::backend::cpu::ops::{layer_norm_no_params, rms_norm, rope, swiglu};
use implicit::model::train::TrainSequence;
use implicit::model::{Architecture, ModelConfig};
use std::cell::Cell;

#[path = "attention.rs"]
mod attention;
use attention::{attention, attention_backward};

/// Which value OLMo's clamp backward tests against ±clip_qkv.
#[derive(Clone)]
pub enum MaskFrom {
    /// The stored bf16 q, k, v, as the GPU does.
    Stored,
    /// The GEMMs' f32 outputs before their rounding to bf16.
    Unrounded,
    /// Given masks, one per (sequence, layer, q/k/v) in [`Pass::clip`]'s order.
    Given(Vec<Vec<bool>>),
}

#[derive(Clone)]
pub struct Numerics {
    /// Round at the GPU's points (false: the f64 reference).
    pub bf16: bool,
    pub mask: MaskFrom,
    /// When set (an xorshift state), each value is moved by up to ±2⁻²² relative, ~4 f32 ulps,
    /// before its rounding to bf16: f32 sums in another order, as the GPU's GEMM tiles and
    /// reductions add them.
    pub jitter: Option<Cell<u64>>,
}

impl Numerics {
    pub fn reference() -> Numerics {
        Numerics {
            bf16: false,
            mask: MaskFrom::Stored,
            jitter: None,
        }
    }

    /// The f64 reference, except that the clamp's backward passes the gradient where `masks`
    /// (a GPU pass's [`Clipped::mask`]s) say: the GPU's side of the clamp's kink.
    pub fn reference_with(masks: Vec<Vec<bool>>) -> Numerics {
        Numerics {
            mask: MaskFrom::Given(masks),
            ..Numerics::reference()
        }
    }

    pub fn gpu(mask: MaskFrom) -> Numerics {
        Numerics {
            bf16: true,
            mask,
            jitter: None,
        }
    }

    pub fn gpu_jittered(mask: MaskFrom, seed: u64) -> Numerics {
        Numerics {
            jitter: Some(Cell::new(seed | 1)),
            ..Numerics::gpu(mask)
        }
    }

    fn b16(&self, x: &mut [f64]) {
        if !self.bf16 {
            return;
        }
        for v in x {
            if let Some(state) = &self.jitter {
                let mut s = state.get();
                s ^= s >> 12;
                s ^= s << 25;
                s ^= s >> 27;
                state.set(s);
                let u = (s.wrapping_mul(0x2545F4914F6CDD1D) >> 11) as f64 / (1u64 << 53) as f64;
                *v *= 1.0 + (2.0 * u - 1.0) * 2f64.powi(-22);
            }
            *v = bf16::from_f32(*v as f32).to_f64();
        }
    }

    fn f32(&self, x: &mut [f64]) {
        if self.bf16 {
            for v in x {
                *v = *v as f32 as f64;
            }
        }
    }
}

/// One clamped projection (q, k or v of one layer for one sequence).
#[derive(Clone)]
pub struct Clipped {
    /// The GEMM's f32 output.
    pub unrounded: Vec<f64>,
    /// As stored (bf16, or unrounded in the reference).
    pub stored: Vec<f64>,
    /// Where the backward passed the gradient.
    pub mask: Vec<bool>,
}

/// A pass's loss, gradients (in `parameter_layout` order) and clamp records.
#[derive(Clone)]
pub struct Pass {
    pub loss: f64,
    pub grads: Vec<Vec<f64>>,
    /// Per sequence with loss tokens, per layer: q, k, v.
    pub clip: Vec<Clipped>,
}

/// Positions of one layer's weights in `parameter_layout` order.
struct LayerIndex {
    attn_norm: Option<usize>,
    q: usize,
    k: usize,
    v: usize,
    o: usize,
    mlp_norm: Option<usize>,
    gate: usize,
    up: usize,
    down: usize,
}

struct Index {
    embed: usize,
    layers: Vec<LayerIndex>,
    final_norm: Option<usize>,
    head: usize,
}

fn index(c: &ModelConfig) -> Index {
    let llama = c.arch == Architecture::Llama;
    let mut n = 0;
    let mut next = || {
        n += 1;
        n - 1
    };
    let embed = next();
    let layers = (0..c.num_layers)
        .map(|_| LayerIndex {
            attn_norm: llama.then(&mut next),
            q: next(),
            k: next(),
            v: next(),
            o: next(),
            mlp_norm: llama.then(&mut next),
            gate: next(),
            up: next(),
            down: next(),
        })
        .collect();
    let final_norm = llama.then(&mut next);
    let head = if c.tie_word_embeddings { embed } else { next() };
    Index {
        embed,
        layers,
        final_norm,
        head,
    }
}

/// y = x·Wᵀ for W `[out, inp]`, x `[rows, inp]`.
fn linear(x: &[f64], w: &[f64], inp: usize) -> Vec<f64> {
    let out = w.len() / inp;
    let mut y = Vec::with_capacity(x.len() / inp * out);
    for xr in x.chunks_exact(inp) {
        y.extend(w.chunks_exact(inp).map(|wr| dot(xr, wr)));
    }
    y
}

/// dx = dy·W for W `[out, inp]`, dy `[rows, out]`.
fn input_grad(dy: &[f64], w: &[f64], inp: usize) -> Vec<f64> {
    let out = w.len() / inp;
    let mut dx = vec![0.0; dy.len() / out * inp];
    for (dyr, dxr) in dy.chunks_exact(out).zip(dx.chunks_exact_mut(inp)) {
        for (&g, wr) in dyr.iter().zip(w.chunks_exact(inp)) {
            for (d, &wv) in dxr.iter_mut().zip(wr) {
                *d += g * wv;
            }
        }
    }
    dx
}

/// dW += dyᵀ·x.
fn weight_grad(dy: &[f64], x: &[f64], inp: usize, dw: &mut [f64]) {
    let out = dw.len() / inp;
    for (dyr, xr) in dy.chunks_exact(out).zip(x.chunks_exact(inp)) {
        for (&g, dwr) in dyr.iter().zip(dw.chunks_exact_mut(inp)) {
            for (d, &xv) in dwr.iter_mut().zip(xr) {
                *d += g * xv;
            }
        }
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn add(x: &mut [f64], y: &[f64]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// One sequence's layer activations kept for the backward.
struct Saved {
    x: Vec<f64>,
    q: Clipped,
    k: Clipped,
    v: Clipped,
    /// q, k after clamp and RoPE, v after clamp: the attention's inputs.
    qr: Vec<f64>,
    kr: Vec<f64>,
    vc: Vec<f64>,
    attn: Vec<f64>,
    lse: Vec<f64>,
    x_mid: Vec<f64>,
    gate: Vec<f64>,
    up: Vec<f64>,
}

/// The loss and gradients of `batch` under `num` (the GPU's loss weights: scale / (loss tokens
/// of the sequence), in f32).
pub fn run(
    c: &ModelConfig,
    values: &[Vec<f64>],
    batch: &[TrainSequence],
    scale: f64,
    num: &Numerics,
) -> Pass {
    let ix = index(c);
    let mut grads: Vec<Vec<f64>> = values.iter().map(|v| vec![0.0; v.len()]).collect();
    let mut pass = Pass {
        loss: 0.0,
        grads: Vec::new(),
        clip: Vec::new(),
    };
    for seq in batch {
        let counted = seq.loss_mask.iter().skip(1).filter(|&&m| m).count();
        if counted == 0 {
            continue;
        }
        let mut weight = [scale / counted as f64];
        num.f32(&mut weight);
        let first_record = pass.clip.len();
        pass.loss += sequence(
            c,
            &ix,
            values,
            seq,
            weight[0],
            num,
            &mut grads,
            &mut pass.clip,
        );
        debug_assert_eq!(pass.clip.len(), first_record + 3 * c.num_layers);
    }
    for g in &mut grads {
        num.f32(g);
    }
    pass.grads = grads;
    pass
}

/// norm(x) of every row: RMSNorm with weight `w`, or parameter-free LayerNorm.
fn norm(c: &ModelConfig, values: &[Vec<f64>], w: Option<usize>, x: &[f64]) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    let eps = c.norm_eps as f64;
    match w {
        Some(i) => {
            for (xr, yr) in x
                .chunks_exact(c.hidden_size)
                .zip(y.chunks_exact_mut(c.hidden_size))
            {
                rms_norm(xr, &values[i], eps, yr);
            }
        }
        None => layer_norm_no_params(x, c.hidden_size, eps, &mut y),
    }
    y
}

/// The norm's input gradient; RMSNorm's weight gradient added into `grads`.
fn norm_backward(
    c: &ModelConfig,
    values: &[Vec<f64>],
    w: Option<usize>,
    x: &[f64],
    dy: &[f64],
    grads: &mut [Vec<f64>],
) -> Vec<f64> {
    let mut dx = vec![0.0; x.len()];
    let eps = c.norm_eps as f64;
    match w {
        Some(i) => rms_norm_backward(x, &values[i], eps, dy, &mut dx, &mut grads[i]),
        None => layer_norm_backward(x, c.hidden_size, eps, dy, &mut dx),
    }
    dx
}

/// A q/k/v projection: the GEMM's f32 output and its bf16 store.
fn project(num: &Numerics, h: &[f64], w: &[f64], d: usize) -> Clipped {
    let mut unrounded = linear(h, w, d);
    num.f32(&mut unrounded);
    let mut stored = unrounded.clone();
    num.b16(&mut stored);
    Clipped {
        unrounded,
        stored,
        mask: Vec::new(),
    }
}

#[allow(clippy::too_many_arguments)]
fn sequence(
    c: &ModelConfig,
    ix: &Index,
    values: &[Vec<f64>],
    seq: &TrainSequence,
    weight: f64,
    num: &Numerics,
    grads: &mut [Vec<f64>],
    records: &mut Vec<Clipped>,
) -> f64 {
    let (d, n) = (c.hidden_size, seq.ids.len());
    let positions: Vec<usize> = (0..n).collect();
    let mut x: Vec<f64> = seq
        .ids
        .iter()
        .flat_map(|&t| values[ix.embed][t as usize * d..][..d].to_vec())
        .collect();
    // model_clamp_bf16 and clamp_backward_bf16 compare with the f32 limit; the clamp writes
    // bf16(limit).
    let clip = c.clip_qkv.map(|l| l as f64);
    let clamped_to = clip.map(|l| {
        let mut l = [l];
        num.b16(&mut l);
        l[0]
    });

    let mut saved = Vec::new();
    for lp in &ix.layers {
        let mut h = norm(c, values, lp.attn_norm, &x);
        num.b16(&mut h);
        let (q, k, v) = (
            project(num, &h, &values[lp.q], d),
            project(num, &h, &values[lp.k], d),
            project(num, &h, &values[lp.v], d),
        );
        let (mut qr, mut kr, mut vc) = (q.stored.clone(), k.stored.clone(), v.stored.clone());
        if let (Some(l), Some(to)) = (clip, clamped_to) {
            for x in qr.iter_mut().chain(kr.iter_mut()).chain(vc.iter_mut()) {
                if *x > l {
                    *x = to;
                } else if *x < -l {
                    *x = -to;
                }
            }
        }
        rope(&mut qr, &positions, c.rope_spec(c.num_heads), false);
        rope(&mut kr, &positions, c.rope_spec(c.num_kv_heads), false);
        num.b16(&mut qr);
        num.b16(&mut kr);
        let (mut attn, mut lse) = attention(c, n, &qr, &kr, &vc);
        num.b16(&mut attn);
        num.f32(&mut lse);
        let mut x_mid = x.clone();
        add(
            &mut x_mid,
            &linear(&attn, &values[lp.o], c.num_heads * c.head_dim),
        );
        num.f32(&mut x_mid);
        let mut h = norm(c, values, lp.mlp_norm, &x_mid);
        num.b16(&mut h);
        let (mut gate, mut up) = (
            linear(&h, &values[lp.gate], d),
            linear(&h, &values[lp.up], d),
        );
        num.b16(&mut gate);
        num.b16(&mut up);
        let mut act = vec![0.0; gate.len()];
        swiglu(&gate, &up, &mut act);
        num.b16(&mut act);
        let mut out = x_mid.clone();
        add(
            &mut out,
            &linear(&act, &values[lp.down], c.intermediate_size),
        );
        num.f32(&mut out);
        let next = out;
        saved.push(Saved {
            x: std::mem::replace(&mut x, next),
            q,
            k,
            v,
            qr,
            kr,
            vc,
            attn,
            lse,
            x_mid,
            gate,
            up,
        });
    }

    // The loss rows through the final norm, the head and cross-entropy.
    let mut dx = vec![0.0; x.len()];
    let mut loss = 0.0;
    let vocab = c.vocab_size;
    let rows: Vec<(usize, usize)> = (1..n)
        .filter(|&t| seq.loss_mask[t])
        .map(|t| (t - 1, seq.ids[t] as usize))
        .collect();
    let xf: Vec<f64> = rows
        .iter()
        .flat_map(|&(r, _)| x[r * d..][..d].to_vec())
        .collect();
    let mut hf = norm(c, values, ix.final_norm, &xf);
    num.b16(&mut hf);
    let mut logits = linear(&hf, &values[ix.head], d);
    num.b16(&mut logits);
    let mut d_logits = vec![0.0; logits.len()];
    for ((z, dz), &(_, target)) in logits
        .chunks_exact(vocab)
        .zip(d_logits.chunks_exact_mut(vocab))
        .zip(&rows)
    {
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let mut lse = [m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln()];
        num.f32(&mut lse);
        loss += weight * (lse[0] - z[target]);
        for (i, (g, &zi)) in dz.iter_mut().zip(z).enumerate() {
            *g = weight * ((zi - lse[0]).exp() - if i == target { 1.0 } else { 0.0 });
        }
    }
    num.b16(&mut d_logits);
    weight_grad(&d_logits, &hf, d, &mut grads[ix.head]);
    let mut dhf = input_grad(&d_logits, &values[ix.head], d);
    num.f32(&mut dhf);
    let mut dxf = norm_backward(c, values, ix.final_norm, &xf, &dhf, grads);
    num.f32(&mut dxf);
    for (&(r, _), g) in rows.iter().zip(dxf.chunks_exact(d)) {
        add(&mut dx[r * d..][..d], g);
    }

    // Backward, last layer first; this sequence's records (and given masks) start at `base`.
    let base = records.len();
    let given = match &num.mask {
        MaskFrom::Given(m) => Some(&m[base..base + 3 * ix.layers.len()]),
        _ => None,
    };
    let mut layer_records = Vec::with_capacity(ix.layers.len());
    for (layer, (lp, s)) in ix.layers.iter().zip(saved).enumerate().rev() {
        let given = given.map(|m| &m[3 * layer..3 * layer + 3]);
        let (next, record) = layer_backward(c, lp, values, s, dx, clip, num, given, grads);
        dx = next;
        layer_records.push(record);
    }
    // Records in forward order (sequence, layer, q/k/v).
    for r in layer_records.into_iter().rev() {
        records.extend(r);
    }
    for (&t, g) in seq.ids.iter().zip(dx.chunks_exact(d)) {
        add(&mut grads[ix.embed][t as usize * d..][..d], g);
    }
    loss
}

/// One layer's backward: the input gradient and the layer's q, k, v clamp records (`given`:
/// this layer's masks under [`MaskFrom::Given`]).
#[allow(clippy::too_many_arguments)]
fn layer_backward(
    c: &ModelConfig,
    lp: &LayerIndex,
    values: &[Vec<f64>],
    s: Saved,
    mut dx: Vec<f64>,
    clip: Option<f64>,
    num: &Numerics,
    given: Option<&[Vec<bool>]>,
    grads: &mut [Vec<f64>],
) -> (Vec<f64>, [Clipped; 3]) {
    let (d, f, n) = (
        c.hidden_size,
        c.intermediate_size,
        s.x.len() / c.hidden_size,
    );
    let qd = c.num_heads * c.head_dim;

    // MLP.
    let mut dy = dx.clone();
    num.b16(&mut dy);
    let mut act = vec![0.0; s.gate.len()];
    swiglu(&s.gate, &s.up, &mut act);
    num.b16(&mut act);
    weight_grad(&dy, &act, f, &mut grads[lp.down]);
    let mut d_act = input_grad(&dy, &values[lp.down], f);
    num.b16(&mut d_act);
    let (mut d_gate, mut d_up) = (vec![0.0; d_act.len()], vec![0.0; d_act.len()]);
    swiglu_backward(&s.gate, &s.up, &d_act, &mut d_gate, &mut d_up);
    num.b16(&mut d_gate);
    num.b16(&mut d_up);
    let mut h = norm(c, values, lp.mlp_norm, &s.x_mid);
    num.b16(&mut h);
    weight_grad(&d_gate, &h, d, &mut grads[lp.gate]);
    weight_grad(&d_up, &h, d, &mut grads[lp.up]);
    let mut dh = input_grad(&d_gate, &values[lp.gate], d);
    add(&mut dh, &input_grad(&d_up, &values[lp.up], d));
    num.f32(&mut dh);
    let dx_norm = norm_backward(c, values, lp.mlp_norm, &s.x_mid, &dh, grads);
    add(&mut dx, &dx_norm);
    num.f32(&mut dx);

    // Attention.
    let mut dy = dx.clone();
    num.b16(&mut dy);
    weight_grad(&dy, &s.attn, qd, &mut grads[lp.o]);
    let mut d_attn = input_grad(&dy, &values[lp.o], qd);
    num.b16(&mut d_attn);
    let (mut dq, mut dk, mut dv) =
        attention_backward(c, n, &s.qr, &s.kr, &s.vc, &s.attn, &d_attn, &s.lse);
    for t in [&mut dq, &mut dk, &mut dv] {
        num.b16(t);
    }
    rope(
        &mut dq,
        &(0..n).collect::<Vec<_>>(),
        c.rope_spec(c.num_heads),
        true,
    );
    rope(
        &mut dk,
        &(0..n).collect::<Vec<_>>(),
        c.rope_spec(c.num_kv_heads),
        true,
    );
    num.b16(&mut dq);
    num.b16(&mut dk);
    let mut clipped = [s.q, s.k, s.v];
    for (t, (g, rec)) in [&mut dq, &mut dk, &mut dv]
        .into_iter()
        .zip(&mut clipped)
        .enumerate()
    {
        rec.mask = match (clip, &num.mask) {
            (None, _) => vec![true; g.len()],
            (Some(l), MaskFrom::Stored) => rec.stored.iter().map(|x| x.abs() <= l).collect(),
            (Some(l), MaskFrom::Unrounded) => rec.unrounded.iter().map(|x| x.abs() <= l).collect(),
            (Some(_), MaskFrom::Given(_)) => given.expect("given masks")[t].clone(),
        };
        for (gv, &keep) in g.iter_mut().zip(&rec.mask) {
            if !keep {
                *gv = 0.0;
            }
        }
    }
    let mut h = norm(c, values, lp.attn_norm, &s.x);
    num.b16(&mut h);
    weight_grad(&dq, &h, d, &mut grads[lp.q]);
    weight_grad(&dk, &h, d, &mut grads[lp.k]);
    weight_grad(&dv, &h, d, &mut grads[lp.v]);
    let mut dh = input_grad(&dq, &values[lp.q], d);
    add(&mut dh, &input_grad(&dk, &values[lp.k], d));
    add(&mut dh, &input_grad(&dv, &values[lp.v], d));
    num.f32(&mut dh);
    let dx_norm = norm_backward(c, values, lp.attn_norm, &s.x, &dh, grads);
    add(&mut dx, &dx_norm);
    num.f32(&mut dx);
    (dx, clipped)
}
