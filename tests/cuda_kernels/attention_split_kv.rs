//! The split-KV decode attention (kernels/cached_attention.cu `model_attention_part_j*` and
//! `model_attention_combine_j*` through `CudaBackend::cached_attention_split` with
//! `KeySplit::Blocks`) against `backend::cpu::attention::causal_attention` in f64 on the same
//! bf16 inputs, outputs and workspace poisoned with NaN first.
//!
//! Bound (‖out − ref‖/‖ref‖): 8e-3, the bound of the other cached-attention kernels
//! (tests/cuda_model.rs): the output is rounded to bf16 once (≤ 2^-9 relative, ~1.1e-3 in the
//! norm for uniform rounding errors) after softmax and sums in f32, whose own error over ≤ 2k
//! keys is ~1e-6. Determinism is bit-exact: the combine adds the splits in order.

use crate::common::gpu::{bits, check, f64s, gpu, poisoned, Dtype, Rng};
use half::bf16;
use implicit::backend::cpu::attention::{causal_attention, AttentionShape};
use implicit::backend::cuda::{
    CudaBackend, CudaKvCache, DeviceBuffer, KeySplit, KvBatch, KvCacheShape, KvTables, RowList,
    SplitKvWorkspace, MAX_KV_SPLITS,
};

const BOUND: f64 = 8e-3;

