//! The Hopper flash attention forward (kernels/attention_hopper_fwd.cu: FlashAttention-3's
//! scheme, wgmma fed by the tensor memory accelerator, a producer and two consumer warpgroups,
//! the softmax of one key block under the next block's products): its tensor maps, launch and
//! shape checks. Same contract as [`CudaBackend::flash_attention_forward`] (layouts in
//! flash_attention.rs's module docs; lse = ln Σ exp of the scaled scores; out rounded to bf16),
//! so the backward kernels take its out and lse unchanged.
//!
//! [`CudaBackend::flash_attention_forward`] routes here when `IMPLICIT_ATTENTION` is unset or
//! `hopper` ([`super::attention_choice`]), the device has compute capability 9.0 and runs the
//! sm_90a images ([`CudaBackend::wgmma_available`]: the GEMM's probe, the same build flags),
//! and [`hopper_forward_problem`] accepts the shape and buffers; else it takes
//! kernels/flash_attention.cu. Tests and the benchmark call
//! [`CudaBackend::flash_attention_forward_hopper`] directly, which never falls back.

use super::flash_attention::{
    attention_choice, check_shape, describe, raise_smem_limit, AttentionChoice, Checked,
    FlashOffsets,
};
use super::tensor_map::{encode_attention, MAX_STRIDE_BYTES};
use super::{CudaBackend, DeviceBuffer};
use crate::backend::cpu::attention::AttentionShape;
use crate::bail;
use crate::error::{Error, Result};
use cudarc::driver::{DevicePtr, LaunchConfig};
use half::bf16;

/// Queries per block (two consumer warpgroups of 64) and rows of every TMA box.
const TILE_ROWS: usize = 128;
/// One producer and two consumer warpgroups.
const THREADS: u32 = 384;
/// Most blocks along the grid's y and z dimensions (query tiles, batch).
const MAX_GRID_YZ: usize = 65535;

/// Dynamic shared memory: Q, two K and two V tiles of 128 rows × head_dim bf16, plus 1 KiB to
/// align them to the 128-byte swizzle's atom (the kernel asserts the same numbers).
fn smem_bytes(head_dim: usize) -> u32 {
    if head_dim == 64 {
        82_944
    } else {
        164_864
    }
}

fn kernel_name(head_dim: usize) -> &'static str {
    if head_dim == 64 {
        "attention_hopper_fwd_hd64"
    } else {
        "attention_hopper_fwd_hd128"
    }
}

/// Why the Hopper forward cannot take this shape (None: it can), on buffers whose q/out and
/// k/v start at device addresses `q_addr` and `kv_addr` (after any offset). The shape itself
/// (head_dim, heads, queries ≤ keys) was checked by the caller.
pub(super) fn hopper_forward_problem(
    shape: AttentionShape,
    batch: usize,
    addresses: [u64; 4],
) -> Option<String> {
    if shape.queries.div_ceil(TILE_ROWS) > MAX_GRID_YZ {
        return Some(format!(
            "{} query tiles of {TILE_ROWS} (at most {MAX_GRID_YZ} in one launch)",
            shape.queries.div_ceil(TILE_ROWS)
        ));
    }
    if batch > MAX_GRID_YZ {
        return Some(format!("batch {batch} over {MAX_GRID_YZ} (one launch)"));
    }
    if let Some(&a) = addresses.iter().find(|a| !a.is_multiple_of(16)) {
        return Some(format!(
            "a buffer starts at {a:#x}, TMA needs 16-byte alignment"
        ));
    }
    let hd = shape.head_dim as u64;
    for (name, rows, heads) in [
        ("q", shape.queries, shape.heads),
        ("k", shape.keys, shape.kv_heads),
    ] {
        let sequence_bytes = (rows as u64)
            .checked_mul(heads as u64)
            .and_then(|e| e.checked_mul(2 * hd));
        if sequence_bytes.is_none_or(|b| b >= MAX_STRIDE_BYTES) {
            return Some(format!(
                "one sequence of {name} is over TMA's 2^40-byte stride limit"
            ));
        }
        if rows > u32::MAX as usize || heads > u32::MAX as usize {
            return Some(format!(
                "{name}'s rows or heads exceed TMA's 2^32 dimension"
            ));
        }
    }
    None
}

