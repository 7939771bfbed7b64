//! Model shapes for `implicit init`: the preset table (Llama-2 7B/13B, OLMo-7B, SmolLM2-135M
//! and two tiny test models) as Hugging Face config.json values, `--config` resolution (a
//! preset name or a config.json path), and `complete_config`, which fills in every field
//! `ModelConfig::from_json` reads so the written config.json is self-describing. Writing the
//! folder itself is `model::init`.

use super::config::{Architecture, ModelConfig};
use super::train::parameter_layout;
use crate::bail;
use crate::error::{Context, Result};
use serde_json::{json, Value};
use std::path::Path;

/// The preset names `implicit init --config` accepts, in the order help lists them.
pub const PRESET_NAMES: &[&str] = &[
    "llama2-7b",
    "llama2-13b",
    "olmo-7b",
    "smollm2-135m",
    "tiny-llama",
    "tiny-olmo",
];

/// The Hugging Face config.json of preset `name` (before `complete_config`).
pub fn preset(name: &str) -> Result<Value> {
    let llama2 = |hidden: usize, inter: usize, layers: usize, heads: usize| {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "bos_token_id": 1,
            "eos_token_id": 2,
            "hidden_act": "silu",
            "hidden_size": hidden,
            "initializer_range": 0.02,
            "intermediate_size": inter,
            "max_position_embeddings": 4096,
            "model_type": "llama",
            "num_attention_heads": heads,
            "num_hidden_layers": layers,
            "num_key_value_heads": heads,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-5,
            "rope_scaling": null,
            "rope_theta": 10000.0,
            "tie_word_embeddings": false,
            "use_cache": true,
            "vocab_size": 32000
        })
    };
    Ok(match name {
        // meta-llama/Llama-2-7b-hf and meta-llama/Llama-2-13b-hf.
        "llama2-7b" => llama2(4096, 11008, 32, 32),
        "llama2-13b" => llama2(5120, 13824, 40, 40),
        // allenai/OLMo-7B-hf (OLMo-7B-Feb2024, the paper's OLMo): untied, no clip_qkv, the
        // vocabulary of 50280 tokens padded to 50304 embedding rows.
        "olmo-7b" => json!({
            "architectures": ["OlmoForCausalLM"],
            "attention_bias": false,
            "attention_dropout": 0.0,
            "clip_qkv": null,
            "eos_token_id": 50279,
            "hidden_act": "silu",
            "hidden_size": 4096,
            "initializer_range": 0.02,
            "intermediate_size": 11008,
            "max_position_embeddings": 2048,
            "model_type": "olmo",
            "num_attention_heads": 32,
            "num_hidden_layers": 32,
            "num_key_value_heads": 32,
            "pad_token_id": 1,
            "pretraining_tp": 1,
            "rope_scaling": null,
            "rope_theta": 10000.0,
            "tie_word_embeddings": false,
            "use_cache": true,
            "vocab_size": 50304
        }),
        // HuggingFaceTB/SmolLM2-135M (its config's initializer_range is 1/24; 0.02 here, as
        // for every preset).
        "smollm2-135m" => json!({
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": false,
            "attention_dropout": 0.0,
            "bos_token_id": 0,
            "eos_token_id": 0,
            "hidden_act": "silu",
            "hidden_size": 576,
            "initializer_range": 0.02,
            "intermediate_size": 1536,
            "max_position_embeddings": 8192,
            "mlp_bias": false,
            "model_type": "llama",
            "num_attention_heads": 9,
            "num_hidden_layers": 30,
            "num_key_value_heads": 3,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-5,
            "rope_interleaved": false,
            "rope_scaling": null,
            "rope_theta": 100000.0,
            "tie_word_embeddings": true,
            "use_cache": true,
            "vocab_size": 49152
        }),
        // For tests: grouped-query attention, untied head (about 316K parameters).
        "tiny-llama" => json!({
            "architectures": ["LlamaForCausalLM"],
            "bos_token_id": 1,
            "eos_token_id": 2,
            "hidden_act": "silu",
            "hidden_size": 64,
            "initializer_range": 0.02,
            "intermediate_size": 176,
            "max_position_embeddings": 256,
            "model_type": "llama",
            "num_attention_heads": 4,
            "num_hidden_layers": 4,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5,
            "rope_scaling": null,
            "rope_theta": 10000.0,
            "tie_word_embeddings": false,
            "vocab_size": 1024
        }),
        // For tests: OLMo's parameter-free LayerNorm, clip_qkv, tied embeddings (about 250K).
        "tiny-olmo" => json!({
            "architectures": ["OlmoForCausalLM"],
            "clip_qkv": 8.0,
            "eos_token_id": 2,
            "hidden_act": "silu",
            "hidden_size": 64,
            "initializer_range": 0.02,
            "intermediate_size": 176,
            "max_position_embeddings": 256,
            "model_type": "olmo",
            "num_attention_heads": 4,
            "num_hidden_layers": 4,
            "num_key_value_heads": 4,
            "pad_token_id": 1,
            "rope_scaling": null,
            "rope_theta": 10000.0,
            "tie_word_embeddings": true,
            "vocab_size": 1024
        }),
        other => bail!(
            "unknown preset {other:?} (known presets: {}; or give a path to a config.json)",
            PRESET_NAMES.join(", ")
        ),
    })
}

