//! Compute backends. The CPU backend holds the plain reference of every op; the CUDA
//! backend (feature `cuda`) is checked against it.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
