//! Test support: a GGUF writer, reference quantisers and file helpers.

use half::{bf16, f16};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

// ---------------------------------------------------------------- a small GGUF writer

/// A metadata value to write.
#[derive(Clone)]
pub enum Val {
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
    Str(String),
    /// Element type id and elements.
    Arr(u32, Vec<Val>),
}

impl Val {
    pub fn type_id(&self) -> u32 {
        match self {
            Val::U8(_) => 0,
            Val::I8(_) => 1,
            Val::U16(_) => 2,
            Val::I16(_) => 3,
            Val::U32(_) => 4,
            Val::I32(_) => 5,
            Val::F32(_) => 6,
            Val::Bool(_) => 7,
            Val::Str(_) => 8,
            Val::Arr(..) => 9,
            Val::U64(_) => 10,
            Val::I64(_) => 11,
            Val::F64(_) => 12,
        }
    }
    pub fn strs<S: AsRef<str>>(items: &[S]) -> Val {
        Val::Arr(
            8,
            items.iter().map(|s| Val::Str(s.as_ref().into())).collect(),
        )
    }
}

pub struct Writer {
    version: u32,
    out: Vec<u8>,
}

impl Writer {
    pub fn count(&mut self, n: u64) {
        if self.version == 1 {
            self.out.extend((n as u32).to_le_bytes());
        } else {
            self.out.extend(n.to_le_bytes());
        }
    }
    pub fn string(&mut self, s: &str) {
        self.count(s.len() as u64);
        self.out.extend(s.as_bytes());
    }
    pub fn value(&mut self, v: &Val) {
        match v {
            Val::U8(x) => self.out.extend(x.to_le_bytes()),
            Val::I8(x) => self.out.extend(x.to_le_bytes()),
            Val::U16(x) => self.out.extend(x.to_le_bytes()),
            Val::I16(x) => self.out.extend(x.to_le_bytes()),
            Val::U32(x) => self.out.extend(x.to_le_bytes()),
            Val::I32(x) => self.out.extend(x.to_le_bytes()),
            Val::U64(x) => self.out.extend(x.to_le_bytes()),
            Val::I64(x) => self.out.extend(x.to_le_bytes()),
            Val::F32(x) => self.out.extend(x.to_le_bytes()),
            Val::F64(x) => self.out.extend(x.to_le_bytes()),
            Val::Bool(x) => self.out.push(*x as u8),
            Val::Str(s) => self.string(s),
            Val::Arr(ty, items) => {
                self.out.extend(ty.to_le_bytes());
                self.count(items.len() as u64);
                for item in items {
                    self.value(item);
                }
            }
        }
    }
}

pub struct TensorSpec {
    name: String,
    dims: Vec<u64>,
    ggml_type: u32,
    data: Vec<u8>,
}

/// Builds a GGUF file in memory.
pub struct GgufBuilder {
    version: u32,
    kvs: Vec<(String, Val)>,
    tensors: Vec<TensorSpec>,
}

impl GgufBuilder {
    pub fn new(version: u32) -> Self {
        GgufBuilder {
            version,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }
    pub fn kv(&mut self, key: &str, v: Val) -> &mut Self {
        self.kvs.push((key.into(), v));
        self
    }
    pub fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: u32, data: Vec<u8>) -> &mut Self {
        self.tensors.push(TensorSpec {
            name: name.into(),
            dims: dims.to_vec(),
            ggml_type,
            data,
        });
        self
    }
    pub fn alignment(&self) -> usize {
        self.kvs
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .map(|(_, v)| match v {
                Val::U32(a) => *a as usize,
                _ => 32,
            })
            .unwrap_or(32)
    }
    pub fn build(&self) -> Vec<u8> {
        let align = self.alignment();
        let mut w = Writer {
            version: self.version,
            out: Vec::new(),
        };
        w.out.extend(b"GGUF");
        w.out.extend(self.version.to_le_bytes());
        w.count(self.tensors.len() as u64);
        w.count(self.kvs.len() as u64);
        for (k, v) in &self.kvs {
            w.string(k);
            w.out.extend(v.type_id().to_le_bytes());
            w.value(v);
        }
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            w.string(&t.name);
            w.out.extend((t.dims.len() as u32).to_le_bytes());
            for &d in &t.dims {
                w.count(d);
            }
            w.out.extend(t.ggml_type.to_le_bytes());
            w.out.extend((offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len()).next_multiple_of(align);
        }
        let data_start = w.out.len().next_multiple_of(align);
        w.out.resize(data_start, 0);
        for (t, off) in self.tensors.iter().zip(offsets) {
            w.out.resize(data_start + off, 0);
            w.out.extend(&t.data);
        }
        w.out
    }
}

