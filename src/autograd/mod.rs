//! Reverse-mode automatic differentiation: a tape of the ops a forward pass ran, replayed
//! backwards. Values are flat row-major vectors; each op's backward rule lives beside its
//! forward in `backend::cpu` and is dispatched from `backward.rs`.
//!
//! Generic over `Real` so that the same graph runs in f32 for training and in f64 for
//! gradient checks against finite differences.

mod backward;
#[cfg(test)]
pub(crate) mod gradcheck;

use crate::backend::cpu::attention::{causal_attention, AttentionShape};
use crate::backend::cpu::backward::cross_entropy;
use crate::backend::cpu::ops::{self, RopeSpec};
use crate::tensor::Real;
use std::sync::Arc;

/// A value on the tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var(usize);

/// Attention heads of the sequences packed into one call.
#[derive(Clone, Debug)]
pub struct AttentionSpec {
    /// Lengths of the sequences packed one after another along the token axis; each attends
    /// causally to itself only.
    pub segments: Vec<usize>,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttentionSpec {
    fn shape(&self, len: usize) -> AttentionShape {
        AttentionShape {
            queries: len,
            keys: len,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        }
    }
}

/// How an op's output was made: its inputs and what its backward needs.
enum Op<T> {
    Leaf,
    /// y[m,n] = x[m,k]·wᵀ for w[n,k].
    Linear {
        x: Var,
        w: Var,
    },
    Embedding {
        table: Var,
        ids: Vec<u32>,
    },
    RmsNorm {
        x: Var,
        w: Var,
        eps: f64,
    },
    LayerNorm {
        x: Var,
        eps: f64,
    },
    Rope {
        x: Var,
        positions: Vec<usize>,
        spec: RopeSpec,
    },
    Attention {
        q: Var,
        k: Var,
        v: Var,
        spec: AttentionSpec,
    },
    SwiGlu {
        gate: Var,
        up: Var,
    },
    Add {
        a: Var,
        b: Var,
    },
    /// The same values under another shape (shared, not copied).
    Reshape {
        x: Var,
    },
    Clamp {
        x: Var,
        limit: T,
    },
    /// A scalar: Σ_r weights[r]·(−log softmax(logits_r)[targets[r]]).
    CrossEntropy {
        logits: Var,
        targets: Vec<u32>,
        weights: Vec<f64>,
    },
}

pub struct Tape<T: Real> {
    values: Vec<Arc<Vec<T>>>,
    shapes: Vec<Vec<usize>>,
    ops: Vec<Op<T>>,
    requires_grad: Vec<bool>,
}

impl<T: Real> Default for Tape<T> {
    fn default() -> Self {
        Tape {
            values: Vec::new(),
            shapes: Vec::new(),
            ops: Vec::new(),
            requires_grad: Vec::new(),
        }
    }
}

impl<T: Real> Tape<T> {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, value: Vec<T>, shape: Vec<usize>, op: Op<T>, inputs: &[Var]) -> Var {
        debug_assert_eq!(value.len(), shape.iter().product::<usize>());
        let rg = inputs.iter().any(|v| self.requires_grad[v.0]);
        self.values.push(Arc::new(value));
        self.shapes.push(shape);
        self.ops.push(op);
        self.requires_grad.push(rg);
        Var(self.values.len() - 1)
    }

    /// An input: a parameter (`requires_grad`) or data. Shared values are not copied.
    pub fn leaf(&mut self, value: Arc<Vec<T>>, shape: &[usize], requires_grad: bool) -> Var {
        assert_eq!(
            value.len(),
            shape.iter().product::<usize>(),
            "leaf of shape {shape:?}"
        );
        self.values.push(value);
        self.shapes.push(shape.to_vec());
        self.ops.push(Op::Leaf);
        self.requires_grad.push(requires_grad);
        Var(self.values.len() - 1)
    }

    pub fn value(&self, v: Var) -> &[T] {
        &self.values[v.0]
    }

    pub fn shape(&self, v: Var) -> &[usize] {
        &self.shapes[v.0]
    }

    fn last_dim(&self, v: Var) -> usize {
        *self.shapes[v.0].last().expect("rank >= 1")
    }

    /// y = x·wᵀ: `x` is `[rows, in]`, `w` is a PyTorch Linear weight `[out, in]`.
    pub fn linear(&mut self, x: Var, w: Var) -> Var {
        let (n, k) = (self.shapes[w.0][0], self.shapes[w.0][1]);
        assert_eq!(
            self.last_dim(x),
            k,
            "linear: x {:?} w {:?}",
            self.shape(x),
            self.shape(w)
        );
        let m = self.values[x.0].len() / k;
        let mut y = vec![T::zero(); m * n];
        T::gemm(
            m,
            n,
            k,
            self.value(x),
            false,
            self.value(w),
            true,
            &mut y,
            false,
        );
        self.push(y, vec![m, n], Op::Linear { x, w }, &[x, w])
    }

    /// Rows `ids` of `table` (`[vocab, dim]`).
    pub fn embedding(&mut self, table: Var, ids: &[u32]) -> Var {
        let dim = self.shapes[table.0][1];
        let t = self.value(table);
        let mut y = Vec::with_capacity(ids.len() * dim);
        for &id in ids {
            y.extend_from_slice(&t[id as usize * dim..][..dim]);
        }
        self.push(
            y,
            vec![ids.len(), dim],
            Op::Embedding {
                table,
                ids: ids.to_vec(),
            },
            &[table],
        )
    }

