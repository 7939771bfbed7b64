//! The paper's Figure 5 (Section 5.2, open_instruct/plot_embeds.py): for each test instruction
//! a single-task model answered, x = the mean cosine similarity of the instruction to the
//! finetuning set's instructions, y = the mean similarity of the model's response to the
//! finetuning set's responses minus its mean similarity to LIMA's responses. Embeddings are
//! mean-pooled, L2-normalised last hidden states of the configured embedding model (the paper
//! used nomic-embed-text-v1; any model folder works here).
//!
//! The mean of dot products with a set equals the dot product with the set's mean embedding,
//! so each set is embedded once and averaged.

use crate::data::read_messages_jsonl;
use crate::error::{Context, Result};
use crate::eval::write_json_atomic;
use crate::generate::instructions::read_model_outputs;
use crate::io::tokenizer::Tokenizer;
use crate::model::lm::{embed, LanguageModel};
use serde_json::{json, Value};
use std::path::Path;

/// Texts are embedded from at most this many tokens (cost bound on the CPU).
const MAX_TOKENS: usize = 256;

/// An embedding model (on any device) and its tokenizer.
pub struct Embedder<'t, M> {
    pub model: M,
    pub tok: &'t Tokenizer,
}

impl<M: LanguageModel> Embedder<'_, M> {
    fn embed(&mut self, text: &str) -> Result<Vec<f32>> {
        let mut ids = self.tok.encode_prompt(text)?;
        ids.truncate(MAX_TOKENS);
        if ids.is_empty() {
            ids.push(self.tok.eos.first().copied().unwrap_or(0));
        }
        embed(&mut self.model, &ids)
    }

    /// The mean embedding of the (instruction, response) pairs of a messages JSONL file.
    fn mean_pair(
        &mut self,
        path: &Path,
        limit: Option<usize>,
    ) -> Result<(Vec<f32>, Vec<f32>, usize)> {
        let mut rows = read_messages_jsonl(path)?;
        if let Some(n) = limit {
            rows.truncate(n);
        }
        let d = self.model.config().hidden_size;
        let (mut ins, mut out) = (vec![0.0f64; d], vec![0.0f64; d]);
        let mut n = 0;
        for ex in &rows {
            let user = ex.messages.iter().find(|m| m.role == "user");
            let asst = ex.messages.iter().find(|m| m.role == "assistant");
            let (Some(u), Some(a)) = (user, asst) else {
                continue;
            };
            for (acc, text) in [(&mut ins, &u.content), (&mut out, &a.content)] {
                for (s, x) in acc.iter_mut().zip(self.embed(text)?) {
                    *s += x as f64;
                }
            }
            n += 1;
        }
        let scale = 1.0 / n.max(1) as f64;
        let mean = |v: Vec<f64>| v.iter().map(|x| (x * scale) as f32).collect();
        Ok((mean(ins), mean(out), n))
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Pearson correlation of two equally long samples (NaN under two points or no spread).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

/// Computes the points for one single-task model's test outputs with `e` (the model loaded
/// from the folder `embedder`) and writes them to `out`.
pub fn similarity_report<M: LanguageModel>(
    e: &mut Embedder<'_, M>,
    embedder: &Path,
    outputs: &Path,
    task_data: &Path,
    lima: &Path,
    limit: Option<usize>,
    out: &Path,
) -> Result<Value> {
    let (task_ins, task_out, n_task) = e.mean_pair(task_data, limit)?;
    let (lima_out, n_lima) = if lima.is_file() {
        let (_, o, n) = e.mean_pair(lima, limit)?;
        (Some(o), n)
    } else {
        (None, 0)
    };
    let rows = read_model_outputs(outputs)?;
    let mut points = Vec::new();
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for r in &rows {
        let ins = e.embed(&r.instruction)?;
        let resp = e.embed(&r.output)?;
        let x = dot(&ins, &task_ins);
        let y = dot(&resp, &task_out) - lima_out.as_ref().map_or(0.0, |l| dot(&resp, l));
        xs.push(x);
        ys.push(y);
        points.push(json!({"instruction": r.instruction, "x": x, "y": y}));
    }
    let r = pearson(&xs, &ys);
    write_json_atomic(
        out,
        &json!({
            "embedder": embedder.display().to_string(),
            "outputs": outputs.display().to_string(),
            "x": "instruction similarity to the finetuning set's instructions",
            "y": if lima_out.is_some() { "response similarity to the finetuning set's responses minus to LIMA's" } else { "response similarity to the finetuning set's responses (no LIMA set)" },
            "finetuning_examples": n_task,
            "lima_examples": n_lima,
            "pearson_r": if r.is_finite() { json!(r) } else { Value::Null },
            "points": points,
        }),
    )
    .context("similarity")?;
    Ok(
        json!({"points": rows.len(), "pearson_r": if r.is_finite() { json!(r) } else { Value::Null }}),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn pearson_of_a_line_is_one() {
        let x = [1.0, 2.0, 3.0, 4.0];
        let y = [3.0, 5.0, 7.0, 9.0];
        assert!((super::pearson(&x, &y) - 1.0).abs() < 1e-12);
        let z = [9.0, 7.0, 5.0, 3.0];
        assert!((super::pearson(&x, &z) + 1.0).abs() < 1e-12);
        assert!(super::pearson(&[1.0], &[2.0]).is_nan());
    }
}
