//! Parsing and validation of the header, metadata and tensor table.

use super::{GgmlType, GgufArray, GgufTensorInfo, GgufValue};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays deeper than this are refused rather than risking the stack.
const MAX_ARRAY_DEPTH: usize = 8;

pub(super) struct Header {
    pub(super) version: u32,
    pub(super) metadata: BTreeMap<String, GgufValue>,
    pub(super) tensors: Vec<GgufTensorInfo>,
    pub(super) data_start: u64,
}

/// A cursor over the mapped bytes. Counts and string lengths are u32 in version 1 and u64
/// afterwards; `wide` says which.
pub(super) struct Parser<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
    wide: bool,
}

impl<'a> Parser<'a> {
    pub(super) fn new(path: &'a Path, buf: &'a [u8]) -> Self {
        Parser {
            path,
            buf,
            pos: 0,
            wide: true,
        }
    }

    fn fault(&self, what: impl fmt::Display) -> Error {
        Error(format!("{}: {what}", self.path.display()))
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// `n` bytes, or a "truncated `what`" error.
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.fault(format_args!(
                "truncated {what}: {n} bytes needed at offset {}, but the file has {} bytes",
                self.pos,
                self.buf.len()
            )));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn le<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self
            .take(N, what)?
            .try_into()
            .expect("take returns exactly N bytes"))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        self.le(what).map(u32::from_le_bytes)
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        self.le(what).map(u64::from_le_bytes)
    }
    /// A count or length: u32 in version 1, u64 later.
    fn count(&mut self, what: &str) -> Result<u64> {
        if self.wide {
            self.u64(what)
        } else {
            self.u32(what).map(u64::from)
        }
    }
    fn count_width(&self) -> usize {
        if self.wide {
            8
        } else {
            4
        }
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.count(what)?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        // Not strictly UTF-8 in every writer's output; keep what can be kept.
        Ok(String::from_utf8_lossy(self.take(len, what)?).into_owned())
    }

    /// The smallest encoding of one value of type `ty`, to bound array counts by the bytes left.
    fn min_size(&self, ty: u32) -> Option<usize> {
        Some(match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => self.count_width(),
            9 => 4 + self.count_width(),
            _ => return None,
        })
    }

    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(u8::from_le_bytes(self.le(what)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.le(what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.le(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.le(what)?)),
            4 => GgufValue::U32(self.u32(what)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.le(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.le(what)?)),
            7 => GgufValue::Bool(self.le::<1>(what)?[0] != 0),
            8 => GgufValue::String(self.string(what)?),
            9 => GgufValue::Array(self.array(what, depth + 1)?),
            10 => GgufValue::U64(self.u64(what)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.le(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.le(what)?)),
            _ => return Err(self.fault(format_args!("unknown value type {ty} in {what}"))),
        })
    }

    fn array(&mut self, what: &str, depth: usize) -> Result<GgufArray> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(self.fault(format_args!(
                "arrays nested deeper than {MAX_ARRAY_DEPTH} in {what}"
            )));
        }
        let ty = self.u32(what)?;
        let n = self.count(what)?;
        let min = self
            .min_size(ty)
            .ok_or_else(|| self.fault(format_args!("unknown array element type {ty} in {what}")))?;
        // A corrupt count must not become a huge allocation: every element takes bytes.
        if n > (self.remaining() / min) as u64 {
            return Err(self.fault(format_args!(
                "truncated {what}: an array of {n} elements cannot fit in the {} bytes left \
                 after offset {}",
                self.remaining(),
                self.pos
            )));
        }
        let n = n as usize;
        macro_rules! read {
            ($variant:ident, $t:ty) => {
                GgufArray::$variant(
                    (0..n)
                        .map(|_| Ok(<$t>::from_le_bytes(self.le(what)?)))
                        .collect::<Result<_>>()?,
                )
            };
        }
        Ok(match ty {
            0 => read!(U8, u8),
            1 => read!(I8, i8),
            2 => read!(U16, u16),
            3 => read!(I16, i16),
            4 => read!(U32, u32),
            5 => read!(I32, i32),
            6 => read!(F32, f32),
            7 => GgufArray::Bool(
                (0..n)
                    .map(|_| Ok(self.le::<1>(what)?[0] != 0))
                    .collect::<Result<_>>()?,
            ),
            8 => GgufArray::String((0..n).map(|_| self.string(what)).collect::<Result<_>>()?),
            9 => GgufArray::Array(
                (0..n)
                    .map(|_| self.array(what, depth + 1))
                    .collect::<Result<_>>()?,
            ),
            10 => read!(U64, u64),
            11 => read!(I64, i64),
            _ => read!(F64, f64),
        })
    }

    pub(super) fn parse(mut self) -> Result<Header> {
        if self.take(4, "header")? != MAGIC {
            let got = &self.buf[..4];
            return Err(self.fault(format_args!(
                "bad magic {got:02x?} (expected \"GGUF\"): not a GGUF file"
            )));
        }
        let version = self.u32("header")?;
        if !(1..=3).contains(&version) {
            return Err(self.fault(format_args!(
                "unsupported GGUF version {version} (supported: 1, 2, 3)"
            )));
        }
        self.wide = version >= 2;
        let n_tensors = self.count("header")?;
        let n_kv = self.count("header")?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = self.string(&format!("metadata (key #{i})"))?;
            let what = format!("metadata (value of '{key}')");
            let ty = self.u32(&what)?;
            let value = self.value(ty, &what, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(self.fault(format_args!("duplicate metadata key '{key}'")));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => {
                    return Err(self.fault(format_args!(
                        "general.alignment is {v}, expected a power of two"
                    )))
                }
            },
        };

        // Each tensor info takes at least a name length, n_dims, a type and an offset.
        let min_info = self.count_width() + 4 + 4 + 8;
        if n_tensors > (self.remaining() / min_info) as u64 {
            return Err(self.fault(format_args!(
                "truncated tensor table: {n_tensors} tensors cannot fit in the {} bytes left",
                self.remaining()
            )));
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            tensors.push(self.tensor_info(i, alignment)?);
        }

        let data_start = (self.pos as u64).next_multiple_of(alignment);
        let file_len = self.buf.len() as u64;
        let mut seen = HashSet::new();
        for t in &tensors {
            if !seen.insert(t.name.as_str()) {
                return Err(self.fault(format_args!("duplicate tensor name '{}'", t.name)));
            }
            let end = data_start
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.n_bytes));
            if end.is_none_or(|end| end > file_len) {
                return Err(self.fault(format_args!(
                    "tensor data past end of file: tensor '{}' ({} bytes at offset {} of the \
                     data section, which starts at {data_start}) ends beyond the file's {file_len} \
                     bytes",
                    t.name, t.n_bytes, t.offset
                )));
            }
        }
        Ok(Header {
            version,
            metadata,
            tensors,
            data_start,
        })
    }

    fn tensor_info(&mut self, index: u64, alignment: u64) -> Result<GgufTensorInfo> {
        let name = self.string(&format!("tensor info #{index}"))?;
        let what = format!("tensor info of '{name}'");
        let n_dims = self.u32(&what)?;
        if n_dims > MAX_DIMS {
            return Err(self.fault(format_args!(
                "tensor '{name}' has {n_dims} dimensions (at most {MAX_DIMS} allowed)"
            )));
        }
        let dims = (0..n_dims)
            .map(|_| self.count(&what))
            .collect::<Result<Vec<u64>>>()?;
        let type_id = self.u32(&what)?;
        let offset = self.u64(&what)?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
            self.fault(format_args!(
                "unknown ggml type {type_id} for tensor '{name}'"
            ))
        })?;
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| self.fault(format_args!("tensor '{name}' dims {dims:?} overflow")))?;
        let row = dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(ggml_type.block_len()) {
            return Err(self.fault(format_args!(
                "tensor '{name}' of type {ggml_type} has rows of {row} elements, not a multiple \
                 of the block size {}",
                ggml_type.block_len()
            )));
        }
        let n_bytes = (n_elements / ggml_type.block_len())
            .checked_mul(ggml_type.block_bytes())
            .ok_or_else(|| self.fault(format_args!("tensor '{name}' is too large")))?;
        if !offset.is_multiple_of(alignment) {
            return Err(self.fault(format_args!(
                "tensor '{name}' has offset {offset}, not a multiple of the alignment {alignment}"
            )));
        }
        Ok(GgufTensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_bytes,
        })
    }
}