    pub fn rms_norm(&mut self, x: Var, w: Var, eps: f64) -> Var {
        let mut y = vec![T::zero(); self.values[x.0].len()];
        ops::rms_norm(self.value(x), self.value(w), eps, &mut y);
        let shape = self.shapes[x.0].clone();
        self.push(y, shape, Op::RmsNorm { x, w, eps }, &[x, w])
    }

    pub fn layer_norm(&mut self, x: Var, eps: f64) -> Var {
        let mut y = vec![T::zero(); self.values[x.0].len()];
        ops::layer_norm_no_params(self.value(x), self.last_dim(x), eps, &mut y);
        let shape = self.shapes[x.0].clone();
        self.push(y, shape, Op::LayerNorm { x, eps }, &[x])
    }

    /// RoPE on `x` of shape `[tokens, heads·head_dim]`.
    pub fn rope(&mut self, x: Var, positions: &[usize], spec: RopeSpec) -> Var {
        let mut y = self.value(x).to_vec();
        ops::rope(&mut y, positions, spec, false);
        let shape = self.shapes[x.0].clone();
        self.push(
            y,
            shape,
            Op::Rope {
                x,
                positions: positions.to_vec(),
                spec,
            },
            &[x],
        )
    }

    /// Causal attention of each packed sequence: q `[tokens, heads·hd]`, k, v `[tokens, kv_heads·hd]`.
    pub fn attention(&mut self, q: Var, k: Var, v: Var, spec: AttentionSpec) -> Var {
        let (heads, kvh, hd) = (spec.heads, spec.kv_heads, spec.head_dim);
        let total: usize = spec.segments.iter().sum();
        assert_eq!(
            self.values[q.0].len(),
            total * heads * hd,
            "attention: q {:?}",
            self.shape(q)
        );
        let mut y = vec![T::zero(); total * heads * hd];
        let mut row = 0;
        for &len in &spec.segments {
            let (qs, kvs) = (
                row * heads * hd..(row + len) * heads * hd,
                row * kvh * hd..(row + len) * kvh * hd,
            );
            let (qv, kv, vv) = (
                &self.values[q.0][qs.clone()],
                &self.values[k.0][kvs.clone()],
                &self.values[v.0][kvs],
            );
            causal_attention(qv, kv, vv, spec.shape(len), &mut y[qs]);
            row += len;
        }
        self.push(
            y,
            vec![total, heads * hd],
            Op::Attention { q, k, v, spec },
            &[q, k, v],
        )
    }

    pub fn swiglu(&mut self, gate: Var, up: Var) -> Var {
        let mut y = vec![T::zero(); self.values[gate.0].len()];
        ops::swiglu(self.value(gate), self.value(up), &mut y);
        let shape = self.shapes[gate.0].clone();
        self.push(y, shape, Op::SwiGlu { gate, up }, &[gate, up])
    }

    pub fn add(&mut self, a: Var, b: Var) -> Var {
        assert_eq!(self.shape(a), self.shape(b), "add");
        let mut y = self.value(a).to_vec();
        ops::add_in_place(&mut y, self.value(b));
        let shape = self.shapes[a.0].clone();
        self.push(y, shape, Op::Add { a, b }, &[a, b])
    }

    pub fn reshape(&mut self, x: Var, shape: &[usize]) -> Var {
        assert_eq!(
            shape.iter().product::<usize>(),
            self.values[x.0].len(),
            "reshape {:?} to {shape:?}",
            self.shape(x)
        );
        let rg = self.requires_grad[x.0];
        self.values.push(self.values[x.0].clone());
        self.shapes.push(shape.to_vec());
        self.ops.push(Op::Reshape { x });
        self.requires_grad.push(rg);
        Var(self.values.len() - 1)
    }

    pub fn clamp(&mut self, x: Var, limit: T) -> Var {
        let mut y = self.value(x).to_vec();
        ops::clamp_in_place(&mut y, limit);
        let shape = self.shapes[x.0].clone();
        self.push(y, shape, Op::Clamp { x, limit }, &[x])
    }

    /// Σ_r weights[r]·(−log softmax(logits_r)[targets[r]]) as a scalar; rows of weight 0 carry
    /// no loss (the prompt's tokens, in training).
    pub fn cross_entropy(&mut self, logits: Var, targets: &[u32], weights: &[f64]) -> Var {
        let vocab = self.last_dim(logits);
        assert_eq!(
            targets.len() * vocab,
            self.values[logits.0].len(),
            "cross_entropy targets"
        );
        let loss = cross_entropy(self.value(logits), vocab, targets, weights, None);
        let op = Op::CrossEntropy {
            logits,
            targets: targets.to_vec(),
            weights: weights.to_vec(),
        };
        self.push(vec![T::from_f64(loss)], vec![1], op, &[logits])
    }
}

/// Gradients from `Tape::backward`, by variable.
pub struct Grads<T> {
    grads: Vec<Option<Vec<T>>>,
}

impl<T: Real> Grads<T> {
    pub fn get(&self, v: Var) -> Option<&[T]> {
        self.grads[v.0].as_deref()
    }
    /// Moves a gradient out (e.g. into an accumulator), leaving None.
    pub fn take(&mut self, v: Var) -> Option<Vec<T>> {
        self.grads[v.0].take()
    }
}
