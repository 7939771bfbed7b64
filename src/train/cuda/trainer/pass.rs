//! One micro-batch's forward and backward on the GPU: `TrainModel::loss` and its tape's
//! backward, written out by hand.
//!
//! The sequences are padded at their ends to the longest one and run as a batch of equal
//! lengths (the flash kernels' layout). Padding is exact: attention is causal, so a padding
//! row never reaches a real one, and no loss is read from it, so every gradient that reaches
//! a padding row is exactly zero and adds nothing to the weights.
//!
//! Forward, per layer (saved for the backward: the layer's input x, the projections q, k, v
//! before OLMo's clamp and RoPE, the attention output and its log-sum-exp, the residual after
//! attention, gate and up):
//!   h = norm(x); q, k, v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ; q, k, v = clamp(·); q, k = RoPE(q), RoPE(k);
//!   a = attention(q, k, v); x' = x + a·Woᵀ; h' = norm(x'); x'' = x' + (silu(h'·Wgᵀ) ⊙ h'·Wuᵀ)·Wdᵀ.
//! The norms' outputs, the rotated q and k and the SwiGLU product are recomputed in the
//! backward (cheap, element-wise) instead of kept.
//!
//! Loss: only the rows that predict a loss-carrying token go through the final norm and the
//! LM head, in chunks of [`CudaTrainer::logits_chunk_rows`] rows: bf16 logits, the fused
//! cross-entropy forward and backward, then the head's and the norm's backward, whose input
//! gradient is scattered back into the residual stream's. No full-vocabulary tensor of the
//! whole batch is ever held.
//!
//! Backward of a linear map y = x·Wᵀ (W `[out, in]`): dW += dyᵀ·x (the TN product, f32
//! accumulated across micro-batches) and dx = dy·W (NN). The residual gradient stays in f32
//! and is rounded to bf16 where it meets a matrix product.

use super::{CudaTrainer, LayerParams};
use crate::backend::cpu::attention::AttentionShape;
use crate::backend::cpu::ops::RopeSpec;
use crate::backend::cuda::{
    CudaBackend, DeviceBuffer, Float, GemmLayout, NormGradOut, RowList, RowNorm, RMS_BWD_REGS_MAX_D,
};
use crate::bail;
use crate::error::Result;
use crate::model::train::TrainSequence;
use crate::model::ModelConfig;
use half::bf16;

/// A micro-batch laid out for the GPU.
struct Packed {
    /// `[batch, len]` token ids, padded with 0.
    ids: Vec<u32>,
    /// The position of each row within its sequence.
    positions: Vec<u32>,
    batch: usize,
    len: usize,
    /// Rows that predict a loss-carrying token, the token, and its weight in the loss.
    loss_rows: Vec<u32>,
    targets: Vec<u32>,
    weights: Vec<f32>,
}

/// The checks and loss weights of `TrainModel::loss`: each sequence's loss tokens weigh
/// scale / (its number of loss tokens).
fn pack(batch: &[TrainSequence], vocab: usize, scale: f64) -> Result<Packed> {
    let len = batch.iter().map(|s| s.ids.len()).max().unwrap_or(0);
    // Rows are indexed as u32 on the GPU.
    if u32::try_from(batch.len().saturating_mul(len)).is_err() {
        bail!(
            "a micro-batch of {} sequences padded to {len} tokens has too many rows",
            batch.len()
        );
    }
    let mut p = Packed {
        ids: vec![0; batch.len() * len],
        positions: Vec::with_capacity(batch.len() * len),
        batch: batch.len(),
        len,
        loss_rows: Vec::new(),
        targets: Vec::new(),
        weights: Vec::new(),
    };
    for (b, seq) in batch.iter().enumerate() {
        if seq.ids.len() != seq.loss_mask.len() {
            bail!(
                "sequence of {} tokens has a loss mask of {}",
                seq.ids.len(),
                seq.loss_mask.len()
            );
        }
        if let Some(&bad) = seq.ids.iter().find(|&&t| t as usize >= vocab) {
            bail!("token id {bad} is outside the vocabulary of {vocab} tokens");
        }
        let start = b * len;
        p.ids[start..start + seq.ids.len()].copy_from_slice(seq.ids);
        p.positions.extend(0..len as u32);
        let counted = seq.loss_mask.iter().skip(1).filter(|&&m| m).count();
        for t in 1..seq.ids.len() {
            if seq.loss_mask[t] {
                p.loss_rows.push((start + t - 1) as u32);
                p.targets.push(seq.ids[t]);
                p.weights.push((scale / counted as f64) as f32);
            }
        }
    }
    Ok(p)
}

