//! The training step on the GPU (`train::cuda::CudaTrainer`, `train --device cuda`) against
//! the CPU: the loss and every parameter's gradient against `TrainModel::loss` on the autograd
//! tape in f64 (from the same bf16-rounded parameters), on the Llama (GQA) and OLMo fixtures,
//! stories260k and random models whose head_dim 64 and 128 take flash attention; the
//! optimizer step against `optim::AdamW` fed the GPU's own gradients; padding and
//! micro-batching; the checkpointed state; the bf16 optimizer state (no master, stochastic
//! rounding) against the fp32-master one; and whole runs through `train`.
//!
//! Bounds (‖gpu − ref‖/‖ref‖): the loss 1e-2; the gradients, per tensor and all together, as
//! tests/bf16_gradients/bounds.rs sets them: for the two fixtures from the distribution of the
//! error that bf16 rounding alone gives, measured on the CPU by tests/bf16_gradients.rs (which
//! emulates this pass's roundings, reproduces the H100 run's per-tensor errors to within 4%, and
//! checks in CI that the bounds hold), with OLMo's clamp compared on the GPU's side (see
//! `gradients_match`); for stories260k and the flash models 6e-2 and 3e-2. The optimizer on
//! identical gradients 1e-6 (master weights; the kernels are bit-exact against the CPU AdamW in
//! tests/cuda_kernels/adamw.rs). Without a GPU each test prints "SKIPPED (no GPU):
//! reason" and passes; `train --device cuda` is checked to fail with that reason.
#![cfg(feature = "cuda")]

mod common;

#[path = "bf16_gradients/emulate.rs"]
mod emulate;
#[path = "bf16_gradients/bounds.rs"]
mod gradient_bounds;
#[path = "cuda_train/profile.rs"]
mod profile;

use common::gpu::{check, gpu, rel_err, Rng};
use half::bf16;
use implicit::autograd::Tape;
use implicit::backend::cuda::{nccl_unique_id, Communicator, CudaBackend};
use implicit::backend::Device;
use implicit::data::Mode;
use implicit::model::train::{load_parameter_values, parameter_layout, TrainModel, TrainSequence};
use implicit::model::{ModelConfig, Transformer};
use implicit::optim::{clip_grad_norm, AdamW, AdamWConfig, ParamMut, ParamRef, Schedule};
use implicit::train::cuda::{CudaTrainer, TrainerSetup};
use implicit::train::plan::{Checkpointing, CheckpointingChoice, MemoryPlan, OptimizerPlacement};
use implicit::train::{train, Precision, Recipe, TrainOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const LOSS_BOUND: f64 = 1e-2;
const OPTIMIZER_BOUND: f64 = 1e-6;

fn adamw() -> AdamWConfig {
    AdamWConfig {
        lr: 1e-3,
        weight_decay: 0.01,
        ..AdamWConfig::default()
    }
}

/// Values as the bf16 parameters both sides train (f32 holding bf16 values exactly).
fn rounded(values: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
    values
        .into_iter()
        .map(|v| v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect())
        .collect()
}

/// Random parameters of `config` with realistic spreads: matrices uniform ±√(3/fan_in), the
/// embedding ±1, norm weights 1 ± 0.3.
fn random_values(config: &ModelConfig, rng: &mut Rng) -> Vec<Vec<f32>> {
    parameter_layout(config)
        .iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            if shape.len() == 1 {
                rng.vec(n, 0.3).iter().map(|x| 1.0 + x).collect()
            } else if name.contains("embed_tokens") {
                rng.vec(n, 1.0)
            } else {
                rng.vec(n, (3.0 / shape[1] as f32).sqrt())
            }
        })
        .collect()
}

/// Token sequences of these lengths, the first third of each a prompt (no loss), plus one
/// with no loss token at all (it must add nothing).
fn batch_of(rng: &mut Rng, lens: &[usize], vocab: usize) -> Vec<(Vec<u32>, Vec<bool>)> {
    let mut out: Vec<(Vec<u32>, Vec<bool>)> = lens
        .iter()
        .map(|&n| (rng.tokens(n, vocab), (0..n).map(|i| i >= n / 3).collect()))
        .collect();
    out.push((rng.tokens(5, vocab), vec![false; 5]));
    out
}

fn sequences(batch: &[(Vec<u32>, Vec<bool>)]) -> Vec<TrainSequence<'_>> {
    batch
        .iter()
        .map(|(ids, mask)| TrainSequence {
            ids,
            loss_mask: mask,
        })
        .collect()
}

/// The loss and gradients of the CPU model in f64.
fn cpu_reference(
    config: &ModelConfig,
    values: &[Vec<f32>],
    batch: &[TrainSequence],
    scale: f64,
) -> (f64, Vec<Vec<f64>>) {
    let model = TrainModel::<f64>::from_values(
        config.clone(),
        values
            .iter()
            .map(|v| v.iter().map(|&x| x as f64).collect())
            .collect(),
    )
    .unwrap();
    let mut tape = Tape::new();
    let vars = model.bind(&mut tape);
    let loss = model.loss(&mut tape, &vars, batch, scale).unwrap();
    let value = tape.value(loss)[0];
    let g = tape.backward(loss);
    let grads = vars
        .iter()
        .zip(&model.params)
        .map(|(&v, p)| {
            g.get(v)
                .map(|x| x.to_vec())
                .unwrap_or_else(|| vec![0.0; p.value.len()])
        })
        .collect();
    (value, grads)
}

