//! A reader for GGUF files (versions 1, 2 and 3), the format of llama.cpp.
//!
//! The file is memory-mapped; metadata and tensor infos are parsed and validated when it is
//! opened (every count is bounded by the bytes left in the file, every tensor must lie inside
//! it), and tensor data is dequantised to f32 on request.

mod quant;

use crate::error::{Context, Error, Result};
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays deeper than this are refused rather than risking the stack.
const MAX_ARRAY_DEPTH: usize = 8;

/// The element (or block) type of a tensor, with ggml's numbering.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

/// (type, ggml id, elements per block, bytes per block), from ggml's type traits.
const GGML_TYPES: &[(GgmlType, u32, u64, u64)] = {
    use GgmlType::*;
    &[
        (F32, 0, 1, 4),
        (F16, 1, 1, 2),
        (Q4_0, 2, 32, 18),
        (Q4_1, 3, 32, 20),
        (Q5_0, 6, 32, 22),
        (Q5_1, 7, 32, 24),
        (Q8_0, 8, 32, 34),
        (Q2_K, 10, 256, 84),
        (Q3_K, 11, 256, 110),
        (Q4_K, 12, 256, 144),
        (Q5_K, 13, 256, 176),
        (Q6_K, 14, 256, 210),
        (Q8_K, 15, 256, 292),
        (IQ2_XXS, 16, 256, 66),
        (IQ2_XS, 17, 256, 74),
        (IQ3_XXS, 18, 256, 98),
        (IQ1_S, 19, 256, 50),
        (IQ4_NL, 20, 32, 18),
        (IQ3_S, 21, 256, 110),
        (IQ2_S, 22, 256, 82),
        (IQ4_XS, 23, 256, 136),
        (I8, 24, 1, 1),
        (I16, 25, 1, 2),
        (I32, 26, 1, 4),
        (I64, 27, 1, 8),
        (F64, 28, 1, 8),
        (IQ1_M, 29, 256, 56),
        (BF16, 30, 1, 2),
        (TQ1_0, 34, 256, 54),
        (TQ2_0, 35, 256, 66),
        (MXFP4, 39, 32, 17),
    ]
};

impl GgmlType {
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GGML_TYPES.iter().find(|t| t.1 == id).map(|t| t.0)
    }
    fn traits(self) -> &'static (GgmlType, u32, u64, u64) {
        GGML_TYPES
            .iter()
            .find(|t| t.0 == self)
            .expect("every GgmlType has a row in GGML_TYPES")
    }
    /// ggml's numeric id of the type.
    pub fn id(self) -> u32 {
        self.traits().1
    }
    /// Elements per block (1 for plain types).
    pub fn block_len(self) -> u64 {
        self.traits().2
    }
    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        self.traits().3
    }
    /// Whether [`GgufFile::tensor_f32`] can dequantise this type.
    pub fn can_dequantize(self) -> bool {
        quant::SUPPORTED.contains(&self)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(GgufArray),
}

/// A metadata array: elements of one type, stored unboxed.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<GgufArray>),
}