#[derive(Clone, Copy, Debug)]
struct Heads {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// Empty caches of this shape (two layers; the attention reads layer 1, so that the layer
/// offset is in play).
fn caches(n: usize, h: Heads) -> Vec<CudaKvCache> {
    (0..n)
        .map(|_| {
            CudaKvCache::new(KvCacheShape {
                layers: 2,
                kv_dim: h.kv_heads * h.head_dim,
                max_positions: 4096,
            })
        })
        .collect()
}

/// Every key and value so far of each sequence (bf16-exact f32), as the CPU reference reads
/// them: `[keys, kv_heads, head_dim]`.
struct History {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl History {
    /// No keys yet, for `sequences` sequences.
    fn new(sequences: usize) -> Self {
        History {
            k: vec![Vec::new(); sequences],
            v: vec![Vec::new(); sequences],
        }
    }
}

/// Appends random k, v for the batch's rows to layer 1 of the caches and to `hist`.
fn append(gpu: &CudaBackend, rng: &mut Rng, batch: &KvBatch<'_>, h: Heads, hist: &mut History) {
    let kvd = h.kv_heads * h.head_dim;
    let rows = batch.rows();
    let (kq, k) = bf16::quantize(&rng.vec(rows * kvd, 1.0));
    let (vq, v) = bf16::quantize(&rng.vec(rows * kvd, 1.0));
    let (gk, gv) = (gpu.upload(&kq).unwrap(), gpu.upload(&vq).unwrap());
    gpu.kv_append(batch, 1, &gk, &gv).unwrap();
    for s in 0..batch.sequences() {
        let (start, n) = batch.sequence_rows(s);
        hist.k[s].extend_from_slice(&k[start * kvd..(start + n) * kvd]);
        hist.v[s].extend_from_slice(&v[start * kvd..(start + n) * kvd]);
    }
}

/// The CPU's attention of the batch's rows (`q`, bf16-exact f32) over `hist`, in f64.
fn reference(batch: &KvBatch<'_>, h: Heads, q: &[f32], hist: &History) -> Vec<f64> {
    let qd = h.heads * h.head_dim;
    let mut want = vec![0.0f64; batch.rows() * qd];
    for s in 0..batch.sequences() {
        let (start, n) = batch.sequence_rows(s);
        let shape = AttentionShape {
            queries: n,
            keys: batch.past(s) + n,
            heads: h.heads,
            kv_heads: h.kv_heads,
            head_dim: h.head_dim,
        };
        causal_attention(
            &f64s(&q[start * qd..(start + n) * qd]),
            &f64s(&hist.k[s]),
            &f64s(&hist.v[s]),
            shape,
            &mut want[start * qd..(start + n) * qd],
        );
    }
    want
}

/// The split-KV attention of layer 1 for `rows` of the batch, over as many splits of the
/// keys as `ws` has room for.
fn attention_split(
    gpu: &CudaBackend,
    batch: &KvBatch<'_>,
    q: &DeviceBuffer<bf16>,
    h: Heads,
    rows: &RowList,
    out: &mut DeviceBuffer<bf16>,
    ws: &mut SplitKvWorkspace,
) {
    let split = KeySplit::Blocks(ws.splits());
    gpu.cached_attention_split(batch, 1, q, h.heads, h.head_dim, rows, out, split, Some(ws))
        .unwrap();
}

/// A prefill of `lengths[s]` tokens per sequence (every row checked: positions 0 to
/// length − 1, most of them shorter than one split), then a decode step (one row per
/// sequence), each through `KeySplit::Blocks(splits)` for each of `splits_list` (the rows
/// listed in one launch have different lengths), twice for bit-equality.
fn split_case(
    gpu: &CudaBackend,
    rng: &mut Rng,
    h: Heads,
    lengths: &[usize],
    splits_list: &[usize],
) {
    let qd = h.heads * h.head_dim;
    let mut cs = caches(lengths.len(), h);
    let mut hist = History::new(lengths.len());
    let decode = vec![1; lengths.len()];
    for (step, new) in [lengths, &decode[..]].into_iter().enumerate() {
        let batch = KvBatch::new(gpu, cs.iter_mut().collect(), new).unwrap();
        let rows = batch.rows();
        append(gpu, rng, &batch, h, &mut hist);
        let (qq, q) = bf16::quantize(&rng.vec(rows * qd, 1.0));
        let gq = gpu.upload(&qq).unwrap();
        let want = reference(&batch, h, &q, &hist);
        let all = RowList::all(gpu, rows).unwrap();
        for &splits in splits_list {
            let tag = format!("{h:?} lengths {lengths:?} step {step} splits {splits}");
            let mut ws = SplitKvWorkspace::new(gpu, rows, h.heads, h.head_dim, splits).unwrap();
            let mut runs = Vec::new();
            for _ in 0..2 {
                ws.poison(gpu).unwrap();
                let mut out = poisoned::<bf16>(gpu, rows * qd);
                attention_split(gpu, &batch, &gq, h, &all, &mut out, &mut ws);
                runs.push(gpu.download(&out).unwrap());
            }
            check(&format!("split-KV attention {tag}"), &runs[0], &want, BOUND);
            assert_eq!(
                bits(&runs[0]),
                bits(&runs[1]),
                "split-KV attention {tag}: two runs differ"
            );
        }
        batch.finish();
    }
}

#[test]
fn split_kv_attention_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("split_kv_attention_matches_the_cpu");
    // Llama's head_dim 128 and 64 with and without grouped-query heads, and one head_dim per
    // remaining kernel variant (j1: ≤ 64, j2: ≤ 128, j3: ≤ 192, j4: ≤ 256), odd ones included.
    let shapes = [
        (4, 4, 128),
        (8, 2, 128),
        (4, 4, 64),
        (6, 2, 64),
        (2, 1, 38),
        (3, 3, 96),
        (2, 2, 190),
        (2, 1, 256),
    ];
    for (heads, kv_heads, head_dim) in shapes {
        let h = Heads {
            heads,
            kv_heads,
            head_dim,
        };
        // Lengths around the 64-key alignment of a split and one far past a split of 3 or 16.
        split_case(gpu, &mut rng, h, &[1, 5, 63, 64, 65, 130, 517], &[1, 3, 16]);
    }
}

/// A long context at Llama's shape (32 heads, head_dim 128) in a decode step with a row of
/// 2 keys beside rows of 2047 and 2048: the 16 splits of a batch-1 step each take 128 keys,
/// and of 64 splits the last 32 are empty.
#[test]
fn split_kv_attention_long_context() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("split_kv_attention_long_context");
    let h = Heads {
        heads: 32,
        kv_heads: 32,
        head_dim: 128,
    };
    let mut cs = caches(3, h);
    let mut hist = History::new(3);
    let qd = h.heads * h.head_dim;
    for (step, new) in [[2047usize, 2046, 1], [1, 1, 1]].iter().enumerate() {
        let batch = KvBatch::new(gpu, cs.iter_mut().collect(), new).unwrap();
        append(gpu, &mut rng, &batch, h, &mut hist);
        if step == 0 {
            batch.finish();
            continue;
        }
        let (qq, q) = bf16::quantize(&rng.vec(3 * qd, 1.0));
        let want = reference(&batch, h, &q, &hist);
        let all = RowList::all(gpu, 3).unwrap();
        for splits in [16, MAX_KV_SPLITS] {
            let mut ws = SplitKvWorkspace::new(gpu, 3, h.heads, h.head_dim, splits).unwrap();
            ws.poison(gpu).unwrap();
            let mut out = poisoned::<bf16>(gpu, 3 * qd);
            let gq = gpu.upload(&qq).unwrap();
            attention_split(gpu, &batch, &gq, h, &all, &mut out, &mut ws);
            let got = gpu.download(&out).unwrap();
            check(
                &format!("split-KV attention, keys 2048/2047/2, splits {splits}"),
                &got,
                &want,
                BOUND,
            );
        }
        batch.finish();
    }
}

