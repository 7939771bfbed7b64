//! The transformer as a differentiable graph on the autograd tape, for training: the same
//! computation as `transformer.rs`, over packed sequences with no KV cache.

use super::config::{Architecture, ModelConfig};
use crate::autograd::{AttentionSpec, Tape, Var};
use crate::bail;
use crate::error::Result;
use crate::io::safetensors::WeightStore;
use crate::tensor::Real;
use std::path::Path;
use std::sync::Arc;

/// A named parameter and its values.
#[derive(Clone, Debug)]
pub struct Param<T> {
    pub name: String,
    pub shape: Vec<usize>,
    pub value: Arc<Vec<T>>,
}

/// One training sequence: token ids, and which tokens carry loss (response tokens and EOS).
#[derive(Clone, Copy, Debug)]
pub struct TrainSequence<'a> {
    pub ids: &'a [u32],
    pub loss_mask: &'a [bool],
}

/// Parameters in a fixed order (Hugging Face names), with the model's config.
pub struct TrainModel<T: Real> {
    pub config: ModelConfig,
    pub params: Vec<Param<T>>,
}

/// Names and shapes of every parameter of `config`, in a fixed order: the embedding, each layer's
/// weights, the final norm, the LM head (absent when tied).
pub fn parameter_layout(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (d, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let llama = c.arch == Architecture::Llama;
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, d])];
    for i in 0..c.num_layers {
        let p = format!("model.layers.{i}");
        if llama {
            out.push((format!("{p}.input_layernorm.weight"), vec![d]));
        }
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, d]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, d]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, d]));
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![d, q]));
        if llama {
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
        }
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![f, d]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![f, d]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![d, f]));
    }
    if llama {
        out.push(("model.norm.weight".to_string(), vec![d]));
    }
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, d]));
    }
    out
}

/// Every parameter of the checkpoint in `dir`, in `parameter_layout` order, as f32.
pub fn load_parameter_values(dir: &Path, config: &ModelConfig) -> Result<Vec<Vec<f32>>> {
    let store = WeightStore::open(dir)?;
    let layout = parameter_layout(config);
    let values = layout
        .iter()
        .map(|(name, shape)| {
            let t = store.get(name, shape, dir)?;
            super::weights::check_finite(&t, name, dir)?;
            Ok(t.to_f32_vec())
        })
        .collect::<Result<Vec<_>>>()?;
    // A tied checkpoint may still carry its own lm_head.weight, which training ties anyway.
    let mut used: Vec<String> = layout.into_iter().map(|(name, _)| name).collect();
    used.push("lm_head.weight".into());
    super::weights::check_all_used(&store, &used, config, dir)?;
    Ok(values)
}

