//! `train --device cuda`: the same run (data order, schedule, metrics, checkpoints) with the
//! forward, backward and optimizer on the GPU (`CudaTrainer`, trainer.rs; the [`Engine`]
//! the shared loop drives, engine.rs). Without the `cuda` feature this module is only the door
//! saying so, so that `train` itself names no feature.
//!
//! [`Engine`]: crate::train::Engine

#[cfg(feature = "cuda")]
mod engine;
#[cfg(feature = "cuda")]
mod trainer;

#[cfg(feature = "cuda")]
pub(super) use engine::train;
#[cfg(feature = "cuda")]
pub use trainer::{CudaTrainer, TrainerSetup};

/// Without the `cuda` feature: the reason `--device cuda` cannot train.
#[cfg(not(feature = "cuda"))]
pub(super) fn train(_: &super::TrainOptions) -> crate::error::Result<super::TrainSummary> {
    Err(crate::backend::built_without_cuda(
        "--device cuda",
        ", or use --device cpu",
    ))
}