/// A captured decode step replayed as the caches grow, without the graph: the same tables
/// (`KvBatch::with_tables`), row list, q, out and workspace, hence the same launch arguments,
/// over eight steps in which a cache moves (growing past 64 positions) and a row's length
/// passes 192 → 193, where its third of 3 splits goes from 64 keys to none (chunk 64 → 128):
/// the combine must not read that split's stale part. Checked against the CPU at every step.
#[test]
fn split_kv_attention_same_launch_as_the_cache_grows() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("split_kv_attention_same_launch_as_the_cache_grows");
    let h = Heads {
        heads: 4,
        kv_heads: 2,
        head_dim: 128,
    };
    let qd = h.heads * h.head_dim;
    let mut cs = caches(3, h);
    let mut hist = History::new(3);
    let prefill = KvBatch::new(gpu, cs.iter_mut().collect(), &[189, 60, 1]).unwrap();
    append(gpu, &mut rng, &prefill, h, &mut hist);
    prefill.finish();
    let splits = 3;
    let mut ws = SplitKvWorkspace::new(gpu, 3, h.heads, h.head_dim, splits).unwrap();
    ws.poison(gpu).unwrap();
    let rows = RowList::all(gpu, 3).unwrap();
    let mut gq = gpu.alloc::<bf16>(3 * qd).unwrap();
    let mut out = poisoned::<bf16>(gpu, 3 * qd);
    let mut tables = KvTables::new(gpu, 3, 3).unwrap();
    let capacity_before = cs[1].capacity();
    for step in 0..8 {
        let batch = KvBatch::with_tables(gpu, cs.iter_mut().collect(), &[1, 1, 1], tables).unwrap();
        append(gpu, &mut rng, &batch, h, &mut hist);
        let (qq, q) = bf16::quantize(&rng.vec(3 * qd, 1.0));
        gpu.upload_into(&qq, &mut gq).unwrap();
        let want = reference(&batch, h, &q, &hist);
        let keys: Vec<usize> = (0..3).map(|s| batch.past(s) + 1).collect();
        attention_split(gpu, &batch, &gq, h, &rows, &mut out, &mut ws);
        let got = gpu.download(&out).unwrap();
        check(
            &format!("split-KV attention replayed, step {step}, keys {keys:?}"),
            &got,
            &want,
            BOUND,
        );
        tables = batch.finish();
    }
    assert!(
        cs[1].capacity() > capacity_before,
        "the test meant to grow a cache ({capacity_before} positions)"
    );
    assert_eq!(cs[0].len(), 197, "the test meant to pass 192 → 193 keys");
}

/// What `cached_attention` picks from `kv_splits` and `SplitKvWorkspace::for_decode`: a split
/// over blocks for a batch-1 step of a 4096-position model, none once the pairs alone give 32
/// blocks per SM; and its output equals the explicit `KeySplit::Blocks` launch bit for bit.
#[test]
fn split_kv_plan_and_dispatch() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("split_kv_plan_and_dispatch");
    // 32 blocks per SM from 32 pairs is one split per SM: 16 (the cap) on any GPU of ≥ 16 SMs.
    assert_eq!(gpu.kv_splits(1, 32, 4096), 16);
    assert_eq!(
        gpu.kv_splits(4096, 32, 4096),
        1,
        "4096 rows × 32 heads fill any GPU"
    );
    assert_eq!(
        gpu.kv_splits(1, 32, 511),
        1,
        "a 511-position model never splits"
    );
    assert!(
        gpu.kv_splits(1, 32, 1024) <= 4,
        "at most one split per 256 positions"
    );
    let mut last = usize::MAX;
    for rows in [1, 2, 4, 8, 16, 32, 64, 128, 256] {
        let s = gpu.kv_splits(rows, 32, 4096);
        assert!(s <= last, "splits grow from {last} to {s} at {rows} rows");
        last = s;
    }
    assert!(SplitKvWorkspace::for_decode(gpu, 4096, 32, 128, 4096)
        .unwrap()
        .is_none());
    // The decode graphs' memory budget counts what for_decode allocates.
    for rows in [1, 2, 8, 64, 131, 4096] {
        let made = SplitKvWorkspace::for_decode(gpu, rows, 32, 128, 4096).unwrap();
        assert_eq!(
            SplitKvWorkspace::decode_bytes(gpu, rows, 32, 128, 4096),
            made.map_or(0, |w| w.bytes()),
            "{rows} rows"
        );
    }

    let h = Heads {
        heads: 8,
        kv_heads: 8,
        head_dim: 128,
    };
    let qd = h.heads * h.head_dim;
    let mut ws = SplitKvWorkspace::for_decode(gpu, 2, h.heads, h.head_dim, 4096)
        .unwrap()
        .expect("a 2-row step of a 4096-position model splits over blocks");
    let mut cs = caches(2, h);
    let batch = KvBatch::new(gpu, cs.iter_mut().collect(), &[300, 7]).unwrap();
    let mut hist = History::new(2);
    append(gpu, &mut rng, &batch, h, &mut hist);
    let rows = batch.rows();
    let (qq, q) = bf16::quantize(&rng.vec(rows * qd, 1.0));
    let gq = gpu.upload(&qq).unwrap();
    let want = reference(&batch, h, &q, &hist);
    let all = RowList::all(gpu, rows).unwrap();
    // Room for 2 rows only: the dispatch launches on its last 2 rows (the decode-like ones).
    let last2 = RowList::new(gpu, &[299, 306], rows).unwrap();
    let mut auto = poisoned::<bf16>(gpu, rows * qd);
    gpu.cached_attention(
        &batch,
        1,
        &gq,
        h.heads,
        h.head_dim,
        &last2,
        &mut auto,
        Some(&mut ws),
    )
    .unwrap();
    let mut explicit = poisoned::<bf16>(gpu, rows * qd);
    let split = KeySplit::Blocks(ws.splits());
    attention_split(gpu, &batch, &gq, h, &last2, &mut explicit, &mut ws);
    let (auto, explicit) = (
        gpu.download(&auto).unwrap(),
        gpu.download(&explicit).unwrap(),
    );
    assert_eq!(
        bits(&auto),
        bits(&explicit),
        "cached_attention picked {split:?}"
    );
    for (r, row) in [299usize, 306].into_iter().enumerate() {
        let span = row * qd..(row + 1) * qd;
        check(
            &format!("dispatched split-KV attention, listed row {r}"),
            &auto[span.clone()],
            &want[span],
            BOUND,
        );
    }
    assert!(
        auto[..299 * qd].iter().all(|x| x.is_nan()),
        "rows outside the list are not written"
    );
    // And the full list through the explicit launch with a workspace for all its rows.
    let mut big = SplitKvWorkspace::new(gpu, rows, h.heads, h.head_dim, 2).unwrap();
    let mut out = poisoned::<bf16>(gpu, rows * qd);
    attention_split(gpu, &batch, &gq, h, &all, &mut out, &mut big);
    check(
        "split-KV attention, 2 splits, all rows",
        &gpu.download(&out).unwrap(),
        &want,
        BOUND,
    );
    batch.finish();
}