/// A `--config` argument: a preset name, or a path to a config.json (or to a folder holding
/// one). Returns a label for messages and the config (before `complete_config`).
pub fn resolve_config(spec: &str) -> Result<(String, Value)> {
    if PRESET_NAMES.contains(&spec) {
        return Ok((spec.to_string(), preset(spec)?));
    }
    let path = Path::new(spec);
    let looks_like_path = spec.contains(std::path::MAIN_SEPARATOR)
        || spec.contains('/')
        || spec.ends_with(".json")
        || path.exists();
    if !looks_like_path {
        preset(spec)?;
    }
    let file = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("{}: cannot read config", file.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", file.display()))?;
    if !value.is_object() {
        bail!("{}: config.json must be a JSON object", file.display());
    }
    Ok((file.display().to_string(), value))
}

/// Weight dtype of the written safetensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightDtype {
    Bf16,
    F32,
}

impl WeightDtype {
    /// Bytes per element.
    pub(crate) fn size(self) -> usize {
        match self {
            WeightDtype::Bf16 => 2,
            WeightDtype::F32 => 4,
        }
    }
    /// The safetensors header's `dtype`.
    pub(crate) fn safetensors_name(self) -> &'static str {
        match self {
            WeightDtype::Bf16 => "BF16",
            WeightDtype::F32 => "F32",
        }
    }
    /// config.json's `torch_dtype`.
    pub fn torch_name(self) -> &'static str {
        match self {
            WeightDtype::Bf16 => "bfloat16",
            WeightDtype::F32 => "float32",
        }
    }
}

/// Completes a config.json for `dtype`: validates it through `ModelConfig::from_json`, adds
/// `architectures` and every field `from_json` reads that is missing (with the default it
/// assumes), `initializer_range` (0.02) when missing, and sets `torch_dtype`. Returns the
/// completed JSON and the parsed config.
pub fn complete_config(config: &Value, dtype: WeightDtype) -> Result<(Value, ModelConfig)> {
    let Some(obj) = config.as_object() else {
        bail!("config.json must be a JSON object");
    };
    let parsed = ModelConfig::from_json(&config.to_string())?;
    let mut out = obj.clone();
    let arch = match parsed.arch {
        Architecture::Llama => "LlamaForCausalLM",
        Architecture::Olmo => "OlmoForCausalLM",
    };
    let defaults: [(&str, Value); 16] = [
        ("architectures", json!([arch])),
        ("num_key_value_heads", json!(parsed.num_kv_heads)),
        ("head_dim", json!(parsed.head_dim)),
        ("rms_norm_eps", json!(1e-5)),
        ("rope_theta", json!(10000.0)),
        ("rope_interleaved", json!(false)),
        ("rope_scaling", Value::Null),
        (
            "max_position_embeddings",
            json!(parsed.max_position_embeddings),
        ),
        ("tie_word_embeddings", json!(parsed.tie_word_embeddings)),
        ("clip_qkv", Value::Null),
        ("attention_bias", json!(false)),
        ("mlp_bias", json!(false)),
        ("hidden_act", json!("silu")),
        ("bos_token_id", Value::Null),
        ("eos_token_id", Value::Null),
        ("initializer_range", json!(0.02)),
    ];
    for (key, value) in defaults {
        out.entry(key).or_insert(value);
    }
    out.insert("torch_dtype".into(), json!(dtype.torch_name()));
    if out.contains_key("dtype") {
        // transformers >= 4.56 writes `dtype` instead of `torch_dtype`.
        out.insert("dtype".into(), json!(dtype.torch_name()));
    }
    let out = Value::Object(out);
    // The completed file must read back as the same model.
    let again = ModelConfig::from_json(&out.to_string())?;
    if parameter_layout(&again) != parameter_layout(&parsed) {
        bail!("completed config.json changes the model's shape (internal error)");
    }
    Ok((out, parsed))
}
