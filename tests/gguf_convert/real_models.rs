//! Real models: stories260K (in the shared data folder) and SmolLM2-135M (when present).

use crate::support::*;
use implicit::io::convert::{convert_gguf, unpermute_qk};
use implicit::io::gguf::{GgmlType, GgufFile};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------- real models

/// The converted Q or K of `hf` must, permuted back the way llama.cpp's converter did it,
/// reproduce the GGUF tensor exactly, and must differ from it (the rows really moved).
fn assert_unpermuted(gguf: &GgufFile, gguf_name: &str, hf: &[f32], heads: usize, cols: usize) {
    let stored = gguf.tensor_f32(gguf_name).unwrap();
    assert_eq!(
        permute_like_llama_cpp(hf, heads, cols),
        stored,
        "{gguf_name}"
    );
    assert_ne!(hf, stored.as_slice(), "{gguf_name}: nothing was permuted");
    // The crate's own inverse agrees.
    assert_eq!(unpermute_qk(&stored, heads, cols), hf, "{gguf_name}");
}

/// Karpathy's stories260K: GGUF version 1, F32, a SentencePiece vocabulary of 512.
/// Also checked outside this test: Hugging Face transformers 4.57.1 loads the converted
/// directory and greedy decoding from BOS gives "Once upon a time, there was a little girl
/// named Lily. She loved to play outside in the park.", as the model's README says.
#[test]
fn converts_stories260k() {
    let Some(data) = data_dir() else {
        eprintln!("skipping converts_stories260k: no ../shared/data (set IMPLICIT_DATA)");
        return;
    };
    let input = data.join("models/stories260k-f32.gguf");
    let gguf = GgufFile::open(&input).unwrap();
    assert_eq!(gguf.version(), 1);
    assert_eq!(gguf.tensors().len(), 48);
    assert!(gguf.tensors().iter().all(|t| t.ggml_type == GgmlType::F32));

    let out = temp_path("stories260k");
    let report = convert_gguf(&input, &out).unwrap();
    assert_eq!(report.architecture, "llama");
    assert_eq!(report.n_tensors, 48);
    assert_eq!(report.n_parameters, 292_800);
    assert_eq!(report.vocab_size, 512);
    assert_eq!(report.tokenizer, "llama");

    let config = read_json(&out.join("config.json"));
    let expect: [(&str, serde_json::Value); _] = [
        ("hidden_size", 64.into()),
        ("intermediate_size", 172.into()),
        ("num_attention_heads", 8.into()),
        ("num_key_value_heads", 4.into()),
        ("num_hidden_layers", 5.into()),
        ("rms_norm_eps", 1e-5.into()),
        ("rope_theta", 10000.0.into()),
        ("vocab_size", 512.into()),
        ("max_position_embeddings", 512.into()),
        ("tie_word_embeddings", false.into()),
        ("bos_token_id", 1.into()),
        ("eos_token_id", 2.into()),
    ];
    for (key, value) in expect {
        assert_eq!(config[key], value, "config.json {key}");
    }

    let tensors = read_safetensors(&out.join("model.safetensors"));
    assert_eq!(tensors.len(), 48);
    let shapes = [
        ("model.embed_tokens.weight", vec![512, 64]),
        ("lm_head.weight", vec![512, 64]),
        ("model.norm.weight", vec![64]),
        ("model.layers.4.self_attn.q_proj.weight", vec![64, 64]),
        ("model.layers.4.self_attn.k_proj.weight", vec![32, 64]),
        ("model.layers.4.self_attn.v_proj.weight", vec![32, 64]),
        ("model.layers.4.self_attn.o_proj.weight", vec![64, 64]),
        ("model.layers.4.mlp.gate_proj.weight", vec![172, 64]),
        ("model.layers.4.mlp.up_proj.weight", vec![172, 64]),
        ("model.layers.4.mlp.down_proj.weight", vec![64, 172]),
        ("model.layers.4.input_layernorm.weight", vec![64]),
        ("model.layers.4.post_attention_layernorm.weight", vec![64]),
    ];
    for (name, shape) in shapes {
        assert_eq!(tensor(&tensors, name).1, shape, "{name}");
    }
    for i in 0..5 {
        let q = &tensor(
            &tensors,
            &format!("model.layers.{i}.self_attn.q_proj.weight"),
        )
        .2;
        assert_unpermuted(&gguf, &format!("blk.{i}.attn_q.weight"), q, 8, 64);
        let k = &tensor(
            &tensors,
            &format!("model.layers.{i}.self_attn.k_proj.weight"),
        )
        .2;
        assert_unpermuted(&gguf, &format!("blk.{i}.attn_k.weight"), k, 4, 64);
        let v = &tensor(
            &tensors,
            &format!("model.layers.{i}.self_attn.v_proj.weight"),
        )
        .2;
        assert_eq!(
            v,
            &gguf.tensor_f32(&format!("blk.{i}.attn_v.weight")).unwrap()
        );
    }
    assert_eq!(
        tensor(&tensors, "model.embed_tokens.weight").2,
        gguf.tensor_f32("token_embd.weight").unwrap()
    );

    // Expected ids from SentencePiece itself (the sentencepiece 0.2.x Python package, given
    // a BPE ModelProto built from this file's tokens, scores and token types, byte fallback
    // on, dummy prefix on): not from the converter under test.
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let cases: [(&str, &[u32]); 3] = [
        ("Once upon a time", &[403, 407, 261, 378]),
        (
            "Lily's dog didn't bark!",
            &[
                317, 439, 419, 400, 428, 279, 292, 416, 439, 413, 268, 295, 433, 443,
            ],
        ),
        ("Café", &[410, 457, 412, 431, 485]),
    ];
    for (text, ids) in cases {
        let enc = tok.encode(text, false).unwrap();
        assert_eq!(enc.get_ids(), ids, "{text:?}");
        assert_eq!(tok.decode(ids, true).unwrap(), text);
    }
    std::fs::remove_dir_all(&out).unwrap();
}

