//! GGUF reading and GGUF -> Hugging Face conversion: synthetic files written by the tests
//! (all three format versions, quantised tensors with known values, corrupt inputs), the real
//! stories260K model, and SmolLM2-135M when its GGUF is present (in real_models.rs).

use half::f16;
use implicit::io::convert::convert_gguf;
use implicit::io::gguf::{GgmlType, GgufArray, GgufFile, GgufValue};
use std::path::Path;

#[path = "gguf_convert/real_models.rs"]
mod real_models;
#[path = "gguf_convert/support.rs"]
mod support;
#[path = "gguf_convert/tiny_llama.rs"]
mod tiny_llama;

use support::*;
use tiny_llama::*;

// ---------------------------------------------------------------- the reader

/// Every metadata type, including nested arrays, reads back in all three versions.
#[test]
fn reads_metadata_and_tensors_in_every_version() {
    for version in 1..=3 {
        let weights = test_values(64, 1);
        let file = GgufBuilder::new(version)
            .kv("general.architecture", Val::Str("llama".into()))
            .kv("t.u8", Val::U8(200))
            .kv("t.i8", Val::I8(-100))
            .kv("t.u16", Val::U16(60000))
            .kv("t.i16", Val::I16(-30000))
            .kv("t.u32", Val::U32(4_000_000_000))
            .kv("t.i32", Val::I32(-2_000_000_000))
            .kv("t.u64", Val::U64(1 << 40))
            .kv("t.i64", Val::I64(-(1 << 40)))
            .kv("t.f32", Val::F32(1.5))
            .kv("t.f64", Val::F64(-2.25))
            .kv("t.bool", Val::Bool(true))
            .kv("t.strings", Val::strs(&["a", "▁b", ""]))
            .kv("t.floats", Val::Arr(6, vec![Val::F32(0.5), Val::F32(-1.0)]))
            .kv(
                "t.ints",
                Val::Arr(5, vec![Val::I32(1), Val::I32(-2), Val::I32(3)]),
            )
            .kv(
                "t.nested",
                Val::Arr(
                    9,
                    vec![
                        Val::Arr(0, vec![Val::U8(1), Val::U8(2)]),
                        Val::Arr(0, vec![]),
                    ],
                ),
            )
            .tensor("a", &[8, 4], F32, enc_f32(&weights[..32]))
            .tensor("b", &[32], F32, enc_f32(&weights[32..]))
            .build();
        let path = write_temp(&format!("v{version}"), &file);
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.version(), version);
        assert_eq!(g.get_str("general.architecture").unwrap(), Some("llama"));
        assert_eq!(g.get("t.u8"), Some(&GgufValue::U8(200)));
        assert_eq!(g.get("t.i8"), Some(&GgufValue::I8(-100)));
        assert_eq!(g.get_u64("t.u16").unwrap(), Some(60000));
        assert_eq!(g.get_i64("t.i16").unwrap(), Some(-30000));
        assert_eq!(g.get_u64("t.u32").unwrap(), Some(4_000_000_000));
        assert_eq!(g.get_i64("t.i32").unwrap(), Some(-2_000_000_000));
        assert_eq!(g.get_u64("t.u64").unwrap(), Some(1 << 40));
        assert_eq!(g.get_i64("t.i64").unwrap(), Some(-(1 << 40)));
        assert_eq!(g.get_f32("t.f32").unwrap(), Some(1.5));
        assert_eq!(g.get("t.f64"), Some(&GgufValue::F64(-2.25)));
        assert_eq!(g.get_bool("t.bool").unwrap(), Some(true));
        assert_eq!(
            g.get_str_array("t.strings").unwrap().unwrap(),
            &["a".to_string(), "▁b".into(), "".into()]
        );
        assert_eq!(g.get_f32_array("t.floats").unwrap(), Some(vec![0.5, -1.0]));
        assert_eq!(g.get_i64_array("t.ints").unwrap(), Some(vec![1, -2, 3]));
        assert_eq!(
            g.get_array("t.nested").unwrap(),
            Some(&GgufArray::Array(vec![
                GgufArray::U8(vec![1, 2]),
                GgufArray::U8(vec![])
            ]))
        );
        // Missing keys are None; a present key of the wrong type is an error naming it.
        assert_eq!(g.get_u64("no.such.key").unwrap(), None);
        let err = g.get_u64("general.architecture").unwrap_err().to_string();
        assert!(err.contains("general.architecture") && err.contains(&path.display().to_string()));
        assert_eq!(g.get_i64("t.u64").unwrap(), Some(1 << 40));
        assert!(g.get_u64("t.i8").is_err(), "a negative value is not a u64");

        assert_eq!(g.tensors().len(), 2);
        let a = &g.tensors()[0];
        assert_eq!(
            (a.name.as_str(), a.dims.as_slice(), a.ggml_type),
            ("a", &[8u64, 4][..], GgmlType::F32)
        );
        assert_eq!(a.shape(), vec![4, 8]);
        assert_eq!(g.tensor_f32("a").unwrap(), &weights[..32]);
        assert_eq!(g.tensor_f32("b").unwrap(), &weights[32..]);
        assert!(g
            .tensor_f32("c")
            .unwrap_err()
            .to_string()
            .contains("no tensor named 'c'"));
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn honours_general_alignment() {
    let x = test_values(32, 2);
    let file = GgufBuilder::new(3)
        .kv("general.alignment", Val::U32(256))
        .tensor("first", &[3], F32, enc_f32(&x[..3]))
        .tensor("second", &[29], F32, enc_f32(&x[3..]))
        .build();
    let path = write_temp("align", &file);
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.tensors()[1].offset, 256);
    assert_eq!(g.tensor_f32("first").unwrap(), &x[..3]);
    assert_eq!(g.tensor_f32("second").unwrap(), &x[3..]);
    std::fs::remove_file(&path).unwrap();
}

