//! Model definitions: config.json, weights, the forward pass with a KV cache.

pub mod config;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod init;
pub mod lm;
pub mod presets;
pub mod random;
pub mod train;
pub mod transformer;
pub mod weights;

pub use config::{Architecture, ModelConfig};
pub use device::{DeviceCache, DeviceModel, DeviceRuntime};
pub use lm::LanguageModel;
pub use transformer::{KvCache, Logits, Transformer};
