//! The GPU side of `implicit bench generate` (the arithmetic, the table and the JSON are its
//! siblings summary.rs and report.rs): the device-to-device copy ceiling (the [`Timer`] of
//! `bench kernels`), timed loads of a model folder, the page-cache state of its weight files,
//! and greedy decoding of a batch of prompts through [`CudaTransformer::forward_greedy`] as
//! `generate --device cuda` decodes (one forward per step over every sequence's pending
//! token, each with its own [`CudaKvCache`]; decode steps replayed as CUDA graphs unless turned
//! off; each token picked on the GPU and only the picks copied back), without any stop
//! condition.
//!
//! Timing: the host clock around each step. A forward ends with the synchronous download of
//! its picks, so a step's interval holds all its GPU work; the stream is synchronised before
//! each timed region starts.

use crate::backend::cuda::{CudaBackend, CudaKvCache};
use crate::bench::inputs::{gb_s, random, Rng};
use crate::bench::kernels::CopyCeiling;
use crate::bench::timing::{Timer, SPACER_BYTES};
use crate::error::Result;
use crate::model::cuda::CudaTransformer;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Leading tokens of the first sequence kept in [`DecodeTimes::first_tokens`].
pub const KEPT_TOKENS: usize = 16;

/// The copy ceiling of `bench kernels`: a 512 MiB device-to-device copy, `samples` timed with
/// CUDA events after warm-ups (bytes read plus written). Its buffers are freed on return.
pub fn copy_ceiling(gpu: &CudaBackend, seed: u64, samples: usize) -> Result<CopyCeiling> {
    let mut rng = Rng(seed | 1);
    let src = random::<u32>(gpu, &mut rng, SPACER_BYTES / 4, 0.0, 1.0)?;
    let mut timer = Timer::new(gpu, src, samples)?;
    let time = timer.time_copy(samples)?;
    let bytes = timer.copy_bytes();
    Ok(CopyCeiling {
        bytes,
        gb_s: gb_s(bytes, time.median_us),
        time,
    })
}

/// Loads `dir` onto the GPU with [`CudaTransformer::from_dir`] (config.json, the safetensors
/// memory-mapped, each weight uploaded as bf16), timed from the call to the synchronisation that
/// ends it: the model and the seconds.
pub fn timed_load<'g>(gpu: &'g CudaBackend, dir: &Path) -> Result<(CudaTransformer<'g>, f64)> {
    gpu.synchronize()?;
    let t = Instant::now();
    let model = CudaTransformer::from_dir(gpu, dir)?;
    gpu.synchronize()?;
    Ok((model, t.elapsed().as_secs_f64()))
}

/// What one batch's greedy decoding measured (seconds).
#[derive(Clone, Debug)]
pub struct DecodeTimes {
    /// The prefill forward over every prompt and the choice of each sequence's first token.
    pub prefill_s: f64,
    /// Each decode step's forward (from the launch of its first kernel to the picked tokens on
    /// the host).
    pub forward_s: Vec<f64>,
    /// Each decode step's host work after the forward (feeding the picked tokens back).
    pub pick_s: Vec<f64>,
    /// The first tokens sequence 0 generated (at most [`KEPT_TOKENS`]).
    pub first_tokens: Vec<u32>,
    /// The memory pool's peak of bytes in live buffers during the timed run (weights included).
    pub peak_memory_bytes: Option<u64>,
}

/// Greedy decoding of `prompts` together, `new_tokens` tokens each: the prefill forward (whose
/// logits give the first token) then `new_tokens − 1` decode steps, every sequence in every
/// step, EOS ignored. An untimed warm-up (the same prefill and one decode step, in caches that
/// are then dropped) comes first, so module loading and the memory pool's first allocations
/// stay out of the times.
pub fn greedy_decode(
    model: &mut CudaTransformer<'_>,
    prompts: &[Vec<u32>],
    new_tokens: usize,
) -> Result<DecodeTimes> {
    run(model, prompts, new_tokens.min(2))?;
    let gpu = model.gpu();
    let _ = gpu.reset_peak_memory();
    let mut times = run(model, prompts, new_tokens)?;
    times.peak_memory_bytes = gpu.memory_use().ok().map(|m| m.peak_used_bytes);
    Ok(times)
}

/// One forward over each sequence's pending tokens with each one's greedy next token picked on
/// the GPU (`forward_greedy`, as the shared engine decodes plain greedy sequences), then the
/// picks fed back: the forward's and the host's seconds.
fn step(
    model: &mut CudaTransformer<'_>,
    pending: &mut [Vec<u32>],
    caches: &mut [CudaKvCache],
) -> Result<(f64, f64)> {
    model.gpu().synchronize()?;
    let t0 = Instant::now();
    let picks = {
        let mut batch: Vec<(&[u32], &mut CudaKvCache)> = pending
            .iter()
            .map(Vec::as_slice)
            .zip(caches.iter_mut())
            .collect();
        model.forward_greedy(&mut batch)?
    };
    let t1 = Instant::now();
    for (p, (token, _)) in pending.iter_mut().zip(picks) {
        *p = vec![token];
    }
    Ok(((t1 - t0).as_secs_f64(), t1.elapsed().as_secs_f64()))
}