impl CudaBackend {
    /// Whether [`CudaBackend::flash_attention_forward`] (and its `_at` form) gives this call to
    /// the Hopper kernel: `IMPLICIT_ATTENTION` allows it (an unknown value is an error), the
    /// device has compute capability 9.0, and [`CudaBackend::hopper_forward_supports`] says Ok.
    pub(super) fn hopper_forward_chosen(
        &self,
        shape: AttentionShape,
        batch: usize,
        buffers: [&DeviceBuffer<bf16>; 4],
        at: FlashOffsets,
    ) -> Result<bool> {
        Ok(self.hopper_attention_allowed()?
            && self
                .hopper_forward_supports(shape, batch, buffers, at)
                .is_ok())
    }

    /// The kernel [`CudaBackend::flash_attention_forward`] runs for this shape on whole
    /// buffers (which are 16-byte aligned), and why when it is not the Hopper one: what
    /// benchmarks record beside their figures.
    pub fn attention_forward_kernel(&self, shape: AttentionShape, batch: usize) -> String {
        let sm80 = if shape.head_dim == 64 {
            "flash_fwd_hd64"
        } else {
            "flash_fwd_hd128"
        };
        let hopper = (|| -> Result<()> {
            if attention_choice()? == AttentionChoice::Sm80 {
                bail!("{}=sm80", super::ATTENTION_ENV);
            }
            check_shape("Hopper attention forward", shape, batch)?;
            self.wgmma_available()?;
            match hopper_forward_problem(shape, batch, [0; 4]) {
                None => Ok(()),
                Some(why) => bail!("{why}"),
            }
        })();
        match hopper {
            Ok(()) => kernel_name(shape.head_dim).to_string(),
            Err(e) => format!("{sm80} ({e})"),
        }
    }

    /// Whether [`CudaBackend::flash_attention_forward`] can give this call to the Hopper kernel:
    /// Ok, or why not (device, driver, image, shape or buffers). `at`: where the sequence starts
    /// inside the buffers (zeros for whole buffers).
    pub(crate) fn hopper_forward_supports(
        &self,
        shape: AttentionShape,
        batch: usize,
        [q, k, v, out]: [&DeviceBuffer<bf16>; 4],
        at: FlashOffsets,
    ) -> Result<()> {
        const WHAT: &str = "Hopper attention forward";
        check_shape(WHAT, shape, batch)?;
        self.wgmma_available()?;
        let stream = self.stream();
        let (pq, _rq) = q.slice.device_ptr(stream);
        let (pk, _rk) = k.slice.device_ptr(stream);
        let (pv, _rv) = v.slice.device_ptr(stream);
        let (po, _ro) = out.slice.device_ptr(stream);
        let (oq, okv) = (2 * at.q as u64, 2 * at.kv as u64);
        match hopper_forward_problem(shape, batch, [pq + oq, pk + okv, pv + okv, po + oq]) {
            None => Ok(()),
            Some(why) => bail!("{WHAT} ({}) cannot run: {why}", describe(shape, batch)),
        }
    }

    /// [`CudaBackend::flash_attention_forward`] on the Hopper kernel
    /// (kernels/attention_hopper_fwd.cu), whatever `IMPLICIT_ATTENTION` says: out and the
    /// log-sum-exp lse for `batch` sequences, layouts as there. Never falls back: a device or
    /// shape it cannot take is an error naming the kernel and the shapes.
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attention_forward_hopper(
        &self,
        shape: AttentionShape,
        batch: usize,
        q: &DeviceBuffer<bf16>,
        k: &DeviceBuffer<bf16>,
        v: &DeviceBuffer<bf16>,
        out: &mut DeviceBuffer<bf16>,
        lse: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        const WHAT: &str = "CUDA Hopper attention forward";
        let c = check_shape(WHAT, shape, batch)?;
        let lens = [q.len(), k.len(), v.len(), out.len(), lse.len()];
        c.forward_buffers(WHAT, shape, batch, lens)?;
        let at = FlashOffsets { q: 0, kv: 0 };
        self.hopper_forward_launch(WHAT, shape, batch, &c, [q, k, v], at, out, lse)
    }

