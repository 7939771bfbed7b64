//! A synthetic two-layer llama GGUF and the Hugging Face tensors it must convert to.

use crate::support::*;

pub const D: usize = 32;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = D / HEADS;
pub const FFN: usize = 64;
pub const LAYERS: usize = 2;

/// SentencePiece-style pieces after <unk>, <s>, </s> and the 256 byte tokens; each later
/// piece has a lower score, as SentencePiece orders merges.
pub const PIECES: [&str; 12] = [
    "▁", "h", "e", "l", "o", "▁h", "he", "ll", "lo", "▁he", "llo", "▁hello",
];

pub fn tiny_vocab() -> (Vec<String>, Vec<f32>, Vec<i32>) {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    tokens.extend((0..=255).map(|b| format!("<0x{b:02X}>")));
    types.extend([6; 256]);
    tokens.extend(PIECES.iter().map(|p| p.to_string()));
    types.extend([1; PIECES.len()]);
    tokens.push("<tool>".into());
    types.push(4);
    let scores = (0..tokens.len())
        .map(|i| {
            if (259..259 + PIECES.len()).contains(&i) {
                -((i - 258) as f32)
            } else {
                0.0
            }
        })
        .collect();
    (tokens, scores, types)
}

pub fn token_id(tokens: &[String], t: &str) -> u32 {
    tokens.iter().position(|x| x == t).unwrap() as u32
}

pub type Expected = Vec<(String, Vec<usize>, Vec<f32>)>;

/// A two-layer llama in GGUF with F32, F16, BF16, Q8_0, Q4_0 and Q4_1 tensors, and the
/// Hugging Face tensors it must convert to. Tensors named in `skip` are left out.
pub fn tiny_llama(version: u32, arch: &str, skip: &[&str]) -> (Vec<u8>, Expected) {
    let (tokens, scores, types) = tiny_vocab();
    let vocab = tokens.len();
    let mut b = GgufBuilder::new(version);
    b.kv("general.architecture", Val::Str(arch.into()))
        .kv("llama.context_length", Val::U32(128))
        .kv("llama.embedding_length", Val::U32(D as u32))
        .kv("llama.block_count", Val::U32(LAYERS as u32))
        .kv("llama.feed_forward_length", Val::U32(FFN as u32))
        .kv("llama.rope.dimension_count", Val::U32(HEAD_DIM as u32))
        .kv("llama.attention.head_count", Val::U32(HEADS as u32))
        .kv("llama.attention.head_count_kv", Val::U32(KV_HEADS as u32))
        .kv("llama.attention.layer_norm_rms_epsilon", Val::F32(1e-5))
        .kv("tokenizer.ggml.model", Val::Str("llama".into()))
        .kv("tokenizer.ggml.tokens", Val::strs(&tokens))
        .kv(
            "tokenizer.ggml.scores",
            Val::Arr(6, scores.iter().map(|&s| Val::F32(s)).collect()),
        )
        .kv(
            "tokenizer.ggml.token_type",
            Val::Arr(5, types.iter().map(|&t| Val::I32(t)).collect()),
        )
        .kv("tokenizer.ggml.bos_token_id", Val::U32(1))
        .kv("tokenizer.ggml.eos_token_id", Val::U32(2))
        .kv("tokenizer.ggml.unknown_token_id", Val::U32(0));
    if version > 1 {
        // Version 1 leaves it out to exercise the default of 10000.
        b.kv("llama.rope.freq_base", Val::F32(500000.0));
    }
    let mut expected = Vec::new();
    let mut seed = 10;
    let mut add = |b: &mut GgufBuilder, gguf: &str, hf: &str, dims: &[u64], ty: u32| {
        if skip.contains(&gguf) {
            return;
        }
        seed += 1;
        let n: u64 = dims.iter().product();
        let x = test_values(n as usize, seed);
        let shape: Vec<usize> = dims.iter().rev().map(|&d| d as usize).collect();
        let (bytes, hf_values) = match ty {
            // Q and K: the HF tensor is what we know; GGUF holds it permuted. K is F16, so
            // it is built from values that f16 holds exactly.
            _ if gguf.ends_with("attn_q.weight") => {
                (enc_f32(&permute_like_llama_cpp(&x, HEADS, D)), x)
            }
            _ if gguf.ends_with("attn_k.weight") => {
                let exact: Vec<f32> = x.iter().map(|v| (v * 64.0).round() / 64.0).collect();
                (
                    enc_f16(&permute_like_llama_cpp(&exact, KV_HEADS, D)).0,
                    exact,
                )
            }
            F32 => (enc_f32(&x), x),
            F16 => enc_f16(&x),
            BF16 => enc_bf16(&x),
            Q8_0 => enc_q8_0(&x),
            Q4_0 => enc_q4_0(&x),
            Q4_1 => enc_q4_1(&x),
            _ => unreachable!(),
        };
        b.tensor(gguf, dims, ty, bytes);
        expected.push((hf.to_string(), shape, hf_values));
    };
    let (d, f, v, kv) = (
        D as u64,
        FFN as u64,
        vocab as u64,
        (KV_HEADS * HEAD_DIM) as u64,
    );
    add(
        &mut b,
        "token_embd.weight",
        "model.embed_tokens.weight",
        &[d, v],
        Q8_0,
    );
    for i in 0..LAYERS {
        let layer = [
            ("attn_q.weight", "self_attn.q_proj.weight", vec![d, d], F32),
            ("attn_k.weight", "self_attn.k_proj.weight", vec![d, kv], F16),
            (
                "attn_v.weight",
                "self_attn.v_proj.weight",
                vec![d, kv],
                Q4_1,
            ),
            (
                "attn_output.weight",
                "self_attn.o_proj.weight",
                vec![d, d],
                Q4_0,
            ),
            ("ffn_gate.weight", "mlp.gate_proj.weight", vec![d, f], Q8_0),
            ("ffn_up.weight", "mlp.up_proj.weight", vec![d, f], BF16),
            ("ffn_down.weight", "mlp.down_proj.weight", vec![f, d], F32),
            ("attn_norm.weight", "input_layernorm.weight", vec![d], F32),
            (
                "ffn_norm.weight",
                "post_attention_layernorm.weight",
                vec![d],
                F32,
            ),
        ];
        for (gguf, hf, dims, ty) in layer {
            let (gguf, hf) = (format!("blk.{i}.{gguf}"), format!("model.layers.{i}.{hf}"));
            add(&mut b, &gguf, &hf, &dims, ty);
        }
    }
    add(&mut b, "output_norm.weight", "model.norm.weight", &[d], F32);
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    (b.build(), expected)
}
