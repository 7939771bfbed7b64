//! Every CUDA kernel against its CPU reference (backend::cpu, optim, or a small f64 one here),
//! on fresh random inputs (seed printed; set IMPLICIT_TEST_SEED to replay), several shapes
//! including odd ones and the paper's (d 4096, vocab 32000), outputs poisoned with NaN first.
//! Error bounds (‖out − ref‖/‖ref‖): f32 1e-5, bf16 storage 8e-3; argmax exact; AdamW bit-exact.
//! Without a GPU each test prints "SKIPPED (no GPU): reason" and passes.
#![cfg(feature = "cuda")]

mod common;

#[path = "cuda_kernels/adamw.rs"]
mod adamw;
#[path = "cuda_kernels/adamw_multi.rs"]
mod adamw_multi;
#[path = "cuda_kernels/attention.rs"]
mod attention;
#[path = "cuda_kernels/attention_hopper_bwd.rs"]
mod attention_hopper_bwd;
#[path = "cuda_kernels/attention_hopper_fwd.rs"]
mod attention_hopper_fwd;
#[path = "cuda_kernels/attention_plain.rs"]
mod attention_plain;
#[path = "cuda_kernels/attention_split_kv.rs"]
mod attention_split_kv;
#[path = "cuda_kernels/decode_fused.rs"]
mod decode_fused;
#[path = "cuda_kernels/elementwise.rs"]
mod elementwise;
#[path = "cuda_kernels/embedding_sorted.rs"]
mod embedding_sorted;
#[path = "cuda_kernels/gemm.rs"]
mod gemm;
#[path = "cuda_kernels/gemm_dispatch.rs"]
mod gemm_dispatch;
#[path = "cuda_kernels/gemm_multicast.rs"]
mod gemm_multicast;
#[path = "cuda_kernels/gemm_skinny.rs"]
mod gemm_skinny;
#[path = "cuda_kernels/gemm_support.rs"]
mod gemm_support;
#[path = "cuda_kernels/gemm_wgmma.rs"]
mod gemm_wgmma;
#[path = "cuda_kernels/layernorm_regs.rs"]
mod layernorm_regs;
#[path = "cuda_kernels/norm_gemv.rs"]
mod norm_gemv;
#[path = "cuda_kernels/norm_residual.rs"]
mod norm_residual;
#[path = "cuda_kernels/rmsnorm_regs.rs"]
mod rmsnorm_regs;
#[path = "cuda_kernels/rope_vec.rs"]
mod rope_vec;
#[path = "cuda_kernels/rule_adapter.rs"]
mod rule_adapter;

use common::gpu::{check, f64s, gpu, poisoned, Dtype, Rng, F32_BOUND};
use half::bf16;
use implicit::backend::cpu::{backward, ops};
use implicit::backend::cuda::{CudaAvailability, CudaBackend, RuleAdapterOutput};

