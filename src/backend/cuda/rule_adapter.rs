//! The rule adapter on the GPU (kernels/rule_adapter.cu): per row of logits, log_softmax + the
//! rules' scores + argmax, in one pass over the logits. Two kernels: one block per row
//! (`rule_adapter_{f32,bf16}`), and the row split over several blocks whose last one combines
//! the chunks' records (`rule_adapter_split_{f32,bf16}`), for decode batches too small to fill
//! the GPU one row per block. [`rule_adapter_plan`] chooses; the split's workspace is allocated
//! once when the backend opens (a decode step captured as a CUDA graph cannot allocate), and each
//! launch leaves its counters at zero. Reference: an f64 one in tests/cuda_kernels.rs
//! (`rule_reference`, on backend::cpu::ops); generate::scoring::greedy_pick is the CPU twin.

use super::{
    as_int, check_len, driver_error, per_row, rows_of, CudaBackend, DeviceBuffer, Float, THREADS,
};
use crate::bail;
use crate::error::Result;
use cudarc::driver::{CudaStream, LaunchConfig};
use std::sync::Arc;

/// Blocks of the split kernel resident per SM (its `__launch_bounds__(256, 2)`).
const BLOCKS_PER_SM: usize = 2;
/// Fewest logits a chunk gets (4 per thread): below that a block's reductions and its record
/// cost more than its loads.
const MIN_CHUNK: usize = 1024;
/// Chunk starts are multiples of this many elements, so 16-byte packs of f32 or bf16 stay
/// aligned (kernels/rule_adapter.cu's `scan`).
const CHUNK_ALIGN: usize = 8;
/// Words of a chunk's record (kernels/rule_adapter.cu's RECORD_WORDS).
const RECORD_WORDS: usize = 8;
/// Least workspace whatever the SM count, so that forced splits (tests, benches) of up to 256
/// rows fit on any GPU: 128 KiB of records, 4 KiB of counters.
const MIN_RECORDS: usize = 4096;
const MIN_COUNTERS: usize = 1024;

/// Which kernel [`CudaBackend::rule_adapter_with`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleAdapterKernel {
    /// What [`rule_adapter_plan`] picks for the shape.
    Auto,
    /// One block per row (the kernel before the split).
    PerRow,
    /// The split kernel with this many chunks per row (clamped to 1..=⌈vocab/8⌉; a count that
    /// does not divide the row leaves the last chunk shorter).
    Split(usize),
}

/// How one rule adapter call is launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RulePlan {
    /// `rule_adapter_{f32,bf16}`: one block per row.
    PerRow,
    /// `rule_adapter_split_{f32,bf16}`: `rows · chunks` blocks; chunk c of a row is its logits
    /// [c·chunk_len, min((c+1)·chunk_len, vocab)).
    Split { chunks: usize, chunk_len: usize },
}

/// The split of `vocab` into about `chunks` chunks: lengths a multiple of [`CHUNK_ALIGN`], no
/// chunk empty.
fn split_into(vocab: usize, chunks: usize) -> RulePlan {
    let chunks = chunks.clamp(1, vocab.div_ceil(CHUNK_ALIGN).max(1));
    let chunk_len = vocab.div_ceil(chunks).next_multiple_of(CHUNK_ALIGN);
    RulePlan::Split {
        chunks: vocab.div_ceil(chunk_len),
        chunk_len,
    }
}

