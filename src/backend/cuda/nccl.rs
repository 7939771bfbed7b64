//! The collectives of data parallelism, over NCCL through cudarc's bindings (the library is
//! loaded at run time, like the driver): one process per GPU, each with a [`Communicator`]
//! made from the same unique id, which rank 0 draws ([`nccl_unique_id`]) and hands to the
//! others (`train::launch` passes it through a file). Collectives queue on the backend's
//! stream like any kernel.

use super::{CudaBackend, DeviceBuffer, DeviceElem};
use crate::bail;
use crate::error::{Error, Result};
use cudarc::driver::DevicePtrMut;
use cudarc::nccl::{result, sys};
use half::bf16;

/// Bytes of an NCCL unique id.
pub const NCCL_ID_BYTES: usize = 128;

fn nccl_error(what: &str, e: result::NcclError) -> Error {
    Error(format!("NCCL: {what} failed: {e:?}"))
}

/// Whether libnccl can be loaded; the error says how to make it loadable.
fn check_library() -> Result<()> {
    // SAFETY: only tries to dlopen the library.
    let present = std::panic::catch_unwind(|| unsafe { sys::is_culib_present() }).unwrap_or(false);
    if !present {
        bail!(
            "NCCL: libnccl.so is not loadable: put a directory holding libnccl.so (pip's \
             nvidia-nccl wheel has libnccl.so.2 in nvidia/nccl/lib: link it as libnccl.so) on \
             LD_LIBRARY_PATH"
        );
    }
    Ok(())
}

/// A new unique id for the ranks of one run (rank 0 draws it).
pub fn nccl_unique_id() -> Result<[u8; NCCL_ID_BYTES]> {
    check_library()?;
    let id = result::get_uniqueid().map_err(|e| nccl_error("ncclGetUniqueId", e))?;
    Ok(id.internal.map(|c| c as u8))
}

/// Element types the collectives move.
pub trait NcclElem: DeviceElem {
    const TYPE: sys::ncclDataType_t;
}

impl NcclElem for f32 {
    const TYPE: sys::ncclDataType_t = sys::ncclDataType_t::ncclFloat32;
}

impl NcclElem for bf16 {
    const TYPE: sys::ncclDataType_t = sys::ncclDataType_t::ncclBfloat16;
}

/// One rank's membership of a run's ranks.
pub struct Communicator {
    comm: sys::ncclComm_t,
    rank: usize,
    world: usize,
}

impl std::fmt::Debug for Communicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Communicator(rank {} of {})", self.rank, self.world)
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        // SAFETY: the handle came from ncclCommInitRank and is destroyed once. A failure here
        // has nothing left to clean up.
        let _ = unsafe { result::comm_destroy(self.comm) };
    }
}

impl Communicator {
    /// Joins rank `rank` of `world` ranks on `gpu`; returns when every rank has joined.
    pub fn new(
        gpu: &CudaBackend,
        rank: usize,
        world: usize,
        id: &[u8; NCCL_ID_BYTES],
    ) -> Result<Communicator> {
        check_library()?;
        if rank >= world {
            bail!("NCCL: rank {rank} of a world of {world}");
        }
        gpu.ctx
            .bind_to_thread()
            .map_err(|e| Error(format!("CUDA: binding the context: {e}")))?;
        let id = sys::ncclUniqueId {
            internal: id.map(|b| b as _),
        };
        let mut comm = std::mem::MaybeUninit::uninit();
        // SAFETY: `comm` is written by a successful call and read only then.
        let comm = unsafe {
            result::comm_init_rank(comm.as_mut_ptr(), world as i32, id, rank as i32)
                .map_err(|e| nccl_error(&format!("joining as rank {rank} of {world}"), e))?;
            comm.assume_init()
        };
        Ok(Communicator { comm, rank, world })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    fn stream(gpu: &CudaBackend) -> sys::cudaStream_t {
        gpu.stream().cu_stream() as sys::cudaStream_t
    }

    /// Every rank's `buf` becomes the element-wise sum of all ranks' (in place).
    pub fn all_reduce_sum(&self, gpu: &CudaBackend, buf: &mut DeviceBuffer<f32>) -> Result<()> {
        let stream = gpu.stream();
        let n = buf.len();
        let (ptr, _record) = buf.slice.device_ptr_mut(stream);
        // SAFETY: in place over n f32 of one live allocation, queued on the buffer's stream.
        unsafe {
            result::all_reduce(
                ptr as *const _,
                ptr as *mut _,
                n,
                f32::TYPE,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                Self::stream(gpu),
            )
        }
        .map_err(|e| nccl_error(&format!("all-reduce of {n} f32"), e))?;
        Ok(())
    }

    /// Every rank's `buf` becomes rank `root`'s (in place).
    pub fn broadcast<T: NcclElem>(
        &self,
        gpu: &CudaBackend,
        buf: &mut DeviceBuffer<T>,
        root: usize,
    ) -> Result<()> {
        let stream = gpu.stream();
        let n = buf.len();
        let (ptr, _record) = buf.slice.device_ptr_mut(stream);
        // SAFETY: in place over n elements of one live allocation, queued on its stream.
        unsafe {
            result::broadcast(
                ptr as *const _,
                ptr as *mut _,
                n,
                T::TYPE,
                root as i32,
                self.comm,
                Self::stream(gpu),
            )
        }
        .map_err(|e| nccl_error(&format!("broadcast of {n} elements from rank {root}"), e))?;
        Ok(())
    }

    /// Runs `f` with its collectives fused into one NCCL group (one launch for many tensors).
    pub fn group<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        result::group_start().map_err(|e| nccl_error("ncclGroupStart", e))?;
        let out = f();
        let end = result::group_end().map_err(|e| nccl_error("ncclGroupEnd", e));
        let out = out?;
        end?;
        Ok(out)
    }

    /// Sum of `x` over the ranks (a host scalar through the GPU).
    pub fn sum_scalar(&self, gpu: &CudaBackend, x: f64) -> Result<f64> {
        let mut buf = gpu.upload(&[x as f32])?;
        self.all_reduce_sum(gpu, &mut buf)?;
        Ok(gpu.download(&buf)?[0] as f64)
    }
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a time; the trainer
// owns it and calls it from one thread.
unsafe impl Send for Communicator {}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_refused_without_the_library_or_drawn_with_it() {
        // This machine may or may not have libnccl; either way no panic, and an error says
        // how to fix it.
        match super::nccl_unique_id() {
            Ok(id) => assert!(id.iter().any(|&b| b != 0)),
            Err(e) => assert!(e.to_string().contains("LD_LIBRARY_PATH"), "{e}"),
        }
    }
}
