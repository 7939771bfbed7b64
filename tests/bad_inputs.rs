//! Issue 15, "nothing lost, nothing silently wrong": numeric flags that are not finite or out
//! of range stop at parsing naming the flag and the value; config.json fields out of range,
//! checkpoint tensors the config does not use and non-finite weights are errors naming them;
//! `generate --out` is checked before any answer is generated; and closed pipes on stdout or
//! stderr neither panic nor stop a command whose results are files.

mod common;

use common::{fails, fixture_copy, implicit};

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

/// Bad numbers on the command line: clap's usage error (exit 2) naming the flag and the value.
#[test]
fn numeric_flags_must_be_finite_and_in_range() {
    let m = ["--model", "nowhere"];
    let gen = |extra: &[&'static str]| {
        let mut a = vec!["generate", m[0], m[1], "--prompt", "hi"];
        a.extend(extra);
        a
    };
    let ranking = |extra: &[&'static str]| {
        let mut a = vec!["eval", "ranking", m[0], m[1], "--data", "d.jsonl"];
        a.extend(extra);
        a
    };
    let judge = |extra: &[&'static str]| {
        let mut a = vec![
            "eval",
            "judge",
            "--outputs",
            "o.json",
            "--reference",
            "r.json",
            "--out",
            "a.json",
        ];
        a.extend(extra);
        a
    };
    let serve = |extra: &[&'static str]| {
        let mut a = vec!["serve", m[0], m[1]];
        a.extend(extra);
        a
    };
    let plan = |extra: &[&'static str]| {
        let mut a = vec!["experiment", "plan", "c.toml"];
        a.extend(extra);
        a
    };
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (gen(&["--temperature", "NaN"]), "--temperature", "NaN"),
        (gen(&["--temperature", "inf"]), "--temperature", "inf"),
        (gen(&["--temperature=-0.5"]), "--temperature", "-0.5"),
        (gen(&["--temperature", "1e39"]), "--temperature", "1e39"),
        (gen(&["--max-new-tokens", "0"]), "--max-new-tokens", "0"),
        (
            vec![
                "generate",
                "--model",
                "m",
                "--instructions",
                "i.json",
                "--out",
                "o.json",
                "--limit",
                "0",
            ],
            "--limit",
            "0",
        ),
        (serve(&["--read-timeout", "NaN"]), "--read-timeout", "NaN"),
        (serve(&["--read-timeout", "0"]), "--read-timeout", "0"),
        (serve(&["--max-requests", "0"]), "--max-requests", "0"),
        (ranking(&["--negatives", "0"]), "--negatives", "0"),
        (ranking(&["--max-len", "0"]), "--max-len", "0"),
        (ranking(&["--batch-tokens", "0"]), "--batch-tokens", "0"),
        (ranking(&["--bootstrap", "0"]), "--bootstrap", "0"),
        (ranking(&["--max-examples", "0"]), "--max-examples", "0"),
        (
            judge(&["--max-retry-seconds", "NaN"]),
            "--max-retry-seconds",
            "NaN",
        ),
        (
            judge(&["--request-timeout-seconds", "0"]),
            "--request-timeout-seconds",
            "0",
        ),
        (judge(&["--batch", "0"]), "--batch", "0"),
        (judge(&["--judge-max-len", "0"]), "--judge-max-len", "0"),
        (
            plan(&["--train-tokens-per-s", "NaN"]),
            "--train-tokens-per-s",
            "NaN",
        ),
        (
            plan(&["--decode-tokens-per-s=-3"]),
            "--decode-tokens-per-s",
            "-3",
        ),
    ];
    for (args, flag, value) in cases {
        let out = implicit(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let line = stderr.lines().next().unwrap_or_default();
        assert!(
            line.starts_with("error:") && line.contains(flag) && line.contains(value),
            "{args:?}: {stderr}"
        );
    }
}

fn generate_fails(dir: &Path) -> String {
    fails(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "hi",
        "--max-new-tokens",
        "2",
    ])
}

fn edit_config(dir: &Path, key: &str, value: Value) {
    let p = dir.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    config[key] = value;
    std::fs::write(&p, config.to_string()).unwrap();
}

