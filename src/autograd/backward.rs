//! The backward pass: walks the tape from the loss back to the leaves, applying each op's rule.

use super::{Grads, Op, Tape, Var};
use crate::backend::cpu::attention::causal_attention_backward;
use crate::backend::cpu::backward as rules;
use crate::backend::cpu::ops;
use crate::tensor::Real;

impl<T: Real> Tape<T> {
    /// Gradients of the scalar `loss` with respect to every value that requires one.
    pub fn backward(&self, loss: Var) -> Grads<T> {
        assert_eq!(self.values[loss.0].len(), 1, "backward from a scalar");
        let mut grads: Vec<Option<Vec<T>>> = (0..self.values.len()).map(|_| None).collect();
        grads[loss.0] = Some(vec![T::one()]);
        for id in (0..=loss.0).rev() {
            if !self.requires_grad[id] {
                continue;
            }
            let Some(dy) = grads[id].take() else { continue };
            let mut add = |v: Var, g: Vec<T>| {
                if !self.requires_grad[v.0] {
                    return;
                }
                match &mut grads[v.0] {
                    Some(acc) => ops::add_in_place(acc, &g),
                    slot => *slot = Some(g),
                }
            };
            self.backward_op(&self.ops[id], &dy, &mut add);
            // Leaves keep their gradient; intermediate ones are no longer needed.
            if matches!(self.ops[id], Op::Leaf) {
                grads[id] = Some(dy);
            }
        }
        Grads { grads }
    }

    fn zeros(&self, v: Var) -> Vec<T> {
        vec![T::zero(); self.values[v.0].len()]
    }

    fn backward_op(&self, op: &Op<T>, dy: &[T], add: &mut impl FnMut(Var, Vec<T>)) {
        match op {
            Op::Leaf => {}
            Op::Linear { x, w } => {
                let (n, k) = (self.shapes[w.0][0], self.shapes[w.0][1]);
                let m = self.values[x.0].len() / k;
                // y = x·wᵀ: dx = dy·w, dw = dyᵀ·x.
                if self.requires_grad[x.0] {
                    let mut dx = self.zeros(*x);
                    T::gemm(m, k, n, dy, false, self.value(*w), false, &mut dx, false);
                    add(*x, dx);
                }
                if self.requires_grad[w.0] {
                    let mut dw = self.zeros(*w);
                    T::gemm(n, k, m, dy, true, self.value(*x), false, &mut dw, false);
                    add(*w, dw);
                }
            }
            Op::Embedding { table, ids } => {
                let mut dt = self.zeros(*table);
                rules::embedding_backward(ids, dy, self.shapes[table.0][1], &mut dt);
                add(*table, dt);
            }
            Op::RmsNorm { x, w, eps } => {
                let (mut dx, mut dw) = (self.zeros(*x), self.zeros(*w));
                rules::rms_norm_backward(
                    self.value(*x),
                    self.value(*w),
                    *eps,
                    dy,
                    &mut dx,
                    &mut dw,
                );
                add(*x, dx);
                add(*w, dw);
            }
            Op::LayerNorm { x, eps } => {
                let mut dx = self.zeros(*x);
                rules::layer_norm_backward(self.value(*x), self.last_dim(*x), *eps, dy, &mut dx);
                add(*x, dx);
            }
            Op::Rope { x, positions, spec } => {
                // A rotation's transpose is the rotation by −θ.
                let mut dx = dy.to_vec();
                ops::rope(&mut dx, positions, *spec, true);
                add(*x, dx);
            }
            Op::Attention { q, k, v, spec } => {
                let (mut dq, mut dk, mut dv) = (self.zeros(*q), self.zeros(*k), self.zeros(*v));
                let (heads, kvh, hd) = (spec.heads, spec.kv_heads, spec.head_dim);
                let mut row = 0;
                for &len in &spec.segments {
                    let qs = row * heads * hd..(row + len) * heads * hd;
                    let ks = row * kvh * hd..(row + len) * kvh * hd;
                    causal_attention_backward(
                        &self.value(*q)[qs.clone()],
                        &self.value(*k)[ks.clone()],
                        &self.value(*v)[ks.clone()],
                        &dy[qs.clone()],
                        spec.shape(len),
                        &mut dq[qs],
                        &mut dk[ks.clone()],
                        &mut dv[ks],
                    );
                    row += len;
                }
                add(*q, dq);
                add(*k, dk);
                add(*v, dv);
            }
            Op::SwiGlu { gate, up } => {
                let (mut dg, mut du) = (self.zeros(*gate), self.zeros(*up));
                rules::swiglu_backward(self.value(*gate), self.value(*up), dy, &mut dg, &mut du);
                add(*gate, dg);
                add(*up, du);
            }
            Op::Add { a, b } => {
                add(*a, dy.to_vec());
                add(*b, dy.to_vec());
            }
            Op::Reshape { x } => add(*x, dy.to_vec()),
            Op::Clamp { x, limit } => {
                let mut dx = self.zeros(*x);
                rules::clamp_backward(self.value(*x), *limit, dy, &mut dx);
                add(*x, dx);
            }
            Op::CrossEntropy {
                logits,
                targets,
                weights,
            } => {
                let vocab = self.last_dim(*logits);
                let mut dl = self.zeros(*logits);
                rules::cross_entropy(self.value(*logits), vocab, targets, weights, Some(&mut dl));
                let scale = dy[0];
                dl.iter_mut().for_each(|g| *g *= scale);
                add(*logits, dl);
            }
        }
    }
}