fn norms<T: Dtype>(gpu: &CudaBackend, rng: &mut Rng, rows: usize, d: usize) {
    let tag = format!("{} rows {rows} d {d}", std::any::type_name::<T>());
    let (xq, x) = T::quantize(&rng.vec(rows * d, 2.0));
    let (wq, w) = T::quantize(&rng.vec(d, 1.5));
    let (dyq, dy) = T::quantize(&rng.vec(rows * d, 1.0));
    let (xs, ws, dys) = (f64s(&x), f64s(&w), f64s(&dy));
    let (gx, gw, gdy) = (
        gpu.upload(&xq).unwrap(),
        gpu.upload(&wq).unwrap(),
        gpu.upload(&dyq).unwrap(),
    );
    let eps = 1e-5;

    let mut y = vec![0.0f64; rows * d];
    ops::rms_norm(&xs, &ws, eps, &mut y);
    let mut gy = poisoned::<T>(gpu, rows * d);
    gpu.rms_norm(&gx, &gw, eps, &mut gy).unwrap();
    check(
        &format!("rms_norm {tag}"),
        &gpu.download(&gy).unwrap(),
        &y,
        T::BOUND,
    );

    let (mut dx, mut dw) = (vec![0.0f64; rows * d], vec![0.0f64; d]);
    backward::rms_norm_backward(&xs, &ws, eps, &dys, &mut dx, &mut dw);
    let mut gdx = poisoned::<T>(gpu, rows * d);
    let mut gdw = gpu.upload(&vec![f32::NAN; d]).unwrap();
    gpu.rms_norm_backward(&gx, &gw, eps, &gdy, &mut gdx, &mut gdw, false)
        .unwrap();
    check(
        &format!("rms_norm dx {tag}"),
        &gpu.download(&gdx).unwrap(),
        &dx,
        T::BOUND,
    );
    let dw_gpu = gpu.download(&gdw).unwrap();
    check(&format!("rms_norm dw {tag}"), &dw_gpu, &dw, F32_BOUND);
    // Deterministic: the same inputs give the same bits; `accumulate` adds to what is there.
    gpu.rms_norm_backward(&gx, &gw, eps, &gdy, &mut gdx, &mut gdw, false)
        .unwrap();
    assert_eq!(
        gpu.download(&gdw).unwrap(),
        dw_gpu,
        "dw differs between two runs"
    );
    gpu.rms_norm_backward(&gx, &gw, eps, &gdy, &mut gdx, &mut gdw, true)
        .unwrap();
    let twice: Vec<f64> = dw.iter().map(|v| 2.0 * v).collect();
    check(
        &format!("rms_norm dw accumulated {tag}"),
        &gpu.download(&gdw).unwrap(),
        &twice,
        F32_BOUND,
    );

    let mut ly = vec![0.0f64; rows * d];
    ops::layer_norm_no_params(&xs, d, eps, &mut ly);
    let mut gly = poisoned::<T>(gpu, rows * d);
    gpu.layer_norm(&gx, d, eps, &mut gly).unwrap();
    check(
        &format!("layer_norm {tag}"),
        &gpu.download(&gly).unwrap(),
        &ly,
        T::BOUND,
    );
    let mut ldx = vec![0.0f64; rows * d];
    backward::layer_norm_backward(&xs, d, eps, &dys, &mut ldx);
    let mut gldx = poisoned::<T>(gpu, rows * d);
    gpu.layer_norm_backward(&gx, d, eps, &gdy, &mut gldx)
        .unwrap();
    check(
        &format!("layer_norm dx {tag}"),
        &gpu.download(&gldx).unwrap(),
        &ldx,
        T::BOUND,
    );
}

#[test]
fn rms_norm_and_layer_norm_match_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("norms");
    // d 7/33: scalar path; 4100: f32 vectors, bf16 scalar; 600 and 2100 rows: several blocks,
    // and 2100 (9 rows a block) an odd count for the backward's two rows at a time.
    for (rows, d) in [
        (1, 7),
        (3, 33),
        (5, 4096),
        (17, 4100),
        (600, 256),
        (2100, 4096),
        (9, 9000), // wider than the rows-in-registers backward (8192): the tiled kernel
    ] {
        norms::<f32>(gpu, &mut rng, rows, d);
        norms::<bf16>(gpu, &mut rng, rows, d);
    }
}

fn rope_case<T: Dtype>(gpu: &CudaBackend, rng: &mut Rng, tokens: usize, heads: usize, hd: usize) {
    for layout in [ops::RopeLayout::HalfRotation, ops::RopeLayout::Interleaved] {
        let spec = ops::RopeSpec {
            heads,
            head_dim: hd,
            base: 10000.0,
            layout,
        };
        let (xq, x) = T::quantize(&rng.vec(tokens * heads * hd, 1.0));
        let positions: Vec<u32> = (0..tokens).map(|_| rng.below(4096) as u32).collect();
        let pos: Vec<usize> = positions.iter().map(|&p| p as usize).collect();
        let gpos = gpu.upload(&positions).unwrap();
        for inverse in [false, true] {
            let mut reference = x.clone();
            ops::rope(&mut reference, &pos, spec, inverse);
            let mut gx = gpu.upload(&xq).unwrap();
            gpu.rope(&mut gx, &gpos, spec, inverse).unwrap();
            let what = format!(
                "rope {} {tokens}x{heads}x{hd} {layout:?} inverse {inverse}",
                std::any::type_name::<T>()
            );
            check(
                &what,
                &gpu.download(&gx).unwrap(),
                &f64s(&reference),
                T::BOUND,
            );
        }
    }
}

