//! config.json of a Hugging Face `llama` or `olmo` model.

use crate::bail;
use crate::error::{Context, Result};
use serde::Deserialize;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// Llama-2 and every Llama-architecture model: RMSNorm with weights.
    Llama,
    /// OLMo-7B-Feb2024 (`olmo`): LayerNorm without parameters, optional clip_qkv.
    Olmo,
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
    /// Meta/GGUF interleaved-pair RoPE instead of Hugging Face's half rotation.
    pub rope_interleaved: bool,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub clip_qkv: Option<f32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// The fields of config.json this engine reads; unknown fields are ignored.
#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f32>,
    rope_theta: Option<f32>,
    #[serde(default)]
    rope_interleaved: bool,
    rope_scaling: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    clip_qkv: Option<f32>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    hidden_act: Option<String>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<serde_json::Value>,
}

impl ModelConfig {
    /// RoPE as this model applies it to `heads` heads of its queries or keys.
    pub fn rope_spec(&self, heads: usize) -> crate::backend::cpu::ops::RopeSpec {
        use crate::backend::cpu::ops::{RopeLayout, RopeSpec};
        RopeSpec {
            heads,
            head_dim: self.head_dim,
            base: self.rope_theta,
            layout: if self.rope_interleaved {
                RopeLayout::Interleaved
            } else {
                RopeLayout::HalfRotation
            },
        }
    }

    pub fn from_file(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        ModelConfig::from_json(&text).with_context(|| path.display().to_string())
    }