/// What the forward keeps of one layer for the backward.
struct Saved {
    x: DeviceBuffer<f32>,
    q: DeviceBuffer<bf16>,
    k: DeviceBuffer<bf16>,
    v: DeviceBuffer<bf16>,
    attn: DeviceBuffer<bf16>,
    lse: DeviceBuffer<f32>,
    x_mid: DeviceBuffer<f32>,
    gate: DeviceBuffer<bf16>,
    up: DeviceBuffer<bf16>,
}

/// q and k after the clamp and RoPE, v after the clamp (None when there is no clamp).
struct AttentionInputs {
    q: DeviceBuffer<bf16>,
    k: DeviceBuffer<bf16>,
    v: Option<DeviceBuffer<bf16>>,
}

/// The shapes and per-batch buffers every op of the pass needs.
struct Pass<'a> {
    gpu: &'a CudaBackend,
    c: &'a ModelConfig,
    norm_values: &'a [Option<DeviceBuffer<f32>>],
    /// Rows of the padded batch (batch · len).
    rows: usize,
    batch: usize,
    len: usize,
    positions: DeviceBuffer<u32>,
    all_rows: RowList,
}

impl Pass<'_> {
    fn eps(&self) -> f64 {
        self.c.norm_eps as f64
    }

    fn norm(&self, weight: Option<usize>) -> RowNorm<'_> {
        match weight.and_then(|i| self.norm_values[i].as_ref()) {
            Some(w) => RowNorm::Rms(w),
            None => RowNorm::LayerNorm,
        }
    }

    /// norm(x) of every row, as bf16 matrix-product input.
    fn normed(&self, x: &DeviceBuffer<f32>, weight: Option<usize>) -> Result<DeviceBuffer<bf16>> {
        let d = self.c.hidden_size;
        let mut h = self.gpu.alloc::<bf16>(self.rows * d)?;
        let all = self.all_rows.device();
        self.gpu
            .norm_rows(x, d, all, self.norm(weight), self.eps(), &mut h)?;
        Ok(h)
    }

    /// dx = the norm's backward at x for dy; dw added to the weight's gradient (RMSNorm).
    fn norm_backward(
        &self,
        x: &DeviceBuffer<f32>,
        weight: Option<usize>,
        dy: &DeviceBuffer<f32>,
        grads: &mut [DeviceBuffer<f32>],
    ) -> Result<DeviceBuffer<f32>> {
        let d = self.c.hidden_size;
        let mut dx = self.gpu.alloc::<f32>(x.len())?;
        match weight {
            Some(i) => {
                let w = self.norm_values[i]
                    .as_ref()
                    .expect("norm weights have an f32 copy");
                self.gpu
                    .rms_norm_backward(x, w, self.eps(), dy, &mut dx, &mut grads[i], true)?
            }
            None => self
                .gpu
                .layer_norm_backward(x, d, self.eps(), dy, &mut dx)?,
        }
        Ok(dx)
    }

    /// The norm's backward at x for dy, added straight into the residual stream's gradient
    /// `dx` and, when `dx_bf16` is given, the new `dx` also rounded to bf16 there (the next
    /// product's input): one pass where an add and a cast ran after the backward before.
    /// dw is added to the weight's gradient (RMSNorm).
    fn norm_backward_into(
        &self,
        x: &DeviceBuffer<f32>,
        weight: Option<usize>,
        dy: &DeviceBuffer<f32>,
        dx: &mut DeviceBuffer<f32>,
        dx_bf16: Option<&mut DeviceBuffer<bf16>>,
        grads: &mut [DeviceBuffer<f32>],
    ) -> Result<()> {
        let d = self.c.hidden_size;
        let out = NormGradOut {
            dx,
            accumulate: true,
            dx_bf16,
        };
        match weight {
            Some(i) if d <= RMS_BWD_REGS_MAX_D => {
                let w = self.norm_values[i]
                    .as_ref()
                    .expect("norm weights have an f32 copy");
                self.gpu
                    .rms_norm_backward_to(x, w, self.eps(), dy, out, &mut grads[i], true)
            }
            Some(_) => {
                // Rows too wide for the fused kernel: the backward, then the add and the cast.
                let dx_norm = self.norm_backward(x, weight, dy, grads)?;
                self.gpu.add_in_place(out.dx, &dx_norm)?;
                match out.dx_bf16 {
                    Some(copy) => self.gpu.convert_to_bf16(out.dx, copy),
                    None => Ok(()),
                }
            }
            None => self.gpu.layer_norm_backward_to(x, d, self.eps(), dy, out),
        }
    }

    fn rope(&self, heads: usize) -> RopeSpec {
        self.c.rope_spec(heads)
    }

    /// The attention's inputs from the saved projections: q and k clamped (OLMo) and rotated,
    /// v clamped (None: v itself).
    fn attention_inputs(&self, s: &Saved) -> Result<AttentionInputs> {
        let gpu = self.gpu;
        let (mut q, mut k) = (gpu.copy(&s.q)?, gpu.copy(&s.k)?);
        let mut v = None;
        if let Some(clip) = self.c.clip_qkv {
            let mut vc = gpu.copy(&s.v)?;
            for t in [&mut q, &mut k, &mut vc] {
                gpu.clamp_bf16(t, clip)?;
            }
            v = Some(vc);
        }
        gpu.rope(&mut q, &self.positions, self.rope(self.c.num_heads), false)?;
        gpu.rope(
            &mut k,
            &self.positions,
            self.rope(self.c.num_kv_heads),
            false,
        )?;
        Ok(AttentionInputs { q, k, v })
    }

    fn attention_shape(&self) -> AttentionShape {
        AttentionShape {
            queries: self.len,
            keys: self.len,
            heads: self.c.num_heads,
            kv_heads: self.c.num_kv_heads,
            head_dim: self.c.head_dim,
        }
    }

    /// Flash attention for head_dim 64 and 128, the plain kernels for any other.
    fn flash(&self) -> bool {
        matches!(self.c.head_dim, 64 | 128)
    }
}