/// The launch for `rows × vocab` logits on `sms` SMs with a workspace of `records` chunk records
/// and `counters` row counters. `Auto` fills the GPU's resident blocks (2 per SM): among chunk
/// counts C from 1 to ⌈resident/rows⌉ (no more than one wave past filling it) and at most
/// ⌈vocab/1024⌉, the C with the fewest waves per unit of work, ⌈rows·C/resident⌉/C, the smallest
/// on a tie; C = 1 is the per-row kernel (e.g. at 132 SMs: 32 chunks at batch 1, 4 at 64, 2 at
/// 128, the per-row kernel from 133 rows). A forced split that needs more workspace than there
/// is is an error.
pub fn rule_adapter_plan(
    rows: usize,
    vocab: usize,
    kernel: RuleAdapterKernel,
    sms: usize,
    (records, counters): (usize, usize),
) -> Result<RulePlan> {
    let fits = |plan: RulePlan| match plan {
        RulePlan::PerRow => true,
        RulePlan::Split { chunks, .. } => rows * chunks <= records && rows <= counters,
    };
    let plan = match kernel {
        RuleAdapterKernel::PerRow => RulePlan::PerRow,
        RuleAdapterKernel::Split(chunks) => split_into(vocab, chunks),
        RuleAdapterKernel::Auto => {
            let resident = (sms * BLOCKS_PER_SM).max(1);
            let most = resident
                .div_ceil(rows.max(1))
                .min(vocab.div_ceil(MIN_CHUNK))
                .max(1);
            let cost = |c: usize| (rows * c).div_ceil(resident) as f64 / c as f64;
            let chunks = (1..=most)
                .filter(|&c| fits(split_into(vocab, c)))
                .fold(1, |best, c| if cost(c) < cost(best) { c } else { best });
            match split_into(vocab, chunks) {
                RulePlan::Split { chunks: 1, .. } => RulePlan::PerRow,
                plan => plan,
            }
        }
    };
    if !fits(plan) {
        let RulePlan::Split { chunks, .. } = plan else {
            unreachable!("the per-row kernel needs no workspace")
        };
        bail!(
            "rule adapter rows {rows} vocab {vocab}: {chunks} chunks per row need {} records and \
             {rows} counters, the workspace has {records} and {counters}",
            rows * chunks
        );
    }
    Ok(plan)
}

/// The split kernel's workspace: one record of [`RECORD_WORDS`] floats per block and one counter
/// per row (zero between launches: the last block of each row resets its own).
pub(super) struct RuleWorkspace {
    records: DeviceBuffer<f32>,
    counters: DeviceBuffer<u32>,
}

impl RuleWorkspace {
    /// Room for every plan `Auto` makes on `multiprocessors` SMs (rows·C < 2·resident blocks,
    /// rows < resident) and at least [`MIN_RECORDS`] / [`MIN_COUNTERS`]: 132 KiB on an H100.
    pub(super) fn new(stream: &Arc<CudaStream>, multiprocessors: u32) -> Result<RuleWorkspace> {
        let resident = multiprocessors as usize * BLOCKS_PER_SM;
        let records = stream
            .alloc_zeros::<f32>((2 * resident).max(MIN_RECORDS) * RECORD_WORDS)
            .map_err(|e| driver_error("allocating the rule adapter's records", e))?;
        let counters = stream
            .alloc_zeros::<u32>(resident.max(MIN_COUNTERS))
            .map_err(|e| driver_error("allocating the rule adapter's counters", e))?;
        Ok(RuleWorkspace {
            records: DeviceBuffer { slice: records },
            counters: DeviceBuffer { slice: counters },
        })
    }

    /// (records, counters) it holds.
    fn capacity(&self) -> (usize, usize) {
        (self.records.len() / RECORD_WORDS, self.counters.len())
    }
}

/// Where [`CudaBackend::rule_adapter`] writes, one value per row.
#[derive(Debug)]
pub struct RuleAdapterOutput<'a> {
    /// argmax of the adapted scores (the lowest index on ties).
    pub tokens: &'a mut DeviceBuffer<u32>,
    /// The chosen token's log-probability under the adapted (renormalised) distribution.
    pub logprobs: &'a mut DeviceBuffer<f32>,
    /// The chosen token's log-probability under the base model, log_softmax(logits)[token].
    pub base_logprobs: &'a mut DeviceBuffer<f32>,
}

impl CudaBackend {
    /// The rule adapter over each row of `logits` (`[rows, vocab]`): scores =
    /// log_softmax(z) + bias + [i = eos_id]·eos_bias[r]; writes the argmax of the scores and the
    /// chosen token's log-probabilities (see [`RuleAdapterOutput`]). `bias` is `[vocab]` (shared
    /// by all rows) or `[rows, vocab]`; `eos_bias` is `[rows]`; an `eos_id` ≥ vocab adds no EOS
    /// term. A row whose scores are all −inf or NaN gives token 0 and NaN log-probabilities.
    /// The kernel is [`rule_adapter_plan`]'s choice; the same inputs give the same bits on every
    /// run of the same plan.
    pub fn rule_adapter<T: Float>(
        &self,
        logits: &DeviceBuffer<T>,
        vocab: usize,
        bias: &DeviceBuffer<f32>,
        eos_id: u32,
        eos_bias: &DeviceBuffer<f32>,
        out: RuleAdapterOutput<'_>,
    ) -> Result<()> {
        let kernel = RuleAdapterKernel::Auto;
        self.rule_adapter_with(kernel, logits, vocab, bias, eos_id, eos_bias, out)
    }

