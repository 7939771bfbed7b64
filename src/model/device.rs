//! The one place a model folder is opened on a device: [`DeviceRuntime::open`] opens the CPU or
//! the GPU (failing in one line, naming the option, when this binary or machine has no usable
//! GPU), [`DeviceRuntime::load`] loads a model onto it as a [`DeviceModel`], which is a
//! [`LanguageModel`] on either device. Entry points (`generate`, `serve`, ...) go through it
//! instead of gating on the `cuda` feature themselves; this file is the only one outside
//! `backend` that names the GPU model.

use super::config::ModelConfig;
use super::lm::LanguageModel;
use super::transformer::{KvCache, Logits, Transformer};
use crate::backend::Device;
use crate::error::Result;
use std::marker::PhantomData;
use std::path::Path;

#[cfg(feature = "cuda")]
use crate::backend::cuda::{CudaBackend, CudaKvCache};
#[cfg(feature = "cuda")]
use crate::model::cuda::CudaTransformer;

/// An opened device; models loaded onto it borrow it.
pub enum DeviceRuntime {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(Box<CudaBackend>),
}

/// A model loaded onto a [`DeviceRuntime`] (the GPU one borrows the runtime).
pub enum DeviceModel<'g> {
    Cpu(Transformer, PhantomData<&'g DeviceRuntime>),
    #[cfg(feature = "cuda")]
    Cuda(CudaTransformer<'g>),
}

/// One sequence's KV cache, on the device of the model that made it.
pub enum DeviceCache {
    Cpu(KvCache),
    #[cfg(feature = "cuda")]
    Cuda(CudaKvCache),
}

impl DeviceRuntime {
    /// The CPU, or the GPU. `what` names the setting that asked for the GPU in the error
    /// ("--device cuda", "[generate] device = \"cuda\""); `otherwise` is appended to the
    /// error of a build without CUDA (e.g. ", or use --device cpu").
    pub fn open(device: Device, what: &str, otherwise: &str) -> Result<DeviceRuntime> {
        match device {
            Device::Cpu => Ok(DeviceRuntime::Cpu),
            Device::Cuda => open_gpu(what, otherwise),
        }
    }

    /// "CPU", or the GPU's name.
    pub fn name(&self) -> String {
        match self {
            DeviceRuntime::Cpu => "CPU".into(),
            #[cfg(feature = "cuda")]
            DeviceRuntime::Cuda(gpu) => gpu.device_name().to_string(),
        }
    }

    pub fn is_gpu(&self) -> bool {
        !matches!(self, DeviceRuntime::Cpu)
    }

    /// Loads the model folder `dir` (config.json, weights) onto this device.
    pub fn load(&self, dir: &Path) -> Result<DeviceModel<'_>> {
        Ok(match self {
            DeviceRuntime::Cpu => DeviceModel::Cpu(Transformer::load(dir)?, PhantomData),
            #[cfg(feature = "cuda")]
            DeviceRuntime::Cuda(gpu) => DeviceModel::Cuda(CudaTransformer::from_dir(gpu, dir)?),
        })
    }
}

#[cfg(feature = "cuda")]
fn open_gpu(what: &str, _otherwise: &str) -> Result<DeviceRuntime> {
    let gpu = CudaBackend::require(0, &format!("{what}: no usable GPU"))?;
    Ok(DeviceRuntime::Cuda(Box::new(gpu)))
}

#[cfg(not(feature = "cuda"))]
fn open_gpu(what: &str, otherwise: &str) -> Result<DeviceRuntime> {
    Err(crate::backend::built_without_cuda(what, otherwise))
}

impl DeviceModel<'_> {
    /// The CPU model, if this is one (for code that only runs there).
    pub fn as_cpu(&self) -> Option<&Transformer> {
        match self {
            DeviceModel::Cpu(m, _) => Some(m),
            #[cfg(feature = "cuda")]
            DeviceModel::Cuda(_) => None,
        }
    }
}

impl DeviceCache {
    fn cpu(&mut self) -> Result<&mut KvCache> {
        match self {
            DeviceCache::Cpu(c) => Ok(c),
            #[cfg(feature = "cuda")]
            DeviceCache::Cuda(_) => Err(crate::error::Error(
                "a GPU KV cache was given to the CPU model".into(),
            )),
        }
    }

