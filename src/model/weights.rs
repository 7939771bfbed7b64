//! The weights of a Hugging Face Llama/OLMo checkpoint: their names and shapes, read once for
//! every backend. `W` is how a backend holds a matrix (a CPU tensor, a GPU buffer), `N` how it
//! holds a norm weight (read as f32).
//!
//! Nothing is silently wrong: a checkpoint tensor that config.json does not use (a layer past
//! `num_hidden_layers`) is an error, as is a weight holding NaN or infinity (every tensor is
//! scanned; set IMPLICIT_ALLOW_NONFINITE_WEIGHTS=1 to load such a checkpoint with a warning).

use super::config::{Architecture, ModelConfig};
use crate::bail;
use crate::error::Result;
use crate::io::safetensors::WeightStore;
use crate::tensor::{Elems, Tensor};
use std::cell::RefCell;
use std::path::Path;

/// Checkpoint tensors that no model here reads and that carry nothing a model needs: older
/// Hugging Face Llama checkpoints save RoPE's inverse frequencies (recomputed from rope_theta).
const IGNORABLE_SUFFIXES: &[&str] = &[".rotary_emb.inv_freq"];

/// The environment variable that turns non-finite weights from an error into a warning.
pub const ALLOW_NONFINITE_ENV: &str = "IMPLICIT_ALLOW_NONFINITE_WEIGHTS";

/// How many elements are NaN or infinite: those whose exponent bits are all ones, in every
/// format. Counted over the raw bits in blocks with narrow counters, which the compiler
/// vectorises (see the measurement in the tests).
pub fn count_non_finite(elems: Elems<'_>) -> usize {
    fn count<T: bytemuck::Pod + Into<u32>>(bits: &[T], exponent: u32) -> usize {
        bits.chunks(1 << 12)
            .map(|c| {
                c.iter()
                    .map(|&b| u32::from(b.into() & exponent == exponent))
                    .sum::<u32>() as usize
            })
            .sum()
    }
    match elems {
        Elems::F32(s) => count::<u32>(bytemuck::cast_slice(s), 0x7f80_0000),
        Elems::BF16(s) => count::<u16>(bytemuck::cast_slice(s), 0x7f80),
        Elems::F16(s) => count::<u16>(bytemuck::cast_slice(s), 0x7c00),
    }
}

/// An error (or with [`ALLOW_NONFINITE_ENV`] set, a warning) when `tensor` holds non-finite
/// values.
pub(crate) fn check_finite(tensor: &Tensor, name: &str, dir: &Path) -> Result<()> {
    let bad = count_non_finite(tensor.elems()?);
    if bad == 0 {
        return Ok(());
    }
    let what = format!(
        "{}: tensor {name} holds {bad} non-finite values (NaN or infinity) of {}",
        dir.display(),
        tensor.numel()
    );
    if std::env::var(ALLOW_NONFINITE_ENV).is_ok_and(|v| v == "1") {
        eprintln!("warning: {what} (loaded anyway: {ALLOW_NONFINITE_ENV}=1)");
        return Ok(());
    }
    bail!("{what}; a corrupt checkpoint? ({ALLOW_NONFINITE_ENV}=1 loads it anyway)")
}

/// An error naming the first checkpoint tensor (in name order) that the model did not read.
pub(crate) fn check_all_used(
    store: &WeightStore,
    used: &[String],
    config: &ModelConfig,
    dir: &Path,
) -> Result<()> {
    let mut unused: Vec<&str> = store
        .names()
        .filter(|n| !used.iter().any(|u| u == n))
        .filter(|n| !IGNORABLE_SUFFIXES.iter().any(|s| n.ends_with(s)))
        .collect();
    unused.sort_unstable();
    if let Some(first) = unused.first() {
        bail!(
            "{}: tensor {first} is not used by config.json (num_hidden_layers {}, {:?}){}; does \
             config.json belong to these weights?",
            dir.display(),
            config.num_layers,
            config.arch,
            match unused.len() {
                1 => String::new(),
                n => format!(", nor are {} more tensors", n - 1),
            }
        );
    }
    Ok(())
}

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
    let used = RefCell::new(Vec::new());
    let fetch = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let t = store.get(name, shape, dir)?;
        check_finite(&t, name, dir)?;
        used.borrow_mut().push(name.to_string());
        Ok(t)
    };
    let get = |name: &str, shape: &[usize]| weight(fetch(name, shape)?);
    let llama = c.arch == Architecture::Llama;
    let get_norm = |name: String| -> Result<Option<N>> {
        if llama {
            Ok(Some(norm(fetch(&name, &[d])?.to_f32_vec())?))
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
    let final_norm = get_norm("model.norm.weight".into())?;
    check_all_used(store, &used.into_inner(), c, dir)?;
    Ok(ModelWeights {
        embed_tokens,
        layers,
        final_norm,
        lm_head,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    #[test]
    fn non_finite_values_are_counted_in_every_dtype() {
        let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN];
        let finite = [0.0, -0.0, 1.5, -3.0, 1e-40, 6.0e4, -6.0e4];
        let mut x: Vec<f32> = finite.to_vec();
        x.extend(specials);
        assert_eq!(count_non_finite(Elems::F32(&x)), 4);
        assert_eq!(count_non_finite(Elems::F32(&[f32::MAX, f32::MIN])), 0);
        let b: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        assert_eq!(count_non_finite(Elems::BF16(&b)), 4);
        assert_eq!(count_non_finite(Elems::BF16(&[bf16::MAX, bf16::MIN])), 0);
        let h: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
        assert_eq!(count_non_finite(Elems::F16(&h)), 4);
        assert_eq!(count_non_finite(Elems::F16(&[f16::MAX, f16::MIN])), 0);
        // What the scan costs: 512 MiB of bf16 (the rate printed is per byte of weights).
        let big = vec![bf16::from_f32(0.5); 256 << 20];
        let t0 = std::time::Instant::now();
        assert_eq!(count_non_finite(Elems::BF16(&big)), 0);
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "scanned 512 MiB of bf16 in {secs:.3}s: {:.1} GB/s",
            (512u64 << 20) as f64 / secs / 1e9
        );
    }
}