#[test]
fn config_fields_out_of_range_are_named() {
    let cases = [
        ("rope_theta", json!(-1.0), "rope_theta -1"),
        ("rms_norm_eps", json!(0.0), "rms_norm_eps 0"),
        ("num_key_value_heads", json!(3), "num_key_value_heads 3"),
        ("vocab_size", json!(0), "vocab_size is 0"),
        (
            "max_position_embeddings",
            json!(0),
            "max_position_embeddings",
        ),
        ("eos_token_id", json!(500), "eos_token_id 500"),
    ];
    for (key, value, want) in cases {
        let dir = fixture_copy(&format!("config-{key}"));
        edit_config(&dir, key, value);
        let e = generate_fails(&dir);
        assert!(e.contains("config.json") && e.contains(want), "{key}: {e}");
    }
}

/// The safetensors file's tensors: name -> (dtype, shape, bytes).
type Tensors = BTreeMap<String, (String, Vec<usize>, Vec<u8>)>;

fn read_safetensors(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = Tensors::new();
    for (name, t) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let [a, b] = [0, 1].map(|i| t["data_offsets"][i].as_u64().unwrap() as usize);
        let shape = t["shape"].as_array().unwrap().iter();
        out.insert(
            name.clone(),
            (
                t["dtype"].as_str().unwrap().to_string(),
                shape.map(|d| d.as_u64().unwrap() as usize).collect(),
                data[a..b].to_vec(),
            ),
        );
    }
    out
}

fn write_safetensors(path: &Path, tensors: &Tensors) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, (dtype, shape, bytes)) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut text = Value::Object(header).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend(text);
    file.extend(data);
    std::fs::write(path, file).unwrap();
}

#[test]
fn weights_the_config_does_not_use_are_an_error_but_rope_buffers_are_not() {
    // One layer in config.json, two in the weights: the second layer's tensors are named.
    let dir = fixture_copy("unused-layer");
    edit_config(&dir, "num_hidden_layers", json!(1));
    let e = generate_fails(&dir);
    assert!(
        e.contains("model.layers.1.") && e.contains("not used by config.json"),
        "{e}"
    );
    // A saved rotary inv_freq buffer is ignored: loading gets as far as the tokenizer.
    let dir = fixture_copy("inv-freq");
    let st = dir.join("model.safetensors");
    let mut tensors = read_safetensors(&st);
    let inv_freq: Vec<u8> = (0..4)
        .flat_map(|i| (1.0f32 / (i + 1) as f32).to_le_bytes())
        .collect();
    tensors.insert(
        "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
        ("F32".into(), vec![4], inv_freq),
    );
    write_safetensors(&st, &tensors);
    let e = generate_fails(&dir);
    assert!(e.contains("tokenizer"), "{e}");
}