#[test]
fn rope_matches_cpu_in_both_layouts() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("rope");
    // head_dim 6: half 3, the scalar path; 128 × 32 heads: Llama-2-7B.
    for (tokens, heads, hd) in [(3, 2, 8), (7, 3, 6), (5, 32, 128), (4, 8, 64)] {
        rope_case::<f32>(gpu, &mut rng, tokens, heads, hd);
        rope_case::<bf16>(gpu, &mut rng, tokens, heads, hd);
    }
}

fn swiglu_case<T: Dtype>(gpu: &CudaBackend, rng: &mut Rng, n: usize) {
    let tag = format!("{} n {n}", std::any::type_name::<T>());
    let (gq, g) = T::quantize(&rng.vec(n, 4.0));
    let (uq, u) = T::quantize(&rng.vec(n, 2.0));
    let (dq, dy) = T::quantize(&rng.vec(n, 1.0));
    let (g, u, dy) = (f64s(&g), f64s(&u), f64s(&dy));
    let (gg, gu, gd) = (
        gpu.upload(&gq).unwrap(),
        gpu.upload(&uq).unwrap(),
        gpu.upload(&dq).unwrap(),
    );
    let mut out = vec![0.0f64; n];
    ops::swiglu(&g, &u, &mut out);
    let mut gout = poisoned::<T>(gpu, n);
    gpu.swiglu(&gg, &gu, &mut gout).unwrap();
    check(
        &format!("swiglu {tag}"),
        &gpu.download(&gout).unwrap(),
        &out,
        T::BOUND,
    );
    let (mut dg, mut du) = (vec![0.0f64; n], vec![0.0f64; n]);
    backward::swiglu_backward(&g, &u, &dy, &mut dg, &mut du);
    let (mut gdg, mut gdu) = (poisoned::<T>(gpu, n), poisoned::<T>(gpu, n));
    gpu.swiglu_backward(&gg, &gu, &gd, &mut gdg, &mut gdu)
        .unwrap();
    check(
        &format!("swiglu d_gate {tag}"),
        &gpu.download(&gdg).unwrap(),
        &dg,
        T::BOUND,
    );
    check(
        &format!("swiglu d_up {tag}"),
        &gpu.download(&gdu).unwrap(),
        &du,
        T::BOUND,
    );
}

#[test]
fn swiglu_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("swiglu");
    for n in [1, 7, 1000, 3 * 11008 + 5, 4 * 11008 * 8] {
        swiglu_case::<f32>(gpu, &mut rng, n);
        swiglu_case::<bf16>(gpu, &mut rng, n);
    }
}

