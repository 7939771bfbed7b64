//! `Real`: the float types (f32, f64) that ops and autograd are generic over. f32 is what
//! models run in; f64 is for gradient checks against finite differences.

use crate::tensor::Elems;
use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + Debug
    + PartialOrd
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + std::iter::Sum
{
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn sin(self) -> Self;
    fn cos(self) -> Self;
    fn powf(self, e: Self) -> Self;
    fn max(self, o: Self) -> Self;
    fn zero() -> Self {
        Self::from_f64(0.0)
    }
    fn one() -> Self {
        Self::from_f64(1.0)
    }
    /// C[m,n] (+)= op(A)·op(B), row-major, as `backend::cpu::matmul::gemm`.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        m: usize,
        n: usize,
        k: usize,
        a: &[Self],
        a_t: bool,
        b: &[Self],
        b_t: bool,
        c: &mut [Self],
        acc: bool,
    );
}

macro_rules! real_methods {
    ($t:ty) => {
        fn from_f64(x: f64) -> Self {
            x as $t
        }
        fn to_f64(self) -> f64 {
            self as f64
        }
        fn exp(self) -> Self {
            <$t>::exp(self)
        }
        fn ln(self) -> Self {
            <$t>::ln(self)
        }
        fn sqrt(self) -> Self {
            <$t>::sqrt(self)
        }
        fn sin(self) -> Self {
            <$t>::sin(self)
        }
        fn cos(self) -> Self {
            <$t>::cos(self)
        }
        fn powf(self, e: Self) -> Self {
            <$t>::powf(self, e)
        }
        fn max(self, o: Self) -> Self {
            <$t>::max(self, o)
        }
    };
}

impl Real for f32 {
    real_methods!(f32);
    fn gemm(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        a_t: bool,
        b: &[f32],
        b_t: bool,
        c: &mut [f32],
        acc: bool,
    ) {
        crate::backend::cpu::matmul::gemm(m, n, k, a, a_t, Elems::F32(b), b_t, c, acc);
    }
}

impl Real for f64 {
    real_methods!(f64);
    /// Plain loops: f64 runs only in gradient checks on tiny shapes.
    fn gemm(
        m: usize,
        n: usize,
        k: usize,
        a: &[f64],
        a_t: bool,
        b: &[f64],
        b_t: bool,
        c: &mut [f64],
        acc: bool,
    ) {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    let av = if a_t { a[p * m + i] } else { a[i * k + p] };
                    let bv = if b_t { b[j * k + p] } else { b[p * n + j] };
                    s += av * bv;
                }
                c[i * n + j] = if acc { c[i * n + j] + s } else { s };
            }
        }
    }
}
