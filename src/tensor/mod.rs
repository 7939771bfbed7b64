//! Tensors: a dtype, a shape, strides and an offset over shared storage.
//!
//! Storage is either owned (a `Vec` of one element type) or a read-only view into a
//! memory-mapped safetensors file, so that weights whose dtype already fits are never copied.

mod real;
mod storage;

pub use real::Real;
pub use storage::Storage;

use crate::bail;
use crate::error::Result;
use half::{bf16, f16};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    F16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::BF16 => "BF16",
            DType::F16 => "F16",
        }
    }
}

/// A borrowed, contiguous run of elements of one dtype: what CPU kernels take for weights.
#[derive(Clone, Copy, Debug)]
pub enum Elems<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

impl<'a> Elems<'a> {
    pub fn len(&self) -> usize {
        match self {
            Elems::F32(s) => s.len(),
            Elems::BF16(s) => s.len(),
            Elems::F16(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype(&self) -> DType {
        match self {
            Elems::F32(_) => DType::F32,
            Elems::BF16(_) => DType::BF16,
            Elems::F16(_) => DType::F16,
        }
    }
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Elems::F32(s) => s[i],
            Elems::BF16(s) => s[i].to_f32(),
            Elems::F16(s) => s[i].to_f32(),
        }
    }
    /// The sub-range `[start, start+len)`.
    pub fn slice(&self, start: usize, len: usize) -> Elems<'a> {
        match *self {
            Elems::F32(s) => Elems::F32(&s[start..start + len]),
            Elems::BF16(s) => Elems::BF16(&s[start..start + len]),
            Elems::F16(s) => Elems::F16(&s[start..start + len]),
        }
    }
    /// Converts `len` elements starting at `start` into `out` as f32.
    pub fn read_f32(&self, start: usize, out: &mut [f32]) {
        let n = out.len();
        match self {
            Elems::F32(s) => out.copy_from_slice(&s[start..start + n]),
            Elems::BF16(s) => {
                for (o, v) in out.iter_mut().zip(&s[start..start + n]) {
                    *o = v.to_f32();
                }
            }
            Elems::F16(s) => {
                for (o, v) in out.iter_mut().zip(&s[start..start + n]) {
                    *o = v.to_f32();
                }
            }
        }
    }
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut v = vec![0.0; self.len()];
        self.read_f32(0, &mut v);
        v
    }
}