impl GgufValue {
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F32(_) => "f32",
            GgufValue::F64(_) => "f64",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
        }
    }
    /// Any integer type, as i128 so that every value fits.
    fn as_int(&self) -> Option<i128> {
        Some(match *self {
            GgufValue::U8(v) => v.into(),
            GgufValue::I8(v) => v.into(),
            GgufValue::U16(v) => v.into(),
            GgufValue::I16(v) => v.into(),
            GgufValue::U32(v) => v.into(),
            GgufValue::I32(v) => v.into(),
            GgufValue::U64(v) => v.into(),
            GgufValue::I64(v) => v.into(),
            _ => return None,
        })
    }
    /// A non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_int().and_then(|v| u64::try_from(v).ok())
    }
    pub fn as_i64(&self) -> Option<i64> {
        self.as_int().and_then(|v| i64::try_from(v).ok())
    }
    /// A float, or an integer read as a float (writers differ on e.g. rope.freq_base).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_int().map(|v| v as f64),
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl GgufArray {
    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::F64(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn elem_type_name(&self) -> &'static str {
        match self {
            GgufArray::U8(_) => "u8",
            GgufArray::I8(_) => "i8",
            GgufArray::U16(_) => "u16",
            GgufArray::I16(_) => "i16",
            GgufArray::U32(_) => "u32",
            GgufArray::I32(_) => "i32",
            GgufArray::U64(_) => "u64",
            GgufArray::I64(_) => "i64",
            GgufArray::F32(_) => "f32",
            GgufArray::F64(_) => "f64",
            GgufArray::Bool(_) => "bool",
            GgufArray::String(_) => "string",
            GgufArray::Array(_) => "array",
        }
    }
    pub fn as_strings(&self) -> Option<&[String]> {
        match self {
            GgufArray::String(v) => Some(v),
            _ => None,
        }
    }
    /// The elements of a numeric array as f64 (None for strings, bools and nested arrays).
    pub fn to_f64_vec(&self) -> Option<Vec<f64>> {
        fn conv<T: Copy + Into<f64>>(v: &[T]) -> Vec<f64> {
            v.iter().map(|&x| x.into()).collect()
        }
        Some(match self {
            GgufArray::U8(v) => conv(v),
            GgufArray::I8(v) => conv(v),
            GgufArray::U16(v) => conv(v),
            GgufArray::I16(v) => conv(v),
            GgufArray::U32(v) => conv(v),
            GgufArray::I32(v) => conv(v),
            GgufArray::U64(v) => v.iter().map(|&x| x as f64).collect(),
            GgufArray::I64(v) => v.iter().map(|&x| x as f64).collect(),
            GgufArray::F32(v) => conv(v),
            GgufArray::F64(v) => v.clone(),
            _ => return None,
        })
    }
}

impl fmt::Display for GgufValue {
    /// Scalars in full; arrays as their element type and length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgufValue::U8(v) => write!(f, "{v}"),
            GgufValue::I8(v) => write!(f, "{v}"),
            GgufValue::U16(v) => write!(f, "{v}"),
            GgufValue::I16(v) => write!(f, "{v}"),
            GgufValue::U32(v) => write!(f, "{v}"),
            GgufValue::I32(v) => write!(f, "{v}"),
            GgufValue::U64(v) => write!(f, "{v}"),
            GgufValue::I64(v) => write!(f, "{v}"),
            GgufValue::F32(v) => write!(f, "{v}"),
            GgufValue::F64(v) => write!(f, "{v}"),
            GgufValue::Bool(v) => write!(f, "{v}"),
            GgufValue::String(s) => write!(f, "{s:?}"),
            GgufValue::Array(a) => write!(f, "[{}; {}]", a.elem_type_name(), a.len()),
        }
    }
}

/// One tensor's entry in the file's tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Dimensions as stored: fastest-varying axis first (the reverse of a row-major shape).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes.
    pub n_bytes: u64,
}

impl GgufTensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// The row-major shape (slowest axis first), as safetensors and PyTorch write it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// An open, validated GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    by_name: HashMap<String, usize>,
    /// Absolute file offset of the data section.
    data_start: u64,
}