// ---------------------------------------------------------------- reference quantisers
// Each returns the encoded bytes and the values the format defines for them, computed here
// from the stored integers and f16 scales, so a reader must reproduce them exactly.

pub const F32: u32 = 0;
pub const F16: u32 = 1;
pub const Q4_0: u32 = 2;
pub const Q4_1: u32 = 3;
pub const Q8_0: u32 = 8;
pub const BF16: u32 = 30;

pub fn enc_f32(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn enc_f16(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let h: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
    (
        h.iter().flat_map(|v| v.to_le_bytes()).collect(),
        h.iter().map(|v| v.to_f32()).collect(),
    )
}

pub fn enc_bf16(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let h: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    (
        h.iter().flat_map(|v| v.to_le_bytes()).collect(),
        h.iter().map(|v| v.to_f32()).collect(),
    )
}

/// Q8_0: per 32 values an f16 scale d = max|x| / 127 and i8 quants; x = d * q.
pub fn enc_q8_0(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let (mut bytes, mut values) = (Vec::new(), Vec::new());
    for block in x.chunks(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = f16::from_f32(amax / 127.0);
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        bytes.extend(d.to_le_bytes());
        for &v in block {
            let q = (v * inv).round().clamp(-127.0, 127.0) as i8;
            bytes.push(q as u8);
            values.push(d.to_f32() * q as f32);
        }
    }
    (bytes, values)
}

/// Nibbles as ggml packs them: byte j holds element j (low) and element j + 16 (high).
pub fn pack_nibbles(q: &[u8]) -> Vec<u8> {
    (0..16).map(|j| q[j] | (q[j + 16] << 4)).collect()
}

/// Q4_0: per 32 values an f16 scale d and 4-bit quants; x = d * (q - 8).
pub fn enc_q4_0(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let (mut bytes, mut values) = (Vec::new(), Vec::new());
    for block in x.chunks(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = f16::from_f32(amax / 7.0);
        let q: Vec<u8> = block
            .iter()
            .map(|&v| ((v / d.to_f32()).round() + 8.0).clamp(0.0, 15.0) as u8)
            .collect();
        bytes.extend(d.to_le_bytes());
        bytes.extend(pack_nibbles(&q));
        values.extend(q.iter().map(|&q| d.to_f32() * (q as f32 - 8.0)));
    }
    (bytes, values)
}

/// Q4_1: per 32 values f16 d and m and 4-bit quants; x = d * q + m.
pub fn enc_q4_1(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let (mut bytes, mut values) = (Vec::new(), Vec::new());
    for block in x.chunks(32) {
        let min = block.iter().fold(f32::INFINITY, |m, &v| m.min(v));
        let max = block.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let (d, m) = (f16::from_f32((max - min) / 15.0), f16::from_f32(min));
        let q: Vec<u8> = block
            .iter()
            .map(|&v| ((v - m.to_f32()) / d.to_f32()).round().clamp(0.0, 15.0) as u8)
            .collect();
        bytes.extend(d.to_le_bytes());
        bytes.extend(m.to_le_bytes());
        bytes.extend(pack_nibbles(&q));
        values.extend(q.iter().map(|&q| d.to_f32() * q as f32 + m.to_f32()));
    }
    (bytes, values)
}

/// Deterministic values in [-1, 1).
pub fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: got {g}, want {w} (tolerance {tol})"
        );
    }
}

// ---------------------------------------------------------------- files and directories

/// A fresh path under the system temp dir (no tempfile crate).
pub fn temp_path(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "implicit-gguf-test-{}-{n}-{tag}",
        std::process::id()
    ))
}

pub fn write_temp(tag: &str, bytes: &[u8]) -> PathBuf {
    let path = temp_path(&format!("{tag}.gguf"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The shared real-data folder, or None (tests print why and return).
pub fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("IMPLICIT_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    dir.is_dir().then_some(dir)
}

pub fn read_safetensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (name, view.shape().to_vec(), values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

pub fn tensor<'a>(
    tensors: &'a [(String, Vec<usize>, Vec<f32>)],
    name: &str,
) -> &'a (String, Vec<usize>, Vec<f32>) {
    tensors
        .iter()
        .find(|t| t.0 == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// llama.cpp's converter permutation (HF -> GGUF) written as numpy would run it:
/// `w.reshape(n_head, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
pub fn permute_like_llama_cpp(w: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
    let rows = w.len() / cols;
    let half = rows / n_head / 2;
    let mut out = Vec::with_capacity(w.len());
    // Output index order after swapaxes: (head, i in half, j in 2, col).
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let src_row = (h * 2 + j) * half + i;
                out.extend_from_slice(&w[src_row * cols..(src_row + 1) * cols]);
            }
        }
    }
    out
}