fn embedding_case<T: Dtype>(
    gpu: &CudaBackend,
    rng: &mut Rng,
    vocab: usize,
    dim: usize,
    tokens: usize,
) {
    let tag = format!(
        "{} vocab {vocab} dim {dim} tokens {tokens}",
        std::any::type_name::<T>()
    );
    let (tq, table) = T::quantize(&rng.vec(vocab * dim, 1.0));
    // Ids anywhere in the table, each odd token repeating an earlier id, so that the backward
    // adds several rows into one.
    let mut ids: Vec<u32> = Vec::with_capacity(tokens);
    for t in 0..tokens {
        let id = if t % 2 == 1 {
            ids[rng.below(t)]
        } else {
            rng.below(vocab) as u32
        };
        ids.push(id);
    }
    let gids = gpu.upload(&ids).unwrap();
    let mut out = vec![0.0f32; tokens * dim];
    ops::embedding(&ids, implicit::tensor::Elems::F32(&table), dim, &mut out);
    let mut gout = poisoned::<T>(gpu, tokens * dim);
    gpu.embedding(&gids, &gpu.upload(&tq).unwrap(), dim, &mut gout)
        .unwrap();
    let got: Vec<f32> = gpu
        .download(&gout)
        .unwrap()
        .iter()
        .map(|v| v.to_f32())
        .collect();
    assert_eq!(got, out, "embedding {tag} is a copy: bit-exact");

    let (dyq, dy) = T::quantize(&rng.vec(tokens * dim, 1.0));
    let init = rng.vec(vocab * dim, 0.5);
    let mut d_table = f64s(&init);
    backward::embedding_backward(&ids, &f64s(&dy), dim, &mut d_table);
    let mut gdt = gpu.upload(&init).unwrap();
    gpu.embedding_backward(&gids, &gpu.upload(&dyq).unwrap(), dim, &mut gdt)
        .unwrap();
    // Compare what was added (the table's other rows would hide an error in the touched ones).
    let got = gpu.download(&gdt).unwrap();
    let added: Vec<f32> = got.iter().zip(&init).map(|(g, i)| g - i).collect();
    let want: Vec<f64> = d_table
        .iter()
        .zip(&init)
        .map(|(d, &i)| d - i as f64)
        .collect();
    check(
        &format!("embedding d_table {tag}"),
        &added,
        &want,
        F32_BOUND,
    );
}

#[test]
fn embedding_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("embedding");
    for (vocab, dim, tokens) in [(50, 13, 9), (32000, 4096, 33), (1000, 100, 257)] {
        embedding_case::<f32>(gpu, &mut rng, vocab, dim, tokens);
        embedding_case::<bf16>(gpu, &mut rng, vocab, dim, tokens);
    }
    // An id past the table gives a NaN row, and no out-of-bounds access.
    let table = gpu.upload(&rng.vec(4 * 8, 1.0)).unwrap();
    let mut out = gpu.zeros::<f32>(2 * 8).unwrap();
    gpu.embedding(&gpu.upload(&[1u32, 4]).unwrap(), &table, 8, &mut out)
        .unwrap();
    let got = gpu.download(&out).unwrap();
    assert!(got[..8].iter().all(|v| v.is_finite()) && got[8..].iter().all(|v| v.is_nan()));
}

fn cross_entropy_case<T: Dtype>(gpu: &CudaBackend, rng: &mut Rng, rows: usize, vocab: usize) {
    let tag = format!("{} rows {rows} vocab {vocab}", std::any::type_name::<T>());
    let (zq, z) = T::quantize(&rng.vec(rows * vocab, 8.0));
    let targets: Vec<u32> = (0..rows).map(|_| rng.below(vocab) as u32).collect();
    // Row 1 carries no loss (weight 0), as prompt tokens do.
    let weights: Vec<f32> = (0..rows)
        .map(|r| if r == 1 { 0.0 } else { 0.25 + r as f32 * 0.5 })
        .collect();
    let zs = f64s(&z);
    let (gz, gt, gw) = (
        gpu.upload(&zq).unwrap(),
        gpu.upload(&targets).unwrap(),
        gpu.upload(&weights).unwrap(),
    );
    let (mut loss, mut lse) = (poisoned::<f32>(gpu, rows), poisoned::<f32>(gpu, rows));
    gpu.cross_entropy(&gz, vocab, &gt, &gw, &mut loss, &mut lse)
        .unwrap();
    let loss = gpu.download(&loss).unwrap();
    let per_row: Vec<f64> = (0..rows)
        .map(|r| {
            let row = &zs[r * vocab..][..vocab];
            backward::cross_entropy(row, vocab, &targets[r..r + 1], &[weights[r] as f64], None)
        })
        .collect();
    check(
        &format!("cross_entropy loss {tag}"),
        &loss,
        &per_row,
        F32_BOUND,
    );
    let mut dz = vec![0.0f64; rows * vocab];
    let w64 = f64s(&weights);
    let total = backward::cross_entropy(&zs, vocab, &targets, &w64, Some(&mut dz));
    let gpu_total: f64 = loss.iter().map(|&l| l as f64).sum();
    assert!(
        (gpu_total - total).abs() <= 1e-5 * total.abs(),
        "total {gpu_total} vs {total}"
    );
    let mut gdz = poisoned::<T>(gpu, rows * vocab);
    gpu.cross_entropy_backward(&gz, vocab, &gt, &gw, &lse, &mut gdz)
        .unwrap();
    check(
        &format!("cross_entropy d_logits {tag}"),
        &gpu.download(&gdz).unwrap(),
        &dz,
        T::BOUND,
    );
}