impl GgufFile {
    /// Maps and parses `path`; every fault in the header, metadata or tensor table is an error
    /// naming the file.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("{}: cannot stat", path.display()))?
            .len();
        if len < 8 {
            crate::bail!(
                "{}: truncated header: {len} bytes, too short for a GGUF file",
                path.display()
            );
        }
        // SAFETY: the map is only read. Like every mmap-based reader, we rely on nobody
        // truncating the file while it is open.
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("{}: cannot memory-map", path.display()))?;
        let header = Parser::new(path, &map).parse()?;
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            by_name,
            data_start: header.data_start,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    fn fault(&self, what: impl fmt::Display) -> Error {
        Error(format!("{}: {what}", self.path.display()))
    }

    /// Looks `key` up and converts it with `conv`: Ok(None) when absent, an error naming the
    /// key when present with the wrong type.
    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        conv: impl FnOnce(&'a GgufValue) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => conv(v).map(Some).ok_or_else(|| {
                self.fault(format_args!(
                    "metadata key '{key}' is {} {v}, expected {expected}",
                    v.type_name()
                ))
            }),
        }
    }
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", GgufValue::as_str)
    }
    /// Any non-negative integer.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "a non-negative integer", GgufValue::as_u64)
    }
    pub fn get_i64(&self, key: &str) -> Result<Option<i64>> {
        self.typed(key, "an integer", GgufValue::as_i64)
    }
    /// A float or an integer.
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        self.typed(key, "a number", |v| v.as_f64().map(|x| x as f32))
    }
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a bool", GgufValue::as_bool)
    }
    pub fn get_array(&self, key: &str) -> Result<Option<&GgufArray>> {
        self.typed(key, "an array", GgufValue::as_array)
    }
    pub fn get_str_array(&self, key: &str) -> Result<Option<&[String]>> {
        self.typed(key, "an array of strings", |v| {
            v.as_array().and_then(GgufArray::as_strings)
        })
    }
    /// A numeric array of any element type, converted to f32.
    pub fn get_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>> {
        self.typed(key, "a numeric array", |v| {
            let a = v.as_array()?.to_f64_vec()?;
            Some(a.into_iter().map(|x| x as f32).collect())
        })
    }
    /// An integer array of any element type, converted to i64.
    pub fn get_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.typed(key, "an integer array", |v| match v.as_array()? {
            GgufArray::U8(a) => Some(a.iter().map(|&x| x.into()).collect()),
            GgufArray::I8(a) => Some(a.iter().map(|&x| x.into()).collect()),
            GgufArray::U16(a) => Some(a.iter().map(|&x| x.into()).collect()),
            GgufArray::I16(a) => Some(a.iter().map(|&x| x.into()).collect()),
            GgufArray::U32(a) => Some(a.iter().map(|&x| x.into()).collect()),
            GgufArray::I32(a) => Some(a.iter().map(|&x| x.into()).collect()),
            GgufArray::I64(a) => Some(a.clone()),
            GgufArray::U64(a) => a.iter().map(|&x| i64::try_from(x).ok()).collect(),
            _ => None,
        })
    }

    /// The raw bytes of a tensor (bounds were checked at open).
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> &[u8] {
        let start = (self.data_start + info.offset) as usize;
        &self.map[start..start + info.n_bytes as usize]
    }

    /// The tensor `name` dequantised to f32, in stored order (fastest axis first in `dims`,
    /// i.e. row-major for [`GgufTensorInfo::shape`]).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self
            .tensor(name)
            .ok_or_else(|| self.fault(format_args!("no tensor named '{name}'")))?;
        quant::dequantize(info.ggml_type, self.tensor_bytes(info)).ok_or_else(|| {
            self.fault(format_args!(
                "tensor '{name}' has type {}, which cannot be dequantised (supported: {})",
                info.ggml_type,
                quant::SUPPORTED.map(|t| t.to_string()).join(", ")
            ))
        })
    }
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Header {
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    data_start: u64,
}

/// A cursor over the mapped bytes. Counts and string lengths are u32 in version 1 and u64
/// afterwards; `wide` says which.
struct Parser<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
    wide: bool,
}

impl<'a> Parser<'a> {
    fn new(path: &'a Path, buf: &'a [u8]) -> Self {
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

    fn parse(mut self) -> Result<Header> {
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
        let mut seen = std::collections::HashSet::new();
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
        if row % ggml_type.block_len() != 0 {
            return Err(self.fault(format_args!(
                "tensor '{name}' of type {ggml_type} has rows of {row} elements, not a multiple \
                 of the block size {}",
                ggml_type.block_len()
            )));
        }
        let n_bytes = (n_elements / ggml_type.block_len())
            .checked_mul(ggml_type.block_bytes())
            .ok_or_else(|| self.fault(format_args!("tensor '{name}' is too large")))?;
        if offset % alignment != 0 {
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