/// F16, BF16, Q8_0, Q4_0 and Q4_1 decode to exactly the values the format defines, which lie
/// within the quantisation error of the originals.
#[test]
fn dequantises_known_values() {
    let x = test_values(4 * 64, 3);
    let (f16_bytes, f16_vals) = enc_f16(&x);
    let (bf16_bytes, bf16_vals) = enc_bf16(&x);
    let (q8_bytes, q8_vals) = enc_q8_0(&x);
    let (q40_bytes, q40_vals) = enc_q4_0(&x);
    let (q41_bytes, q41_vals) = enc_q4_1(&x);
    let file = GgufBuilder::new(3)
        .tensor("f16", &[64, 4], F16, f16_bytes)
        .tensor("bf16", &[64, 4], BF16, bf16_bytes)
        .tensor("q8_0", &[64, 4], Q8_0, q8_bytes)
        .tensor("q4_0", &[64, 4], Q4_0, q40_bytes)
        .tensor("q4_1", &[64, 4], Q4_1, q41_bytes)
        .build();
    let path = write_temp("quant", &file);
    let g = GgufFile::open(&path).unwrap();
    let cases = [
        ("f16", f16_vals, 1e-3),
        ("bf16", bf16_vals, 1e-2),
        // Half a quantisation step (range / levels) plus the f16 rounding of the scales.
        ("q8_0", q8_vals, 1.0 / 127.0 * 0.6),
        ("q4_0", q40_vals, 1.0 / 7.0 * 0.6),
        ("q4_1", q41_vals, 2.0 / 15.0 * 0.6),
    ];
    for (name, exact, tol) in cases {
        let got = g.tensor_f32(name).unwrap();
        assert_eq!(got, exact, "{name}: the format's own values");
        assert_close(&got, &x, tol, name);
    }
    std::fs::remove_file(&path).unwrap();
}

