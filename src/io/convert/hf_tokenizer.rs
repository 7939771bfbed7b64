//! Builds a Hugging Face `tokenizer.json` from a GGUF file's `tokenizer.ggml.*` metadata.

use crate::error::Result;
use crate::io::gguf::GgufFile;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TOKEN_UNKNOWN: i64 = 2;
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// A tokenizer.json document and facts about it for the report and tokenizer_config.json.
pub(super) struct HfTokenizer {
    pub json: Value,
    /// "llama" (SentencePiece BPE) or "gpt2" (byte-level BPE).
    pub kind: String,
    pub tokens: Vec<String>,
}

pub(super) fn build(gguf: &GgufFile) -> Result<HfTokenizer> {
    let fault = |what: String| crate::error::Error(format!("{}: {what}", gguf.path().display()));
    let kind = gguf
        .get_str("tokenizer.ggml.model")?
        .ok_or_else(|| fault("no tokenizer.ggml.model in the metadata".into()))?
        .to_string();
    let tokens = gguf
        .get_str_array("tokenizer.ggml.tokens")?
        .ok_or_else(|| fault("no tokenizer.ggml.tokens in the metadata".into()))?
        .to_vec();
    let types = match gguf.get_i64_array("tokenizer.ggml.token_type")? {
        Some(t) if t.len() == tokens.len() => t,
        Some(t) => {
            return Err(fault(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                t.len(),
                tokens.len()
            )))
        }
        None => vec![1; tokens.len()],
    };
    let vocab: Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), json!(id)))
        .collect();

    let json = match kind.as_str() {
        "llama" => {
            let scores = match gguf.get_f32_array("tokenizer.ggml.scores")? {
                Some(s) if s.len() == tokens.len() => s,
                _ => {
                    return Err(fault(format!(
                        "tokenizer.ggml.scores is missing or does not have {} entries",
                        tokens.len()
                    )))
                }
            };
            let unk_id = gguf
                .get_u64("tokenizer.ggml.unknown_token_id")?
                .unwrap_or(0) as usize;
            let unk = tokens
                .get(unk_id)
                .cloned()
                .unwrap_or_else(|| "<unk>".into());
            // SentencePiece's dummy prefix ("▁" before the text) is on unless the file says not.
            let add_prefix = gguf
                .get_bool("tokenizer.ggml.add_space_prefix")?
                .unwrap_or(true);
            sentencepiece_json(vocab, &tokens, &scores, &types, &unk, add_prefix)
        }
        "gpt2" => {
            let merges = gguf
                .get_str_array("tokenizer.ggml.merges")?
                .ok_or_else(|| fault("no tokenizer.ggml.merges for a gpt2 tokenizer".into()))?;
            let merges = merges
                .iter()
                .map(|m| {
                    let (a, b) = m
                        .split_once(' ')
                        .ok_or_else(|| fault(format!("merge {m:?} is not two tokens")))?;
                    Ok(json!([a, b]))
                })
                .collect::<Result<Vec<_>>>()?;
            let pre = gguf.get_str("tokenizer.ggml.pre")?.unwrap_or("default");
            byte_level_json(vocab, merges, &tokens, &types, pre)
        }
        other => {
            return Err(fault(format!(
                "unsupported tokenizer model '{other}' (supported: llama, gpt2)"
            )))
        }
    };
    Ok(HfTokenizer { json, kind, tokens })
}

/// Control and unknown tokens become special added tokens, user-defined ones plain added
/// tokens, as Hugging Face's converters do.
fn added_tokens(tokens: &[String], types: &[i64]) -> Vec<Value> {
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (_, &ty))| matches!(ty, TOKEN_UNKNOWN | TOKEN_CONTROL | TOKEN_USER_DEFINED))
        .map(|(id, (content, &ty))| {
            json!({
                "id": id,
                "content": content,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": ty != TOKEN_USER_DEFINED,
            })
        })
        .collect()
}