#[test]
fn cross_entropy_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("cross_entropy");
    for (rows, vocab) in [(2, 7), (3, 1001), (16, 32000), (5, 32003)] {
        cross_entropy_case::<f32>(gpu, &mut rng, rows, vocab);
        cross_entropy_case::<bf16>(gpu, &mut rng, rows, vocab);
    }
}

/// Row 0 has NaN logits among finite ones (a whole first 16-byte group of them), row 1 only
/// NaN, row 2 none: the log-sum-exp, the loss and the rule adapter's log-probabilities must be
/// NaN in rows 0 and 1, as the CPU's are, and right in row 2. With no rules (zero bias, no EOS
/// term) the adapter is the greedy pick of the decode graph.
fn nan_case<T: Dtype>(gpu: &CudaBackend, rng: &mut Rng, vocab: usize) {
    let tag = format!("{} vocab {vocab}", std::any::type_name::<T>());
    let rows = 3;
    let mut z = rng.vec(rows * vocab, 6.0);
    let nan_rows = (0..8.min(vocab - 1)).chain(vocab..2 * vocab);
    for i in nan_rows {
        z[i] = f32::NAN;
    }
    let (zq, z) = T::quantize(&z);
    let gz = gpu.upload(&zq).unwrap();
    let targets: Vec<u32> = (0..rows).map(|_| rng.below(vocab) as u32).collect();
    let (mut loss, mut lse) = (poisoned::<f32>(gpu, rows), poisoned::<f32>(gpu, rows));
    let weights = gpu.upload(&[1.0f32; 3]).unwrap();
    gpu.cross_entropy(
        &gz,
        vocab,
        &gpu.upload(&targets).unwrap(),
        &weights,
        &mut loss,
        &mut lse,
    )
    .unwrap();
    let (loss, lse) = (gpu.download(&loss).unwrap(), gpu.download(&lse).unwrap());
    let mut tokens = gpu.upload(&[u32::MAX; 3]).unwrap();
    let (mut lp, mut blp) = (poisoned::<f32>(gpu, rows), poisoned::<f32>(gpu, rows));
    let out = RuleAdapterOutput {
        tokens: &mut tokens,
        logprobs: &mut lp,
        base_logprobs: &mut blp,
    };
    let no_bias = gpu.zeros::<f32>(vocab).unwrap();
    gpu.rule_adapter(
        &gz,
        vocab,
        &no_bias,
        u32::MAX,
        &gpu.zeros(rows).unwrap(),
        out,
    )
    .unwrap();
    let (tokens, lp) = (gpu.download(&tokens).unwrap(), gpu.download(&lp).unwrap());
    for r in 0..2 {
        assert!(
            lse[r].is_nan() && loss[r].is_nan() && lp[r].is_nan(),
            "{tag} row {r}: lse {}, loss {}, logprob {} should all be NaN",
            lse[r],
            loss[r],
            lp[r]
        );
    }
    let row = f64s(&z[2 * vocab..]);
    let want_lse = ops::log_sum_exp(&row);
    let want_loss = want_lse - row[targets[2] as usize];
    let best = ops::argmax(&row);
    assert!(
        (lse[2] as f64 - want_lse).abs() <= 1e-5 * want_lse.abs().max(1.0),
        "{tag} row 2: lse {} vs {want_lse}",
        lse[2]
    );
    assert!(
        (loss[2] as f64 - want_loss).abs() <= 1e-5 * want_loss.abs().max(1.0),
        "{tag} row 2: loss {} vs {want_loss}",
        loss[2]
    );
    assert_eq!(tokens[2] as usize, best, "{tag} row 2: greedy token");
    let want_lp = row[best] - want_lse;
    assert!(
        (lp[2] as f64 - want_lp).abs() <= 1e-5 * want_lp.abs().max(1.0),
        "{tag} row 2: logprob {} vs {want_lp}",
        lp[2]
    );
}

