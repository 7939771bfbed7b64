//! Text generation: greedy or temperature sampling with a KV cache, one sequence streamed or a
//! batch of sequences decoded together.

use crate::backend::cpu::ops::{argmax, softmax_in_place};
use crate::error::Result;
use crate::model::{KvCache, Logits, Transformer};

/// How the next token is chosen from logits.
#[derive(Clone, Debug)]
pub struct Sampler {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    state: u64,
}

impl Sampler {
    pub fn new(temperature: f32, seed: u64) -> Sampler {
        Sampler {
            temperature,
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }
    pub fn greedy() -> Sampler {
        Sampler::new(0.0, 0)
    }

    fn next_uniform(&mut self) -> f32 {
        // xorshift64*: reproducible for a seed, and no crate needed.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let r = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (r >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature <= 0.0 {
            return argmax(logits) as u32;
        }
        let mut p: Vec<f32> = logits.iter().map(|&l| l / self.temperature).collect();
        softmax_in_place(&mut p);
        let u = self.next_uniform();
        let mut acc = 0.0;
        for (i, &pi) in p.iter().enumerate() {
            acc += pi;
            if u < acc {
                return i as u32;
            }
        }
        (p.len() - 1) as u32
    }
}

/// Options shared by the generation entry points.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Generation of a sequence stops after any of these (the stop token is kept in the output).
    pub stop_tokens: Vec<u32>,
}

/// Generates after `prompt`, calling `on_token` with each new token as it is chosen.
/// Returns the new tokens (a final stop token included).
pub fn generate(
    model: &Transformer,
    prompt: &[u32],
    opts: &GenerateOptions,
    sampler: &mut Sampler,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    let mut cache = KvCache::new(&model.config);
    let mut out = Vec::new();
    let mut next_input = prompt.to_vec();
    while out.len() < opts.max_new_tokens {
        let logits = model
            .forward(&mut [(&next_input, &mut cache)], Logits::Last)?
            .remove(0);
        let tok = sampler.sample(&logits);
        out.push(tok);
        on_token(tok)?;
        if opts.stop_tokens.contains(&tok) {
            break;
        }
        next_input = vec![tok];
    }
    Ok(out)
}

/// Generates after every prompt at once: each step runs one forward over all sequences still
/// going (ragged lengths, no padding), so the weights are read once per step for the batch.
/// `on_step(done, total)` reports progress after each step. Returns each prompt's new tokens.
pub fn generate_batch(
    model: &Transformer,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    sampler: &mut Sampler,
    mut on_step: impl FnMut(usize, usize),
) -> Result<Vec<Vec<u32>>> {
    let n = prompts.len();
    let mut caches: Vec<KvCache> = (0..n).map(|_| KvCache::new(&model.config)).collect();
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut inputs: Vec<Vec<u32>> = prompts.to_vec();
    let mut live: Vec<usize> = (0..n)
        .filter(|&i| opts.max_new_tokens > 0 && !prompts[i].is_empty())
        .collect();
    while !live.is_empty() {
        let mut batch: Vec<(&[u32], &mut KvCache)> = Vec::with_capacity(live.len());
        let mut live_caches: Vec<Option<&mut KvCache>> = caches.iter_mut().map(Some).collect();
        for &i in &live {
            batch.push((
                &inputs[i],
                live_caches[i].take().expect("each sequence once"),
            ));
        }
        let logits = model.forward(&mut batch, Logits::Last)?;
        drop(batch);
        let mut still = Vec::with_capacity(live.len());
        for (&i, l) in live.iter().zip(&logits) {
            let tok = sampler.sample(l);
            outputs[i].push(tok);
            if !opts.stop_tokens.contains(&tok) && outputs[i].len() < opts.max_new_tokens {
                inputs[i] = vec![tok];
                still.push(i);
            }
        }
        live = still;
        on_step(n - live.len(), n);
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_is_greedy_at_zero_and_reproducible_otherwise() {
        let logits = [0.1, 2.0, 1.9, -1.0];
        assert_eq!(Sampler::greedy().sample(&logits), 1);
        let draw = |seed| {
            let mut s = Sampler::new(1.0, seed);
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        let d = draw(7);
        assert!(
            d.contains(&1) && d.contains(&2),
            "temperature 1 samples both likely tokens: {d:?}"
        );
    }
}