    #[cfg(feature = "cuda")]
    fn gpu(&mut self) -> Result<&mut CudaKvCache> {
        match self {
            DeviceCache::Cuda(c) => Ok(c),
            DeviceCache::Cpu(_) => Err(crate::error::Error(
                "a CPU KV cache was given to the GPU model".into(),
            )),
        }
    }

    fn len(&self) -> usize {
        match self {
            DeviceCache::Cpu(c) => c.len(),
            #[cfg(feature = "cuda")]
            DeviceCache::Cuda(c) => c.len(),
        }
    }
}

/// Each sequence's tokens with its cache as the device's own type.
fn unwrap_batch<'b, C>(
    batch: &'b mut [(&[u32], &mut DeviceCache)],
    cache: impl Fn(&'b mut DeviceCache) -> Result<&'b mut C>,
) -> Result<Vec<(&'b [u32], &'b mut C)>> {
    batch
        .iter_mut()
        .map(|(tokens, c)| Ok((*tokens, cache(c)?)))
        .collect()
}

impl LanguageModel for DeviceModel<'_> {
    type Cache = DeviceCache;

    fn config(&self) -> &ModelConfig {
        match self {
            DeviceModel::Cpu(m, _) => &m.config,
            #[cfg(feature = "cuda")]
            DeviceModel::Cuda(m) => &m.config,
        }
    }

    fn new_cache(&self) -> DeviceCache {
        match self {
            DeviceModel::Cpu(m, _) => DeviceCache::Cpu(KvCache::new(&m.config)),
            #[cfg(feature = "cuda")]
            DeviceModel::Cuda(m) => DeviceCache::Cuda(m.new_cache()),
        }
    }

    fn cache_len(cache: &DeviceCache) -> usize {
        cache.len()
    }

    fn fork_cache(&self, cache: &DeviceCache) -> Option<DeviceCache> {
        match (self, cache) {
            (DeviceModel::Cpu(..), DeviceCache::Cpu(c)) => Some(DeviceCache::Cpu(c.clone())),
            #[cfg(feature = "cuda")]
            (DeviceModel::Cuda(m), DeviceCache::Cuda(c)) => m.fork_cache(c).map(DeviceCache::Cuda),
            #[cfg(feature = "cuda")]
            _ => None,
        }
    }

    fn forward(
        &mut self,
        batch: &mut [(&[u32], &mut DeviceCache)],
        want: Logits,
    ) -> Result<Vec<Vec<f32>>> {
        match self {
            DeviceModel::Cpu(m, _) => m.forward(&mut unwrap_batch(batch, DeviceCache::cpu)?, want),
            #[cfg(feature = "cuda")]
            DeviceModel::Cuda(m) => m.forward(&mut unwrap_batch(batch, DeviceCache::gpu)?, want),
        }
    }

    fn forward_greedy(
        &mut self,
        batch: &mut [(&[u32], &mut DeviceCache)],
    ) -> Result<Option<Vec<(u32, f32)>>> {
        match self {
            DeviceModel::Cpu(..) => {
                let _ = batch;
                Ok(None)
            }
            #[cfg(feature = "cuda")]
            DeviceModel::Cuda(m) => m
                .forward_greedy(&mut unwrap_batch(batch, DeviceCache::gpu)?)
                .map(Some),
        }
    }
}

/// The GPU model. Its caches live on the GPU; a fork copies them there (None if that fails:
/// the caller then runs the prefix again).
#[cfg(feature = "cuda")]
impl LanguageModel for CudaTransformer<'_> {
    type Cache = CudaKvCache;
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn new_cache(&self) -> CudaKvCache {
        CudaTransformer::new_cache(self)
    }
    fn cache_len(cache: &CudaKvCache) -> usize {
        cache.len()
    }
    fn fork_cache(&self, cache: &CudaKvCache) -> Option<CudaKvCache> {
        cache.fork(self.gpu()).ok()
    }
    fn forward(
        &mut self,
        batch: &mut [(&[u32], &mut CudaKvCache)],
        want: Logits,
    ) -> Result<Vec<Vec<f32>>> {
        CudaTransformer::forward(self, batch, want)
    }
    fn forward_greedy(
        &mut self,
        batch: &mut [(&[u32], &mut CudaKvCache)],
    ) -> Result<Option<Vec<(u32, f32)>>> {
        CudaTransformer::forward_greedy(self, batch).map(Some)
    }
}