/// Q4_K and Q6_K against values from the official `gguf` Python package
/// (gguf.quants.dequantize, gguf 0.19.0 from PyPI) for the same bytes: byte i of a two-block
/// buffer is (i * seed + 11) % 256, with the f16 scales overwritten as below.
#[test]
fn dequantises_k_quants_like_ggml() {
    let pattern = |n: usize, seed: usize| -> Vec<u8> {
        (0..n).map(|i| ((i * seed + 11) % 256) as u8).collect()
    };
    let idx = [0, 1, 31, 32, 33, 63, 64, 127, 128, 200, 255, 256, 300, 511];

    let mut q4k = pattern(2 * 144, 37);
    for k in 0..2 {
        let b = &mut q4k[144 * k..];
        b[..2].copy_from_slice(&f16::from_f32(0.01 * (k + 1) as f32).to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(0.02).to_le_bytes());
    }
    let mut q6k = pattern(2 * 210, 53);
    for k in 0..2 {
        q6k[210 * k + 208..210 * k + 210]
            .copy_from_slice(&f16::from_f32(0.003 * (k + 1) as f32).to_le_bytes());
    }
    let file = GgufBuilder::new(3)
        .tensor("q4_k", &[512], 12, q4k)
        .tensor("q6_k", &[256, 2], 14, q6k)
        .build();
    let path = write_temp("kquant", &file);
    let g = GgufFile::open(&path).unwrap();
    let expected: [(&str, [f64; 14], f64); 2] = [
        (
            "q4_k",
            [
                2.3905105590820312,
                -1.0202178955078125,
                0.840179443359375,
                -0.280059814453125,
                -0.1600341796875,
                0.040008544921875,
                3.2907028198242188,
                0.3000640869140625,
                4.050865173339844,
                1.1302413940429688,
                -0.040008544921875,
                10.282196044921875,
                4.801025390625,
                8.32177734375,
            ],
            1778.2197875976562,
        ),
        (
            "q6_k",
            [
                -4.293371200561523,
                5.08843994140625,
                0.0,
                1.7491512298583984,
                -5.08843994140625,
                -3.1802749633789062,
                9.31280517578125,
                3.162273406982422,
                9.315805435180664,
                -0.21301841735839844,
                -0.3900337219238281,
                -4.554393768310547,
                15.067302703857422,
                -10.9449462890625,
            ],
            128.63912200927734,
        ),
    ];
    for (name, values, sum) in expected {
        let got = g.tensor_f32(name).unwrap();
        assert_eq!(got.len(), 512);
        for (&i, &want) in idx.iter().zip(&values) {
            assert!(
                (got[i] as f64 - want).abs() < 1e-5,
                "{name}[{i}] = {}, want {want}",
                got[i]
            );
        }
        let total: f64 = got.iter().map(|&v| v as f64).sum();
        assert!(
            (total - sum).abs() < 1e-3,
            "{name}: sum {total}, want {sum}"
        );
    }
    std::fs::remove_file(&path).unwrap();
}

// ---------------------------------------------------------------- corrupt inputs

/// A small valid file to corrupt: two metadata keys and one tensor.
fn valid_file(version: u32) -> Vec<u8> {
    GgufBuilder::new(version)
        .kv("general.architecture", Val::Str("llama".into()))
        .kv("tokenizer.ggml.tokens", Val::strs(&["a", "b", "c"]))
        .tensor("w", &[32, 2], F32, enc_f32(&test_values(64, 4)))
        .build()
}

/// Opening `bytes` fails with a message that names the file and contains `fault`.
fn assert_open_fails(tag: &str, bytes: &[u8], fault: &str) {
    let path = write_temp(tag, bytes);
    let err = GgufFile::open(&path)
        .expect_err(&format!("{tag}: a corrupt file opened"))
        .to_string();
    assert!(
        err.contains(&path.display().to_string()),
        "{tag}: no path in {err:?}"
    );
    assert!(err.contains(fault), "{tag}: {err:?} does not say {fault:?}");
    std::fs::remove_file(&path).unwrap();
}

/// Byte offset just past the end of the metadata of `valid_file(3)`: the tensor info starts.
fn tensor_info_offset() -> usize {
    let kv = |k: &str, v_len: usize| 8 + k.len() + 4 + v_len;
    4 + 4
        + 8
        + 8
        + kv("general.architecture", 8 + 5)
        + kv("tokenizer.ggml.tokens", 4 + 8 + 3 * (8 + 1))
}