/// y (+)= x·Wᵀ for W `[out, inp]`, x `[rows, inp]`.
fn linear<O: Float>(
    gpu: &CudaBackend,
    x: &DeviceBuffer<bf16>,
    w: &DeviceBuffer<bf16>,
    rows: usize,
    y: &mut DeviceBuffer<O>,
    accumulate: bool,
) -> Result<()> {
    let inp = x.len() / rows.max(1);
    let out = w.len() / inp.max(1);
    gpu.gemm_bf16(GemmLayout::NT, rows, out, inp, 1, x, w, y, accumulate)
}

/// dW += dyᵀ·x: the weight gradient of y = x·Wᵀ (dy `[rows, out]`, x `[rows, inp]`).
fn weight_grad(
    gpu: &CudaBackend,
    dy: &DeviceBuffer<bf16>,
    x: &DeviceBuffer<bf16>,
    rows: usize,
    dw: &mut DeviceBuffer<f32>,
) -> Result<()> {
    let (out, inp) = (dy.len() / rows.max(1), x.len() / rows.max(1));
    gpu.gemm_bf16(GemmLayout::TN, out, inp, rows, 1, dy, x, dw, true)
}

/// dx (+)= dy·W: the input gradient of y = x·Wᵀ.
fn input_grad<O: Float>(
    gpu: &CudaBackend,
    dy: &DeviceBuffer<bf16>,
    w: &DeviceBuffer<bf16>,
    rows: usize,
    dx: &mut DeviceBuffer<O>,
    accumulate: bool,
) -> Result<()> {
    let out = dy.len() / rows.max(1);
    let inp = w.len() / out.max(1);
    gpu.gemm_bf16(GemmLayout::NN, rows, inp, out, 1, dy, w, dx, accumulate)
}

fn to_bf16(gpu: &CudaBackend, x: &DeviceBuffer<f32>) -> Result<DeviceBuffer<bf16>> {
    let mut y = gpu.alloc::<bf16>(x.len())?;
    gpu.convert_to_bf16(x, &mut y)?;
    Ok(y)
}

