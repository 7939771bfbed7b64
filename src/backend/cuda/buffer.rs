//! Device buffers of f32, bf16, u32 (and f64 scratch), over cudarc's `CudaSlice`.
//!
//! bf16 travels as its bits (`u16`): cudarc implements its device traits for `half::bf16` only
//! behind a feature that would pull in more crates, and the kernels see `__nv_bfloat16` anyway.

use super::staging::STAGED_MIN_BYTES;
use super::{driver_error, CudaBackend};
use crate::bail;
use crate::error::Result;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut, DeviceRepr, ValidAsZeroBits};
use half::bf16;
use std::sync::Arc;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for u32 {}
    impl Sealed for half::bf16 {}
}

/// An element type a [`DeviceBuffer`] can hold. Every bit pattern is a valid value of each, so
/// reading memory no kernel wrote is wrong but never undefined behaviour.
pub trait DeviceElem: Copy + Send + Sync + 'static + sealed::Sealed {
    /// How the device stores it.
    type Raw: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static;
    fn as_raw(host: &[Self]) -> &[Self::Raw];
    fn from_raw(raw: Vec<Self::Raw>) -> Vec<Self>;
}

impl DeviceElem for f32 {
    type Raw = f32;
    fn as_raw(host: &[f32]) -> &[f32] {
        host
    }
    fn from_raw(raw: Vec<f32>) -> Vec<f32> {
        raw
    }
}

impl DeviceElem for f64 {
    type Raw = f64;
    fn as_raw(host: &[f64]) -> &[f64] {
        host
    }
    fn from_raw(raw: Vec<f64>) -> Vec<f64> {
        raw
    }
}

impl DeviceElem for u32 {
    type Raw = u32;
    fn as_raw(host: &[u32]) -> &[u32] {
        host
    }
    fn from_raw(raw: Vec<u32>) -> Vec<u32> {
        raw
    }
}

impl DeviceElem for bf16 {
    type Raw = u16;
    fn as_raw(host: &[bf16]) -> &[u16] {
        bytemuck::cast_slice(host)
    }
    fn from_raw(raw: Vec<u16>) -> Vec<bf16> {
        bytemuck::allocation::cast_vec(raw)
    }
}

/// The floating-point types the kernels come in; picks a kernel's variant by name.
pub trait Float: DeviceElem {
    /// `pick("k_f32", "k_bf16")` is the name of this type's variant of kernel k.
    fn pick(f32_name: &'static str, bf16_name: &'static str) -> &'static str;
}

impl Float for f32 {
    fn pick(f32_name: &'static str, _: &'static str) -> &'static str {
        f32_name
    }
}

impl Float for bf16 {
    fn pick(_: &'static str, bf16_name: &'static str) -> &'static str {
        bf16_name
    }
}

/// A run of `T` in device memory.
pub struct DeviceBuffer<T: DeviceElem> {
    pub(crate) slice: CudaSlice<T::Raw>,
}

impl<T: DeviceElem> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceBuffer<{}>[{}]",
            std::any::type_name::<T>(),
            self.len()
        )
    }
}

impl<T: DeviceElem> DeviceBuffer<T> {
    pub fn len(&self) -> usize {
        self.slice.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slice.len() == 0
    }

    pub(crate) fn from_slice(stream: &Arc<CudaStream>, host: &[T]) -> Result<DeviceBuffer<T>> {
        let slice = stream
            .clone_htod(T::as_raw(host))
            .map_err(|e| driver_error(&format!("copying {} elements to the GPU", host.len()), e))?;
        Ok(DeviceBuffer { slice })
    }
}

impl CudaBackend {
    /// A copy of `host` on the GPU (large copies through page-locked staging, staging.rs).
    pub fn upload<T: DeviceElem>(&self, host: &[T]) -> Result<DeviceBuffer<T>> {
        if std::mem::size_of_val(host) < STAGED_MIN_BYTES {
            return self.profiled("memcpy_htod", || {
                DeviceBuffer::from_slice(&self.stream, host)
            });
        }
        let mut dst = self.alloc::<T>(host.len())?;
        self.upload_into(host, &mut dst)?;
        Ok(dst)
    }

    /// Overwrites `dst` with `host` (same length).
    pub fn upload_into<T: DeviceElem>(&self, host: &[T], dst: &mut DeviceBuffer<T>) -> Result<()> {
        if host.len() != dst.len() {
            bail!(
                "CUDA: copying {} elements into a device buffer of {}",
                host.len(),
                dst.len()
            );
        }
        if std::mem::size_of_val(host) >= STAGED_MIN_BYTES {
            let raw = T::as_raw(host);
            // SAFETY: the raw device types (f32, f64, u32, u16) are plain bytes with no padding.
            let bytes = unsafe {
                std::slice::from_raw_parts(raw.as_ptr().cast::<u8>(), std::mem::size_of_val(raw))
            };
            let (ptr, _record) = dst.slice.device_ptr_mut(&self.stream);
            return self.upload_staged(bytes, ptr);
        }
        self.profiled("memcpy_htod", || {
            self.stream
                .memcpy_htod(T::as_raw(host), &mut dst.slice)
                .map_err(|e| {
                    driver_error(&format!("copying {} elements to the GPU", host.len()), e)
                })
        })
    }

