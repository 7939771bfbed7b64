//! Compute backends. The CPU backend holds the plain reference of every op; the CUDA
//! backend (feature `cuda`) is checked against it.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

/// The error of a command that needs the GPU in a binary built without the `cuda` feature:
/// "{what}: this binary was built without CUDA; rebuild with …{otherwise}" (`otherwise` e.g.
/// ", or use --device cpu").
#[cfg(not(feature = "cuda"))]
pub fn built_without_cuda(what: &str, otherwise: &str) -> crate::error::Error {
    crate::error::Error(format!(
        "{what}: this binary was built without CUDA; rebuild with `cargo build --release \
         --features cuda` (nvcc from `bash tools/install_nvcc.sh`){otherwise}"
    ))
}

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
