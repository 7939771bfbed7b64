//! Tests: every kernel set this CPU supports against [`gemm_reference`], over the small-m and
//! blocked paths, both operand layouts, all weight dtypes, with and without accumulation.

use super::*;
use half::{bf16, f16};

/// xorshift64*: deterministic values in [-1, 1), never exactly zero.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
        let v = 2.0 * x - 1.0;
        if v == 0.0 {
            0.5
        } else {
            v
        }
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

#[derive(Clone, Copy, Debug)]
enum Bt {
    F32,
    Bf16,
    F16,
}

/// Runs `gemm` with the given kernel set against the reference (on the same rounded B).
#[allow(clippy::too_many_arguments)]
fn check(isa: Isa, m: usize, n: usize, k: usize, at: bool, bt: bool, dt: Bt, acc: bool, seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let a = rng.vec(m * k);
    let bf = rng.vec(k * n);
    let (b16, h16): (Vec<bf16>, Vec<f16>) = (
        bf.iter().map(|&x| bf16::from_f32(x)).collect(),
        bf.iter().map(|&x| f16::from_f32(x)).collect(),
    );
    let b = match dt {
        Bt::F32 => Elems::F32(&bf),
        Bt::Bf16 => Elems::BF16(&b16),
        Bt::F16 => Elems::F16(&h16),
    };
    let init = rng.vec(m * n);
    let mut want = init.clone();
    gemm_reference(m, n, k, &a, at, b, bt, &mut want, acc);
    let got_init = init.clone();
    let mut got = if acc { init } else { vec![f32::NAN; m * n] };
    let g = Gemm::new(m, n, k, &a, at, b, bt, acc, got.len());
    gemm_with(isa, &g, &mut got);
    let err: f64 = got
        .iter()
        .zip(&want)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = if m * n >= 16 {
        want.iter().map(|&y| (y as f64).powi(2)).sum::<f64>().sqrt()
    } else {
        // A handful of outputs can cancel to far below the size of their terms, and f32
        // rounding error scales with the terms: measure against ‖|op(A)|·|op(B)| + |C|‖.
        let mut abs = if acc {
            got_init.iter().map(|x| x.abs() as f64).collect()
        } else {
            vec![0.0f64; m * n]
        };
        let g = Gemm::new(m, n, k, &a, at, b, bt, acc, m * n);
        for (ij, s) in abs.iter_mut().enumerate() {
            let (i, j) = (ij / n, ij % n);
            *s += (0..k)
                .map(|p| (g.a_at(i, p) * g.b_at(p, j)).abs() as f64)
                .sum::<f64>();
        }
        abs.iter().map(|y| y * y).sum::<f64>().sqrt()
    };
    let rel = if norm > 0.0 { err / norm } else { err };
    assert!(
        rel < 1e-5,
        "{isa:?} m={m} n={n} k={k} a_trans={at} b_trans={bt} {dt:?} acc={acc}: relative error {rel:e}"
    );
}

fn all(m: usize, n: usize, k: usize) {
    for isa in available_isas() {
        for (s, (at, bt)) in [(false, false), (false, true), (true, false), (true, true)]
            .into_iter()
            .enumerate()
        {
            for dt in [Bt::F32, Bt::Bf16, Bt::F16] {
                for acc in [false, true] {
                    check(
                        isa,
                        m,
                        n,
                        k,
                        at,
                        bt,
                        dt,
                        acc,
                        (m * 31 + n * 7 + k + s) as u64,
                    );
                }
            }
        }
    }
}

#[test]
fn small_m_paths() {
    for m in 1..=GEMV_MAX_M + 1 {
        for (n, k) in [(1, 1), (7, 17), (33, 100), (129, 7), (300, 64), (17, 259)] {
            all(m, n, k);
        }
    }
}

#[test]
fn odd_sizes() {
    let sizes = [1, 7, 17, 33, 100, 129];
    for &m in &sizes {
        for &n in &sizes {
            for &k in &[1, 17, 129] {
                all(m, n, k);
            }
        }
    }
}

#[test]
fn multi_block_and_multi_tile() {
    // k > KC (several packed slices), m > MC and n > NT_MAX (several tiles and blocks).
    all(150, 70, 300);
    all(7, 600, 40);
    for isa in available_isas() {
        check(isa, 600, 530, 260, false, true, Bt::Bf16, false, 1);
        check(isa, 64, 1536, 576, false, true, Bt::F32, true, 2);
        check(isa, 200, 1030, 70, true, false, Bt::F16, false, 3);
    }
}

#[test]
fn decode_shapes() {
    for isa in available_isas() {
        for (n, k) in [(1536, 576), (576, 576), (576, 1536)] {
            for dt in [Bt::F32, Bt::Bf16, Bt::F16] {
                check(isa, 1, n, k, false, true, dt, false, 4);
                check(isa, 1, n, k, false, false, dt, true, 5);
            }
        }
    }
}

#[test]
fn empty_dimensions() {
    let mut c = vec![f32::NAN; 6];
    gemm(2, 3, 0, &[], false, Elems::F32(&[]), true, &mut c, false);
    assert!(c.iter().all(|&x| x == 0.0));
    let mut c = vec![1.0; 6];
    gemm(2, 3, 0, &[], false, Elems::F32(&[]), true, &mut c, true);
    assert!(c.iter().all(|&x| x == 1.0));
    gemm(
        0,
        3,
        4,
        &[],
        false,
        Elems::F32(&[0.5; 12]),
        true,
        &mut [],
        false,
    );
}

#[test]
fn linear_layer_layout() {
    // y = x·Wᵀ with W [out=2, in=3].
    let x = [1.0, 2.0, 3.0];
    let w = [1.0, 0.0, -1.0, 0.5, 0.5, 0.5];
    let mut y = [0.0; 2];
    gemm(1, 2, 3, &x, false, Elems::F32(&w), true, &mut y, false);
    assert_eq!(y, [-2.0, 3.0]);
}