    /// How [`CudaBackend::rule_adapter_with`] launches `rows × vocab` logits on this device.
    pub fn rule_adapter_plan(
        &self,
        rows: usize,
        vocab: usize,
        kernel: RuleAdapterKernel,
    ) -> Result<RulePlan> {
        let sms = self.multiprocessors as usize;
        rule_adapter_plan(rows, vocab, kernel, sms, self.rule_workspace.capacity())
    }

    /// [`CudaBackend::rule_adapter`] on the kernel `kernel` says (benches and tests compare them).
    #[allow(clippy::too_many_arguments)]
    pub fn rule_adapter_with<T: Float>(
        &self,
        kernel: RuleAdapterKernel,
        logits: &DeviceBuffer<T>,
        vocab: usize,
        bias: &DeviceBuffer<f32>,
        eos_id: u32,
        eos_bias: &DeviceBuffer<f32>,
        out: RuleAdapterOutput<'_>,
    ) -> Result<()> {
        let name = T::pick("rule_adapter_f32", "rule_adapter_bf16");
        let rows = rows_of(name, "logits", logits.len(), vocab)?;
        let bias_row_stride = if bias.len() == vocab {
            0
        } else if bias.len() == logits.len() {
            vocab
        } else {
            bail!(
                "CUDA kernel {name}: bias has {} elements, expected {vocab} (shared) or \
                 {} (one row per logits row)",
                bias.len(),
                logits.len()
            );
        };
        check_len(name, "eos_bias", eos_bias.len(), rows)?;
        check_len(name, "tokens", out.tokens.len(), rows)?;
        check_len(name, "logprobs", out.logprobs.len(), rows)?;
        check_len(name, "base_logprobs", out.base_logprobs.len(), rows)?;
        if rows == 0 {
            return Ok(());
        }
        let (vocab_int, stride_int) = (as_int(name, "vocab", vocab)?, bias_row_stride as i32);
        let shapes = format!("rows {rows}, vocab {vocab}, bias stride {bias_row_stride}");
        let (chunks, chunk_len) = match self.rule_adapter_plan(rows, vocab, kernel)? {
            RulePlan::PerRow => {
                return launch!(
                    self,
                    name,
                    per_row(rows, 0),
                    shapes,
                    [
                        &logits.slice,
                        &bias.slice,
                        &stride_int,
                        &eos_id,
                        &eos_bias.slice,
                        &mut out.tokens.slice,
                        &mut out.logprobs.slice,
                        &mut out.base_logprobs.slice,
                        &vocab_int
                    ]
                );
            }
            RulePlan::Split { chunks, chunk_len } => (chunks, chunk_len),
        };
        let name = T::pick("rule_adapter_split_f32", "rule_adapter_split_bf16");
        let blocks = as_int(name, "rows × chunks", rows * chunks)?;
        let (chunks_int, chunk_len_int) = (chunks as i32, chunk_len as i32);
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let ws = &self.rule_workspace;
        // The workspace is written by the kernel though shared here: one stream runs one call
        // at a time, and each launch leaves the counters at zero.
        launch!(
            self,
            name,
            cfg,
            format!("{shapes}, {chunks} chunks of {chunk_len}"),
            [
                &logits.slice,
                &bias.slice,
                &stride_int,
                &eos_id,
                &eos_bias.slice,
                &mut out.tokens.slice,
                &mut out.logprobs.slice,
                &mut out.base_logprobs.slice,
                &vocab_int,
                &chunks_int,
                &chunk_len_int,
                &ws.records.slice,
                &ws.counters.slice
            ]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100_SMS: usize = 132;
    /// The workspace RuleWorkspace::new makes on an H100.
    const H100_WORKSPACE: (usize, usize) = (MIN_RECORDS, MIN_COUNTERS);

    fn auto(rows: usize, vocab: usize) -> RulePlan {
        let kernel = RuleAdapterKernel::Auto;
        rule_adapter_plan(rows, vocab, kernel, H100_SMS, H100_WORKSPACE).unwrap()
    }

    fn chunks(plan: RulePlan) -> usize {
        match plan {
            RulePlan::PerRow => 1,
            RulePlan::Split { chunks, .. } => chunks,
        }
    }

    #[test]
    fn decode_sizes_take_the_split_kernel() {
        // Batch 1..128 at vocab 32000 on 132 SMs: split, filling the 264 resident blocks.
        for (rows, want) in [(1, 32), (7, 32), (16, 16), (64, 4), (100, 2), (128, 2)] {
            let plan = auto(rows, 32000);
            assert_eq!(chunks(plan), want, "rows {rows}: {plan:?}");
            assert!(matches!(plan, RulePlan::Split { .. }), "rows {rows}");
            assert!(
                rows * want <= 2 * 264,
                "rows {rows}: beyond one wave past filling"
            );
        }
        // 133 rows and up fill the GPU (or nearly) one row per block.
        for rows in [133, 200, 256, 1000] {
            assert_eq!(auto(rows, 32000), RulePlan::PerRow, "rows {rows}");
        }
        // Small vocabularies: no chunk under MIN_CHUNK, so a row of 1000 is one block.
        assert_eq!(auto(1, 1000), RulePlan::PerRow);
        assert_eq!(chunks(auto(1, 50280)), 50);
    }

    #[test]
    fn chunks_cover_the_row_once() {
        for vocab in [1, 7, 8, 9, 33, 1000, 32000, 32003, 50280] {
            for want in [1, 2, 3, 5, 7, 16, 32, 64, 1000] {
                let RulePlan::Split { chunks, chunk_len } = split_into(vocab, want) else {
                    panic!("split_into gave the per-row plan");
                };
                let tag = format!("vocab {vocab} asked {want}: {chunks} × {chunk_len}");
                assert_eq!(chunk_len % CHUNK_ALIGN, 0, "{tag}");
                assert!(chunks >= 1 && chunks <= want.max(1), "{tag}");
                // Every chunk is non-empty and together they end exactly at vocab.
                assert!(
                    (chunks - 1) * chunk_len < vocab,
                    "{tag}: an empty last chunk"
                );
                assert!(chunks * chunk_len >= vocab, "{tag}: logits left over");
            }
        }
        // 32000 over 7 chunks does not divide: six of 4576 and a last of 4544.
        assert_eq!(
            split_into(32000, 7),
            RulePlan::Split {
                chunks: 7,
                chunk_len: 4576
            }
        );
    }

    #[test]
    fn plans_stay_within_the_workspace() {
        // Auto never needs more than RuleWorkspace::new makes, on any SM count.
        for sms in [1, 2, 20, 108, 132, 144, 1000] {
            let resident = sms * BLOCKS_PER_SM;
            let ws = ((2 * resident).max(MIN_RECORDS), resident.max(MIN_COUNTERS));
            for rows in [1, 2, 3, 7, 64, 100, 255, 256, 257, 5000] {
                for vocab in [33, 1000, 32000, 50280, 256000] {
                    let plan =
                        rule_adapter_plan(rows, vocab, RuleAdapterKernel::Auto, sms, ws).unwrap();
                    if let RulePlan::Split { chunks, .. } = plan {
                        assert!(rows * chunks < 2 * resident.max(1) + rows, "{sms} {rows}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_forced_split_beyond_the_workspace_is_refused() {
        let kernel = RuleAdapterKernel::Split(32);
        let err = rule_adapter_plan(256, 32000, kernel, H100_SMS, H100_WORKSPACE).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("rows 256 vocab 32000") && msg.contains("8192 records"),
            "{msg}"
        );
        // Too many rows for the counters, even at one chunk each.
        let err = rule_adapter_plan(
            2000,
            32000,
            RuleAdapterKernel::Split(1),
            H100_SMS,
            (1 << 20, 1024),
        );
        assert!(err.unwrap_err().to_string().contains("2000 counters"));
        // The per-row kernel needs none.
        let plan = rule_adapter_plan(100_000, 32000, RuleAdapterKernel::PerRow, H100_SMS, (0, 0));
        assert_eq!(plan.unwrap(), RulePlan::PerRow);
    }
}
