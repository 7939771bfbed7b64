//! The training-data summary (`encoded N of M examples ...`) with the real Llama-2 tokenizer:
//! the counts behind its clauses, and the clauses a newcomer reads to tell a small max_len from
//! a fault.

mod common;

use implicit::data::{encode_dataset, Example, Message, Mode};
use implicit::io::tokenizer::Tokenizer;

fn example(messages: &[(&str, &str)]) -> Example {
    Example {
        messages: messages
            .iter()
            .map(|(role, content)| Message::new(role, *content))
            .collect(),
        id: None,
    }
}

#[test]
fn summary_says_what_was_cut_and_why_rows_were_skipped() {
    let Some(data) = common::data_dir("summary_says_what_was_cut_and_why_rows_were_skipped") else {
        return;
    };
    // Llama-2 adds BOS <s> (1) and ends responses with </s> (2).
    let tok = Tokenizer::open(
        &data.join("tokenizers/llama2-tokenizer.json"),
        Some(1),
        vec![2],
    )
    .unwrap();
    let long_prompt = "Please describe the history of the city in great detail. ".repeat(4);
    let rows = [
        // The prompt alone is longer than 40 tokens: cut, and nothing left to learn from.
        example(&[("user", &long_prompt), ("assistant", "It is old.")]),
        // A short prompt with a long reply: cut inside the reply, kept.
        example(&[("user", "Hi"), ("assistant", &long_prompt)]),
        // Fits.
        example(&[("user", "Hi"), ("assistant", "Hello.")]),
        // No assistant turn: skipped although nothing is cut.
        example(&[("user", "Hi")]),
    ];
    let set = encode_dataset(&tok, &rows, Mode::Instruction, 40).unwrap();
    let text = set.to_string();
    println!("{text}");
    assert_eq!(
        (
            set.total,
            set.examples.len(),
            set.truncated,
            set.no_loss,
            set.no_loss_truncated,
            set.max_len
        ),
        (4, 2, 2, 2, 1, 40)
    );
    for fact in [
        "encoded 2 of 4 examples",
        "2 longer than max_len 40 tokens were cut at the end",
        "1 of them skipped: the prompt alone fills the 40 tokens",
        "1 skipped with no assistant turn",
        "expected with a small max_len",
        "--max-len",
    ] {
        assert!(text.contains(fact), "{fact:?} not in {text:?}");
    }

    // At the paper's 2048 nothing is cut: one line, no hint about max_len.
    let set = encode_dataset(&tok, &rows[..3], Mode::Instruction, 2048).unwrap();
    let text = set.to_string();
    println!("{text}");
    assert_eq!((set.truncated, set.no_loss), (0, 0));
    assert!(
        text.contains("none longer than max_len 2048 tokens"),
        "{text}"
    );
    assert!(!text.contains('\n') && !text.contains("skipped"), "{text}");
}