impl CudaTrainer<'_> {
    pub(super) fn forward_backward(&mut self, batch: &[TrainSequence], scale: f64) -> Result<f64> {
        let CudaTrainer {
            gpu,
            config: c,
            index,
            values,
            norm_values,
            grads,
            logits_chunk_rows,
            checkpointing,
            ..
        } = self;
        let gpu: &CudaBackend = gpu;
        let p = pack(batch, c.vocab_size, scale)?;
        gpu.profile_phase("forward");
        if p.loss_rows.is_empty() {
            return Ok(0.0); // no loss token: a zero loss and no gradient, as on the CPU
        }
        let rows = p.batch * p.len;
        let pass = Pass {
            gpu,
            c,
            norm_values,
            rows,
            batch: p.batch,
            len: p.len,
            positions: gpu.upload(&p.positions)?,
            all_rows: RowList::all(gpu, rows)?,
        };
        let d = c.hidden_size;

        // Forward. A layer that checkpointing recomputes keeps only its input, and its forward
        // runs again in the backward; the last layers keep everything (met first there).
        let ids = gpu.upload(&p.ids)?;
        // The embedding's backward sums each row's tokens in a fixed order: sorted here, on the
        // host, while the GPU runs the forward.
        let embed_plan = gpu.embedding_grad_plan(&p.ids, c.vocab_size)?;
        let mut x = gpu.alloc::<f32>(rows * d)?;
        gpu.embedding_to_f32(&ids, &values[index.embed], d, &mut x)?;
        let layers = index.layers.len();
        let mut saved: Vec<Kept> = Vec::with_capacity(layers);
        for (i, lp) in index.layers.iter().enumerate() {
            let (s, next) = layer_forward(&pass, lp, x, values, true)?;
            x = next.expect("asked for the layer's output");
            saved.push(if checkpointing.keeps(i, layers) {
                Kept::All(Box::new(s))
            } else {
                Kept::Input(s.x)
            });
        }

        // The loss, and its gradient into the residual stream.
        gpu.profile_phase("loss");
        let mut dx = gpu.zeros::<f32>(rows * d)?;
        let mut loss = 0.0f64;
        let chunk = (*logits_chunk_rows).max(1);
        let vocab = c.vocab_size;
        for (i, loss_rows) in p.loss_rows.chunks(chunk).enumerate() {
            let n = loss_rows.len();
            let range = i * chunk..i * chunk + n;
            let list = RowList::new(gpu, loss_rows, rows)?;
            let mut hf = gpu.alloc::<bf16>(n * d)?;
            let final_norm = pass.norm(index.final_norm);
            gpu.norm_rows(&x, d, list.device(), final_norm, pass.eps(), &mut hf)?;
            let mut logits = gpu.alloc::<bf16>(n * vocab)?;
            linear(gpu, &hf, &values[index.head], n, &mut logits, false)?;
            let targets = gpu.upload(&p.targets[range.clone()])?;
            let weights = gpu.upload(&p.weights[range])?;
            let mut row_loss = gpu.alloc::<f32>(n)?;
            let mut lse = gpu.alloc::<f32>(n)?;
            gpu.cross_entropy(&logits, vocab, &targets, &weights, &mut row_loss, &mut lse)?;
            let mut d_logits = gpu.alloc::<bf16>(n * vocab)?;
            gpu.cross_entropy_backward(&logits, vocab, &targets, &weights, &lse, &mut d_logits)?;
            drop(logits);
            weight_grad(gpu, &d_logits, &hf, n, &mut grads[index.head])?;
            let mut dhf = gpu.alloc::<f32>(n * d)?;
            input_grad(gpu, &d_logits, &values[index.head], n, &mut dhf, false)?;
            drop(d_logits);
            let mut xf = gpu.alloc::<f32>(n * d)?;
            gpu.embedding(list.device(), &x, d, &mut xf)?;
            let dxf = pass.norm_backward(&xf, index.final_norm, &dhf, grads)?;
            gpu.embedding_backward(list.device(), &dxf, d, &mut dx)?;
            loss += gpu
                .download(&row_loss)?
                .iter()
                .map(|&l| l as f64)
                .sum::<f64>();
        }

        // Backward through the layers, last first. Each layer takes the residual gradient with
        // its bf16 copy and hands both on (the first layer's copy is not needed).
        let mut dy = Some(to_bf16(gpu, &dx)?);
        for (i, lp) in index.layers.iter().enumerate().rev() {
            gpu.profile_phase("recompute");
            let s = match saved.pop().expect("one saved entry per layer") {
                Kept::All(s) => *s,
                Kept::Input(x) => layer_forward(&pass, lp, x, values, false)?.0,
            };
            gpu.profile_phase("backward");
            let dy_in = dy.take().expect("each layer hands on the bf16 gradient");
            dy = layer_backward(&pass, lp, s, &mut dx, dy_in, i > 0, values, grads)?;
        }
        gpu.embedding_backward_planned(&embed_plan, &dx, d, &mut grads[index.embed])?;
        Ok(loss)
    }
}

