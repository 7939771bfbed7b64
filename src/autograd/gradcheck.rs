//! Gradient checks in f64: every op's backward against central finite differences.

use super::{AttentionSpec, Tape, Var};
use crate::backend::cpu::ops::{RopeLayout, RopeSpec};
use std::sync::Arc;

pub(crate) fn rand_vec(n: usize, seed: u64) -> Vec<f64> {
    crate::testutil::rand_vec(n, seed)
}

/// Builds a graph from `inputs` (leaves requiring grad) to a scalar with `f`, then compares
/// the tape's gradient of every input with (L(x + h) − L(x − h)) / 2h.
pub(crate) fn check(
    name: &str,
    inputs: &[(Vec<f64>, Vec<usize>)],
    f: impl Fn(&mut Tape<f64>, &[Var]) -> Var,
) {
    let run = |vals: &[Vec<f64>]| -> (f64, Option<Vec<Vec<f64>>>) {
        let mut tape = Tape::new();
        let vars: Vec<Var> = vals
            .iter()
            .zip(inputs)
            .map(|(v, (_, s))| tape.leaf(Arc::new(v.clone()), s, true))
            .collect();
        let loss = f(&mut tape, &vars);
        let grads = tape.backward(loss);
        let g = vars.iter().map(|&v| {
            grads
                .get(v)
                .map(|g| g.to_vec())
                .unwrap_or_else(|| vec![0.0; tape.value(v).len()])
        });
        (tape.value(loss)[0], Some(g.collect()))
    };
    let base: Vec<Vec<f64>> = inputs.iter().map(|(v, _)| v.clone()).collect();
    let (_, analytic) = run(&base);
    let analytic = analytic.unwrap();
    let h = 1e-6;
    for (i, (v, _)) in inputs.iter().enumerate() {
        for j in 0..v.len() {
            let mut plus = base.clone();
            plus[i][j] += h;
            let mut minus = base.clone();
            minus[i][j] -= h;
            let numeric = (run(&plus).0 - run(&minus).0) / (2.0 * h);
            let a = analytic[i][j];
            // Central differences in f64 with h = 1e-6 carry about 1e-10 of rounding error
            // (machine epsilon × loss / h), hence the absolute floor.
            let tolerance = 1e-5 * a.abs().max(numeric.abs()) + 1e-8;
            assert!(
                (a - numeric).abs() <= tolerance,
                "{name}: input {i}[{j}]: analytic {a}, numeric {numeric}"
            );
        }
    }
}

/// A scalar from a tensor: Σ x·c with fixed random c, so every output element matters.
pub(crate) fn project(tape: &mut Tape<f64>, x: Var, seed: u64) -> Var {
    let n = tape.value(x).len();
    let c = tape.leaf(Arc::new(rand_vec(n, seed)), &[1, n], false);
    let flat = tape.reshape(x, &[1, n]);
    let y = tape.linear(flat, c); // [1, 1]
    tape.reshape(y, &[1])
}

#[test]
fn every_op_matches_finite_differences() {
    let v = |n, seed| rand_vec(n, seed);
    check(
        "linear",
        &[(v(6, 1), vec![2, 3]), (v(12, 2), vec![4, 3])],
        |t, x| {
            let y = t.linear(x[0], x[1]);
            project(t, y, 9)
        },
    );
    check("embedding", &[(v(12, 3), vec![4, 3])], |t, x| {
        let y = t.embedding(x[0], &[2, 0, 2, 3]);
        project(t, y, 9)
    });
    check(
        "rms_norm",
        &[(v(8, 4), vec![2, 4]), (v(4, 5), vec![4])],
        |t, x| {
            let y = t.rms_norm(x[0], x[1], 1e-5);
            project(t, y, 9)
        },
    );
    check("layer_norm", &[(v(8, 6), vec![2, 4])], |t, x| {
        let y = t.layer_norm(x[0], 1e-5);
        project(t, y, 9)
    });
    for layout in [RopeLayout::HalfRotation, RopeLayout::Interleaved] {
        let spec = RopeSpec {
            heads: 2,
            head_dim: 4,
            base: 10000.0,
            layout,
        };
        check("rope", &[(v(24, 7), vec![3, 8])], |t, x| {
            let y = t.rope(x[0], &[0, 3, 11], spec);
            project(t, y, 9)
        });
    }
    let spec = AttentionSpec {
        segments: vec![3, 2],
        heads: 4,
        kv_heads: 2,
        head_dim: 2,
    };
    check(
        "attention",
        &[
            (v(40, 8), vec![5, 8]),
            (v(20, 9), vec![5, 4]),
            (v(20, 10), vec![5, 4]),
        ],
        |t, x| {
            let y = t.attention(x[0], x[1], x[2], spec.clone());
            project(t, y, 9)
        },
    );
    check(
        "swiglu",
        &[(v(6, 11), vec![2, 3]), (v(6, 12), vec![2, 3])],
        |t, x| {
            let y = t.swiglu(x[0], x[1]);
            project(t, y, 9)
        },
    );
    check(
        "add",
        &[(v(6, 13), vec![2, 3]), (v(6, 14), vec![2, 3])],
        |t, x| {
            let y = t.add(x[0], x[1]);
            project(t, y, 9)
        },
    );
    // Values near ±limit would sit on the kink; rand_vec's are in (−1, 1), limit 0.5 leaves
    // a finite-difference step of 1e-6 far from almost all of them.
    check("clamp", &[(v(10, 15), vec![2, 5])], |t, x| {
        let y = t.clamp(x[0], 0.5);
        project(t, y, 9)
    });
    check(
        "cross_entropy",
        &[(v(15, 16).iter().map(|x| x * 3.0).collect(), vec![3, 5])],
        |t, x| t.cross_entropy(x[0], &[4, 0, 2], &[0.5, 0.0, 0.25]),
    );
}
