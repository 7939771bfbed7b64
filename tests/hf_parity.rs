//! Parity with Hugging Face transformers on the committed fixture models
//! (tools/make_fixtures.py: random-init LlamaForCausalLM with GQA, OlmoForCausalLM with clip_qkv).

mod common;

use implicit::generate::{generate, GenerateOptions, Sampler};
use implicit::model::{KvCache, Logits, Transformer};
use safetensors::{Dtype, SafeTensors};

struct Expected {
    bytes: Vec<u8>,
}

impl Expected {
    fn load(name: &str) -> Expected {
        Expected {
            bytes: std::fs::read(common::fixtures().join(name).join("expected.safetensors"))
                .unwrap(),
        }
    }
    fn f32s(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (v, t.shape().to_vec())
    }
    fn ids(&self, name: &str) -> (Vec<u32>, Vec<usize>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::I64, "{name}");
        let v = t
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect();
        (v, t.shape().to_vec())
    }
}

fn check_model(name: &str) {
    let model = Transformer::load(&common::fixtures().join(name)).unwrap();
    let exp = Expected::load(name);
    let (ids, ishape) = exp.ids("input_ids");
    let (logits, lshape) = exp.f32s("logits");
    let (b, t, v) = (ishape[0], ishape[1], lshape[2]);
    assert_eq!(v, model.config.vocab_size);

    // Each row alone, from an empty cache.
    for r in 0..b {
        let got = model.logits(&ids[r * t..(r + 1) * t]).unwrap();
        let err = common::rel_err(&got, &logits[r * t * v..(r + 1) * t * v]);
        println!("{name} row {r}: logits relative error {err:.2e}");
        assert!(err < 1e-4, "{name} row {r}: relative error {err}");
    }

    // Both rows in one ragged batch, and prefill-then-decode through the KV cache, agree.
    let mut caches: Vec<KvCache> = (0..b).map(|_| KvCache::new(&model.config)).collect();
    let split = 5;
    let mut batch: Vec<(&[u32], &mut KvCache)> = caches
        .iter_mut()
        .enumerate()
        .map(|(r, c)| (&ids[r * t..r * t + split + r], c))
        .collect();
    let first = model.forward(&mut batch, Logits::All).unwrap();
    for r in 0..b {
        let n = split + r;
        let err = common::rel_err(&first[r], &logits[r * t * v..(r * t + n) * v]);
        assert!(err < 1e-4, "{name} batched prefill row {r}: {err}");
        let mut cache = caches[r].clone();
        for pos in n..t {
            let step = model
                .forward(
                    &mut [(&ids[r * t + pos..r * t + pos + 1], &mut cache)],
                    Logits::Last,
                )
                .unwrap();
            let err = common::rel_err(&step[0], &logits[(r * t + pos) * v..(r * t + pos + 1) * v]);
            assert!(err < 1e-4, "{name} cached decode row {r} pos {pos}: {err}");
        }
        assert_eq!(cache.len(), t);
    }

    // Greedy generation matches HF generate.
    let (greedy, gshape) = exp.ids("greedy_ids");
    let prompt = &greedy[..4];
    let opts = GenerateOptions {
        max_new_tokens: gshape[1] - 4,
        stop_tokens: vec![],
    };
    let out = generate(&model, prompt, &opts, &mut Sampler::greedy(), |_| Ok(())).unwrap();
    assert_eq!(out, &greedy[4..], "{name}: greedy continuation");
}

#[test]
fn llama_gqa_matches_transformers() {
    check_model("llama-gqa");
}

#[test]
fn olmo_matches_transformers() {
    check_model("olmo");
}
