//! The weights of a Hugging Face Llama/OLMo checkpoint: their names and shapes, read once for
//! every backend. `W` is how a backend holds a matrix (a CPU tensor, a GPU buffer), `N` how it
//! holds a norm weight (read as f32).

use super::config::{Architecture, ModelConfig};
use crate::bail;
use crate::error::Result;
use crate::io::safetensors::WeightStore;
use crate::tensor::Tensor;
use std::path::Path;

/// One decoder layer. Norm weights are None for OLMo's parameter-free LayerNorm.
pub struct LayerWeights<W, N> {
    pub attn_norm: Option<N>,
    pub q_proj: W,
    pub k_proj: W,
    pub v_proj: W,
    pub o_proj: W,
    pub mlp_norm: Option<N>,
    pub gate_proj: W,
    pub up_proj: W,
    pub down_proj: W,
}

pub struct ModelWeights<W, N> {
    /// `[vocab, hidden]`.
    pub embed_tokens: W,
    pub layers: Vec<LayerWeights<W, N>>,
    pub final_norm: Option<N>,
    /// `[vocab, hidden]`; None when tied to the embedding (tied checkpoints usually omit
    /// lm_head.weight; one that writes it anyway gets its own copy).
    pub lm_head: Option<W>,
}

/// Reads every weight of `config`'s model from `store`, checking each shape, and hands each
/// matrix to `weight` and each norm weight (as f32) to `norm`.
pub fn load_weights<W, N>(
    config: &ModelConfig,
    store: &WeightStore,
    dir: &Path,
    weight: impl Fn(Tensor) -> Result<W>,
    norm: impl Fn(Vec<f32>) -> Result<N>,
) -> Result<ModelWeights<W, N>> {
    let c = config;
    let (d, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let q_dim = c.num_heads * c.head_dim;
    let kv_dim = c.num_kv_heads * c.head_dim;
    let get = |name: &str, shape: &[usize]| weight(store.get(name, shape, dir)?);
    let llama = c.arch == Architecture::Llama;
    let get_norm = |name: String| -> Result<Option<N>> {
        if llama {
            Ok(Some(norm(store.get(&name, &[d], dir)?.to_f32_vec())?))
        } else {
            Ok(None)
        }
    };
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let p = format!("model.layers.{i}");
        layers.push(LayerWeights {
            attn_norm: get_norm(format!("{p}.input_layernorm.weight"))?,
            q_proj: get(&format!("{p}.self_attn.q_proj.weight"), &[q_dim, d])?,
            k_proj: get(&format!("{p}.self_attn.k_proj.weight"), &[kv_dim, d])?,
            v_proj: get(&format!("{p}.self_attn.v_proj.weight"), &[kv_dim, d])?,
            o_proj: get(&format!("{p}.self_attn.o_proj.weight"), &[d, q_dim])?,
            mlp_norm: get_norm(format!("{p}.post_attention_layernorm.weight"))?,
            gate_proj: get(&format!("{p}.mlp.gate_proj.weight"), &[f, d])?,
            up_proj: get(&format!("{p}.mlp.up_proj.weight"), &[f, d])?,
            down_proj: get(&format!("{p}.mlp.down_proj.weight"), &[d, f])?,
        });
    }
    let embed_tokens = get("model.embed_tokens.weight", &[v, d])?;
    let lm_head = if store.contains("lm_head.weight") {
        Some(get("lm_head.weight", &[v, d])?)
    } else if c.tie_word_embeddings {
        None
    } else {
        bail!(
            "{}: lm_head.weight is missing and tie_word_embeddings is false",
            dir.display()
        );
    };
    Ok(ModelWeights {
        embed_tokens,
        layers,
        final_norm: get_norm("model.norm.weight".into())?,
        lm_head,
    })
}