#[derive(Clone, Debug)]
pub struct Tensor {
    storage: Arc<Storage>,
    dtype: DType,
    shape: Vec<usize>,
    strides: Vec<usize>,
    /// Offset into the storage, in elements.
    offset: usize,
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

impl Tensor {
    pub fn from_storage(storage: Storage, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if storage.len() != n {
            bail!(
                "tensor of shape {shape:?} needs {n} elements, storage holds {}",
                storage.len()
            );
        }
        Ok(Tensor {
            dtype: storage.dtype(),
            storage: Arc::new(storage),
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            offset: 0,
        })
    }
    pub fn from_f32(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_storage(Storage::F32(data), shape)
    }
    pub fn zeros(shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_f32(vec![0.0; n], shape).expect("zeros: sizes agree by construction")
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn dim(&self, i: usize) -> usize {
        self.shape[i]
    }
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }
    /// The elements of a contiguous tensor, borrowed.
    pub fn elems(&self) -> Result<Elems<'_>> {
        if !self.is_contiguous() {
            bail!(
                "expected a contiguous tensor, got shape {:?} strides {:?}",
                self.shape,
                self.strides
            );
        }
        Ok(self.storage.elems().slice(self.offset, self.numel()))
    }
    /// The f32 elements of a contiguous f32 tensor, borrowed.
    pub fn f32s(&self) -> Result<&[f32]> {
        match self.elems()? {
            Elems::F32(s) => Ok(s),
            e => bail!(
                "expected an F32 tensor, got {} of shape {:?}",
                e.dtype().name(),
                self.shape
            ),
        }
    }
    /// A copy of the elements in logical (row-major) order, converted to f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let e = self.storage.elems();
        if self.is_contiguous() {
            return e.slice(self.offset, self.numel()).to_f32_vec();
        }
        let mut out = Vec::with_capacity(self.numel());
        let mut idx = vec![0usize; self.rank()];
        for _ in 0..self.numel() {
            let pos: usize = self.offset
                + idx
                    .iter()
                    .zip(&self.strides)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            out.push(e.get(pos));
            for ax in (0..self.rank()).rev() {
                idx[ax] += 1;
                if idx[ax] < self.shape[ax] {
                    break;
                }
                idx[ax] = 0;
            }
        }
        out
    }
    /// A contiguous f32 copy (or the same tensor when it already is one).
    pub fn to_f32(&self) -> Tensor {
        if self.dtype == DType::F32 && self.is_contiguous() {
            return self.clone();
        }
        Tensor::from_f32(self.to_f32_vec(), &self.shape).expect("sizes agree")
    }
    /// A contiguous copy in the same dtype (or the same tensor when already contiguous).
    pub fn contiguous(&self) -> Tensor {
        if self.is_contiguous() {
            return self.clone();
        }
        let v = self.to_f32_vec();
        let storage = match self.dtype {
            DType::F32 => Storage::F32(v),
            DType::BF16 => Storage::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::F16 => Storage::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
        };
        Tensor::from_storage(storage, &self.shape).expect("sizes agree")
    }
    /// A view with a new shape of the same number of elements (contiguous tensors only).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            bail!("cannot reshape {:?} into {:?}", self.shape, shape);
        }
        let t = self.contiguous();
        Ok(Tensor {
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            ..t
        })
    }
    /// A view of `len` entries of axis `axis` starting at `start`.
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        if axis >= self.rank() || start + len > self.shape[axis] {
            bail!(
                "narrow({axis}, {start}, {len}) out of range for shape {:?}",
                self.shape
            );
        }
        let mut t = self.clone();
        t.offset += start * self.strides[axis];
        t.shape[axis] = len;
        Ok(t)
    }
    /// A view with axes `a` and `b` swapped.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        if a >= self.rank() || b >= self.rank() {
            bail!(
                "transpose({a}, {b}) out of range for shape {:?}",
                self.shape
            );
        }
        let mut t = self.clone();
        t.shape.swap(a, b);
        t.strides.swap(a, b);
        Ok(t)
    }
    /// Converts to another dtype (round to nearest even), always copying into owned storage.
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        let v = self.to_f32_vec();
        let storage = match dtype {
            DType::F32 => Storage::F32(v),
            DType::BF16 => Storage::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::F16 => Storage::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
        };
        Tensor::from_storage(storage, &self.shape).expect("sizes agree")
    }
    /// Whether the elements live in a memory-mapped file (were not copied at load).
    pub fn is_mapped(&self) -> bool {
        matches!(*self.storage, Storage::Mapped { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_and_copies() {
        let t = Tensor::from_f32((0..24).map(|x| x as f32).collect(), &[2, 3, 4]).unwrap();
        let tt = t.transpose(1, 2).unwrap();
        assert!(!tt.is_contiguous());
        assert_eq!(tt.shape(), &[2, 4, 3]);
        let v = tt.to_f32_vec();
        assert_eq!(&v[..6], &[0.0, 4.0, 8.0, 1.0, 5.0, 9.0]);
        let n = t.narrow(2, 1, 2).unwrap();
        assert_eq!(n.to_f32_vec()[..4], [1.0, 2.0, 5.0, 6.0]);
        let r = tt.reshape(&[8, 3]).unwrap();
        assert!(r.is_contiguous());
        assert_eq!(r.to_f32_vec(), v);
        let b = t.to_dtype(DType::BF16);
        assert_eq!(b.dtype(), DType::BF16);
        assert_eq!(b.to_f32_vec(), t.to_f32_vec());
        assert!(Tensor::from_f32(vec![0.0; 5], &[2, 3]).is_err());
        assert!(t.narrow(0, 1, 2).is_err());
    }
}