#[test]
fn corrupt_files_are_errors_naming_the_file() {
    let good = valid_file(3);
    let good_path = write_temp("good", &good);
    assert!(GgufFile::open(&good_path).is_ok());
    std::fs::remove_file(&good_path).unwrap();

    let mut bad_magic = good.clone();
    bad_magic[..4].copy_from_slice(b"GGML");
    assert_open_fails("magic", &bad_magic, "bad magic");

    let mut version = good.clone();
    version[4..8].copy_from_slice(&4u32.to_le_bytes());
    assert_open_fails("version", &version, "unsupported GGUF version 4");

    assert_open_fails("empty", &[], "truncated header");
    assert_open_fails("short-header", &good[..12], "truncated header");
    assert_open_fails("short-metadata", &good[..40], "truncated metadata");
    assert_open_fails(
        "short-tensor-table",
        &good[..tensor_info_offset() + 6],
        "truncated tensor table",
    );
    assert_open_fails(
        "short-tensor-info",
        &good[..tensor_info_offset() + 26],
        "truncated tensor info",
    );
    // The tensor's last bytes are missing.
    assert_open_fails(
        "short-data",
        &good[..good.len() - 4],
        "tensor data past end of file",
    );

    // Absurd counts: they must be refused before anything is allocated for them.
    let mut kv_count = good.clone();
    kv_count[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_open_fails("kv-count", &kv_count, "truncated metadata");
    let mut tensor_count = good.clone();
    tensor_count[8..16].copy_from_slice(&(1u64 << 62).to_le_bytes());
    assert_open_fails("tensor-count", &tensor_count, "truncated");
    let mut key_len = good.clone();
    key_len[24..32].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    assert_open_fails("string-length", &key_len, "truncated metadata");
    let array_len_at = tensor_info_offset() - 3 * 9 - 8;
    let mut array_len = good.clone();
    array_len[array_len_at..array_len_at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert_open_fails("array-length", &array_len, "cannot fit");

    // The tensor info: name (8 + 1 bytes), n_dims, dims, type, offset.
    let info = tensor_info_offset();
    let mut n_dims = good.clone();
    n_dims[info + 9..info + 13].copy_from_slice(&99u32.to_le_bytes());
    assert_open_fails("n-dims", &n_dims, "99 dimensions");
    let mut dims = good.clone();
    dims[info + 13..info + 21].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert_open_fails("huge-dims", &dims, "tensor data past end of file");
    let mut ty = good.clone();
    ty[info + 29..info + 33].copy_from_slice(&99u32.to_le_bytes());
    assert_open_fails("ggml-type", &ty, "unknown ggml type 99 for tensor 'w'");
    let mut offset = good.clone();
    offset[info + 33..info + 41].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert_open_fails("offset", &offset, "tensor data past end of file");
    let mut value_type = good.clone();
    value_type[8 + 8 + 8 + 8 + "general.architecture".len()] = 77;
    assert_open_fails("value-type", &value_type, "unknown value type 77");

    // Version 1 uses u32 counts: an absurd one there too.
    let mut v1 = valid_file(1);
    v1[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_open_fails("v1-kv-count", &v1, "truncated metadata");
}

#[test]
fn unsupported_tensor_types_are_errors_on_read() {
    // Q5_K (13) is a valid type with 176-byte blocks of 256 that this reader does not decode.
    let file = GgufBuilder::new(3)
        .tensor("w", &[256], 13, vec![0; 176])
        .build();
    let path = write_temp("q5k", &file);
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.tensors()[0].ggml_type, GgmlType::Q5_K);
    let err = g.tensor_f32("w").unwrap_err().to_string();
    assert!(
        err.contains(&path.display().to_string()) && err.contains("Q5_K"),
        "{err}"
    );
    std::fs::remove_file(&path).unwrap();
}

// ---------------------------------------------------------------- conversion

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn converts_a_synthetic_llama_in_every_version() {
    for version in 1..=3 {
        let (file, expected) = tiny_llama(version, "llama", &[]);
        let input = write_temp(&format!("tiny-v{version}"), &file);
        // A directory that does not exist yet: the converter creates it.
        let out = temp_path("tiny-out").join("nested");
        let report = convert_gguf(&input, &out).unwrap();
        let (tokens, _, _) = tiny_vocab();
        assert_eq!(report.architecture, "llama");
        assert_eq!(report.n_tensors, 2 + 9 * LAYERS);
        assert_eq!(report.vocab_size, tokens.len());
        assert_eq!(report.tokenizer, "llama");
        let params: usize = expected.iter().map(|e| e.2.len()).sum();
        assert_eq!(report.n_parameters, params as u64);
        assert!(
            report.to_string().contains(&format!("{params} parameters")),
            "{report}"
        );
        assert_eq!(
            files_in(&out),
            [
                "config.json",
                "generation_config.json",
                "model.safetensors",
                "tokenizer.json",
                "tokenizer_config.json"
            ]
        );

        let config = read_json(&out.join("config.json"));
        assert_eq!(config["architectures"][0], "LlamaForCausalLM");
        assert_eq!(config["model_type"], "llama");
        assert_eq!(config["hidden_size"], D);
        assert_eq!(config["intermediate_size"], FFN);
        assert_eq!(config["num_attention_heads"], HEADS);
        assert_eq!(config["num_key_value_heads"], KV_HEADS);
        assert_eq!(config["num_hidden_layers"], LAYERS);
        assert_eq!(config["rms_norm_eps"], 1e-5);
        assert_eq!(
            config["rope_theta"],
            if version == 1 { 10000.0 } else { 500000.0 }
        );
        assert_eq!(config["vocab_size"], tokens.len());
        assert_eq!(config["max_position_embeddings"], 128);
        assert_eq!(config["tie_word_embeddings"], true);
        assert_eq!(
            (
                config["bos_token_id"].clone(),
                config["eos_token_id"].clone()
            ),
            (1.into(), 2.into())
        );
        assert_eq!(config["torch_dtype"], "float32");
        assert_eq!(config["hidden_act"], "silu");

        // Every tensor under its HF name and shape with exactly the expected values; Q and K
        // are back in HF's layout. Tied embeddings: no lm_head.
        let got = read_safetensors(&out.join("model.safetensors"));
        let names = |t: &Expected| t.iter().map(|e| e.0.clone()).collect::<Vec<_>>();
        assert_eq!(names(&got), names(&expected));
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g.1, e.1, "shape of {}", e.0);
            assert_eq!(g.2, e.2, "values of {}", e.0);
        }

        let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
        let id = |t: &str| token_id(&tokens, t);
        let enc = tok.encode("hello hello", false).unwrap();
        assert_eq!(enc.get_ids(), [id("▁hello"), id("▁hello")]);
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "hello hello");
        // "x" is not a piece: byte fallback.
        let enc = tok.encode("hex", false).unwrap();
        assert_eq!(enc.get_ids(), [id("▁he"), id("<0x78>")]);
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "hex");
        // Control tokens are special added tokens; no BOS is added by the tokenizer.
        let enc = tok.encode("hello</s>", true).unwrap();
        assert_eq!(enc.get_ids(), [id("▁hello"), 2]);
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "hello");
        let tok_config = read_json(&out.join("tokenizer_config.json"));
        assert_eq!(
            (
                tok_config["bos_token"].as_str(),
                tok_config["eos_token"].as_str()
            ),
            (Some("<s>"), Some("</s>"))
        );

        std::fs::remove_dir_all(out.parent().unwrap()).unwrap();
        std::fs::remove_file(&input).unwrap();
    }
}