/// The GPU's loss and gradients of a random batch (micro-batches of 2) against the CPU's in
/// f64, within `gradient_bounds::of_model(what)`.
///
/// OLMo clamps q, k, v to ±clip_qkv, a kink: where bf16 rounding puts a value on the other side
/// of ±clip than f64 does, the clamp's backward passes or drops that element's whole gradient.
/// With clip_qkv 1.0 the OLMo fixture has ~58 of its 22656 q, k, v elements per batch on the
/// other side, and its q_proj gradients erred by up to 0.79 against the plain f64 reference
/// (10⁵ batches, tests/bf16_gradients.rs). So where the CPU emulation of the GPU's roundings
/// applies (plain attention, tests/bf16_gradients/emulate.rs) the reference takes the clamp's
/// side from the emulated bf16 q, k, v, as the GPU takes it from its own, and what is compared
/// is the rounding error alone. That emulation is also compared with the GPU, and printed.
fn gradients_match(
    what: &str,
    gpu: &CudaBackend,
    config: &ModelConfig,
    values: &[Vec<f32>],
    rng: &mut Rng,
) {
    let lens = [37, 61, 20];
    let batch = batch_of(rng, &lens, config.vocab_size);
    let seqs = sequences(&batch);
    let scale = 1.0 / seqs.len() as f64;
    let values64: Vec<Vec<f64>> = values
        .iter()
        .map(|v| v.iter().map(|&x| x as f64).collect())
        .collect();
    let emulated = (!matches!(config.head_dim, 64 | 128)).then(|| {
        let numerics = emulate::Numerics::gpu(emulate::MaskFrom::Stored);
        emulate::run(config, &values64, &seqs, scale, &numerics)
    });
    let (ref_loss, ref_grads) = match (&emulated, config.clip_qkv) {
        (Some(e), Some(_)) => {
            let masks = e.clip.iter().map(|c| c.mask.clone()).collect();
            let numerics = emulate::Numerics::reference_with(masks);
            let r = emulate::run(config, &values64, &seqs, scale, &numerics);
            (r.loss, r.grads)
        }
        _ => cpu_reference(config, values, &seqs, scale),
    };
    let mut t = CudaTrainer::from_values(gpu, config.clone(), values, adamw()).unwrap();
    // Force several loss chunks, so that the chunked head and scatter are exercised.
    t.logits_chunk_rows = 29;
    let mut loss = 0.0;
    for micro in seqs.chunks(2) {
        loss += t.accumulate(micro, scale).unwrap();
    }
    let loss_err = (loss - ref_loss).abs() / ref_loss.abs();
    eprintln!("{what}: loss {loss:.6} vs {ref_loss:.6} (rel err {loss_err:.2e})");
    assert!(
        loss_err <= LOSS_BOUND,
        "{what}: loss rel err {loss_err:.3e}"
    );
    let grads = t.gradients().unwrap();
    let names = t.names().to_vec();
    if let Some(e) = &emulated {
        against_the_emulation(what, &names, &grads, &e.grads, &ref_grads);
    }
    let bounds = gradient_bounds::of_model(what);
    for ((name, g), r) in names.iter().zip(&grads).zip(&ref_grads) {
        check(&format!("{what}: {name}"), g, r, bounds.of(name));
    }
    let all: Vec<f32> = grads.concat();
    let all_ref: Vec<f64> = ref_grads.concat();
    check(
        &format!("{what}: all gradients"),
        &all,
        &all_ref,
        bounds.all,
    );
}

/// Prints the largest ‖gpu − emulated‖/‖ref‖ over the tensors: how closely the CPU emulation
/// of the GPU's roundings follows the GPU (no bound yet: the first GPU run to print it measures
/// one).
fn against_the_emulation(
    what: &str,
    names: &[String],
    grads: &[Vec<f32>],
    emulated: &[Vec<f64>],
    ref_grads: &[Vec<f64>],
) {
    let (mut worst, mut at) = (0.0f64, 0);
    for (i, ((g, e), r)) in grads.iter().zip(emulated).zip(ref_grads).enumerate() {
        let diff: f64 = g.iter().zip(e).map(|(&a, b)| (a as f64 - b).powi(2)).sum();
        let norm: f64 = r.iter().map(|x| x * x).sum();
        let err = (diff / norm.max(f64::MIN_POSITIVE)).sqrt();
        if err > worst {
            (worst, at) = (err, i);
        }
    }
    eprintln!(
        "{what}: against the CPU emulation of its roundings: largest ‖gpu − emulated‖/‖ref‖ \
         {worst:.2e} ({})",
        names[at]
    );
}

#[test]
fn fixture_gradients_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("fixture_gradients_match_the_cpu");
    for name in ["llama-gqa", "olmo"] {
        let dir = common::fixtures().join(name);
        let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let values = rounded(load_parameter_values(&dir, &config).unwrap());
        gradients_match(name, gpu, &config, &values, &mut rng);
    }
}

#[test]
fn stories260k_gradients_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let Some(dir) = common::stories260k("stories260k_gradients_match_the_cpu") else {
        return;
    };
    let mut rng = Rng::new("stories260k_gradients_match_the_cpu");
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let values = rounded(load_parameter_values(&dir, &config).unwrap());
    gradients_match("stories260k", gpu, &config, &values, &mut rng);
}

/// Random models whose head_dim takes the flash kernels: a Llama with grouped-query heads
/// and an untied head, an OLMo with clip_qkv and tied embeddings.
fn flash_configs() -> Vec<(&'static str, ModelConfig)> {
    [
        (
            "llama-hd64",
            r#"{"model_type": "llama", "vocab_size": 300, "hidden_size": 256,
            "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "tie_word_embeddings": false}"#,
        ),
        // q, k, v are about N(0, 1) after OLMo's norm: a clip of 3.0 binds on ~0.3% of them.
        // (At 1.5 the GPU's bf16 rounding next to the limit, which the f64 reference does not
        // do, alone moved the qkv gradients by ~4%.)
        (
            "olmo-hd128",
            r#"{"model_type": "olmo", "vocab_size": 300, "hidden_size": 256,
            "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 2,
            "clip_qkv": 3.0, "tie_word_embeddings": true}"#,
        ),
    ]
    .into_iter()
    .map(|(name, json)| (name, ModelConfig::from_json(json).unwrap()))
    .collect()
}

#[test]
fn flash_attention_models_gradients_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("flash_attention_models_gradients_match_the_cpu");
    for (name, config) in flash_configs() {
        let values = rounded(random_values(&config, &mut rng));
        gradients_match(name, gpu, &config, &values, &mut rng);
    }
}

