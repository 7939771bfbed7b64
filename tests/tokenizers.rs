//! Real tokenizers from ../shared/data: Llama-2's 47 test vectors and OLMo's vocabulary.

mod common;

use implicit::io::tokenizer::{chat_prompt, Tokenizer};

#[test]
fn llama2_tokenizer_encodes_all_47_vectors_exactly() {
    let Some(data) = common::data_dir("llama2_tokenizer_encodes_all_47_vectors_exactly") else {
        return;
    };
    let dir = data.join("tokenizers");
    let tok = Tokenizer::from_file(&dir.join("llama2-tokenizer.json")).unwrap();
    let inputs = std::fs::read_to_string(dir.join("llama2-vectors.inp")).unwrap();
    let outputs = std::fs::read_to_string(dir.join("llama2-vectors.out")).unwrap();
    // Each vector ends with the separator (or newline), so both splits end in one more, empty
    // vector: the empty string, which encodes to nothing.
    let inputs: Vec<&str> = inputs.split("\n__ggml_vocab_test__\n").collect();
    let outputs: Vec<&str> = outputs.split('\n').collect();
    assert_eq!(inputs.len(), 47);
    assert_eq!(outputs.len(), 47);
    let mut failures = Vec::new();
    for (text, want) in inputs.iter().zip(&outputs) {
        let want: Vec<u32> = want
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect();
        let got = tok.encode(*text, false).unwrap().get_ids().to_vec();
        if got != want {
            failures.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 47 differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The paper's chat tags are plain text to Llama-2: `<` `|` user `|` `>` pieces, ids the
    // rule adapter later biases (29966 `<`, 29989 `|`).
    let ids = tok
        .encode(chat_prompt("Hi").as_str(), false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert!(ids.contains(&29966) && ids.contains(&29989), "{ids:?}");
}

#[test]
fn olmo_tokenizer_loads_and_round_trips() {
    let Some(data) = common::data_dir("olmo_tokenizer_loads_and_round_trips") else {
        return;
    };
    let tok = Tokenizer::from_file(&data.join("tokenizers/olmo-tokenizer.json")).unwrap();
    assert_eq!(tok.get_vocab_size(true), 50280);
    assert!(
        tok.token_to_id("|||IP_ADDRESS|||").is_some(),
        "the paper's OLMo EOS token"
    );
    for text in [
        "Once upon a time, there was a little girl named Lily.",
        "<|user|>\nWrite a haiku about GPUs.\n<|assistant|>\n",
        "Unicode: naïve café, 日本語, emoji 🚀, tabs\tand  double  spaces.\n\n",
        "def f(x):\n    return x ** 2  # 42\n",
    ] {
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert!(!ids.is_empty());
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            text,
            "round trip of {text:?}"
        );
    }
}
