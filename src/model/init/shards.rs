//! The weights of an `implicit init` folder as safetensors in `parameter_layout` order under
//! their Hugging Face names: one model.safetensors, or shards
//! `model-0000i-of-0000N.safetensors` (the caller writes model.safetensors.index.json) when the
//! weights exceed the shard size. Every matrix is normal(0, initializer_range), every norm
//! weight 1.
//!
//! Values are reproducible for a seed whatever the thread count: tensor `t`'s elements are cut
//! into chunks of `CHUNK` elements, and chunk `c` is drawn (`random::normals`) from a
//! xoshiro256++ stream seeded from (seed, t, c) only. Writing streams: blocks of at most
//! `BLOCK_CHUNKS` chunks are generated in parallel while a writer thread writes the previous
//! block, so memory stays at two blocks (64 MB in bf16) even for a 13.5 GB model.

use super::InitOptions;
use crate::backend::cpu::parallel::parallel_chunks_mut;
use crate::error::{Context, Error, Result};
use crate::model::config::ModelConfig;
use crate::model::presets::WeightDtype;
use crate::model::random::{normals, Xoshiro256pp};
use crate::model::train::parameter_layout;
use crate::progress::Progress;
use half::bf16;
use serde_json::{json, Map, Value};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// Elements per random stream: a tensor's chunk `c` covers elements `[c * CHUNK, (c+1) * CHUNK)`.
const CHUNK: usize = 1 << 16;
/// Chunks per written block (16M elements: 32 MB in bf16, 64 MB in f32).
const BLOCK_CHUNKS: usize = 256;
/// Models at least this large report progress on stderr (when asked to).
const PROGRESS_MIN_BYTES: u64 = 1_000_000_000;

/// One tensor to write: its index in `parameter_layout` (which seeds it), name and shape.
pub(super) struct PlannedTensor {
    index: usize,
    pub(super) name: String,
    shape: Vec<usize>,
    len: usize,
    /// Norm weights are ones; everything else is drawn.
    ones: bool,
}

pub(super) struct Shard {
    pub(super) file: String,
    pub(super) tensors: Vec<PlannedTensor>,
    bytes: u64,
}

pub(super) struct Plan {
    pub(super) shards: Vec<Shard>,
    dtype: WeightDtype,
    pub(super) weight_bytes: u64,
}

/// Tensors in `parameter_layout` order, cut into consecutive shards of at most `shard_bytes`.
pub(super) fn plan_shards(config: &ModelConfig, dtype: WeightDtype, shard_bytes: u64) -> Plan {
    let mut shards: Vec<Shard> = Vec::new();
    let mut weight_bytes = 0;
    for (index, (name, shape)) in parameter_layout(config).into_iter().enumerate() {
        let len = shape.iter().product::<usize>();
        let bytes = (len * dtype.size()) as u64;
        weight_bytes += bytes;
        let fits = shards
            .last()
            .is_some_and(|s| s.bytes + bytes <= shard_bytes);
        if !fits {
            shards.push(Shard {
                file: String::new(),
                tensors: vec![],
                bytes: 0,
            });
        }
        let shard = shards.last_mut().expect("a shard");
        shard.bytes += bytes;
        shard.tensors.push(PlannedTensor {
            index,
            ones: shape.len() == 1 && name.ends_with("norm.weight"),
            name,
            shape,
            len,
        });
    }
    let n = shards.len();
    for (i, s) in shards.iter_mut().enumerate() {
        s.file = if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", i + 1)
        };
    }
    Plan {
        shards,
        dtype,
        weight_bytes,
    }
}