#[test]
fn padding_and_micro_batches_do_not_change_the_gradients() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("padding_and_micro_batches_do_not_change_the_gradients");
    let (_, config) = flash_configs().remove(0);
    let values = rounded(random_values(&config, &mut rng));
    let batch = batch_of(&mut rng, &[45, 12], config.vocab_size);
    let seqs = sequences(&batch);
    let run = |micro: usize| {
        let mut t = CudaTrainer::from_values(gpu, config.clone(), &values, adamw()).unwrap();
        let loss: f64 = seqs
            .chunks(micro)
            .map(|m| t.accumulate(m, 0.5).unwrap())
            .sum();
        (loss, t.gradients().unwrap().concat())
    };
    let (padded_loss, padded) = run(seqs.len());
    let (alone_loss, alone) = run(1);
    let e = (padded_loss - alone_loss).abs() / alone_loss.abs();
    assert!(e < 1e-5, "loss {padded_loss} padded vs {alone_loss} alone");
    let alone64: Vec<f64> = alone.iter().map(|&x| x as f64).collect();
    // Only the order of f32 sums differs (GEMM tiles over more rows, atomics).
    check("padded vs one sequence at a time", &padded, &alone64, 1e-3);
}

#[test]
fn checkpointing_gives_the_same_gradients_in_less_memory() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("checkpointing_gives_the_same_gradients_in_less_memory");
    let (_, mut config) = flash_configs().remove(0);
    config.num_layers = 6;
    let values = rounded(random_values(&config, &mut rng));
    let batch = batch_of(&mut rng, &[300, 211], config.vocab_size);
    let seqs = sequences(&batch);
    let run = |checkpointing: Checkpointing| {
        let mut t = CudaTrainer::from_values(gpu, config.clone(), &values, adamw()).unwrap();
        t.checkpointing = checkpointing;
        gpu.reset_peak_memory().unwrap();
        let before = gpu.memory_use().unwrap().used_bytes;
        let loss = t.accumulate(&seqs, 0.5).unwrap();
        let peak = gpu.memory_use().unwrap().peak_used_bytes - before;
        (loss, t.gradients().unwrap().concat(), peak)
    };
    let (loss, grads, peak) = run(Checkpointing::Off);
    let reference: Vec<f64> = grads.iter().map(|&x| x as f64).collect();
    let mut peaks = vec![peak];
    for policy in [Checkpointing::KeepLast(3), Checkpointing::On] {
        let (ck_loss, ck_grads, ck_peak) = run(policy);
        assert_eq!(loss, ck_loss, "{policy:?}: the same forward");
        // The same products; only atomics (flash dq, the embedding) may add in another order,
        // and a last-bit change in dq can move a bf16 rounding that earlier layers then carry.
        check(&format!("{policy:?} vs kept"), &ck_grads, &reference, 1e-4);
        peaks.push(ck_peak);
    }
    eprintln!("peak activation memory (bytes): all kept, the last 3 of 6, none: {peaks:?}");
    assert!(
        peaks[0] > peaks[1] && peaks[1] > peaks[2],
        "fewer kept layers use less: {peaks:?}"
    );
}

/// A Llama (grouped-query heads, untied head) and an OLMo (clip_qkv, tied embeddings) whose
/// head_dim of 32 takes the plain attention kernels, and 2048 distinct token ids: every GPU
/// reduction then adds in a fixed order (the flash backward's dq and the embedding backward of
/// a repeated token add with atomics, in whatever order they land).
fn deterministic_configs() -> Vec<(&'static str, ModelConfig)> {
    [
        (
            "llama-hd32",
            r#"{"model_type": "llama", "vocab_size": 4096, "hidden_size": 512,
            "intermediate_size": 1376, "num_hidden_layers": 6, "num_attention_heads": 16,
            "num_key_value_heads": 4, "tie_word_embeddings": false}"#,
        ),
        (
            "olmo-hd32",
            r#"{"model_type": "olmo", "vocab_size": 4096, "hidden_size": 512,
            "intermediate_size": 1376, "num_hidden_layers": 6, "num_attention_heads": 16,
            "clip_qkv": 3.0, "tie_word_embeddings": true}"#,
        ),
    ]
    .into_iter()
    .map(|(name, json)| (name, ModelConfig::from_json(json).unwrap()))
    .collect()
}

