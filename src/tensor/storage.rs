//! Tensor storage: owned vectors, or a typed window into a memory-mapped file.

use super::{DType, Elems};
use half::{bf16, f16};
use memmap2::Mmap;
use std::sync::Arc;

#[derive(Debug)]
pub enum Storage {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    /// `len` elements of `dtype` at byte `offset` of a mapped file; the offset is aligned
    /// to the element size (loaders copy instead where it is not).
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
        dtype: DType,
    },
}

impl Storage {
    pub fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) => DType::F32,
            Storage::BF16(_) => DType::BF16,
            Storage::F16(_) => DType::F16,
            Storage::Mapped { dtype, .. } => *dtype,
        }
    }
    pub fn len(&self) -> usize {
        self.elems().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn elems(&self) -> Elems<'_> {
        match self {
            Storage::F32(v) => Elems::F32(v),
            Storage::BF16(v) => Elems::BF16(v),
            Storage::F16(v) => Elems::F16(v),
            Storage::Mapped {
                map,
                offset,
                len,
                dtype,
            } => {
                let bytes = &map[*offset..*offset + len * dtype.size()];
                // Alignment was checked when the storage was made.
                match dtype {
                    DType::F32 => Elems::F32(bytemuck::cast_slice(bytes)),
                    DType::BF16 => Elems::BF16(bytemuck::cast_slice(bytes)),
                    DType::F16 => Elems::F16(bytemuck::cast_slice(bytes)),
                }
            }
        }
    }
}