impl<T: Real> TrainModel<T> {
    /// Loads the parameters of a Hugging Face model folder, converted to `T`.
    pub fn load(dir: &Path) -> Result<TrainModel<T>> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let values = load_parameter_values(dir, &config)?
            .into_iter()
            .map(|v| v.into_iter().map(|x| T::from_f64(x as f64)).collect())
            .collect();
        Self::from_values(config, values)
    }

    /// A model from given parameter values (in `parameter_layout` order).
    pub fn from_values(config: ModelConfig, values: Vec<Vec<T>>) -> Result<TrainModel<T>> {
        Self::from_shared(config, values.into_iter().map(Arc::new).collect())
    }

    /// A model over shared parameter values (in `parameter_layout` order), without copying them.
    pub fn from_shared(config: ModelConfig, values: Vec<Arc<Vec<T>>>) -> Result<TrainModel<T>> {
        let layout = parameter_layout(&config);
        if values.len() != layout.len() {
            bail!(
                "{} parameter tensors given, the model has {}",
                values.len(),
                layout.len()
            );
        }
        let mut params = Vec::new();
        for ((name, shape), value) in layout.into_iter().zip(values) {
            if value.len() != shape.iter().product::<usize>() {
                bail!(
                    "parameter {name} of shape {shape:?} given {} values",
                    value.len()
                );
            }
            params.push(Param { name, shape, value });
        }
        Ok(TrainModel { config, params })
    }

    /// Puts every parameter on `tape` as a leaf needing a gradient; returns their variables.
    pub fn bind(&self, tape: &mut Tape<T>) -> Vec<Var> {
        self.params
            .iter()
            .map(|p| tape.leaf(p.value.clone(), &p.shape, true))
            .collect()
    }

    /// The training loss of `batch` on `tape`: each sequence's mean next-token cross-entropy over
    /// its loss-carrying tokens (the paper's per-example mean), summed and multiplied by `scale`
    /// (1 / effective batch size, so that accumulated micro-batches average). Sequences with
    /// no loss token add nothing. `vars` come from `bind`.
    pub fn loss(
        &self,
        tape: &mut Tape<T>,
        vars: &[Var],
        batch: &[TrainSequence],
        scale: f64,
    ) -> Result<Var> {
        let c = &self.config;
        let (d, hd) = (c.hidden_size, c.head_dim);
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut segments = Vec::new();
        // Row r of the packed batch predicts the token after it: (row, target, weight).
        let (mut rows, mut targets, mut weights) = (Vec::new(), Vec::new(), Vec::new());
        for seq in batch {
            if seq.ids.len() != seq.loss_mask.len() {
                bail!(
                    "sequence of {} tokens has a loss mask of {}",
                    seq.ids.len(),
                    seq.loss_mask.len()
                );
            }
            if let Some(&bad) = seq.ids.iter().find(|&&t| t as usize >= c.vocab_size) {
                bail!(
                    "token id {bad} is outside the vocabulary of {} tokens",
                    c.vocab_size
                );
            }
            let start = ids.len();
            let counted = seq.loss_mask.iter().skip(1).filter(|&&m| m).count();
            for t in 1..seq.ids.len() {
                if seq.loss_mask[t] {
                    rows.push((start + t - 1) as u32);
                    targets.push(seq.ids[t]);
                    weights.push(scale / counted as f64);
                }
            }
            ids.extend_from_slice(seq.ids);
            positions.extend(0..seq.ids.len());
            segments.push(seq.ids.len());
        }
        let llama = c.arch == Architecture::Llama;
        let eps = c.norm_eps as f64;
        let mut p = vars.iter().copied();
        let mut next = || p.next().expect("parameters in layout order");
        let norm = |tape: &mut Tape<T>, x: Var, w: Option<Var>| match w {
            Some(w) => tape.rms_norm(x, w, eps),
            None => tape.layer_norm(x, eps),
        };

        let embed = next();
        let mut x = tape.embedding(embed, &ids);
        for _ in 0..c.num_layers {
            let attn_norm = llama.then(&mut next);
            let (wq, wk, wv, wo) = (next(), next(), next(), next());
            let mlp_norm = llama.then(&mut next);
            let (wg, wu, wdn) = (next(), next(), next());

            let h = norm(tape, x, attn_norm);
            let (mut q, mut k, mut v) =
                (tape.linear(h, wq), tape.linear(h, wk), tape.linear(h, wv));
            if let Some(clip) = c.clip_qkv {
                let clip = T::from_f64(clip as f64);
                (q, k, v) = (
                    tape.clamp(q, clip),
                    tape.clamp(k, clip),
                    tape.clamp(v, clip),
                );
            }
            let q = tape.rope(q, &positions, c.rope_spec(c.num_heads));
            let k = tape.rope(k, &positions, c.rope_spec(c.num_kv_heads));
            let spec = AttentionSpec {
                segments: segments.clone(),
                heads: c.num_heads,
                kv_heads: c.num_kv_heads,
                head_dim: hd,
            };
            let a = tape.attention(q, k, v, spec);
            let o = tape.linear(a, wo);
            x = tape.add(x, o);

            let h = norm(tape, x, mlp_norm);
            let (g, u) = (tape.linear(h, wg), tape.linear(h, wu));
            let act = tape.swiglu(g, u);
            let down = tape.linear(act, wdn);
            x = tape.add(x, down);
        }
        let final_norm = llama.then(&mut next);
        let lm_head = if c.tie_word_embeddings { embed } else { next() };
        // Only rows that predict a loss-carrying token reach the norm and the LM head: the
        // prompt's rows never materialise vocabulary-sized logits.
        let x = tape.embedding(x, &rows);
        debug_assert_eq!(tape.shape(x), &[rows.len(), d]);
        let h = norm(tape, x, final_norm);
        let logits = tape.linear(h, lm_head);
        Ok(tape.cross_entropy(logits, &targets, &weights))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::gradcheck::{check, rand_vec};

    /// The whole model's gradient against finite differences in f64: a tiny Llama with
    /// grouped-query heads and an untied head, and a tiny OLMo with clip_qkv and tied embeddings.
    #[test]
    fn whole_model_matches_finite_differences() {
        for (model_type, extra) in [
            (
                "llama",
                r#""num_key_value_heads": 1, "tie_word_embeddings": false"#,
            ),
            ("olmo", r#""clip_qkv": 0.9, "tie_word_embeddings": true"#),
        ] {
            let config = ModelConfig::from_json(&format!(
                r#"{{"model_type": "{model_type}", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12,
                "num_hidden_layers": 2, "num_attention_heads": 2, {extra}}}"#
            ))
            .unwrap();
            let layout = parameter_layout(&config);
            let inputs: Vec<(Vec<f64>, Vec<usize>)> = layout
                .iter()
                .enumerate()
                .map(|(i, (_, shape))| {
                    (
                        rand_vec(shape.iter().product(), 100 + i as u64),
                        shape.clone(),
                    )
                })
                .collect();
            let ids = [1u32, 5, 7, 2, 9, 3, 10];
            let mask = [false, false, true, true, false, true, true];
            let ids2 = [4u32, 0, 6, 8];
            let mask2 = [false, true, true, true];
            check(model_type, &inputs, |tape, vars| {
                let model = TrainModel::from_values(
                    config.clone(),
                    inputs.iter().map(|(v, _)| v.clone()).collect(),
                )
                .unwrap();
                let batch = [
                    TrainSequence {
                        ids: &ids,
                        loss_mask: &mask,
                    },
                    TrainSequence {
                        ids: &ids2,
                        loss_mask: &mask2,
                    },
                ];
                model.loss(tape, vars, &batch, 0.5).unwrap()
            });
        }
    }
}