/// Recomputing a layer runs the same kernels on the same inputs as its first forward, so where
/// every reduction is deterministic, keeping all, some or none of the layers' activations
/// gives the same losses, gradients and parameters, bit for bit, over several optimizer steps;
/// and the memory plan of a mixed policy is as close to the measured peak as the all-or-none
/// plans are (the accuracy `bench train` shows at 7B scale, measured here on the same run).
#[test]
fn selective_checkpointing_is_bit_exact_and_planned() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("selective_checkpointing_is_bit_exact_and_planned");
    for (name, config) in deterministic_configs() {
        let values = rounded(random_values(&config, &mut rng));
        let (seq, micro_batch, steps) = (1024, 2, 3);
        // Each micro-batch holds every token id at most once, and every row carries loss (the
        // plan counts a loss chunk of every row).
        let batches: Vec<Vec<(Vec<u32>, Vec<bool>)>> = (0..2 * steps)
            .map(|_| {
                let mut ids: Vec<u32> = (0..config.vocab_size as u32).collect();
                for i in (1..ids.len()).rev() {
                    ids.swap(i, rng.below(i + 1));
                }
                ids.chunks(seq)
                    .take(micro_batch)
                    .map(|c| (c.to_vec(), vec![true; seq]))
                    .collect()
            })
            .collect();
        let layers = config.num_layers;
        let run = |policy: Checkpointing| {
            let mut t = trainer_with(gpu, &config, &values, OptimizerPlacement::Device);
            t.checkpointing = policy;
            gpu.reset_peak_memory().unwrap();
            let before = gpu.memory_use().unwrap().used_bytes;
            let mut peak = 0;
            let mut record = Vec::new();
            for (step, pair) in batches.chunks(2).enumerate() {
                t.zero_grads().unwrap();
                let mut loss = 0.0;
                for b in pair {
                    loss += t.accumulate(&sequences(b), 0.5).unwrap();
                }
                if step == 0 {
                    peak = gpu.memory_use().unwrap().peak_used_bytes - before;
                }
                let grads = t.gradients().unwrap().concat();
                let norm = t.step(1e-3, 1.0).unwrap();
                let bits: Vec<u32> = grads.iter().map(|g| g.to_bits()).collect();
                record.push((loss.to_bits(), norm.to_bits(), bits));
            }
            let params: Vec<u16> = flat_values(&t)
                .iter()
                .map(|&x| bf16::from_f32(x).to_bits())
                .collect();
            (record, params, peak)
        };
        let policies = [
            Checkpointing::Off,
            Checkpointing::KeepLast(layers / 2),
            Checkpointing::KeepLast(1),
            Checkpointing::On,
        ];
        let (reference, reference_params, _) = run(Checkpointing::Off);
        let mut peaks = Vec::new();
        for policy in policies {
            let (record, params, peak) = run(policy);
            // Off twice first: a difference there is the kernels', not checkpointing's.
            for (step, (r, e)) in record.iter().zip(&reference).enumerate() {
                assert_eq!(r.0, e.0, "{name} {policy:?} step {}: loss", step + 1);
                assert_eq!(r.1, e.1, "{name} {policy:?} step {}: norm", step + 1);
                let differ = r.2.iter().zip(&e.2).filter(|(a, b)| a != b).count();
                assert_eq!(differ, 0, "{name} {policy:?} step {}: gradients", step + 1);
            }
            assert!(
                params == reference_params,
                "{name} {policy:?}: the parameters after {steps} steps"
            );
            peaks.push(peak);
        }
        // The plan against the measured peak (both above the state).
        let planned: Vec<u64> = policies
            .iter()
            .map(|&p| {
                let plan =
                    MemoryPlan::new(&config, seq, micro_batch, p, OptimizerPlacement::Device);
                plan.activations + plan.workspace
            })
            .collect();
        // Bytes the plan does not count (ids, positions, row lists, allocation rounding) are
        // the same for every policy or grow with the kept layers, so a mixed policy's error
        // lies between those of all and none kept.
        let error = |i: usize| peaks[i] as i64 - planned[i] as i64;
        eprintln!(
            "{name}: peak above the state, measured {peaks:?}, planned {planned:?} \
             (all, half, the last, none kept)"
        );
        let endpoints = error(0).abs().max(error(3).abs());
        for i in [1, 2] {
            assert!(
                error(i).abs() <= endpoints,
                "{name} {:?}: measured {} against the plan's {} ({:+} bytes), all or none \
                 kept {:+} / {:+}",
                policies[i],
                peaks[i],
                planned[i],
                error(i),
                error(0),
                error(3)
            );
        }
        assert!(
            peaks[0] > peaks[1] && peaks[1] > peaks[2],
            "{name}: fewer kept layers use less: {peaks:?}"
        );
    }
}

/// One CPU AdamW step (bf16 parameters, fp32 masters) on given gradients, clipped as the
/// trainer clips; returns the norm.
fn cpu_step(opt: &mut AdamW, params: &mut [Vec<bf16>], grads: &mut [Vec<f32>], lr: f32) -> f32 {
    let norm = {
        let mut refs: Vec<&mut [f32]> = grads.iter_mut().map(|g| g.as_mut_slice()).collect();
        clip_grad_norm(&mut refs, 1.0)
    };
    let mut muts: Vec<ParamMut> = params
        .iter_mut()
        .map(|p| ParamMut::BF16(p.as_mut_slice()))
        .collect();
    let refs: Vec<&[f32]> = grads.iter().map(|g| g.as_slice()).collect();
    opt.step(&mut muts, &refs, lr);
    norm
}

#[test]
fn optimizer_steps_match_the_cpu_adamw_on_the_same_gradients() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("optimizer_steps_match_the_cpu_adamw_on_the_same_gradients");
    let dir = common::fixtures().join("llama-gqa");
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let values = rounded(load_parameter_values(&dir, &config).unwrap());
    let mut t = CudaTrainer::from_values(gpu, config.clone(), &values, adamw()).unwrap();
    let mut params: Vec<Vec<bf16>> = values
        .iter()
        .map(|v| v.iter().map(|&x| bf16::from_f32(x)).collect())
        .collect();
    let names = t.names().to_vec();
    let mut opt = AdamW::new(
        adamw(),
        names
            .iter()
            .cloned()
            .zip(params.iter().map(|p| ParamRef::BF16(p))),
    )
    .unwrap();
    for (step, lr) in [(1, 1e-3f32), (2, 5e-4)] {
        t.zero_grads().unwrap();
        let batch = batch_of(&mut rng, &[30, 17], config.vocab_size);
        t.accumulate(&sequences(&batch), 0.5).unwrap();
        let mut grads = t.gradients().unwrap();
        let norm = t.step(lr, 1.0).unwrap();
        let cpu_norm = cpu_step(&mut opt, &mut params, &mut grads, lr);
        assert!(
            ((norm - cpu_norm) / cpu_norm).abs() < 1e-6,
            "step {step}: norm {norm} vs {cpu_norm}"
        );
        let state: HashMap<String, Vec<f32>> = t.state_tensors().unwrap().into_iter().collect();
        let cpu_state: HashMap<String, Vec<f32>> = opt
            .state_tensors()
            .into_iter()
            .map(|(k, v)| (k, v.into_owned()))
            .collect();
        assert_eq!(state.len(), cpu_state.len());
        for (key, cpu) in &cpu_state {
            let reference: Vec<f64> = cpu.iter().map(|&x| x as f64).collect();
            let e = rel_err(&state[key], &reference);
            assert!(e <= OPTIMIZER_BOUND, "step {step}: {key}: rel err {e:.3e}");
        }
        let values = t.parameter_values().unwrap();
        let differ: usize = values
            .iter()
            .zip(&params)
            .map(|(g, c)| g.iter().zip(c).filter(|(a, b)| a != b).count())
            .sum();
        // Masters within 1e-6 may round to neighbouring bf16 values, rarely.
        let total: usize = params.iter().map(|p| p.len()).sum();
        assert!(
            differ * 1000 <= total,
            "step {step}: {differ} of {total} bf16 parameters differ"
        );
    }
    assert_eq!(t.steps(), 2);
}