fn run(
    model: &mut CudaTransformer<'_>,
    prompts: &[Vec<u32>],
    new_tokens: usize,
) -> Result<DecodeTimes> {
    let mut caches: Vec<CudaKvCache> = prompts.iter().map(|_| model.new_cache()).collect();
    let mut pending = prompts.to_vec();
    let (forward, pick) = step(model, &mut pending, &mut caches)?;
    let mut times = DecodeTimes {
        prefill_s: forward + pick,
        forward_s: Vec::with_capacity(new_tokens),
        pick_s: Vec::with_capacity(new_tokens),
        first_tokens: pending.first().cloned().unwrap_or_default(),
        peak_memory_bytes: None,
    };
    for _ in 1..new_tokens {
        let (forward, pick) = step(model, &mut pending, &mut caches)?;
        times.forward_s.push(forward);
        times.pick_s.push(pick);
        if times.first_tokens.len() < KEPT_TOKENS {
            times
                .first_tokens
                .extend(pending.first().into_iter().flatten());
        }
    }
    Ok(times)
}

/// The safetensors files of a model folder, as `WeightStore::open` reads them: the shards that
/// model.safetensors.index.json names, else model.safetensors; with their sizes in bytes.
pub fn weight_files(dir: &Path) -> Result<Vec<(PathBuf, u64)>> {
    use crate::error::Context;
    let index = dir.join("model.safetensors.index.json");
    let names: Vec<String> = if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("{}: cannot read", index.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid index", index.display()))?;
        let map = value["weight_map"]
            .as_object()
            .with_context(|| format!("{}: no weight_map", index.display()))?;
        let mut names: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        names
    } else {
        vec!["model.safetensors".to_string()]
    };
    names
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            let len = std::fs::metadata(&path)
                .with_context(|| format!("{}: cannot read", path.display()))?
                .len();
            Ok((path, len))
        })
        .collect()
}

/// Linux's page cache, through the C library the standard library already links.
#[cfg(target_os = "linux")]
mod page_cache {
    use std::ffi::{c_int, c_long, c_void};
    use std::os::fd::AsRawFd;
    use std::path::Path;

    extern "C" {
        fn posix_fadvise(fd: c_int, offset: i64, len: i64, advice: c_int) -> c_int;
        fn mincore(addr: *mut c_void, len: usize, vec: *mut u8) -> c_int;
        fn sysconf(name: c_int) -> c_long;
    }
    const POSIX_FADV_DONTNEED: c_int = 4;
    const SC_PAGESIZE: c_int = 30;

    /// Asks the kernel to drop the file's clean cached pages (no root needed; pages another
    /// process maps or that are dirty may stay). Whether it succeeded.
    pub fn drop_cached(path: &Path) -> bool {
        let Ok(file) = std::fs::File::open(path) else {
            return false;
        };
        let _ = file.sync_data();
        // SAFETY: an advisory call on an open descriptor; no memory is passed.
        unsafe { posix_fadvise(file.as_raw_fd(), 0, 0, POSIX_FADV_DONTNEED) == 0 }
    }

    /// (resident pages, pages) of the file, from mincore over a read-only mapping.
    pub fn resident(path: &Path) -> Option<(u64, u64)> {
        let file = std::fs::File::open(path).ok()?;
        if file.metadata().ok()?.len() == 0 {
            return Some((0, 0));
        }
        // SAFETY: a read-only mapping that is never read here, only asked about.
        let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
        // SAFETY: reads a configuration value.
        let page = unsafe { sysconf(SC_PAGESIZE) };
        let page = usize::try_from(page).ok().filter(|&p| p > 0)?;
        let pages = map.len().div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: `map` is a live page-aligned mapping of map.len() bytes, and `vec` holds one
        // byte per page of it.
        let rc = unsafe { mincore(map.as_ptr() as *mut c_void, map.len(), vec.as_mut_ptr()) };
        (rc == 0).then(|| {
            let resident = vec.iter().filter(|&&b| b & 1 == 1).count();
            (resident as u64, pages as u64)
        })
    }
}

#[cfg(not(target_os = "linux"))]
mod page_cache {
    use std::path::Path;
    pub fn drop_cached(_: &Path) -> bool {
        false
    }
    pub fn resident(_: &Path) -> Option<(u64, u64)> {
        None
    }
}

/// Asks the kernel to drop the files' cached pages (best effort, see [`resident_fraction`]):
/// whether every request was accepted.
pub fn drop_page_cache(files: &[(PathBuf, u64)]) -> bool {
    files
        .iter()
        .fold(true, |ok, (path, _)| page_cache::drop_cached(path) && ok)
}

/// The fraction of the files' pages in the page cache now (None where it cannot be read).
pub fn resident_fraction(files: &[(PathBuf, u64)]) -> Option<f64> {
    let (mut resident, mut pages) = (0u64, 0u64);
    for (path, _) in files {
        let (r, p) = page_cache::resident(path)?;
        resident += r;
        pages += p;
    }
    Some(if pages == 0 {
        1.0
    } else {
        resident as f64 / pages as f64
    })
}
