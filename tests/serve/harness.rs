//! What every test here uses besides the server process (tests/common/serve.rs): the model it
//! serves, and the library's own greedy answers the server's must equal.

use implicit::generate::detok::decode_continuation;
use implicit::generate::{generate_adjusted, GenerateOptions, Sampler, ScoreAdjuster};
use implicit::io::tokenizer::Tokenizer;
use implicit::model::Transformer;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

pub(crate) fn load(dir: &Path) -> (Transformer, Tokenizer) {
    let model = Transformer::load(dir).unwrap();
    let tok = Tokenizer::load(dir, &model.config).unwrap();
    (model, tok)
}

/// The library's own greedy decoding: (token ids without EOS, log-probabilities, text).
pub(crate) fn greedy(
    model: &Transformer,
    tok: &Tokenizer,
    prompt: &[u32],
    max: usize,
    adapter: Option<Arc<dyn ScoreAdjuster>>,
) -> (Vec<u32>, Vec<f32>, String) {
    let opts = GenerateOptions {
        max_new_tokens: max,
        stop_tokens: tok.eos.clone(),
    };
    let mut logprobs = Vec::new();
    let out = generate_adjusted(model, prompt, &opts, &mut Sampler::greedy(), adapter, |c| {
        logprobs.push(c.logprob);
        Ok(())
    })
    .unwrap();
    let body: Vec<u32> = out.iter().copied().filter(|&t| !tok.is_eos(t)).collect();
    logprobs.truncate(body.len());
    let text = decode_continuation(tok, prompt, &body).unwrap();
    (body, logprobs, text)
}

pub(crate) fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}
