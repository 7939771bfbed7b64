//! A reader for GGUF files (versions 1, 2 and 3), the format of llama.cpp.
//!
//! The file is memory-mapped; metadata and tensor infos are parsed and validated when it is
//! opened (every count is bounded by the bytes left in the file, every tensor must lie inside
//! it), and tensor data is dequantised to f32 on request.

mod parse;
mod quant;
mod value;

pub use value::{GgufArray, GgufValue};

use crate::error::{Context, Error, Result};
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

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
        let header = parse::Parser::new(path, &map).parse()?;
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
                // Long values (a chat template, say) would swamp the message.
                let shown = v.to_string();
                let shown = if shown.len() <= 60 {
                    shown
                } else {
                    "...".into()
                };
                self.fault(format_args!(
                    "metadata key '{key}' is the {} {shown}, expected {expected}",
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

    /// The raw (possibly quantised) bytes of the tensor `name`, borrowed from the map.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self
            .tensor(name)
            .ok_or_else(|| self.fault(format_args!("no tensor named '{name}'")))?;
        Ok(self.bytes_of(info))
    }

    /// Bounds were checked when the file was opened.
    fn bytes_of(&self, info: &GgufTensorInfo) -> &[u8] {
        let start = (self.data_start + info.offset) as usize;
        &self.map[start..start + info.n_bytes as usize]
    }

    /// The tensor `name` dequantised to f32, in stored order (fastest axis first in `dims`,
    /// i.e. row-major for [`GgufTensorInfo::shape`]).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self
            .tensor(name)
            .ok_or_else(|| self.fault(format_args!("no tensor named '{name}'")))?;
        quant::dequantize(info.ggml_type, self.bytes_of(info)).ok_or_else(|| {
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
