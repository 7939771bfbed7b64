//! `implicit init`: random-initialised model folders of preset shapes, read back through the
//! crate's own loaders.

mod common;

use implicit::io::safetensors::WeightStore;
use implicit::model::init::{init_model, InitOptions};
use implicit::model::presets::{
    complete_config, preset, resolve_config, WeightDtype, PRESET_NAMES,
};
use implicit::model::train::{parameter_layout, TrainModel};
use implicit::model::{ModelConfig, Transformer};
use implicit::tensor::DType;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn opts(seed: u64) -> InitOptions {
    InitOptions {
        seed,
        ..InitOptions::default()
    }
}

/// Every file of `dir`, by name, with its bytes.
fn read_all(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Names in `parent` left by an interrupted or failed init.
fn temporaries(parent: &Path) -> Vec<String> {
    std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".init-tmp-"))
        .collect()
}

fn implicit(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_implicit"))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap()
}

/// Mean, standard deviation and the fraction within one standard deviation of `v`.
fn moments(v: &[f32], std: f64) -> (f64, f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    let within = v.iter().filter(|&&x| (x as f64).abs() < std).count() as f64 / n;
    (mean, var.sqrt(), within)
}

#[test]
fn tiny_presets_load_with_the_right_shapes_and_init() {
    for name in ["tiny-llama", "tiny-olmo"] {
        let root = common::temp_dir(&format!("tiny-{name}"));
        let dir = root.join("model");
        let (_, config) = resolve_config(name).unwrap();
        let report = init_model(&config, &dir, &opts(0)).unwrap();
        assert_eq!(
            report.files,
            ["config.json", "generation_config.json", "model.safetensors"]
        );
        assert!(report.parameters > 200_000 && report.parameters < 500_000);

        // config.json: Hugging Face's keys, and every field ModelConfig::from_json reads.
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        for key in [
            "model_type",
            "architectures",
            "torch_dtype",
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "rms_norm_eps",
            "rope_theta",
            "rope_interleaved",
            "rope_scaling",
            "max_position_embeddings",
            "tie_word_embeddings",
            "clip_qkv",
            "attention_bias",
            "mlp_bias",
            "hidden_act",
            "bos_token_id",
            "eos_token_id",
            "initializer_range",
        ] {
            assert!(json.get(key).is_some(), "{name}: config.json lacks {key}");
        }
        assert_eq!(json["torch_dtype"], "bfloat16");
        let gen: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("generation_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(gen["eos_token_id"], json["eos_token_id"]);

        // The inference model loads and runs.
        let model = Transformer::load(&dir).unwrap();
        let c = model.config.clone();
        assert_eq!(c.num_parameters(), report.parameters);
        let logits = model.logits(&[1, 5, 9, 1000]).unwrap();
        assert_eq!(logits.len(), 4 * c.vocab_size);
        assert!(logits.iter().all(|x| x.is_finite()));

        // The training model loads every parameter with its shape.
        let train = TrainModel::<f32>::load(&dir).unwrap();
        let layout = parameter_layout(&c);
        assert_eq!(train.params.len(), layout.len());
        assert_eq!(
            train.params.iter().any(|p| p.name == "lm_head.weight"),
            !c.tie_word_embeddings,
            "{name}"
        );
        let mut all = Vec::new();
        for (p, (lname, shape)) in train.params.iter().zip(&layout) {
            assert_eq!((&p.name, &p.shape), (lname, shape));
            if shape.len() == 1 {
                assert!(p.value.iter().all(|&x| x == 1.0), "{}: norm not 1", p.name);
                continue;
            }
            let (mean, std, _) = moments(&p.value, 0.02);
            assert!(mean.abs() < 2e-3, "{}: mean {mean}", p.name);
            assert!((std / 0.02 - 1.0).abs() < 0.1, "{}: std {std}", p.name);
            all.extend_from_slice(&p.value);
        }
        let (mean, std, within) = moments(&all, 0.02);
        assert!(mean.abs() < 1e-4, "{name}: mean {mean}");
        assert!((std / 0.02 - 1.0).abs() < 0.01, "{name}: std {std}");
        assert!(
            (within - 0.6827).abs() < 0.01,
            "{name}: P(|x| < σ) {within}"
        );
        // Distinct tensors are distinct draws.
        assert_ne!(train.params[1].value[..64], train.params[2].value[..64]);
        drop(model);
        std::fs::remove_dir_all(&root).unwrap();
    }
}

#[test]
fn f32_weights_are_the_bf16_ones_unrounded() {
    let root = common::temp_dir("f32");
    let config = preset("tiny-olmo").unwrap();
    let f32_opts = InitOptions {
        dtype: WeightDtype::F32,
        ..opts(3)
    };
    init_model(&config, &root.join("f32"), &f32_opts).unwrap();
    init_model(&config, &root.join("bf16"), &opts(3)).unwrap();
    let json = std::fs::read_to_string(root.join("f32/config.json")).unwrap();
    assert!(json.contains("\"torch_dtype\": \"float32\""), "{json}");
    let (a, b) = (
        WeightStore::open(&root.join("f32")).unwrap(),
        WeightStore::open(&root.join("bf16")).unwrap(),
    );
    let c = ModelConfig::from_json(&json).unwrap();
    for (name, shape) in parameter_layout(&c) {
        let (ta, tb) = (
            a.get(&name, &shape, &root).unwrap(),
            b.get(&name, &shape, &root).unwrap(),
        );
        assert_eq!((ta.dtype(), tb.dtype()), (DType::F32, DType::BF16));
        let rounded: Vec<f32> = ta
            .to_f32_vec()
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect();
        assert_eq!(rounded, tb.to_f32_vec(), "{name}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn same_seed_same_bytes_whatever_the_threads() {
    let root = common::temp_dir("seeds");
    let config = preset("tiny-llama").unwrap();
    init_model(&config, &root.join("a"), &opts(5)).unwrap();
    init_model(&config, &root.join("b"), &opts(5)).unwrap();
    init_model(&config, &root.join("c"), &opts(6)).unwrap();
    let a = read_all(&root.join("a"));
    assert_eq!(a, read_all(&root.join("b")));
    for threads in ["1", "3"] {
        let out = root.join(format!("threads-{threads}"));
        let o = implicit(
            &[
                "init",
                "--config",
                "tiny-llama",
                "--seed",
                "5",
                "--out",
                out.to_str().unwrap(),
            ],
            &[("IMPLICIT_THREADS", threads)],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(a, read_all(&out), "IMPLICIT_THREADS={threads}");
    }
    // Another seed: the same config, different weights in every tensor.
    let c = read_all(&root.join("c"));
    assert_eq!(a[0], c[0], "config.json");
    assert_ne!(a[2], c[2], "model.safetensors");
    let (sa, sc) = (
        WeightStore::open(&root.join("a")).unwrap(),
        WeightStore::open(&root.join("c")).unwrap(),
    );
    let cfg = ModelConfig::from_json(&config.to_string()).unwrap();
    for (name, shape) in parameter_layout(&cfg)
        .into_iter()
        .filter(|(_, s)| s.len() == 2)
    {
        assert_ne!(
            sa.get(&name, &shape, &root).unwrap().to_f32_vec(),
            sc.get(&name, &shape, &root).unwrap().to_f32_vec(),
            "{name}"
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn shards_with_an_index_hold_the_same_weights() {
    let root = common::temp_dir("shards");
    let config = preset("tiny-llama").unwrap();
    let shard_bytes = 100_000;
    let sharded = InitOptions {
        shard_bytes,
        ..opts(1)
    };
    let report = init_model(&config, &root.join("sharded"), &sharded).unwrap();
    init_model(&config, &root.join("single"), &opts(1)).unwrap();

    let shards: Vec<&String> = report
        .files
        .iter()
        .filter(|f| f.ends_with(".safetensors"))
        .collect();
    let n = shards.len();
    assert!(n > 3, "{:?}", report.files);
    for (i, f) in shards.iter().enumerate() {
        assert_eq!(**f, format!("model-{:05}-of-{n:05}.safetensors", i + 1));
    }
    assert!(!root.join("sharded/model.safetensors").exists());
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("sharded/model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(index["metadata"]["total_size"], report.weight_bytes);
    assert_eq!(report.weight_bytes, 2 * report.parameters as u64);
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(map.len(), report.tensors);

    // Each shard stays under the size unless one tensor alone exceeds it (the embedding).
    let c = ModelConfig::from_json(&config.to_string()).unwrap();
    let layout = parameter_layout(&c);
    for f in &shards {
        let bytes: usize = layout
            .iter()
            .filter(|(name, _)| map[name] == ***f)
            .map(|(_, s)| 2 * s.iter().product::<usize>())
            .sum();
        let tensors = map.values().filter(|v| **v == ***f).count();
        assert!(bytes as u64 <= shard_bytes || tensors == 1, "{f}: {bytes}");
    }
    // Shards are consecutive in parameter_layout order.
    let files: Vec<&str> = layout
        .iter()
        .map(|(name, _)| map[name].as_str().unwrap())
        .collect();
    assert!(files.windows(2).all(|w| w[0] <= w[1]));

    // The loaders read the index; the values are the single file's.
    let a = TrainModel::<f32>::load(&root.join("sharded")).unwrap();
    let b = TrainModel::<f32>::load(&root.join("single")).unwrap();
    for (pa, pb) in a.params.iter().zip(&b.params) {
        assert_eq!(pa.value, pb.value, "{}", pa.name);
    }
    let t = Transformer::load(&root.join("sharded")).unwrap();
    let u = Transformer::load(&root.join("single")).unwrap();
    assert_eq!(t.logits(&[3, 4]).unwrap(), u.logits(&[3, 4]).unwrap());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn refuses_a_non_empty_out_and_leaves_it_alone() {
    let root = common::temp_dir("refuse");
    let out = root.join("mine");
    std::fs::create_dir_all(out.join("sub")).unwrap();
    std::fs::write(out.join("notes.txt"), "precious").unwrap();
    std::fs::write(out.join("sub/model.safetensors"), "also mine").unwrap();
    let config = preset("tiny-llama").unwrap();
    let e = init_model(&config, &out, &opts(0)).unwrap_err().to_string();
    assert!(
        e.contains(&out.display().to_string()) && e.contains("not empty"),
        "{e}"
    );
    let o = implicit(
        &[
            "init",
            "--config",
            "tiny-llama",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("not empty"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "precious"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("sub/model.safetensors")).unwrap(),
        "also mine"
    );
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);

    // A file in the way is refused too; an empty folder is filled.
    std::fs::write(root.join("file"), "x").unwrap();
    let e = init_model(&config, &root.join("file"), &opts(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a folder"), "{e}");
    std::fs::create_dir(root.join("empty")).unwrap();
    init_model(&config, &root.join("empty"), &opts(0)).unwrap();
    assert!(root.join("empty/model.safetensors").is_file());
    assert!(temporaries(&root).is_empty(), "{:?}", temporaries(&root));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn unknown_preset_lists_the_known_ones() {
    let e = resolve_config("llama3-8b").unwrap_err().to_string();
    assert!(e.contains("\"llama3-8b\""), "{e}");
    for name in PRESET_NAMES {
        assert!(e.contains(name), "{e} lacks {name}");
    }
    let root = common::temp_dir("unknown");
    let out = root.join("m");
    let o = implicit(
        &[
            "init",
            "--config",
            "llama3-8b",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("unknown preset") && stderr.contains("smollm2-135m"));
    assert!(!out.exists());
    // A path that does not exist names the path.
    let missing = root.join("nope/config.json");
    let e = resolve_config(missing.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains(&missing.display().to_string()), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn config_path_is_completed_and_loads() {
    let root = common::temp_dir("config-path");
    let config = root.join("config.json");
    // The bare minimum: no kv heads, head_dim, eps, theta, tying or dtype given.
    std::fs::write(
        &config,
        r#"{"model_type":"llama","vocab_size":300,"hidden_size":48,"intermediate_size":96,
           "num_hidden_layers":3,"num_attention_heads":6,"tie_word_embeddings":true,
           "eos_token_id":[2,3],"dtype":"float32","custom_field":"kept"}"#,
    )
    .unwrap();
    let out = root.join("m");
    let o = implicit(
        &[
            "init",
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--seed",
            "9",
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = ModelConfig::from_json(&config_text(&out)).unwrap();
    assert!(
        stdout
            .replace(',', "")
            .contains(&format!("{} parameters", c.num_parameters()))
            && stdout.contains("seed 9"),
        "{stdout}"
    );
    let json: Value = serde_json::from_str(&config_text(&out)).unwrap();
    assert_eq!(json["architectures"][0], "LlamaForCausalLM");
    assert_eq!(
        (&json["torch_dtype"], &json["dtype"]),
        (&Value::from("bfloat16"), &Value::from("bfloat16"))
    );
    assert_eq!(
        (&json["head_dim"], &json["num_key_value_heads"]),
        (&Value::from(8), &Value::from(6))
    );
    assert_eq!(json["custom_field"], "kept");
    let gen: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("generation_config.json")).unwrap())
            .unwrap();
    assert_eq!(gen["eos_token_id"], serde_json::json!([2, 3]));
    let t = Transformer::load(&out).unwrap();
    assert_eq!(t.config.eos_token_ids, [2, 3]);
    assert_eq!(t.logits(&[299]).unwrap().len(), 300);
    let train = TrainModel::<f32>::load(&out).unwrap();
    assert_eq!(train.params[0].shape, [300, 48]);
    assert!(train.params.iter().all(|p| p.name != "lm_head.weight"));

    // A folder holding a config.json works as well, and the result is the same model.
    let again = root.join("again");
    let (_, value) = resolve_config(out.to_str().unwrap()).unwrap();
    init_model(&value, &again, &opts(9)).unwrap();
    assert_eq!(read_all(&out), read_all(&again));

    // An unsupported config is refused before anything is written.
    std::fs::write(&config, r#"{"model_type":"gpt2","vocab_size":1}"#).unwrap();
    let (_, value) = resolve_config(config.to_str().unwrap()).unwrap();
    assert!(init_model(&value, &root.join("bad"), &opts(0)).is_err());
    assert!(!root.join("bad").exists());
    std::fs::remove_dir_all(&root).unwrap();
}

fn config_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("config.json")).unwrap()
}

#[test]
fn presets_have_the_published_shapes() {
    let count = |name: &str| {
        let (_, c) = complete_config(&preset(name).unwrap(), WeightDtype::Bf16).unwrap();
        c
    };
    let l7 = count("llama2-7b");
    assert_eq!(l7.num_parameters(), 6_738_415_616);
    assert_eq!(
        (
            l7.hidden_size,
            l7.intermediate_size,
            l7.num_layers,
            l7.vocab_size
        ),
        (4096, 11008, 32, 32000)
    );
    assert!(!l7.tie_word_embeddings);
    let l13 = count("llama2-13b");
    assert_eq!(l13.num_parameters(), 13_015_864_320);
    let olmo = count("olmo-7b");
    assert_eq!(olmo.num_parameters(), 6_888_095_744);
    assert_eq!(
        (olmo.vocab_size, olmo.clip_qkv, olmo.tie_word_embeddings),
        (50304, None, false)
    );
    assert_eq!(olmo.arch, implicit::model::Architecture::Olmo);
    let smol = count("smollm2-135m");
    assert_eq!(smol.num_parameters(), 134_515_008);
    assert_eq!(
        (smol.num_kv_heads, smol.head_dim, smol.rope_theta),
        (3, 64, 100000.0)
    );
    assert!(smol.tie_word_embeddings);
    for name in PRESET_NAMES {
        count(name);
    }
}

/// A tokenizer.json of `n` word-level tokens.
fn word_tokenizer(dir: &Path, n: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let vocab: serde_json::Map<String, Value> =
        (0..n).map(|i| (format!("w{i}"), Value::from(i))).collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"add_bos_token":false}"#,
    )
    .unwrap();
    dir.to_path_buf()
}

/// A SentencePiece model of `n` pieces (ModelProto field 1, each `{piece: "p"}`).
fn sentencepiece_model(dir: &Path, n: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let bytes: Vec<u8> = (0..n).flat_map(|_| [0x0a, 3, 0x0a, 1, b'p']).collect();
    std::fs::write(dir.join("tokenizer.model"), bytes).unwrap();
    dir.to_path_buf()
}

#[test]
fn tokenizer_files_are_copied_when_the_vocabulary_fits() {
    let root = common::temp_dir("tokenizer");
    let config = preset("tiny-llama").unwrap(); // vocab_size 1024
    let with = |tok: PathBuf| InitOptions {
        tokenizer: Some(tok),
        ..opts(0)
    };

    // Exactly 1024 tokens, and 1000 (padded to 1024 rows): copied, and generate can use them.
    for n in [1024, 1000] {
        let tok = word_tokenizer(&root.join(format!("tok{n}")), n);
        let out = root.join(format!("m{n}"));
        let report = init_model(&config, &out, &with(tok.clone())).unwrap();
        assert!(report.files.contains(&"tokenizer.json".to_string()));
        assert_eq!(
            std::fs::read(out.join("tokenizer.json")).unwrap(),
            std::fs::read(tok.join("tokenizer.json")).unwrap()
        );
        assert!(out.join("tokenizer_config.json").is_file());
    }
    let o = implicit(
        &[
            "generate",
            "--model",
            root.join("m1024").to_str().unwrap(),
            "--prompt",
            "w5 w6",
            "--max-new-tokens",
            "3",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Too many tokens, or far too few: refused, naming both sizes; nothing written.
    for n in [1025, 512] {
        let tok = word_tokenizer(&root.join(format!("bad{n}")), n);
        let out = root.join(format!("bad-out{n}"));
        let e = init_model(&config, &out, &with(tok))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("{n} tokens")) && e.contains("1024"),
            "{e}"
        );
        assert!(!out.exists());
    }

    // A SentencePiece model alone is counted and copied.
    let spm = sentencepiece_model(&root.join("spm"), 1024);
    init_model(&config, &root.join("m-spm"), &with(spm)).unwrap();
    assert!(root.join("m-spm/tokenizer.model").is_file());
    let spm = sentencepiece_model(&root.join("spm-bad"), 32000);
    let e = init_model(&config, &root.join("m-spm-bad"), &with(spm))
        .unwrap_err()
        .to_string();
    assert!(e.contains("32000 tokens"), "{e}");

    // A folder without a tokenizer.
    let e = init_model(&config, &root.join("none"), &with(root.join("empty-tok")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no tokenizer.json or tokenizer.model"), "{e}");
    assert!(temporaries(&root).is_empty(), "{:?}", temporaries(&root));
    std::fs::remove_dir_all(&root).unwrap();
}