/// What the forward keeps of a layer: everything the backward reads, or (a layer that
/// checkpointing recomputes) only its input.
enum Kept {
    All(Box<Saved>),
    Input(DeviceBuffer<f32>),
}

/// One layer's forward from its input `x`: what the backward needs, and the layer's output
/// when `want_output` (the backward's recomputation skips the last product).
fn layer_forward(
    pass: &Pass<'_>,
    lp: &LayerParams,
    x: DeviceBuffer<f32>,
    values: &[DeviceBuffer<bf16>],
    want_output: bool,
) -> Result<(Saved, Option<DeviceBuffer<f32>>)> {
    let (gpu, c, rows) = (pass.gpu, pass.c, pass.rows);
    let (f, q_dim, kv_dim) = (
        c.intermediate_size,
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
    );
    let h = pass.normed(&x, lp.attn_norm)?;
    let mut q = gpu.alloc::<bf16>(rows * q_dim)?;
    let mut k = gpu.alloc::<bf16>(rows * kv_dim)?;
    let mut v = gpu.alloc::<bf16>(rows * kv_dim)?;
    linear(gpu, &h, &values[lp.q], rows, &mut q, false)?;
    linear(gpu, &h, &values[lp.k], rows, &mut k, false)?;
    linear(gpu, &h, &values[lp.v], rows, &mut v, false)?;
    drop(h);
    let mut s = Saved {
        q,
        k,
        v,
        attn: gpu.alloc::<bf16>(rows * q_dim)?,
        lse: gpu.alloc::<f32>(pass.batch * c.num_heads * pass.len)?,
        x_mid: gpu.copy(&x)?,
        gate: gpu.alloc::<bf16>(rows * f)?,
        up: gpu.alloc::<bf16>(rows * f)?,
        x,
    };
    let AttentionInputs {
        q: qr,
        k: kr,
        v: vc,
    } = pass.attention_inputs(&s)?;
    let v_in = vc.as_ref().unwrap_or(&s.v);
    let (shape, batch) = (pass.attention_shape(), pass.batch);
    if pass.flash() {
        gpu.flash_attention_forward(shape, batch, &qr, &kr, v_in, &mut s.attn, &mut s.lse)?;
    } else {
        gpu.plain_attention_forward(shape, batch, &qr, &kr, v_in, &mut s.attn, &mut s.lse)?;
    }
    drop((qr, kr, vc));
    linear(gpu, &s.attn, &values[lp.o], rows, &mut s.x_mid, true)?;
    let h = pass.normed(&s.x_mid, lp.mlp_norm)?;
    linear(gpu, &h, &values[lp.gate], rows, &mut s.gate, false)?;
    linear(gpu, &h, &values[lp.up], rows, &mut s.up, false)?;
    drop(h);
    if !want_output {
        return Ok((s, None));
    }
    let mut act = gpu.alloc::<bf16>(rows * f)?;
    gpu.swiglu(&s.gate, &s.up, &mut act)?;
    let mut out = gpu.copy(&s.x_mid)?;
    linear(gpu, &act, &values[lp.down], rows, &mut out, true)?;
    Ok((s, Some(out)))
}