/// Conversion faults are errors naming the file, and leave nothing in the output directory.
#[test]
fn conversion_faults_leave_no_files() {
    let cases: [(&str, &[&str], &str); 3] = [
        ("gpt2", &[], "unsupported architecture 'gpt2'"),
        (
            "llama",
            &["blk.1.ffn_down.weight"],
            "model.layers.1.mlp.down_proj.weight",
        ),
        ("llama", &["token_embd.weight"], "model.embed_tokens.weight"),
    ];
    for (arch, skip, fault) in cases {
        let (file, _) = tiny_llama(3, arch, skip);
        let input = write_temp("faulty", &file);
        let out = temp_path("faulty-out");
        let err = convert_gguf(&input, &out).unwrap_err().to_string();
        assert!(
            err.contains(&input.display().to_string()) && err.contains(fault),
            "{err}"
        );
        assert!(files_in(&out).is_empty(), "left {:?}", files_in(&out));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::remove_file(&input).unwrap();
    }
    // A corrupt input fails the same way.
    let input = write_temp("not-gguf", b"definitely not a GGUF file");
    let out = temp_path("not-gguf-out");
    let err = convert_gguf(&input, &out).unwrap_err().to_string();
    assert!(
        err.contains("bad magic") && err.contains(&input.display().to_string()),
        "{err}"
    );
    assert!(files_in(&out).is_empty());
    std::fs::remove_file(&input).unwrap();
}
