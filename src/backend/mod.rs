//! Compute backends. The CPU backend holds the plain reference of every op; the CUDA
//! backend (feature `cuda`) is checked against it.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

/// Where a model runs: `--device cpu|cuda`.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    /// An NVIDIA GPU of compute capability 8.0 or newer, in a build with `--features cuda`.
    Cuda,
}