/// Bad arguments are refused with an error naming what is wrong, before any launch.
#[test]
fn split_kv_attention_refuses_bad_arguments() {
    let Some(gpu) = gpu() else { return };
    let h = Heads {
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
    };
    let qd = h.heads * h.head_dim;
    let mut cs = caches(2, h);
    let batch = KvBatch::new(gpu, cs.iter_mut().collect(), &[3, 2]).unwrap();
    let gq = gpu.alloc::<bf16>(5 * qd).unwrap();
    let mut out = gpu.alloc::<bf16>(5 * qd).unwrap();
    let all = RowList::all(gpu, 5).unwrap();
    let mut run = |split: KeySplit, ws: Option<&mut SplitKvWorkspace>| {
        gpu.cached_attention_split(
            &batch, 1, &gq, h.heads, h.head_dim, &all, &mut out, split, ws,
        )
        .map(|()| String::new())
        .unwrap_or_else(|e| e.to_string())
    };
    let mut small = SplitKvWorkspace::new(gpu, 4, h.heads, h.head_dim, 3).unwrap();
    let e = run(KeySplit::Blocks(3), Some(&mut small));
    assert!(
        e.contains("workspace holds"),
        "4 rows' workspace for 5 rows: {e:?}"
    );
    let mut few = SplitKvWorkspace::new(gpu, 5, h.heads, h.head_dim, 2).unwrap();
    let e = run(KeySplit::Blocks(3), Some(&mut few));
    assert!(
        e.contains("workspace holds"),
        "2 splits' workspace for 3: {e:?}"
    );
    let e = run(KeySplit::Blocks(3), None);
    assert!(
        e.contains("needs a split-KV workspace"),
        "no workspace: {e:?}"
    );
    for splits in [0, MAX_KV_SPLITS + 1] {
        let mut ws = SplitKvWorkspace::new(gpu, 5, h.heads, h.head_dim, 4).unwrap();
        let e = run(KeySplit::Blocks(splits), Some(&mut ws));
        assert!(
            e.contains("splits, expected 1 to"),
            "{splits} splits: {e:?}"
        );
    }
    assert!(SplitKvWorkspace::new(gpu, 5, h.heads, h.head_dim, 0).is_err());
    assert!(SplitKvWorkspace::new(gpu, usize::MAX / 2, 4, 64, 4).is_err());
    // The workspace fits and the arguments are right: the same call goes through.
    let mut ok = SplitKvWorkspace::new(gpu, 5, h.heads, h.head_dim, 3).unwrap();
    assert_eq!(run(KeySplit::Blocks(3), Some(&mut ok)), "");
    batch.finish();
}
