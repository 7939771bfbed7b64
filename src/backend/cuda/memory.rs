//! Device memory accounting. Every buffer comes from the device's default stream-ordered pool
//! (cudarc allocates with `cuMemAllocAsync`), so the pool's own counters give the peak memory a
//! run used; and the pool keeps freed memory for reuse instead of returning it to the driver at
//! each synchronisation (release threshold: unlimited), which would make every training step
//! map its activations afresh.

use super::{driver_error, CudaBackend};
use crate::error::Result;
use cudarc::driver::{result, sys};

/// Bytes of device memory as the driver and the pool see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemoryUse {
    /// The device's memory.
    pub total_bytes: u64,
    /// Free on the device (memory the pool keeps counts as used).
    pub free_bytes: u64,
    /// In live buffers now.
    pub used_bytes: u64,
    /// Most bytes in live buffers at once since the last [`CudaBackend::reset_peak_memory`].
    pub peak_used_bytes: u64,
    /// Most bytes the pool held from the driver at once since the last reset.
    pub peak_reserved_bytes: u64,
}

impl CudaBackend {
    fn memory_pool(&self) -> Result<sys::CUmemoryPool> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_error("binding the context", e))?;
        let mut pool = std::ptr::null_mut();
        // SAFETY: writes the device's default pool handle into `pool`.
        unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, self.ctx.cu_device()) }
            .result()
            .map_err(|e| driver_error("cuDeviceGetDefaultMemPool", e))?;
        Ok(pool)
    }

    fn pool_attribute(&self, attr: sys::CUmemPool_attribute) -> Result<u64> {
        let pool = self.memory_pool()?;
        let mut value = 0u64;
        // SAFETY: the byte-count attributes are cuuint64_t, written into `value`.
        unsafe { sys::cuMemPoolGetAttribute(pool, attr, (&mut value as *mut u64).cast()) }
            .result()
            .map_err(|e| driver_error(&format!("cuMemPoolGetAttribute({attr:?})"), e))?;
        Ok(value)
    }

    fn set_pool_attribute(&self, attr: sys::CUmemPool_attribute, mut value: u64) -> Result<()> {
        let pool = self.memory_pool()?;
        // SAFETY: as above; the driver reads a cuuint64_t.
        unsafe { sys::cuMemPoolSetAttribute(pool, attr, (&mut value as *mut u64).cast()) }
            .result()
            .map_err(|e| driver_error(&format!("cuMemPoolSetAttribute({attr:?})"), e))
    }

    /// Lets the pool keep freed memory (see the module docs). Called once at start.
    pub(super) fn keep_pool_memory(&self) -> Result<()> {
        use sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
        self.set_pool_attribute(CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, u64::MAX)
    }

    /// The device's memory now and the pool's peaks (after all queued work).
    pub fn memory_use(&self) -> Result<MemoryUse> {
        use sys::CUmemPool_attribute::*;
        self.synchronize()?;
        let (free, total) = result::mem_get_info().map_err(|e| driver_error("cuMemGetInfo", e))?;
        Ok(MemoryUse {
            total_bytes: total as u64,
            free_bytes: free as u64,
            used_bytes: self.pool_attribute(CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?,
            peak_used_bytes: self.pool_attribute(CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
            peak_reserved_bytes: self.pool_attribute(CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?,
        })
    }

    /// Starts the peaks of [`CudaBackend::memory_use`] again from the current use.
    pub fn reset_peak_memory(&self) -> Result<()> {
        use sys::CUmemPool_attribute::*;
        self.synchronize()?;
        // The driver accepts only 0, which resets the high-water marks to the current values.
        self.set_pool_attribute(CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0)?;
        self.set_pool_attribute(CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH, 0)
    }
}