#[test]
fn nan_logits_give_nan_as_on_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("nan_logits");
    for vocab in [7, 1001, 32000, 32003] {
        nan_case::<f32>(gpu, &mut rng, vocab);
        nan_case::<bf16>(gpu, &mut rng, vocab);
    }
}

#[test]
fn wrong_lengths_are_errors_naming_the_kernel() {
    let Some(gpu) = gpu() else { return };
    let x = gpu.zeros::<f32>(10).unwrap();
    let w = gpu.zeros::<f32>(4).unwrap();
    let mut y = gpu.zeros::<f32>(10).unwrap();
    let e = gpu.rms_norm(&x, &w, 1e-5, &mut y).unwrap_err().to_string();
    assert!(e.contains("rmsnorm_fwd_f32") && e.contains("10"), "{e}");
    let mut short = gpu.zeros::<f32>(3).unwrap();
    let e = gpu.swiglu(&x, &x, &mut short).unwrap_err().to_string();
    assert!(e.contains("swiglu_fwd_f32") && e.contains("out"), "{e}");
}

#[test]
fn cuda_build_without_gpu_falls_back_to_cpu() {
    match CudaBackend::open().expect("open never fails for lack of a GPU") {
        CudaAvailability::NoGpu(reason) => {
            assert!(!reason.is_empty());
            assert!(CudaBackend::new().unwrap().is_none());
            println!("no GPU ({reason}): a cuda build uses the CPU");
        }
        CudaAvailability::Ready(b) => {
            println!(
                "GPU: {} (sm_{}{})",
                b.device_name(),
                b.compute_capability().0,
                b.compute_capability().1
            );
            println!("{}", implicit::backend::cuda::RESOURCE_USAGE);
        }
    }
}

/// Uploads of 16 MiB and more go through page-locked staging buffers (32 MiB each, taking
/// turns): every byte must arrive, across chunk boundaries and with a partial last chunk.
#[test]
fn large_uploads_are_staged_exactly() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("large_uploads_are_staged_exactly");
    // 40 MB of f32 (one full chunk and a partial one) and 70 MB of bf16 (three chunks).
    let f = rng.vec(10_000_003, 3.0);
    let b: Vec<bf16> = rng
        .vec(35_000_011, 3.0)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let on_gpu = gpu.upload(&f).unwrap();
    assert!(gpu.download(&on_gpu).unwrap() == f, "f32 upload differs");
    let mut into = gpu.upload(&vec![bf16::NAN; b.len()]).unwrap();
    gpu.upload_into(&b, &mut into).unwrap();
    let back = gpu.download(&into).unwrap();
    let differ = back
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert_eq!(differ, 0, "bf16 upload_into: {differ} elements differ");
    // Back to back, so that a staging buffer is reused while the other one's copy may run.
    let again = gpu.upload(&f).unwrap();
    let twice = gpu.upload(&f).unwrap();
    assert!(gpu.download(&again).unwrap() == f && gpu.download(&twice).unwrap() == f);
}