/// The safetensors header of `shard`: 8-byte length, JSON, padded with spaces to 8 bytes.
fn shard_header(shard: &Shard, dtype: WeightDtype) -> Result<Vec<u8>> {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for t in &shard.tensors {
        let end = offset + (t.len * dtype.size()) as u64;
        header.insert(
            t.name.clone(),
            json!({"dtype": dtype.safetensors_name(), "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&Value::Object(header)).context("safetensors header")?;
    while (8 + json.len()) % 8 != 0 {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    Ok(out)
}

/// Messages to the writer thread.
enum ToWriter {
    Open(PathBuf, Vec<u8>),
    Data(Vec<u8>),
    Close,
}

/// Generates and writes every shard of `plan` into `dir`: this thread draws blocks (over the
/// worker pool), a writer thread writes them; two block buffers circulate through two
/// channels, so one is filled while the other is written.
pub(super) fn write_weights(
    dir: &Path,
    plan: &Plan,
    opts: &InitOptions,
    init_std: f32,
) -> Result<()> {
    let elem = plan.dtype.size();
    let (to_writer, writer_rx) = mpsc::sync_channel::<ToWriter>(1);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..2 {
        free_tx.send(Vec::new()).expect("channel open");
    }
    let mut progress = if opts.progress && plan.weight_bytes >= PROGRESS_MIN_BYTES {
        Progress::bytes("init", plan.weight_bytes)
    } else {
        Progress::hidden()
    };
    let headers = plan
        .shards
        .iter()
        .map(|s| shard_header(s, plan.dtype))
        .collect::<Result<Vec<_>>>()?;
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || writer_loop(writer_rx, free_tx));
        let produced = (|| -> std::result::Result<(), ()> {
            for (shard, header) in plan.shards.iter().zip(headers) {
                to_writer
                    .send(ToWriter::Open(dir.join(&shard.file), header))
                    .map_err(|_| ())?;
                for t in &shard.tensors {
                    let n_chunks = t.len.div_ceil(CHUNK);
                    for first in (0..n_chunks).step_by(BLOCK_CHUNKS) {
                        let mut buf = free_rx.recv().map_err(|_| ())?;
                        let start = first * CHUNK;
                        let len = (t.len - start).min(BLOCK_CHUNKS * CHUNK);
                        buf.clear();
                        buf.resize(len * elem, 0);
                        parallel_chunks_mut(&mut buf, CHUNK * elem, |i, bytes| {
                            fill_chunk(opts.seed, t, first + i, init_std, plan.dtype, bytes)
                        });
                        progress.inc((len * elem) as u64);
                        to_writer.send(ToWriter::Data(buf)).map_err(|_| ())?;
                    }
                }
                to_writer.send(ToWriter::Close).map_err(|_| ())?;
            }
            Ok(())
        })();
        drop(to_writer);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(Error::msg("writer thread panicked")));
        progress.finish();
        match (produced, written) {
            (_, Err(e)) => Err(e),
            (Err(()), Ok(())) => Err(Error::msg("writer thread stopped early")),
            (Ok(()), Ok(())) => Ok(()),
        }
    })?;
    Ok(())
}

fn writer_loop(rx: mpsc::Receiver<ToWriter>, free: mpsc::Sender<Vec<u8>>) -> Result<()> {
    let mut current: Option<(PathBuf, File)> = None;
    for msg in rx {
        match msg {
            ToWriter::Open(path, header) => {
                let mut f = File::create(&path)
                    .with_context(|| format!("{}: cannot create", path.display()))?;
                f.write_all(&header)
                    .with_context(|| format!("{}: cannot write", path.display()))?;
                current = Some((path, f));
            }
            ToWriter::Data(buf) => {
                let (path, f) = current.as_mut().context("data before a shard was opened")?;
                f.write_all(&buf)
                    .with_context(|| format!("{}: cannot write", path.display()))?;
                // The receiver is gone only when generation stopped; nothing to recycle for.
                let _ = free.send(buf);
            }
            ToWriter::Close => {
                let (path, f) = current.take().context("close before a shard was opened")?;
                f.sync_all()
                    .with_context(|| format!("{}: cannot sync", path.display()))?;
            }
        }
    }
    Ok(())
}

/// Fills `bytes` (chunk `chunk` of tensor `t`, little-endian `dtype`) with its values.
fn fill_chunk(
    seed: u64,
    t: &PlannedTensor,
    chunk: usize,
    std: f32,
    dtype: WeightDtype,
    bytes: &mut [u8],
) {
    match dtype {
        WeightDtype::Bf16 => fill_encoded(seed, t, chunk, std, bytes, |x| {
            bf16::from_f32(x).to_le_bytes()
        }),
        WeightDtype::F32 => fill_encoded(seed, t, chunk, std, bytes, f32::to_le_bytes),
    }
}

fn fill_encoded<const W: usize>(
    seed: u64,
    t: &PlannedTensor,
    chunk: usize,
    std: f32,
    bytes: &mut [u8],
    encode: impl Fn(f32) -> [u8; W],
) {
    let (out, rest) = bytes.as_chunks_mut::<W>();
    debug_assert!(rest.is_empty());
    if t.ones {
        out.fill(encode(1.0));
        return;
    }
    let mut rng = Xoshiro256pp::for_chunk(seed, t.index as u64, chunk as u64);
    normals(&mut rng, out.len(), std, |i, x| out[i] = encode(x));
}