    /// The buffer's contents, after all queued work (so a kernel's fault shows up here).
    pub fn download<T: DeviceElem>(&self, src: &DeviceBuffer<T>) -> Result<Vec<T>> {
        let raw = self.profiled("memcpy_dtoh", || {
            self.stream.clone_dtoh(&src.slice).map_err(|e| {
                driver_error(&format!("copying {} elements from the GPU", src.len()), e)
            })
        })?;
        self.synchronize()?;
        Ok(T::from_raw(raw))
    }

    /// A copy of `src` in a new buffer (device to device, queued on the stream).
    pub fn copy<T: DeviceElem>(&self, src: &DeviceBuffer<T>) -> Result<DeviceBuffer<T>> {
        let mut dst = self.alloc::<T>(src.len())?;
        self.copy_into(src, &mut dst)?;
        Ok(dst)
    }

    /// Overwrites `dst` with `src` (same length), device to device.
    pub fn copy_into<T: DeviceElem>(
        &self,
        src: &DeviceBuffer<T>,
        dst: &mut DeviceBuffer<T>,
    ) -> Result<()> {
        if src.len() != dst.len() {
            bail!(
                "CUDA: copying {} elements into a device buffer of {}",
                src.len(),
                dst.len()
            );
        }
        if src.is_empty() {
            return Ok(());
        }
        self.profiled("memcpy_dtod", || {
            self.stream
                .memcpy_dtod(&src.slice, &mut dst.slice)
                .map_err(|e| driver_error(&format!("copying {} elements on the GPU", src.len()), e))
        })
    }

    /// Sets every element of `dst` to zero.
    pub fn fill_zeros<T: DeviceElem>(&self, dst: &mut DeviceBuffer<T>) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        self.profiled("memset_zeros", || {
            self.stream
                .memset_zeros(&mut dst.slice)
                .map_err(|e| driver_error(&format!("zeroing {} elements", dst.len()), e))
        })
    }

    /// `len` zeros.
    pub fn zeros<T: DeviceElem>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        let slice = self.profiled("alloc_zeros", || {
            self.stream
                .alloc_zeros::<T::Raw>(len)
                .map_err(|e| driver_error(&format!("allocating {len} elements"), e))
        })?;
        Ok(DeviceBuffer { slice })
    }

    /// `len` elements of unspecified value, for outputs a kernel overwrites.
    pub fn alloc<T: DeviceElem>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        // SAFETY: every bit pattern is a valid T::Raw (see DeviceElem), and the host never
        // reads device memory except through copies.
        let slice = unsafe { self.stream.alloc::<T::Raw>(len) }
            .map_err(|e| driver_error(&format!("allocating {len} elements"), e))?;
        Ok(DeviceBuffer { slice })
    }
}

/// f32 values in page-locked host memory: copies between it and the GPU queue on the stream
/// and run at the bus's full speed (the trainer keeps optimizer state here when the GPU is too
/// small for it).
pub struct HostBuffer {
    slice: cudarc::driver::PinnedHostSlice<f32>,
}

impl std::fmt::Debug for HostBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostBuffer[{}]", self.slice.len())
    }
}

impl HostBuffer {
    pub fn len(&self) -> usize {
        self.slice.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slice.is_empty()
    }

    /// The values, once every queued copy into them has finished.
    pub fn as_slice(&self) -> Result<&[f32]> {
        self.slice
            .as_slice()
            .map_err(|e| driver_error("waiting for a copy to host memory", e))
    }

    /// The values for writing, once every queued copy from or into them has finished.
    pub fn as_mut_slice(&mut self) -> Result<&mut [f32]> {
        self.slice
            .as_mut_slice()
            .map_err(|e| driver_error("waiting for a copy to host memory", e))
    }
}

impl CudaBackend {
    /// `len` zeros in page-locked host memory (`len` > 0).
    pub fn host_zeros(&self, len: usize) -> Result<HostBuffer> {
        if len == 0 {
            bail!("CUDA: a page-locked buffer of 0 elements was asked for");
        }
        // SAFETY: zeroed below before anything reads it. Not write-combined: the host reads it
        // back for checkpoints.
        let slice = unsafe { self.ctx.alloc_pinned_with_flags::<f32>(len, 0) }
            .map_err(|e| driver_error(&format!("allocating {len} f32 of page-locked memory"), e))?;
        let mut buffer = HostBuffer { slice };
        buffer.as_mut_slice()?.fill(0.0);
        Ok(buffer)
    }

    /// Queues the copy of `src` into `dst` (same length).
    pub fn upload_host(&self, src: &HostBuffer, dst: &mut DeviceBuffer<f32>) -> Result<()> {
        if src.len() != dst.len() {
            bail!(
                "CUDA: copying {} host elements into a device buffer of {}",
                src.len(),
                dst.len()
            );
        }
        self.profiled("memcpy_htod", || {
            self.stream
                .memcpy_htod(&src.slice, &mut dst.slice)
                .map_err(|e| driver_error(&format!("copying {} elements to the GPU", src.len()), e))
        })
    }

    /// Queues the copy of `src` into `dst` (same length); `dst`'s accessors wait for it.
    pub fn download_host(&self, src: &DeviceBuffer<f32>, dst: &mut HostBuffer) -> Result<()> {
        if src.len() != dst.len() {
            bail!(
                "CUDA: copying {} device elements into a host buffer of {}",
                src.len(),
                dst.len()
            );
        }
        self.profiled("memcpy_dtoh", || {
            self.stream
                .memcpy_dtoh(&src.slice, &mut dst.slice)
                .map_err(|e| {
                    driver_error(&format!("copying {} elements from the GPU", src.len()), e)
                })
        })
    }
}
