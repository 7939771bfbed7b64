//! Launching kernels/gemm_wgmma.cu's `_mc` kernels in clusters of 2 blocks (the blocks of a
//! cluster share B through TMA multicast): cudarc's launch builder has no cluster dimension, so
//! this calls the driver's `cuLaunchKernelEx` with `CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION`
//! (2, 1, 1), and `cuOccupancyMaxActiveClusters` for how many such clusters fit at once (the
//! persistent grid's size, and the count the cluster choice weighs waves on).

use super::super::gemm::GemmLayout;
use super::super::{kernel_error, CudaBackend, Float};
use super::{
    kernel_name, wgmma_cluster_for, wgmma_clusters_allowed, WgmmaCluster, WgmmaTile, SMEM_BYTES,
    THREADS,
};
use crate::error::{Error, Result};
use cudarc::driver::sys;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

/// Blocks per cluster of the `_mc` kernels (the kernels' CLUSTER).
pub(super) const CLUSTER_BLOCKS: u32 = 2;

/// Per (stream, kernel): the clusters that fit on the device at once, or why none does.
type Slots = HashMap<(usize, &'static str), std::result::Result<usize, String>>;
static SLOTS: OnceLock<Mutex<Slots>> = OnceLock::new();

/// The driver's launch configuration for `blocks` blocks of `threads` in clusters of
/// [`CLUSTER_BLOCKS`], pointing at `attr` (which must outlive its use).
fn cluster_config(
    blocks: u32,
    threads: u32,
    shared_bytes: u32,
    stream: sys::CUstream,
    attr: &mut sys::CUlaunchAttribute,
) -> sys::CUlaunchConfig {
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    attr.value.clusterDim = sys::CUlaunchAttributeValue_union__bindgen_ty_1 {
        x: CLUSTER_BLOCKS,
        y: 1,
        z: 1,
    };
    sys::CUlaunchConfig {
        gridDimX: blocks,
        gridDimY: 1,
        gridDimZ: 1,
        blockDimX: threads,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: shared_bytes,
        hStream: stream,
        attrs: attr,
        numAttrs: 1,
    }
}

fn zeroed_attribute() -> sys::CUlaunchAttribute {
    // SAFETY: a plain C struct (an enum whose value 0 is a valid id, padding, and a union of
    // plain integers) for which all zeros is a valid value.
    unsafe { std::mem::zeroed() }
}

impl CudaBackend {
    /// How many 2-block clusters of `kernel` (an `_mc` kernel, its shared-memory limit raised
    /// to `shared_bytes` here first) can be resident at once on this device: Err when none can
    /// (the driver's `cuOccupancyMaxActiveClusters` says 0 or fails). Asked once per stream and
    /// kernel.
    pub(super) fn cluster_slots(
        &self,
        kernel: &'static str,
        threads: u32,
        shared_bytes: u32,
    ) -> Result<usize> {
        let key = (Arc::as_ptr(self.stream()) as usize, kernel);
        let cache = SLOTS.get_or_init(|| Mutex::new(HashMap::new()));
        let mut cache = match cache.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(), // a cache: any contents are still valid
        };
        let found = cache.entry(key).or_insert_with(|| {
            // The occupancy answer depends on the shared-memory opt-in, which the launch sets.
            self.raise_shared_limit(kernel, &|| "occupancy query".to_string())
                .map_err(|e| e.to_string())?;
            let func = self.function(kernel).map_err(|e| e.to_string())?;
            let mut attr = zeroed_attribute();
            // The grid size does not matter to the query; one cluster's worth.
            let cfg = cluster_config(
                CLUSTER_BLOCKS,
                threads,
                shared_bytes,
                self.stream().cu_stream(),
                &mut attr,
            );
            let mut clusters: std::ffi::c_int = 0;
            self.stream()
                .context()
                .bind_to_thread()
                .map_err(|e| format!("binding the context: {e}"))?;
            // SAFETY: `cfg` points at `attr`, alive here; `func` is a loaded function.
            unsafe { sys::cuOccupancyMaxActiveClusters(&mut clusters, func.cu_function(), &cfg) }
                .result()
                .map_err(|e| format!("cuOccupancyMaxActiveClusters failed: {e}"))?;
            match usize::try_from(clusters) {
                Ok(c) if c > 0 => Ok(c),
                _ => Err(format!(
                    "no cluster of {CLUSTER_BLOCKS} blocks of {shared_bytes} shared bytes fits \
                     (cuOccupancyMaxActiveClusters: {clusters})"
                )),
            }
        });
        found
            .clone()
            .map_err(|why| Error(format!("CUDA kernel {kernel}: {why}")))
    }

    /// Launches `kernel` on `blocks` blocks (a multiple of [`CLUSTER_BLOCKS`]) of `threads` in
    /// clusters of [`CLUSTER_BLOCKS`], with `args` pointing at each kernel argument in the
    /// order of its C signature. The caller holds the buffers' stream-ordering guards
    /// (`device_ptr` / `device_ptr_mut`) across this call.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters type for type, and every buffer the kernel
    /// touches must be as large as the shapes the caller checked.
    pub(super) unsafe fn launch_clustered(
        &self,
        kernel: &'static str,
        blocks: u32,
        threads: u32,
        shared_bytes: u32,
        args: &mut [*mut c_void],
        shapes: &dyn Fn() -> String,
    ) -> Result<()> {
        let func = self.function(kernel)?;
        let mut attr = zeroed_attribute();
        let cfg = cluster_config(
            blocks,
            threads,
            shared_bytes,
            self.stream().cu_stream(),
            &mut attr,
        );
        self.stream()
            .context()
            .bind_to_thread()
            .map_err(|e| kernel_error(kernel, &shapes(), "binding the context", e))?;
        let mark = self.profile_before(kernel)?;
        // SAFETY: `cfg` points at `attr`, alive here; the caller vouches for `args`.
        unsafe {
            sys::cuLaunchKernelEx(
                &cfg,
                func.cu_function(),
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(|e| kernel_error(kernel, &shapes(), "cluster launch", e))?;
        self.profile_after(mark)?;
        self.after_launch(kernel, shapes)
    }
}

/// The cluster choice of a product, as [`CudaBackend::gemm_bf16_wgmma_variant`] resolves it.
impl CudaBackend {
    /// Whether a product on `tile` (chosen, not Auto) runs on 2-block clusters (Pair) or not
    /// (Off), as [`CudaBackend::gemm_bf16_wgmma_variant`] resolves `cluster`: Auto is Off under
    /// `IMPLICIT_GEMM=wgmma-nocluster` or where the device fits no 2-block cluster of the
    /// kernel, else [`wgmma_cluster_for`]; Pair is an error where no cluster fits.
    #[doc(hidden)]
    pub fn wgmma_cluster<O: Float>(
        &self,
        cluster: WgmmaCluster,
        layout: GemmLayout,
        tile: WgmmaTile,
        m: usize,
        n: usize,
        batch: usize,
    ) -> Result<WgmmaCluster> {
        let kernel = kernel_name::<O>(layout, tile, true);
        let slots = || self.cluster_slots(kernel, THREADS, SMEM_BYTES);
        match cluster {
            WgmmaCluster::Off => Ok(WgmmaCluster::Off),
            WgmmaCluster::Pair => slots().map(|_| WgmmaCluster::Pair),
            WgmmaCluster::Auto => {
                if !wgmma_clusters_allowed()? {
                    return Ok(WgmmaCluster::Off);
                }
                Ok(match slots() {
                    Ok(clusters) => wgmma_cluster_for(
                        m,
                        n,
                        batch,
                        tile.columns(),
                        self.multiprocessors as usize,
                        clusters,
                    ),
                    Err(_) => WgmmaCluster::Off, // the 1-block kernels run anywhere wgmma does
                })
            }
        }
    }

    /// The device's multiprocessors, which the tile and cluster choices count waves on.
    #[doc(hidden)]
    pub fn multiprocessor_count(&self) -> usize {
        self.multiprocessors as usize
    }

    /// How many 2-block clusters of the `_mc` kernel for `layout`, `O` and `tile` (not Auto)
    /// fit on this device at once (the driver's occupancy answer the choice and the grid use);
    /// Err where none does.
    #[doc(hidden)]
    pub fn wgmma_cluster_slots<O: Float>(
        &self,
        layout: GemmLayout,
        tile: WgmmaTile,
    ) -> Result<usize> {
        self.cluster_slots(kernel_name::<O>(layout, tile, true), THREADS, SMEM_BYTES)
    }
}