#[test]
fn host_optimizer_state_matches_the_device_one() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("host_optimizer_state_matches_the_device_one");
    let (_, config) = flash_configs().remove(0);
    let values = rounded(random_values(&config, &mut rng));
    let batches: Vec<_> = (0..3)
        .map(|_| batch_of(&mut rng, &[40, 23], config.vocab_size))
        .collect();
    let run = |placement: OptimizerPlacement| {
        let bf: Vec<Vec<bf16>> = values
            .iter()
            .map(|v| v.iter().map(|&x| bf16::from_f32(x)).collect())
            .collect();
        let mut next = bf.into_iter();
        let setup = TrainerSetup {
            placement,
            ..TrainerSetup::new(adamw())
        };
        let mut t =
            CudaTrainer::from_fn(gpu, config.clone(), setup, |_, _| Ok(next.next().unwrap()))
                .unwrap();
        let mut norms = Vec::new();
        for batch in &batches {
            t.zero_grads().unwrap();
            t.accumulate(&sequences(batch), 0.5).unwrap();
            norms.push(t.step(1e-3, 1.0).unwrap());
        }
        let state: HashMap<String, Vec<f32>> = t.state_tensors().unwrap().into_iter().collect();
        (norms, state)
    };
    let (device_norms, device_state) = run(OptimizerPlacement::Device);
    let (host_norms, host_state) = run(OptimizerPlacement::Host);
    eprintln!("grad norms: device {device_norms:?}, host {host_norms:?}");
    for (d, h) in device_norms.iter().zip(&host_norms) {
        assert!(((d - h) / d).abs() < 1e-4, "norms {d} vs {h}");
    }
    assert_eq!(device_state.len(), host_state.len());
    for (key, d) in &device_state {
        let reference: Vec<f64> = d.iter().map(|&x| x as f64).collect();
        // The same kernel on the same inputs; only the gradients' atomics can differ.
        let e = rel_err(&host_state[key], &reference);
        assert!(e < 1e-4, "{key}: rel err {e:.3e}");
    }
}

/// NCCL, or None after printing why the test is skipped (libnccl.so not on the library path).
fn nccl_id() -> Option<[u8; 128]> {
    match nccl_unique_id() {
        Ok(id) => Some(id),
        Err(e) => {
            println!("SKIPPED (no NCCL): {e}");
            None
        }
    }
}

#[test]
fn data_parallel_over_one_rank_matches_one_gpu() {
    let Some(gpu) = gpu() else { return };
    if nccl_id().is_none() {
        return;
    }
    for placement in [OptimizerPlacement::Device, OptimizerPlacement::Bf16] {
        data_parallel_over_one_rank(gpu, placement);
    }
}

/// The same steps on one GPU and as rank 0 of 1 (the owner path of the optimizer state).
fn data_parallel_over_one_rank(gpu: &CudaBackend, placement: OptimizerPlacement) {
    let id = nccl_unique_id().unwrap();
    let mut rng = Rng::new(&format!(
        "data_parallel_over_one_rank_matches_one_gpu ({placement:?})"
    ));
    let (_, config) = flash_configs().remove(1);
    let values = rounded(random_values(&config, &mut rng));
    let batches: Vec<_> = (0..2)
        .map(|_| batch_of(&mut rng, &[29, 50], config.vocab_size))
        .collect();
    let run = |parallel: Option<Communicator>| {
        let setup = TrainerSetup {
            parallel,
            placement,
            seed: 5,
            ..TrainerSetup::new(adamw())
        };
        let bf: Vec<Vec<bf16>> = values
            .iter()
            .map(|v| v.iter().map(|&x| bf16::from_f32(x)).collect())
            .collect();
        let mut next = bf.into_iter();
        let mut t =
            CudaTrainer::from_fn(gpu, config.clone(), setup, |_, _| Ok(next.next().unwrap()))
                .unwrap();
        let mut norms = Vec::new();
        for batch in &batches {
            t.zero_grads().unwrap();
            let loss = t.accumulate(&sequences(batch), 0.5).unwrap();
            assert_eq!(t.sum_over_ranks(loss).unwrap() as f32, loss as f32);
            norms.push(t.step(1e-3, 1.0).unwrap());
        }
        let state: HashMap<String, Vec<f32>> = t.state_tensors().unwrap().into_iter().collect();
        (norms, state, t.parameter_values().unwrap())
    };
    let (norms, state, values_one) = run(None);
    let comm = Communicator::new(gpu, 0, 1, &id).unwrap();
    assert_eq!((comm.rank(), comm.world()), (0, 1));
    let (dp_norms, dp_state, dp_values) = run(Some(comm));
    for (a, b) in norms.iter().zip(&dp_norms) {
        assert!(((a - b) / a).abs() < 1e-4, "norms {a} vs {b}");
    }
    assert_eq!(state.len(), dp_state.len());
    for (key, d) in &state {
        let reference: Vec<f64> = d.iter().map(|&x| x as f64).collect();
        let e = rel_err(&dp_state[key], &reference);
        assert!(e < 1e-4, "{placement:?}: {key}: rel err {e:.3e}");
    }
    let differ: usize = values_one
        .iter()
        .zip(&dp_values)
        .map(|(a, b)| a.iter().zip(b).filter(|(x, y)| x != y).count())
        .sum();
    let total: usize = values_one.iter().map(|v| v.len()).sum();
    assert!(
        differ * 1000 <= total,
        "{placement:?}: {differ} of {total} parameters differ"
    );
}