#[test]
fn non_finite_weights_are_reported_with_their_count() {
    let dir = fixture_copy("nan-weights");
    let st = dir.join("model.safetensors");
    let mut tensors = read_safetensors(&st);
    let (_, _, bytes) = tensors
        .get_mut("model.layers.1.mlp.up_proj.weight")
        .unwrap();
    bytes[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    bytes[40..44].copy_from_slice(&f32::NEG_INFINITY.to_le_bytes());
    write_safetensors(&st, &tensors);
    let e = generate_fails(&dir);
    assert!(
        e.contains("model.layers.1.mlp.up_proj.weight") && e.contains("2 non-finite values"),
        "{e}"
    );
    // Training's loader (the parameters as f32) refuses them too, and layers the config does
    // not use.
    let config = implicit::model::ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let e = implicit::model::train::load_parameter_values(&dir, &config).unwrap_err();
    assert!(e.to_string().contains("2 non-finite values"), "{e}");
    let one_layer = fixture_copy("unused-layer-train");
    edit_config(&one_layer, "num_hidden_layers", json!(1));
    let config = implicit::model::ModelConfig::from_file(&one_layer.join("config.json")).unwrap();
    let e = implicit::model::train::load_parameter_values(&one_layer, &config).unwrap_err();
    assert!(e.to_string().contains("model.layers.1."), "{e}");
    // Allowed by the environment: a warning, and loading goes on (to the missing tokenizer).
    let out = Command::new(common::implicit_bin())
        .args([
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "x",
        ])
        .env("IMPLICIT_ALLOW_NONFINITE_WEIGHTS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("2 non-finite values"),
        "{stderr}"
    );
    assert!(stderr.contains("tokenizer"), "{stderr}");
}

#[test]
fn generate_checks_its_output_before_loading_the_model() {
    let dir = common::temp_dir("unwritable-out");
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let set = dir.join("set.jsonl");
    std::fs::write(&set, "{\"instruction\": \"hi\"}\n").unwrap();
    // The model does not exist: the output's error comes first, so nothing was loaded.
    let out = file.join("outputs.json");
    let e = fails(&[
        "generate",
        "--model",
        dir.join("no-model").to_str().unwrap(),
        "--instructions",
        set.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(e.contains("--out") && e.contains("outputs.json"), "{e}");
    // A writable output leaves no probe file behind.
    let fine = dir.join("new-folder").join("outputs.json");
    let e = fails(&[
        "generate",
        "--model",
        dir.join("no-model").to_str().unwrap(),
        "--instructions",
        set.to_str().unwrap(),
        "--out",
        fine.to_str().unwrap(),
    ]);
    assert!(e.contains("no-model"), "{e}");
    let left: Vec<_> = std::fs::read_dir(dir.join("new-folder")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Runs `implicit ARGS` with stdout and/or stderr a pipe whose reader is already closed, so
/// the first write to it fails (EPIPE): returns the exit status and what the open stream got.
fn with_closed(args: &[&str], close_stdout: bool, close_stderr: bool) -> (Option<i32>, String) {
    let mut child = Command::new(common::implicit_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let mut kept = String::new();
    use std::io::Read;
    match (close_stdout, close_stderr) {
        (true, true) => drop((stdout, stderr)),
        (true, false) => {
            drop(stdout);
            let mut stderr = stderr;
            stderr.read_to_string(&mut kept).unwrap();
        }
        (false, true) => {
            drop(stderr);
            let mut stdout = stdout;
            stdout.read_to_string(&mut kept).unwrap();
        }
        (false, false) => unreachable!("one stream is closed"),
    }
    (child.wait().unwrap().code(), kept)
}

#[test]
fn a_closed_stdout_ends_eval_winrate_quietly() {
    let dir = common::temp_dir("closed-stdout-winrate");
    let annotations = dir.join("annotations.json");
    let rows: Vec<Value> = (0..100)
        .map(|i| {
            json!({"instruction": format!("i{i}"), "output_1": "a".repeat(10 + i % 7),
                   "output_2": "b".repeat(10 + i % 5), "generator_1": "ref",
                   "generator_2": "model", "preference": 1.0 + (i % 3) as f64 / 2.0})
        })
        .collect();
    std::fs::write(&annotations, serde_json::to_string(&rows).unwrap()).unwrap();
    let metrics = dir.join("metrics.json");
    let args = [
        "eval",
        "winrate",
        "--annotations",
        annotations.to_str().unwrap(),
        "--json",
        metrics.to_str().unwrap(),
    ];
    let (code, stderr) = with_closed(&args, true, false);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(code, Some(0), "{stderr}");
    // The result file is still written after the report could not be shown.
    assert!(metrics.is_file());
}

#[test]
fn closed_pipes_neither_panic_nor_stop_generate_and_train() {
    let Some(model) = common::stories260k("closed-pipes") else {
        return;
    };
    let m = model.to_str().unwrap();
    // stderr closed: the progress lines are dropped and the answer still comes out.
    let gen = [
        "generate",
        "--model",
        m,
        "--prompt",
        "Once upon a time",
        "--max-new-tokens",
        "8",
    ];
    let (code, stdout) = with_closed(&gen, false, true);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.starts_with("Once upon a time") && stdout.len() > 20,
        "{stdout:?}"
    );
    // stdout closed: decoding stops and the command ends quietly.
    let (code, stderr) = with_closed(&gen, true, false);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(code, Some(0), "{stderr}");
    // Training with both closed (`implicit train 2>&1 | head`) runs to its checkpoint.
    let Some(data) = common::data_dir("closed-pipes") else {
        return;
    };
    let out = common::temp_dir("closed-pipes-train").join("run");
    let lima = data.join("lima/lima_data.jsonl");
    let train = [
        "train",
        "--model",
        m,
        "--data",
        lima.to_str().unwrap(),
        "--epochs",
        "1",
        "--lr",
        "1e-3",
        "--max-examples",
        "4",
        "--max-len",
        "256",
        "--out",
        out.to_str().unwrap(),
    ];
    let (code, _) = with_closed(&train, true, true);
    assert_eq!(code, Some(0));
    assert!(out.join("metrics.jsonl").is_file());
    assert!(out.join("epoch-1").join("model.safetensors").is_file());
}
