//! The CPU backend: plain, multi-threaded implementations of every op the model needs.

pub mod attention;
pub mod backward;
pub mod matmul;
pub mod ops;
pub mod parallel;
