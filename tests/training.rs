//! Training end to end on a real model: stories260k (converted from GGUF) response-tuned on a
//! LIMA subset on the CPU. The loss falls; the same seed gives a bit-identical loss curve; a
//! killed run resumed from its checkpoint continues to the same losses; checkpoints load in
//! `generate`.

mod common;

use implicit::backend::Device;
use implicit::data::Mode;
use implicit::generate::{generate, GenerateOptions, Sampler};
use implicit::io::convert::convert_gguf;
use implicit::model::Transformer;
use implicit::optim::Schedule;
use implicit::train::plan::{CheckpointingChoice, OptimizerPlacement};
use implicit::train::{train, Precision, Recipe, TrainOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// stories260k converted into a fresh folder, and the LIMA file; None (skipped) without data.
fn setup(name: &str) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let data = common::data_dir(name)?;
    let dir = common::temp_dir(name);
    let model = dir.join("stories260k");
    convert_gguf(&data.join("models/stories260k-f32.gguf"), &model).unwrap();
    Some((model, data.join("lima/lima_data.jsonl"), dir))
}

fn options(model: &Path, data: &Path, out: PathBuf) -> TrainOptions {
    TrainOptions {
        model: model.to_path_buf(),
        data: data.to_path_buf(),
        mode: Mode::Response,
        epochs: 3,
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
        device: Device::Cpu,
        checkpointing: CheckpointingChoice::Off,
        optimizer_state: OptimizerPlacement::Device,
        memory_report: false,
        data_parallel: None,
        out,
        resume: false,
        progress: false,
    }
}

/// (step, loss) of every line of metrics.jsonl.
fn losses(out: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn response_tuning_lowers_the_loss_and_is_reproducible() {
    let Some((model, lima, dir)) = setup("response_tuning") else {
        return;
    };
    let a = options(&model, &lima, dir.join("run-a"));
    let summary = train(&a).unwrap();
    assert_eq!(summary.steps, 12);
    let curve = losses(&a.out);
    let first: f64 = curve[..4].iter().map(|(_, l)| l).sum::<f64>() / 4.0;
    let last: f64 = curve[8..].iter().map(|(_, l)| l).sum::<f64>() / 4.0;
    println!(
        "stories260k response tuning: epoch 1 mean loss {first:.4}, epoch 3 mean loss {last:.4}"
    );
    assert!(last < first - 0.1, "loss did not fall: {curve:?}");

    // Same seed, same machine: the same bits.
    let b = TrainOptions {
        out: dir.join("run-b"),
        ..a.clone()
    };
    train(&b).unwrap();
    assert_eq!(
        losses(&b.out),
        curve,
        "same seed must give a bit-identical loss curve"
    );

    // The last checkpoint loads in generate.
    let ckpt = &summary.checkpoints[2];
    let m = Transformer::load(ckpt).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 5,
        stop_tokens: vec![],
    };
    let out = generate(&m, &[1], &opts, &mut Sampler::greedy(), |_| Ok(())).unwrap();
    assert_eq!(out.len(), 5);
}

#[test]
fn killed_run_resumes_to_the_same_losses() {
    let Some((model, lima, dir)) = setup("resume") else {
        return;
    };
    let full = options(&model, &lima, dir.join("full"));
    train(&full).unwrap();
    let want = losses(&full.out);

    // The same run through the CLI, killed as soon as its first checkpoint is complete.
    let out = dir.join("killed");
    let args = |resume: bool| {
        let mut a: Vec<String> = [
            "train",
            "--model",
            model.to_str().unwrap(),
            "--data",
            lima.to_str().unwrap(),
            "--mode",
            "response",
            "--epochs",
            "3",
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
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if resume {
            a.push("--resume".into());
        }
        a
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_implicit"))
        .args(args(false))
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !out.join("epoch-1/trainer_state.json").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint after 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_implicit"))
        .args(args(true))
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        losses(&out),
        want,
        "resumed run must continue to the uninterrupted run's losses"
    );
}

/// The GPU run's `train_on_the_gpu_follows_the_cpu_and_resumes_on_either_device` converted
/// stories260k with `common::stories260k(test)`, then asked `common::temp_dir(test)` for its
/// output folders, which removed the converted model ("stories/config.json: cannot read").
/// Same sequence here, on the CPU: the model must survive it and train.
#[test]
fn a_temporary_folder_named_like_the_model_leaves_the_model_alone() {
    let test = "temp-dir-after-model";
    let Some(model) = common::stories260k(test) else {
        return;
    };
    let data = common::data_dir(test).unwrap().join("lima/lima_data.jsonl");
    let root = common::temp_dir(test);
    assert!(
        model.join("config.json").is_file(),
        "temp_dir({test:?}) removed {}",
        model.display()
    );
    assert!(
        !model.starts_with(&root),
        "the model lies inside a later folder"
    );
    let mut opts = options(&model, &data, root.join("run"));
    opts.max_examples = Some(2);
    opts.epochs = 1;
    let summary = train(&opts).unwrap();
    assert!(summary.steps >= 1, "{} steps", summary.steps);
}
