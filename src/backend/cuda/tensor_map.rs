//! The tensor maps (`CUtensorMap`) through which the Hopper kernels' TMA copies address global
//! memory: [`TensorMap`], one as a kernel argument, and [`encode_tiled`], the one call of
//! `cuTensorMapEncodeTiled` that gemm_wgmma.rs, attention_hopper_fwd.rs and
//! attention_hopper_bwd.rs make (128-byte swizzle, out-of-bounds elements read as zeros), with
//! [`encode_attention`] for the attention tensors both attention directions read, and TMA's
//! stride limit [`MAX_STRIDE_BYTES`] their checks share. No kernel file of its own (like
//! buffer.rs).

use cudarc::driver::{sys, DeviceRepr};

/// TMA's limit on a global stride (bytes, exclusive), which the callers check.
pub(super) const MAX_STRIDE_BYTES: u64 = 1 << 40;

/// A tensor map as a kernel argument (`const __grid_constant__ CUtensorMap`).
#[repr(transparent)]
pub(super) struct TensorMap(sys::CUtensorMap);

// SAFETY: a CUtensorMap is 128 plain bytes (64- or 128-byte aligned, as the driver wants them)
// that the kernel takes by value; the driver copies them into the parameter space at launch.
unsafe impl DeviceRepr for TensorMap {}

impl TensorMap {
    /// All zeros: the argument of a map the kernel does not read.
    pub(super) fn unused() -> TensorMap {
        TensorMap(sys::CUtensorMap { opaque: [0; 16] })
    }
}

/// `cuTensorMapEncodeTiled` for a `RANK`-d tensor of `dtype` at `addr`: `dims` innermost
/// first, `strides` the bytes between consecutive indices of dimensions 1.. (`RANK` − 1 of
/// them: dimension 0 is contiguous), `boxes` the box a copy moves; element strides 1, no
/// interleave, 128-byte swizzle, L2 promotion of 256 bytes, out-of-bounds elements read as
/// zeros (and not written by stores). The callers check what the driver requires of the rest:
/// `addr` 16-byte aligned, the strides multiples of 16 below 2^40 (`hopper_forward_problem`,
/// the backward's and the GEMM's `shape_problem`, `tma_epilogue_problem`).
pub(super) fn encode_tiled<const RANK: usize>(
    dtype: sys::CUtensorMapDataType,
    addr: u64,
    dims: [u64; RANK],
    strides: &[u64],
    boxes: [u32; RANK],
) -> std::result::Result<TensorMap, String> {
    if RANK == 0 || strides.len() != RANK - 1 {
        return Err(format!(
            "cuTensorMapEncodeTiled (dims {dims:?}, strides {strides:?} bytes): a rank-{RANK} \
             map takes {} strides",
            RANK.saturating_sub(1)
        ));
    }
    let element_strides = [1u32; RANK];
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    // SAFETY: every array has the rank's length (strides one less, checked above); `map` is a
    // writable, suitably aligned CUtensorMap. The driver reads the arrays and only writes `map`.
    let status = unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            dtype,
            RANK as u32,
            addr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    status.result().map_err(|e| {
        format!(
            "cuTensorMapEncodeTiled (dims {dims:?}, strides {strides:?} bytes, box {boxes:?}) \
             failed: {e}"
        )
    })?;
    Ok(TensorMap(map))
}

/// The layout [`encode_attention`] encodes: (dims, byte strides, box).
type AttentionLayout = ([u64; 4], [u64; 3], [u32; 4]);

/// dims, strides and box of a bf16 `[batch, rows, heads, head_dim]` tensor: 4-d (head_dim,
/// heads, rows, batch), so that the strides grow with the dimension; boxes of 64 columns
/// (128 bytes: the 128-byte swizzle's row) × 1 head × `box_rows` rows.
fn attention_layout(
    batch: usize,
    rows: usize,
    heads: usize,
    head_dim: usize,
    box_rows: u32,
) -> AttentionLayout {
    let dims = [head_dim as u64, heads as u64, rows as u64, batch as u64];
    // Bytes between heads, rows and sequences (dimension 0 is contiguous and not given).
    let row = 2 * (heads * head_dim) as u64;
    let strides = [2 * head_dim as u64, row, row * rows as u64];
    (dims, strides, [64, 1, box_rows, 1])
}

/// The tensor map of a bf16 `[batch, rows, heads, head_dim]` attention tensor (q, k, v, out,
/// their gradients) at `addr`: see `attention_layout`; rows past `rows` read as zeros.
pub(super) fn encode_attention(
    addr: u64,
    batch: usize,
    rows: usize,
    heads: usize,
    head_dim: usize,
    box_rows: u32,
) -> std::result::Result<TensorMap, String> {
    let (dims, strides, boxes) = attention_layout(batch, rows, heads, head_dim, box_rows);
    encode_tiled(
        sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        addr,
        dims,
        &strides,
        boxes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attention layout both directions encoded before they shared it (their own `encode`):
    /// q of batch 2, 300 rows, 12 heads of 128 as (128, 12, 300, 2) with strides of one head
    /// (256 bytes), one row (12 × 128 × 2 = 3072) and one sequence (3072 × 300 = 921600).
    #[test]
    fn attention_layout_matches_the_row_major_tensor() {
        let (dims, strides, boxes) = attention_layout(2, 300, 12, 128, 64);
        assert_eq!(dims, [128, 12, 300, 2]);
        assert_eq!(strides, [256, 3072, 921_600]);
        assert_eq!(boxes, [64, 1, 64, 1]);
        let (_, strides, boxes) = attention_layout(1, 7, 2, 64, 128);
        assert_eq!(strides, [128, 256, 1792]);
        assert_eq!(boxes, [64, 1, 128, 1]);
    }

    /// A strides array of the wrong length is refused before the driver is called (it would
    /// read past the array): this runs without a GPU or a driver.
    #[test]
    fn wrong_stride_count_is_an_error_naming_the_arrays() {
        let dtype = sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
        let err = match encode_tiled(dtype, 0, [64u64, 8, 2], &[128], [64, 8, 1]) {
            Err(e) => e,
            Ok(_) => panic!("a rank-3 map with one stride was encoded"),
        };
        assert_eq!(
            err,
            "cuTensorMapEncodeTiled (dims [64, 8, 2], strides [128] bytes): a rank-3 map takes \
             2 strides"
        );
    }
}