/// The legacy LlamaTokenizerFast layout: "▁" prepended (if `add_prefix`) and spaces replaced
/// by the normalizer, a BPE over the SentencePiece pieces with byte fallback, and no
/// post-processor (the engine adds BOS itself).
fn sentencepiece_json(
    vocab: Map<String, Value>,
    tokens: &[String],
    scores: &[f32],
    types: &[i64],
    unk: &str,
    add_prefix: bool,
) -> Value {
    let merges: Vec<Value> = sentencepiece_merges(tokens, scores)
        .into_iter()
        .map(|(a, b)| json!([a, b]))
        .collect();
    let mut normalizers =
        vec![json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"})];
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_prefix {
        normalizers.insert(0, json!({"type": "Prepend", "prepend": "▁"}));
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(tokens, types),
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unk,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": true,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        },
    })
}

/// Merges as Hugging Face's `SentencePieceExtractor` derives them from scores: every split of
/// a piece into two pieces of the vocabulary, ordered by the whole piece's score (highest
/// first), then by the lengths of the left and right parts (longest first), then by the
/// whole piece's id and the parts' ids. HF's BPE then reproduces SentencePiece's choices.
pub(super) fn sentencepiece_merges(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    // Later duplicates win, as in a Python dict built from the pieces.
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    struct Merge<'a> {
        left: &'a str,
        right: &'a str,
        score: f32,
        left_chars: usize,
        right_chars: usize,
    }
    let mut merges = Vec::new();
    for (piece, &score) in tokens.iter().zip(scores) {
        let mut local: Vec<(usize, usize, Merge)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (left, right) = piece.split_at(at);
                let (&l, &r) = (ids.get(left)?, ids.get(right)?);
                let merge = Merge {
                    left,
                    right,
                    score,
                    left_chars: left.chars().count(),
                    right_chars: right.chars().count(),
                };
                Some((l, r, merge))
            })
            .collect();
        local.sort_by_key(|&(l, r, _)| (l, r));
        merges.extend(local.into_iter().map(|(_, _, m)| m));
    }
    // A stable sort, descending, like Python's sorted(..., reverse=True).
    merges.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.left_chars.cmp(&a.left_chars))
            .then(b.right_chars.cmp(&a.right_chars))
    });
    merges
        .into_iter()
        .map(|m| (m.left.to_string(), m.right.to_string()))
        .collect()
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` name, following llama.cpp's table of regexes.
/// Names not listed get GPT-2's byte-level split.
fn pre_tokenizer(pre: &str) -> (Value, Option<Value>, bool) {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |regex: &str| json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
    // (pre-tokenizer, normalizer, ignore_merges)
    match pre {
        // Digits one by one, then GPT-2's split.
        "smollm" | "starcoder" | "refact" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            None,
            false,
        ),
        "llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" | "dbrx" => (
            json!({"type": "Sequence", "pretokenizers": [
                split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
                byte_level(false),
            ]}),
            None,
            matches!(pre, "llama-bpe" | "llama3" | "llama-v3"),
        ),
        "qwen2" => (
            json!({"type": "Sequence", "pretokenizers": [
                split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
                byte_level(false),
            ]}),
            Some(json!({"type": "NFC"})),
            false,
        ),
        // "default", "gpt2", "olmo" and the rest: GPT-2's split, done by ByteLevel itself.
        _ => (byte_level(true), None, false),
    }
}

/// A byte-level BPE in the layout of Hugging Face's GPT-2 family.
fn byte_level_json(
    vocab: Map<String, Value>,
    merges: Vec<Value>,
    tokens: &[String],
    types: &[i64],
    pre: &str,
) -> Value {
    let (pre_tokenizer, normalizer, ignore_merges) = pre_tokenizer(pre);
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(tokens, types),
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": ignore_merges,
            "vocab": vocab,
            "merges": merges,
        },
    })
}
