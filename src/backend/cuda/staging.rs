//! Large host-to-device copies through page-locked staging buffers. A copy from ordinary
//! (pageable) memory, such as the memory-mapped safetensors a model loads from, goes through
//! the driver's own small bounce buffer one piece at a time; here the host fills one of two
//! 32 MiB page-locked buffers (with several threads, which also parallelises the page faults of
//! a memory-mapped file) while the copy engine drains the other, so that reading the file and
//! the transfer overlap.

use super::{driver_error, CudaBackend};
use crate::backend::cpu::parallel::parallel_chunks_mut;
use crate::error::Result;
use cudarc::driver::{result, sys, CudaEvent, PinnedHostSlice};

/// Bytes of each staging buffer.
const STAGE_BYTES: usize = 32 << 20;
/// Copies this large or larger are staged; smaller ones go straight to the driver.
pub(super) const STAGED_MIN_BYTES: usize = 16 << 20;
/// Bytes each host thread copies at a time.
const PIECE_BYTES: usize = 2 << 20;

/// Two page-locked buffers and the events marking the end of the last copy out of each.
pub(super) struct Stages {
    buffers: [PinnedHostSlice<u8>; 2],
    done: [CudaEvent; 2],
}

impl Drop for Stages {
    /// The last copies out of the buffers may still be running: wait for them before the
    /// page-locked memory is freed under the copy engine.
    fn drop(&mut self) {
        for done in &self.done {
            if let Err(e) = done.synchronize() {
                eprintln!("warning: waiting for a staged copy before freeing its buffer: {e}");
            }
        }
    }
}

impl CudaBackend {
    fn new_stages(&self) -> Result<Stages> {
        let buffer = || {
            // SAFETY: the host writes each buffer before the device reads it.
            unsafe { self.ctx.alloc_pinned_with_flags::<u8>(STAGE_BYTES, 0) }
                .map_err(|e| driver_error("allocating a page-locked staging buffer", e))
        };
        let event = || {
            self.ctx
                .new_event(None)
                .map_err(|e| driver_error("creating a staging event", e))
        };
        Ok(Stages {
            buffers: [buffer()?, buffer()?],
            done: [event()?, event()?],
        })
    }

    /// Queues the copy of `src` to device address `dst` (at least `src.len()` bytes there)
    /// through the staging buffers. Returns once every byte of `src` has been read: the caller
    /// may drop it; the device copies finish in stream order.
    pub(super) fn upload_staged(&self, src: &[u8], dst: sys::CUdeviceptr) -> Result<()> {
        let mut guard = match self.stages.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(), // the buffers hold no state between calls
        };
        if guard.is_none() {
            *guard = Some(Box::new(self.new_stages()?));
        }
        let stages = guard.as_mut().expect("created above");
        for (i, chunk) in src.chunks(STAGE_BYTES).enumerate() {
            let k = i % 2;
            // The previous copy out of this buffer must be over before it is refilled.
            stages.done[k]
                .synchronize()
                .map_err(|e| driver_error("waiting for a staged copy", e))?;
            let buffer = stages.buffers[k]
                .as_mut_slice()
                .map_err(|e| driver_error("reaching a staging buffer", e))?;
            let buffer = &mut buffer[..chunk.len()];
            parallel_chunks_mut(buffer, PIECE_BYTES, |j, piece| {
                let start = j * PIECE_BYTES;
                piece.copy_from_slice(&chunk[start..start + piece.len()]);
            });
            let at = dst + (i * STAGE_BYTES) as u64;
            self.profiled("memcpy_htod", || {
                // SAFETY: `buffer` is page-locked and stays untouched until `done[k]` has
                // passed (waited for above before any refill); the destination holds
                // src.len() bytes.
                unsafe { result::memcpy_htod_async(at, &*buffer, self.stream.cu_stream()) }.map_err(
                    |e| driver_error(&format!("copying {} bytes to the GPU", chunk.len()), e),
                )
            })?;
            stages.done[k]
                .record(&self.stream)
                .map_err(|e| driver_error("recording a staged copy", e))?;
        }
        Ok(())
    }
}