    pub fn from_json(text: &str) -> Result<ModelConfig> {
        let raw: RawConfig = serde_json::from_str(text).context("invalid config.json")?;
        let arch = match raw.model_type.as_deref() {
            Some("llama") => Architecture::Llama,
            Some("olmo") => Architecture::Olmo,
            Some(other) => bail!("unknown model type {other:?} (supported: \"llama\", \"olmo\")"),
            None => bail!("config.json has no model_type (supported: \"llama\", \"olmo\")"),
        };
        if let Some(scaling) = raw.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            bail!("rope_scaling {scaling} is not supported");
        }
        if raw.attention_bias || raw.mlp_bias {
            bail!("attention_bias / mlp_bias are not supported");
        }
        if let Some(act) = raw.hidden_act.as_deref().filter(|a| *a != "silu") {
            bail!("hidden_act {act:?} is not supported (only \"silu\")");
        }
        for (field, n) in [
            ("vocab_size", raw.vocab_size),
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("num_attention_heads", raw.num_attention_heads),
            ("num_key_value_heads", raw.num_key_value_heads.unwrap_or(1)),
            ("head_dim", raw.head_dim.unwrap_or(2)),
            (
                "max_position_embeddings",
                raw.max_position_embeddings.unwrap_or(1),
            ),
        ] {
            if n == 0 {
                bail!("{field} is 0; it must be at least 1");
            }
        }
        let heads = raw.num_attention_heads;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        if !heads.is_multiple_of(kv_heads) {
            bail!(
                "num_attention_heads {heads} must be a multiple of num_key_value_heads {kv_heads}"
            );
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if raw.hidden_size.is_multiple_of(heads) => raw.hidden_size / heads,
            None => bail!(
                "hidden_size {} is not a multiple of num_attention_heads {heads} (and \
                 no head_dim is given)",
                raw.hidden_size
            ),
        };
        if !head_dim.is_multiple_of(2) {
            bail!("head dimension {head_dim} must be even (RoPE rotates pairs)");
        }
        let positive = |field: &str, x: Option<f32>| -> Result<()> {
            match x {
                Some(x) if !(x.is_finite() && x > 0.0) => {
                    bail!("{field} {x} must be a finite number more than 0")
                }
                _ => Ok(()),
            }
        };
        positive("rms_norm_eps", raw.rms_norm_eps)?;
        positive("rope_theta", raw.rope_theta)?;
        positive("clip_qkv", raw.clip_qkv)?;
        let eos_token_ids = match raw.eos_token_id {
            None | Some(serde_json::Value::Null) => vec![],
            Some(serde_json::Value::Number(n)) => vec![n
                .as_u64()
                .context("eos_token_id must be a non-negative integer")?
                as u32],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|v| v.as_u64().map(|x| x as u32).context("eos_token_id"))
                .collect::<Result<_>>()?,
            Some(v) => bail!("eos_token_id {v} is neither a number nor a list"),
        };
        let ids = raw.bos_token_id.iter().map(|&b| ("bos_token_id", b));
        for (field, id) in ids.chain(eos_token_ids.iter().map(|&e| ("eos_token_id", e))) {
            if id as usize >= raw.vocab_size {
                bail!(
                    "{field} {id} is outside the vocabulary (vocab_size {})",
                    raw.vocab_size
                );
            }
        }
        Ok(ModelConfig {
            arch,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            // OLMo's LayerNorm uses a fixed eps of 1e-5 (HF OlmoLayerNorm).
            norm_eps: raw.rms_norm_eps.unwrap_or(1e-5),
            rope_theta: raw.rope_theta.unwrap_or(10000.0),
            rope_interleaved: raw.rope_interleaved,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            clip_qkv: raw.clip_qkv,
            bos_token_id: raw.bos_token_id,
            eos_token_ids,
        })
    }

    /// Parameters in the model (tied embeddings counted once).
    pub fn num_parameters(&self) -> usize {
        let (d, f, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let norms = if self.arch == Architecture::Llama {
            2 * d
        } else {
            0
        };
        let layer = d * q + 2 * d * kv + q * d + 3 * d * f + norms;
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        v * d
            + self.num_layers * layer
            + head
            + if self.arch == Architecture::Llama {
                d
            } else {
                0
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let c = ModelConfig::from_json(
            r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"eos_token_id":[2,3]}"#,
        )
        .unwrap();
        assert_eq!(
            (c.head_dim, c.num_kv_heads, c.eos_token_ids.clone()),
            (2, 2, vec![2, 3])
        );
        let e = ModelConfig::from_json(
            r#"{"model_type":"gpt2","vocab_size":1,"hidden_size":1,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":1}"#,
        );
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("unknown model type \"gpt2\""));
    }

    #[test]
    fn every_field_is_checked_and_named() {
        let base = r#""model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":2,"num_attention_heads":4"#;
        let cases = [
            (r#","rope_theta":-1"#, "rope_theta -1"),
            (r#","rope_theta":0"#, "rope_theta 0"),
            (r#","rope_theta":1e40"#, "rope_theta inf"),
            (r#","rms_norm_eps":-1e-5"#, "rms_norm_eps"),
            (r#","clip_qkv":0"#, "clip_qkv 0"),
            (
                r#","num_key_value_heads":3"#,
                "multiple of num_key_value_heads 3",
            ),
            (r#","num_key_value_heads":0"#, "num_key_value_heads is 0"),
            (r#","head_dim":3"#, "head dimension 3"),
            (
                r#","max_position_embeddings":0"#,
                "max_position_embeddings is 0",
            ),
            (r#","bos_token_id":10"#, "bos_token_id 10 is outside"),
            (r#","eos_token_id":[2,12]"#, "eos_token_id 12 is outside"),
        ];
        for (extra, want) in cases {
            let e = ModelConfig::from_json(&format!("{{{base}{extra}}}")).unwrap_err();
            assert!(e.to_string().contains(want), "{extra}: {e}");
        }
        let zero = base.replace(r#""num_hidden_layers":2"#, r#""num_hidden_layers":0"#);
        let e = ModelConfig::from_json(&format!("{{{zero}}}")).unwrap_err();
        assert!(e.to_string().contains("num_hidden_layers is 0"), "{e}");
        let odd = base.replace(r#""hidden_size":8"#, r#""hidden_size":9"#);
        let e = ModelConfig::from_json(&format!("{{{odd}}}")).unwrap_err();
        assert!(
            e.to_string().contains("hidden_size 9 is not a multiple"),
            "{e}"
        );
        assert!(ModelConfig::from_json(&format!("{{{base}}}")).is_ok());
    }
}