fn smollm2_path() -> Option<PathBuf> {
    let path = std::env::var_os("IMPLICIT_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    path.is_file().then_some(path)
}

/// SmolLM2-135M-Instruct: GGUF version 3, Q4_1 linear weights, a Q8_0 embedding, byte-level
/// BPE with the "smollm" pre-tokenizer. Also checked outside this test: transformers 4.57.1
/// loads the converted directory and greedy decoding after "The capital of France is" gives
/// " Paris.".
#[test]
fn converts_smollm2() {
    let Some(input) = smollm2_path() else {
        eprintln!(
            "skipping converts_smollm2: no models/SmolLM2-135M-Instruct.Q4_1.gguf \
             (set IMPLICIT_SMOLLM2_GGUF)"
        );
        return;
    };
    let gguf = GgufFile::open(&input).unwrap();
    assert_eq!(gguf.version(), 3);
    assert_eq!(
        gguf.tensor("token_embd.weight").unwrap().ggml_type,
        GgmlType::Q8_0
    );
    assert_eq!(
        gguf.tensor("blk.0.attn_q.weight").unwrap().ggml_type,
        GgmlType::Q4_1
    );

    // Dequantised values against the official gguf Python package (gguf 0.19.0,
    // gguf.quants.dequantize) on the same file: samples and the sum of absolute values.
    let reference: [(&str, [f64; 5], f64); 2] = [
        (
            "token_embd.weight",
            [
                -0.10654449462890625,
                0.032978057861328125,
                -0.20040512084960938,
                -0.09348678588867188,
                0.007411956787109375,
            ],
            2802153.619805813,
        ),
        (
            "blk.0.attn_q.weight",
            [
                -0.0963134765625,
                0.1573486328125,
                -0.0963134765625,
                -0.34619140625,
                -0.138427734375,
            ],
            63395.39872741699,
        ),
    ];
    for (name, samples, abs_sum) in reference {
        let w = gguf.tensor_f32(name).unwrap();
        for (&i, &want) in [0, 1, 31, 32, 1000].iter().zip(&samples) {
            assert_eq!(w[i] as f64, want, "{name}[{i}]");
        }
        let total: f64 = w.iter().map(|&v| (v as f64).abs()).sum();
        assert!(
            (total - abs_sum).abs() < 1e-6 * abs_sum,
            "{name}: {total} vs {abs_sum}"
        );
    }

    let out = temp_path("smollm2");
    let report = convert_gguf(&input, &out).unwrap();
    assert_eq!(
        (
            report.n_tensors,
            report.n_parameters,
            report.vocab_size,
            report.tokenizer.as_str()
        ),
        (272, 134_515_008, 49152, "gpt2")
    );
    let config = read_json(&out.join("config.json"));
    let expect: [(&str, serde_json::Value); _] = [
        ("hidden_size", 576.into()),
        ("intermediate_size", 1536.into()),
        ("num_attention_heads", 9.into()),
        ("num_key_value_heads", 3.into()),
        ("head_dim", 64.into()),
        ("num_hidden_layers", 30.into()),
        ("rms_norm_eps", 1e-5.into()),
        ("rope_theta", 100000.0.into()),
        ("vocab_size", 49152.into()),
        ("max_position_embeddings", 8192.into()),
        ("tie_word_embeddings", true.into()),
        ("bos_token_id", 1.into()),
        ("eos_token_id", 2.into()),
    ];
    for (key, value) in expect {
        assert_eq!(config[key], value, "config.json {key}");
    }

    // Only the header and two tensors are inspected: the file holds 538 MB of f32.
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), 272);
    assert!(
        st.tensor("lm_head.weight").is_err(),
        "tied embeddings have no lm_head"
    );
    assert_eq!(
        st.tensor("model.embed_tokens.weight").unwrap().shape(),
        [49152, 576]
    );
    let f32s = |name: &str| -> Vec<f32> {
        let view = st.tensor(name).unwrap();
        view.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    assert_eq!(
        st.tensor("model.layers.29.self_attn.k_proj.weight")
            .unwrap()
            .shape(),
        [192, 576]
    );
    assert_unpermuted(
        &gguf,
        "blk.29.attn_k.weight",
        &f32s("model.layers.29.self_attn.k_proj.weight"),
        3,
        576,
    );
    assert_unpermuted(
        &gguf,
        "blk.0.attn_q.weight",
        &f32s("model.layers.0.self_attn.q_proj.weight"),
        9,
        576,
    );

    // Expected ids: transformers 4.57.1 building its own tokenizer from this GGUF
    // (AutoTokenizer.from_pretrained(dir, gguf_file=...), which reads tokenizer.ggml.* through
    // the gguf package) gives the same ids for all of these; the first matches the ids other
    // projects record for HF's SmolLM2 tokenizer ([504, 3575, 282, 4649, 314]).
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let cases: [(&str, &[u32]); 5] = [
        ("The capital of France is", &[504, 3575, 282, 4649, 314]),
        ("Hello world! 123", &[19556, 905, 17, 216, 33, 34, 35]),
        ("  multiple   spaces", &[216, 2701, 256, 5600]),
        (
            "Café déjà vu.",
            &[51, 1939, 2756, 32564, 90, 16739, 386, 101, 30],
        ),
        (
            "<|im_start|>user\nHi<|im_end|>\n",
            &[1, 4093, 198, 26843, 2, 198],
        ),
    ];
    for (text, ids) in cases {
        let enc = tok.encode(text, false).unwrap();
        assert_eq!(enc.get_ids(), ids, "{text:?}");
        assert_eq!(tok.decode(ids, false).unwrap(), text);
    }
    let tok_config = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tok_config["eos_token"], "<|im_end|>");
    assert!(tok_config["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
    std::fs::remove_dir_all(&out).unwrap();
}