/// Relative loss difference allowed between the bf16-state trainer and the fp32-master one
/// over the first steps. Both start from the same parameters, so step 1's losses are equal;
/// after that the bf16 state's stochastic roundings (zero-mean noise of up to one bf16 step,
/// 2⁻⁸ relative, on each updated parameter) move the trajectory. Simulated on the CPU in f64
/// with this model, batches and learning rate (four draws, 6 steps, also with 3% independent
/// noise on each trainer's gradients standing in for the GPU's bf16 arithmetic), the largest
/// difference was 6.5e-3 and the parameters differed by 3.4e-3 (‖Δ‖/‖p‖); the bounds leave 4–5×.
const BF16_STATE_LOSS_BOUND: f64 = 3e-2;
const BF16_STATE_PARAM_BOUND: f64 = 1.5e-2;

/// A trainer over `values` with its optimizer state placed as given.
fn trainer_with<'g>(
    gpu: &'g CudaBackend,
    config: &ModelConfig,
    values: &[Vec<f32>],
    placement: OptimizerPlacement,
) -> CudaTrainer<'g> {
    let mut next = values
        .iter()
        .map(|v| v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>());
    let setup = TrainerSetup {
        placement,
        seed: 11,
        ..TrainerSetup::new(adamw())
    };
    CudaTrainer::from_fn(gpu, config.clone(), setup, |_, _| Ok(next.next().unwrap())).unwrap()
}

/// The parameters widened to f32, flattened.
fn flat_values(t: &CudaTrainer) -> Vec<f32> {
    t.parameter_values()
        .unwrap()
        .concat()
        .iter()
        .map(|x| x.to_f32())
        .collect()
}

#[test]
fn bf16_optimizer_state_tracks_the_fp32_master_and_round_trips() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("bf16_optimizer_state_tracks_the_fp32_master_and_round_trips");
    let (_, config) = flash_configs().remove(0);
    let values = rounded(random_values(&config, &mut rng));
    let batches: Vec<_> = (0..2)
        .map(|_| batch_of(&mut rng, &[40, 23], config.vocab_size))
        .collect();
    let steps = 6;
    let run = |t: &mut CudaTrainer, batch: &[(Vec<u32>, Vec<bool>)]| {
        t.zero_grads().unwrap();
        let loss = t.accumulate(&sequences(batch), 0.5).unwrap();
        let norm = t.step(1e-3, 1.0).unwrap();
        assert!(norm.is_finite());
        loss
    };
    let mut device = trainer_with(gpu, &config, &values, OptimizerPlacement::Device);
    let mut lean = trainer_with(gpu, &config, &values, OptimizerPlacement::Bf16);
    let (mut device_losses, mut lean_losses) = (Vec::new(), Vec::new());
    for step in 0..steps {
        device_losses.push(run(&mut device, &batches[step % 2]));
        lean_losses.push(run(&mut lean, &batches[step % 2]));
    }
    eprintln!("losses: fp32 master {device_losses:?}\nbf16 state {lean_losses:?}");
    assert_eq!(lean_losses[0], device_losses[0], "the same first forward");
    for (step, (d, l)) in device_losses.iter().zip(&lean_losses).enumerate() {
        let e = (d - l).abs() / d;
        assert!(
            e <= BF16_STATE_LOSS_BOUND,
            "step {}: bf16 state loss {l} vs fp32 master {d} (rel {e:.2e})",
            step + 1
        );
    }
    assert!(
        lean_losses[steps - 1] < lean_losses[0] * 0.5,
        "{lean_losses:?}"
    );
    let device_params: Vec<f64> = flat_values(&device).iter().map(|&x| x as f64).collect();
    let e = rel_err(&flat_values(&lean), &device_params);
    eprintln!("parameters: bf16 state vs fp32 master rel diff {e:.2e}");
    assert!(e <= BF16_STATE_PARAM_BOUND, "parameters rel diff {e:.3e}");

    // The state under the CPU optimizer's names: the master is the parameter widened, the
    // moments widened from bf16.
    let state: HashMap<String, Vec<f32>> = lean.state_tensors().unwrap().into_iter().collect();
    let device_state: HashMap<String, Vec<f32>> =
        device.state_tensors().unwrap().into_iter().collect();
    let mut keys: Vec<&String> = state.keys().collect();
    let mut device_keys: Vec<&String> = device_state.keys().collect();
    keys.sort();
    device_keys.sort();
    assert_eq!(keys, device_keys);
    assert_eq!(state["step"], vec![steps as f32]);
    let names = lean.names().to_vec();
    for (name, value) in names.iter().zip(lean.parameter_values().unwrap()) {
        let widened: Vec<f32> = value.iter().map(|x| x.to_f32()).collect();
        assert_eq!(state[&format!("master.{name}")], widened, "master.{name}");
        for kind in ["exp_avg", "exp_avg_sq"] {
            let key = format!("{kind}.{name}");
            assert!(
                state[&key]
                    .iter()
                    .all(|&x| bf16::from_f32(x).to_f32().to_bits() == x.to_bits()),
                "{key}: not bf16 values"
            );
        }
        let sq = &state[&format!("exp_avg_sq.{name}")];
        assert!(sq.iter().all(|&x| x >= 0.0), "exp_avg_sq.{name} negative");
    }

    // A fresh bf16 trainer restored from it holds the same state, and its next step matches
    // (the same stochastic roundings: seed, step and tensor are the same; only the gradients'
    // atomics may move a rounding, rarely).
    let mut restored = trainer_with(gpu, &config, &values, OptimizerPlacement::Bf16);
    restored.load_state(&state).unwrap();
    assert_eq!(restored.steps(), steps as u64);
    assert_eq!(
        restored.parameter_values().unwrap(),
        lean.parameter_values().unwrap()
    );
    let again: HashMap<String, Vec<f32>> = restored.state_tensors().unwrap().into_iter().collect();
    assert!(again == state, "bf16 state does not round-trip");
    let (a, b) = (run(&mut lean, &batches[0]), run(&mut restored, &batches[0]));
    assert_eq!(a, b, "the same forward after restoring");
    let (x, y) = (flat_values(&lean), flat_values(&restored));
    let differ = x.iter().zip(&y).filter(|(p, q)| p != q).count();
    assert!(
        differ * 1000 <= x.len(),
        "{differ} of {} parameters differ after a step from restored state",
        x.len()
    );

    // Interchangeable with the fp32-master placement both ways: bf16 state loads exactly into
    // a Device trainer; Device state loads into a bf16 trainer rounded to nearest even.
    let mut as_device = trainer_with(gpu, &config, &values, OptimizerPlacement::Device);
    as_device.load_state(&state).unwrap();
    let from_lean: HashMap<String, Vec<f32>> =
        as_device.state_tensors().unwrap().into_iter().collect();
    assert!(
        from_lean == state,
        "bf16 state through a Device trainer changed"
    );
    let mut as_lean = trainer_with(gpu, &config, &values, OptimizerPlacement::Bf16);
    as_lean.load_state(&device_state).unwrap();
    assert_eq!(
        as_lean.parameter_values().unwrap(),
        device.parameter_values().unwrap()
    );
    let from_device: HashMap<String, Vec<f32>> =
        as_lean.state_tensors().unwrap().into_iter().collect();
    for (key, v) in &device_state {
        let want: Vec<f32> = if key == "step" {
            v.clone()
        } else {
            v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
        };
        assert!(
            from_device[key] == want,
            "{key}: not rounded to nearest even"
        );
    }
    // A refused state changes nothing.
    let mut short = state.clone();
    short.insert(format!("exp_avg.{}", names[0]), vec![0.0; 3]);
    let err = restored.load_state(&short).unwrap_err().to_string();
    assert!(
        err.contains(&format!("exp_avg.{} has 3 elements", names[0])),
        "{err}"
    );
    assert_eq!(restored.steps(), steps as u64 + 1);
}