    /// [`CudaBackend::flash_attention_forward_hopper`] of one sequence inside larger buffers,
    /// as [`CudaBackend::flash_attention_forward_at`]: q and out rows from element `at.q`, keys
    /// and values from element `at.kv` (a KV cache layer), lse `[heads, queries]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn flash_attention_forward_hopper_at(
        &self,
        shape: AttentionShape,
        q: &DeviceBuffer<bf16>,
        k: &DeviceBuffer<bf16>,
        v: &DeviceBuffer<bf16>,
        at: FlashOffsets,
        out: &mut DeviceBuffer<bf16>,
        lse: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        const WHAT: &str = "CUDA Hopper attention forward (in place)";
        let c = check_shape(WHAT, shape, 1)?;
        c.forward_buffers_at(
            WHAT,
            shape,
            [q.len(), k.len(), v.len(), out.len(), lse.len()],
            at,
        )?;
        self.hopper_forward_launch(WHAT, shape, 1, &c, [q, k, v], at, out, lse)
    }

    /// The kernel on checked buffers, q/out and k/v read from the given elements on.
    #[allow(clippy::too_many_arguments)]
    fn hopper_forward_launch(
        &self,
        what: &str,
        shape: AttentionShape,
        batch: usize,
        c: &Checked,
        [q, k, v]: [&DeviceBuffer<bf16>; 3],
        at: FlashOffsets,
        out: &mut DeviceBuffer<bf16>,
        lse: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        if c.q_len == 0 {
            return Ok(()); // no query: nothing to write
        }
        let kernel = kernel_name(shape.head_dim);
        let shapes = || describe(shape, batch);
        if let Err(e) = self.hopper_forward_supports(shape, batch, [q, k, v, &*out], at) {
            bail!("{what} {kernel}: {e}");
        }
        let stream = self.stream();
        // The guards keep the buffers' stream-ordering records alive until after the launch.
        let (pq, _rq) = q.slice.device_ptr(stream);
        let (pk, _rk) = k.slice.device_ptr(stream);
        let (pv, _rv) = v.slice.device_ptr(stream);
        let (oq, okv) = (2 * at.q as u64, 2 * at.kv as u64);
        let hd = shape.head_dim;
        let map = |name: &str, addr: u64, rows: usize, heads: usize| {
            encode_attention(addr, batch, rows, heads, hd, TILE_ROWS as u32)
                .map_err(|e| Error(format!("{what} {kernel} ({}): {name}: {e}", shapes())))
        };
        let map_q = map("q", pq + oq, shape.queries, shape.heads)?;
        let map_k = map("k", pk + okv, shape.keys, shape.kv_heads)?;
        let map_v = map("v", pv + okv, shape.keys, shape.kv_heads)?;

        let smem = smem_bytes(hd);
        raise_smem_limit(self, kernel, smem, shapes)?;
        // One block per (head, 128-query tile, sequence); heads on x so that the query heads of
        // a KV group run side by side and share K/V in L2 (hopper_forward_problem bounded y, z).
        let cfg = LaunchConfig {
            grid_dim: (
                shape.heads as u32,
                shape.queries.div_ceil(TILE_ROWS) as u32,
                batch as u32,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: smem,
        };
        let scale_log2 = std::f32::consts::LOG2_E / (hd as f32).sqrt();
        let mut out_view = out.slice.slice_mut(at.q..at.q + c.q_len);
        launch!(
            self,
            kernel,
            cfg,
            shapes(),
            [
                &map_q,
                &map_k,
                &map_v,
                &mut out_view,
                &mut lse.slice,
                &c.queries,
                &c.keys,
                &c.heads,
                &c.kv_heads,
                &scale_log2
            ]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(queries: usize, keys: usize, heads: usize, head_dim: usize) -> AttentionShape {
        AttentionShape {
            queries,
            keys,
            heads,
            kv_heads: heads,
            head_dim,
        }
    }

    #[test]
    fn shapes_the_kernel_cannot_take_are_named() {
        let ok = [0u64, 16, 32, 48];
        assert_eq!(
            hopper_forward_problem(shape(2048, 2048, 32, 128), 2, ok),
            None
        );
        // Too many query tiles for the grid's y, too many sequences for its z.
        let long = hopper_forward_problem(shape(65536 * 128 + 1, 65536 * 128 + 1, 1, 64), 1, ok);
        assert!(long.unwrap().contains("query tiles"));
        let many = hopper_forward_problem(shape(8, 8, 1, 64), 65536, ok);
        assert!(many.unwrap().contains("batch 65536"));
        // A buffer (say k at an odd element offset) that TMA cannot address.
        let odd = hopper_forward_problem(shape(8, 8, 1, 64), 1, [0, 18, 32, 48]);
        assert!(odd.unwrap().contains("0x12"));
        // A sequence over 2^40 bytes.
        let huge = hopper_forward_problem(shape(1 << 20, 1 << 20, 1 << 14, 128), 1, ok);
        assert!(huge.unwrap().contains("2^40"));
    }

    #[test]
    fn shared_memory_matches_the_tiles() {
        // Q + 2 K + 2 V tiles of 128 rows × head_dim bf16, plus the 1 KiB alignment slack.
        for hd in [64, 128] {
            assert_eq!(smem_bytes(hd) as usize, 5 * 128 * hd * 2 + 1024);
        }
    }
}