/// One layer's backward: from the gradient of its output `dx` (f32, and `dy`, the same rounded
/// to bf16) to that of its input, in place in `dx`, adding its weights' gradients. Returns the
/// new `dx` rounded to bf16 when `want_bf16` (the next layer's `dy`).
#[allow(clippy::too_many_arguments)]
fn layer_backward(
    pass: &Pass<'_>,
    lp: &LayerParams,
    s: Saved,
    dx: &mut DeviceBuffer<f32>,
    dy: DeviceBuffer<bf16>,
    want_bf16: bool,
    values: &[DeviceBuffer<bf16>],
    grads: &mut [DeviceBuffer<f32>],
) -> Result<Option<DeviceBuffer<bf16>>> {
    let gpu = pass.gpu;
    let rows = pass.rows;
    let c = pass.c;
    let (d, f) = (c.hidden_size, c.intermediate_size);

    // MLP: x'' = x' + act·Wdᵀ, act = silu(g) ⊙ u, g = h'·Wgᵀ, u = h'·Wuᵀ, h' = norm(x').
    let mut act = gpu.alloc::<bf16>(rows * f)?;
    gpu.swiglu(&s.gate, &s.up, &mut act)?;
    weight_grad(gpu, &dy, &act, rows, &mut grads[lp.down])?;
    drop(act);
    let mut d_act = gpu.alloc::<bf16>(rows * f)?;
    input_grad(gpu, &dy, &values[lp.down], rows, &mut d_act, false)?;
    let mut d_gate = gpu.alloc::<bf16>(rows * f)?;
    let mut d_up = gpu.alloc::<bf16>(rows * f)?;
    gpu.swiglu_backward(&s.gate, &s.up, &d_act, &mut d_gate, &mut d_up)?;
    drop(d_act);
    let h = pass.normed(&s.x_mid, lp.mlp_norm)?;
    weight_grad(gpu, &d_gate, &h, rows, &mut grads[lp.gate])?;
    weight_grad(gpu, &d_up, &h, rows, &mut grads[lp.up])?;
    drop(h);
    let mut dh = gpu.alloc::<f32>(rows * d)?;
    input_grad(gpu, &d_gate, &values[lp.gate], rows, &mut dh, false)?;
    input_grad(gpu, &d_up, &values[lp.up], rows, &mut dh, true)?;
    drop((d_gate, d_up));
    // dx += the norm's backward, and dy = bf16(dx) for the attention's output product, in one
    // pass (the buffer of the MLP's dy is reused: it is read no more).
    let mut dy = dy;
    pass.norm_backward_into(&s.x_mid, lp.mlp_norm, &dh, dx, Some(&mut dy), grads)?;
    drop(dh);

    // Attention: x' = x + a·Woᵀ, a = attention(RoPE(clamp(h·Wqᵀ)), …), h = norm(x).
    weight_grad(gpu, &dy, &s.attn, rows, &mut grads[lp.o])?;
    let mut d_attn = gpu.alloc::<bf16>(s.attn.len())?;
    input_grad(gpu, &dy, &values[lp.o], rows, &mut d_attn, false)?;
    drop(dy);
    let AttentionInputs {
        q: qr,
        k: kr,
        v: vc,
    } = pass.attention_inputs(&s)?;
    let v_in = vc.as_ref().unwrap_or(&s.v);
    let mut dq = gpu.alloc::<bf16>(s.q.len())?;
    let mut dk = gpu.alloc::<bf16>(s.k.len())?;
    let mut dv = gpu.alloc::<bf16>(s.v.len())?;
    let shape = pass.attention_shape();
    if pass.flash() {
        gpu.flash_attention_backward(
            shape, pass.batch, &qr, &kr, v_in, &s.attn, &d_attn, &s.lse, &mut dq, &mut dk, &mut dv,
        )?;
    } else {
        gpu.plain_attention_backward(
            shape, pass.batch, &qr, &kr, v_in, &s.attn, &d_attn, &s.lse, &mut dq, &mut dk, &mut dv,
        )?;
    }
    drop((qr, kr, vc, d_attn));
    // RoPE is a rotation: its backward rotates the gradient back.
    gpu.rope(&mut dq, &pass.positions, pass.rope(c.num_heads), true)?;
    gpu.rope(&mut dk, &pass.positions, pass.rope(c.num_kv_heads), true)?;
    if let Some(clip) = c.clip_qkv {
        gpu.clamp_backward_bf16(&s.q, clip, &mut dq)?;
        gpu.clamp_backward_bf16(&s.k, clip, &mut dk)?;
        gpu.clamp_backward_bf16(&s.v, clip, &mut dv)?;
    }
    let h = pass.normed(&s.x, lp.attn_norm)?;
    weight_grad(gpu, &dq, &h, rows, &mut grads[lp.q])?;
    weight_grad(gpu, &dk, &h, rows, &mut grads[lp.k])?;
    weight_grad(gpu, &dv, &h, rows, &mut grads[lp.v])?;
    drop(h);
    let mut dh = gpu.alloc::<f32>(rows * d)?;
    input_grad(gpu, &dq, &values[lp.q], rows, &mut dh, false)?;
    input_grad(gpu, &dk, &values[lp.k], rows, &mut dh, true)?;
    input_grad(gpu, &dv, &values[lp.v], rows, &mut dh, true)?;
    let mut next_dy = match want_bf16 {
        true => Some(gpu.alloc::<bf16>(rows * d)?),
        false => None,
    };
    pass.norm_backward_into(&s.x, lp.attn_norm, &dh, dx, next_dy.as_mut(), grads)?;
    Ok(next_dy)
}