#[test]
fn optimizer_state_round_trips_and_is_checked() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("optimizer_state_round_trips_and_is_checked");
    let (_, config) = flash_configs().remove(1);
    let values = rounded(random_values(&config, &mut rng));
    let mut t = CudaTrainer::from_values(gpu, config.clone(), &values, adamw()).unwrap();
    let batch = batch_of(&mut rng, &[33], config.vocab_size);
    t.accumulate(&sequences(&batch), 1.0).unwrap();
    t.step(1e-3, 1.0).unwrap();
    let state: HashMap<String, Vec<f32>> = t.state_tensors().unwrap().into_iter().collect();
    let mut fresh = CudaTrainer::from_values(gpu, config.clone(), &values, adamw()).unwrap();
    fresh.load_state(&state).unwrap();
    assert_eq!(fresh.steps(), 1);
    assert_eq!(
        fresh.parameter_values().unwrap(),
        t.parameter_values().unwrap()
    );
    let again: HashMap<String, Vec<f32>> = fresh.state_tensors().unwrap().into_iter().collect();
    assert_eq!(again, state);

    let name = &t.names()[0];
    let mut missing = state.clone();
    missing.remove(&format!("exp_avg.{name}"));
    let err = fresh.load_state(&missing).unwrap_err().to_string();
    assert!(err.contains(&format!("no tensor exp_avg.{name}")), "{err}");
    let mut extra = state.clone();
    extra.insert("exp_avg.model.other.weight".into(), vec![0.0]);
    let err = fresh.load_state(&extra).unwrap_err().to_string();
    assert!(
        err.contains("unexpected tensor exp_avg.model.other.weight"),
        "{err}"
    );
    let mut short = state;
    short.insert(format!("master.{name}"), vec![0.0; 3]);
    let err = fresh.load_state(&short).unwrap_err().to_string();
    assert!(
        err.contains(&format!("master.{name} has 3 elements")),
        "{err}"
    );
    // A refused state changes nothing.
    assert_eq!(fresh.steps(), 1);
}

fn train_options(model: &Path, data: &Path, out: PathBuf, device: Device) -> TrainOptions {
    TrainOptions {
        model: model.to_path_buf(),
        data: data.to_path_buf(),
        mode: Mode::Response,
        epochs: 2,
        lr: 2e-3,
        recipe: Recipe {
            batch_size: 8,
            micro_batch: 4,
            warmup: 0.03,
            schedule: Schedule::Linear,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            max_len: 96,
            precision: Precision::Bf16,
        },
        max_examples: Some(32),
        seed: 7,
        device,
        checkpointing: CheckpointingChoice::Off,
        optimizer_state: OptimizerPlacement::Device,
        memory_report: false,
        data_parallel: None,
        out,
        resume: false,
        progress: false,
    }
}

/// Losses of metrics.jsonl, in order.
fn losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

#[test]
fn train_on_the_gpu_follows_the_cpu_and_resumes_on_either_device() {
    if gpu().is_none() {
        return;
    }
    let test = "train_on_the_gpu_follows_the_cpu_and_resumes_on_either_device";
    let Some(model) = common::stories260k(test) else {
        return;
    };
    let data = common::data_dir(test).unwrap().join("lima/lima_data.jsonl");
    let root = common::temp_dir(test);
    let (cpu_out, gpu_out) = (root.join("cpu"), root.join("gpu"));
    train(&train_options(&model, &data, cpu_out.clone(), Device::Cpu)).unwrap();
    let summary = train(&train_options(&model, &data, gpu_out.clone(), Device::Cuda)).unwrap();
    assert_eq!(summary.steps, 8);
    let (cpu, gpu_losses) = (losses(&cpu_out), losses(&gpu_out));
    eprintln!("cpu losses {cpu:?}\ngpu losses {gpu_losses:?}");
    assert_eq!(cpu.len(), gpu_losses.len());
    for (step, (c, g)) in cpu.iter().zip(&gpu_losses).enumerate() {
        assert!(
            (c - g).abs() / c < 3e-2,
            "step {}: cpu {c} gpu {g}",
            step + 1
        );
    }
    assert!(
        gpu_losses[7] < gpu_losses[0],
        "the loss falls: {gpu_losses:?}"
    );
    // Checkpointing and the optimizer state in host memory change where things are, not the
    // arithmetic.
    let lean_out = root.join("gpu-lean");
    let mut lean = train_options(&model, &data, lean_out.clone(), Device::Cuda);
    (lean.checkpointing, lean.optimizer_state, lean.memory_report) =
        (CheckpointingChoice::On, OptimizerPlacement::Host, true);
    train(&lean).unwrap();
    for (l, g) in losses(&lean_out).iter().zip(&gpu_losses) {
        assert!((l - g).abs() / g < 1e-3, "lean {l} vs {g}");
    }
    // `--checkpointing auto`, the default, resolved on the GPU's free memory (every layer kept
    // at this size): the same losses.
    let auto_out = root.join("gpu-auto");
    let mut auto = train_options(&model, &data, auto_out.clone(), Device::Cuda);
    auto.checkpointing = CheckpointingChoice::Auto;
    train(&auto).unwrap();
    for (l, g) in losses(&auto_out).iter().zip(&gpu_losses) {
        assert!((l - g).abs() / g < 1e-3, "auto {l} vs {g}");
    }
    // bf16 optimizer state (no fp32 master, stochastic rounding) changes the arithmetic a
    // little: the losses track the fp32-master run (a CPU simulation of this run on random
    // tokens differed by at most 6.1e-3 over 8 steps, see BF16_STATE_LOSS_BOUND), and its
    // checkpoint resumes on the CPU's fp32-master optimizer.
    let bf16_out = root.join("gpu-bf16-state");
    let mut bf16_state = train_options(&model, &data, bf16_out.clone(), Device::Cuda);
    (bf16_state.checkpointing, bf16_state.optimizer_state) =
        (CheckpointingChoice::On, OptimizerPlacement::Bf16);
    train(&bf16_state).unwrap();
    let bf16_losses = losses(&bf16_out);
    eprintln!("bf16 state losses {bf16_losses:?}");
    assert_eq!(bf16_losses.len(), gpu_losses.len());
    for (l, g) in bf16_losses.iter().zip(&gpu_losses) {
        assert!(
            (l - g).abs() / g < BF16_STATE_LOSS_BOUND,
            "bf16 state {l} vs {g}"
        );
    }
    let cpu_resume = root.join("resume-bf16-state-on-cpu");
    std::fs::create_dir_all(cpu_resume.join("epoch-1")).unwrap();
    for e in std::fs::read_dir(bf16_out.join("epoch-1")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), cpu_resume.join("epoch-1").join(e.file_name())).unwrap();
    }
    std::fs::copy(
        bf16_out.join("metrics.jsonl"),
        cpu_resume.join("metrics.jsonl"),
    )
    .unwrap();
    let mut opts = train_options(&model, &data, cpu_resume.clone(), Device::Cpu);
    opts.resume = true;
    train(&opts).unwrap();
    let resumed = losses(&cpu_resume);
    assert_eq!(resumed[..4], bf16_losses[..4]);
    for (r, l) in resumed[4..].iter().zip(&bf16_losses[4..]) {
        assert!(
            (r - l).abs() / l < 3e-2,
            "bf16 state resumed on the CPU: {r} vs {l}"
        );
    }
    // Data parallelism through the command line, on one GPU: the same losses.
    if nccl_id().is_some() {
        let dp_out = root.join("gpu-dp1");
        let run = implicit(&[
            "train",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--mode",
            "response",
            "--epochs",
            "2",
            "--lr",
            "2e-3",
            "--batch-size",
            "8",
            "--micro-batch",
            "4",
            "--max-len",
            "96",
            "--max-examples",
            "32",
            "--seed",
            "7",
            "--device",
            "cuda",
            "--gpus",
            "1",
            "--out",
            dp_out.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{stderr}");
        assert!(stderr.contains("rank 0 of 1"), "{stderr}");
        for (l, g) in losses(&dp_out).iter().zip(&gpu_losses) {
            assert!((l - g).abs() / g < 1e-3, "--gpus 1: {l} vs {g}");
        }
    }
    // The checkpoint is a model folder.
    let trained = Transformer::load(&gpu_out.join("epoch-2")).unwrap();
    assert_eq!(trained.config.vocab_size, 512);

    // Resume the second epoch from the GPU's first checkpoint, on the CPU and on the GPU.
    for device in [Device::Cpu, Device::Cuda] {
        let out = root.join(format!("resume-{device:?}"));
        std::fs::create_dir_all(&out).unwrap();
        let copy = |from: &Path, to: &Path| {
            std::fs::create_dir_all(to).unwrap();
            for e in std::fs::read_dir(from).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        };
        copy(&gpu_out.join("epoch-1"), &out.join("epoch-1"));
        std::fs::copy(gpu_out.join("metrics.jsonl"), out.join("metrics.jsonl")).unwrap();
        let mut opts = train_options(&model, &data, out.clone(), device);
        opts.resume = true;
        train(&opts).unwrap();
        let resumed = losses(&out);
        assert_eq!(resumed.len(), 8);
        assert_eq!(
            resumed[..4],
            gpu_losses[..4],
            "{device:?}: epoch 1 is kept as it was"
        );
        for (r, g) in resumed[4..].iter().zip(&gpu_losses[4..]) {
            assert!((r - g).abs() / g < 3e-2, "{device:?}: resumed {r} vs {g}");
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

fn implicit(args: &[&str]) -> std::process::Output {
    Command::new(common::implicit_bin())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn train_device_cuda_says_why_it_cannot_run() {
    let base = [
        "train",
        "--model",
        "no-such-model",
        "--data",
        "no-such.jsonl",
        "--epochs",
        "1",
        "--lr",
        "1e-5",
        "--out",
        "no-such-out",
        "--device",
        "cuda",
    ];
    let mut f32_args = base.to_vec();
    f32_args.extend(["--precision", "f32"]);
    let run = implicit(&f32_args);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains("use --precision bf16"), "{stderr}");
    if common::gpu::gpu_present() {
        return;
    }
    let run = implicit(&base);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("--device cuda: no usable GPU: "),
        "{stderr}"
    );
    assert!(
        !Path::new("no-such-out").exists(),
        "nothing is created before the GPU opens"
    );
}
