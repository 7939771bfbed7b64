//! Encoding chat examples for training, as open-instruct's `encode_with_messages_format` does
//! (open_instruct/finetune.py in john-hewitt/implicit-ins, the paper's training code):
//!
//! * text = concatenation over messages of `<|system|>\n{c}\n`, `<|user|>\n{c}\n` or
//!   `<|assistant|>\n{c}{EOS}\n` (each content `.strip()`ped), the whole then `.strip()`ped (so
//!   the text ends with EOS);
//! * ids = tokenizer(text): BOS when the tokenizer adds one, truncated to max_len;
//! * labels masked on every non-assistant message: from the token length of the messages before
//!   it to the token length of the messages up to it plus `<|assistant|>\n` when an assistant
//!   turn follows. Prefixes are tokenized separately, exactly as open-instruct does, so the
//!   spans match HF even where tokenization at a boundary differs.
//!
//! EOS goes in as *text* (the tokenizer's EOS token string), not as an id appended afterwards:
//! that is what open-instruct does, and only the text route reproduces multi-turn rows, where the
//! text after `</s>` is tokenized as a fresh segment (Llama's normalizer prepends `▁` to it) and
//! the prefix lengths used for masking include it. For single-turn rows both routes give the same
//! ids (tests/data.rs checks this with the real Llama-2 tokenizer).
//!
//! Memory: the tokenizer's BPE over one long word costs about 170 bytes per byte of text (a
//! 50 MB message took 8.46 GB), so a message longer than [`content_cap`] bytes is cut before
//! tokenizing, far beyond where max_len tokens end: the first max_len ids are those of the
//! uncut text, and rows shorter than the cap (every real row) are not touched.

use super::jsonl::{Example, Message};
use crate::bail;
use crate::error::{Context, Result};
use crate::io::tokenizer::Tokenizer;
use std::borrow::Cow;
use std::fmt;

/// The paper's max_seq_length.
pub const DEFAULT_MAX_LEN: usize = 2048;

/// Instruction tuning trains on the rows as they are; response tuning empties every user turn
/// (the tags stay), as the paper's lima_no_instruction.jsonl does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Instruction,
    Response,
}

/// Token ids and, per token, whether it is a training target (open-instruct's `labels != -100`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedExample {
    pub ids: Vec<u32>,
    pub loss_mask: Vec<bool>,
}

impl EncodedExample {
    pub fn loss_tokens(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m).count()
    }
}

/// Python's `str.strip()`: Unicode whitespace plus the ASCII separators \x1c..\x1f, which
/// Python counts as space and Rust's `trim` does not.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// The Tulu chat text of `messages` (open-instruct's `_concat_messages`), unstripped.
pub fn concat_messages(messages: &[Message], eos_text: &str) -> Result<String> {
    let mut text = String::new();
    for m in messages {
        let content = py_strip(&m.content);
        match m.role.as_str() {
            "system" => text.push_str(&format!("<|system|>\n{content}\n")),
            "user" => text.push_str(&format!("<|user|>\n{content}\n")),
            "assistant" => text.push_str(&format!("<|assistant|>\n{content}{eos_text}\n")),
            other => bail!("invalid role {other:?} (expected user, assistant or system)"),
        }
    }
    Ok(text)
}

/// The EOS token's string (e.g. `</s>`), checked to encode back to exactly that one id, which
/// is what lets it go into the training text.
pub fn eos_text(tok: &Tokenizer) -> Result<String> {
    let Some(&eos) = tok.eos.first() else {
        bail!("{}: tokenizer has no EOS token", tok.path.display());
    };
    let text = tok.id_to_token(eos).with_context(|| {
        format!(
            "{}: EOS id {eos} is not in the vocabulary",
            tok.path.display()
        )
    })?;
    if tok.encode(&text)? != [eos] {
        bail!(
            "{}: EOS token {text:?} does not encode to its own id {eos} (not a special token)",
            tok.path.display()
        );
    }
    Ok(text)
}

/// Bytes of message content past which nothing can reach the first `max_len` tokens: a token
/// covers at most as many bytes of text as its vocabulary string has (▁ and byte-fallback
/// `<0xNN>` strings are longer than the bytes they stand for, GPT-2's byte characters as long),
/// so `max_len` tokens cover at most `max_len × longest` bytes. Four times that leaves room
/// for normalizers that shrink text (NFKC's ligatures, 3 bytes to 2) and for BPE merges
/// that reach back across the cut. At 2048 tokens: 393 KB for Llama-2 (longest entry 48
/// bytes), 8 MiB for OLMo (longest entry 1024 bytes).
pub fn content_cap(tok: &Tokenizer, max_len: usize) -> usize {
    let longest = (0..tok.vocab_size() as u32)
        .filter_map(|id| tok.id_to_token(id))
        .map(|t| t.len())
        .max()
        .unwrap_or(1)
        .max(1);
    max_len.saturating_mul(longest).saturating_mul(4)
}

/// `content` stripped as the chat text strips it, and cut to `cap` bytes when longer. A cut
/// content ends in "." so that stripping the whole text cannot eat back into it (were it cut in
/// a run of spaces) and move tokens that lie before the cut.
fn capped_content(content: &str, cap: usize) -> Cow<'_, str> {
    let content = py_strip(content);
    if content.len() <= cap {
        return Cow::Borrowed(content);
    }
    let mut end = cap;
    while !content.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}.", &content[..end]))
}

/// Encodes one example. Returns the ids and loss mask (both cut to `max_len` tokens, as HF's
/// `truncation=True` does) and whether it was truncated.
pub fn encode_example(
    tok: &Tokenizer,
    ex: &Example,
    mode: Mode,
    max_len: usize,
) -> Result<(EncodedExample, bool)> {
    let eos = eos_text(tok)?;
    encode_with_eos(tok, &eos, ex, mode, max_len, content_cap(tok, max_len))
}

fn encode_with_eos(
    tok: &Tokenizer,
    eos: &str,
    ex: &Example,
    mode: Mode,
    max_len: usize,
    cap: usize,
) -> Result<(EncodedExample, bool)> {
    if max_len == 0 {
        bail!("max_len must be at least 1");
    }
    if ex.messages.is_empty() {
        bail!("messages field is empty");
    }
    let long = |m: &Message| m.content.len() > cap;
    let messages: Cow<[Message]> = match mode {
        Mode::Instruction if !ex.messages.iter().any(long) => Cow::Borrowed(&ex.messages),
        _ => Cow::Owned(
            ex.messages
                .iter()
                .map(|m| match m.role.as_str() {
                    "user" if mode == Mode::Response => Message::new("user", ""),
                    _ if long(m) => Message::new(&m.role, capped_content(&m.content, cap)),
                    _ => m.clone(),
                })
                .collect(),
        ),
    };
    // HF's tokenizer(text) adds BOS through the post-processor; the wrapper's encode does not.
    let tokenize = |text: &str| -> Result<Vec<u32>> { tok.encode_prompt(text) };

    let mut ids = tokenize(py_strip(&concat_messages(&messages, eos)?))?;
    let truncated = ids.len() > max_len;
    ids.truncate(max_len);
    let mut loss_mask = vec![true; ids.len()];

    for (idx, m) in messages.iter().enumerate() {
        if m.role == "assistant" {
            continue;
        }
        let start = if idx == 0 {
            0
        } else {
            tokenize(&concat_messages(&messages[..idx], eos)?)?
                .len()
                .min(max_len)
        };
        let mut so_far = concat_messages(&messages[..=idx], eos)?;
        if messages
            .get(idx + 1)
            .is_some_and(|next| next.role == "assistant")
        {
            // The assistant's header is masked with the turn before it.
            so_far.push_str("<|assistant|>\n");
        }
        let end = tokenize(&so_far)?.len().min(max_len);
        let n = loss_mask.len();
        if start < end {
            loss_mask[start.min(n)..end.min(n)].fill(false);
        }
        if end >= max_len {
            break;
        }
    }
    Ok((EncodedExample { ids, loss_mask }, truncated))
}

/// A training set ready for the trainer: the examples that have loss tokens (open-instruct drops
/// the others), with counts of what happened on the way.
#[derive(Debug, Clone)]
pub struct EncodedDataset {
    pub examples: Vec<EncodedExample>,
    /// The source index of each kept example (into the `examples` given to `encode_dataset`).
    pub source_index: Vec<usize>,
    /// Examples read.
    pub total: usize,
    /// Examples longer than max_len, cut (kept or not).
    pub truncated: usize,
    /// Examples left out because no token carries loss (e.g. truncated inside the instruction).
    pub no_loss: usize,
    /// Of `no_loss`, those cut at max_len: the prompt alone fills it. The others have no
    /// assistant turn at all.
    pub no_loss_truncated: usize,
    /// The length examples were cut at.
    pub max_len: usize,
    /// Tokens over the kept examples, and of those the ones that carry loss.
    pub tokens: usize,
    pub loss_tokens: usize,
}

/// Says what truncation and skipping mean, because at a small max_len (the smoke grid's 128)
/// most examples are cut and a newcomer cannot tell that from a fault.
impl fmt::Display for EncodedDataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "encoded {} of {} examples ({} tokens, {} with loss); ",
            self.examples.len(),
            self.total,
            self.tokens,
            self.loss_tokens
        )?;
        if self.truncated == 0 {
            write!(f, "none longer than max_len {} tokens", self.max_len)?;
        } else {
            write!(
                f,
                "{} longer than max_len {} tokens were cut at the end (the response side)",
                self.truncated, self.max_len
            )?;
            if self.no_loss_truncated > 0 {
                write!(
                    f,
                    ", and {} of them skipped: the prompt alone fills the {} tokens, leaving no \
                     response token to learn from",
                    self.no_loss_truncated, self.max_len
                )?;
            }
        }
        let no_assistant = self.no_loss - self.no_loss_truncated;
        if no_assistant > 0 {
            write!(
                f,
                "; {no_assistant} skipped with no assistant turn (nothing to learn from)"
            )?;
        }
        if self.truncated > 0 {
            write!(
                f,
                "\n  (expected with a small max_len; raise it with --max-len for `implicit train`, \
                 or max_len under [train] in an experiment config)"
            )?;
        }
        Ok(())
    }
}

/// Encodes every example; an error names the example by index and id.
pub fn encode_dataset(
    tok: &Tokenizer,
    examples: &[Example],
    mode: Mode,
    max_len: usize,
) -> Result<EncodedDataset> {
    let eos = eos_text(tok)?;
    let cap = content_cap(tok, max_len);
    let mut out = EncodedDataset {
        examples: Vec::with_capacity(examples.len()),
        source_index: Vec::with_capacity(examples.len()),
        total: examples.len(),
        truncated: 0,
        no_loss: 0,
        no_loss_truncated: 0,
        max_len,
        tokens: 0,
        loss_tokens: 0,
    };
    for (i, ex) in examples.iter().enumerate() {
        let (enc, truncated) = encode_with_eos(tok, &eos, ex, mode, max_len, cap)
            .with_context(|| format!("example {i} ({})", ex.id.as_deref().unwrap_or("no id")))?;
        out.truncated += usize::from(truncated);
        let loss = enc.loss_tokens();
        if loss == 0 {
            out.no_loss += 1;
            out.no_loss_truncated += usize::from(truncated);
            continue;
        }
        out.tokens += enc.ids.len();
        out.loss_tokens += loss;
        out.examples.push(enc);
        out.source_index.push(i);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_matches_python() {
        assert_eq!(py_strip("\u{1c}\u{a0} a b\u{3000}\n\u{1f}"), "a b");
        assert_eq!(py_strip("\u{200b}x"), "\u{200b}x");
    }

    #[test]
    fn concat_is_tulu_format() {
        let m = vec![
            Message::new("system", " be nice "),
            Message::new("user", "\nhi\n"),
            Message::new("assistant", "hello "),
        ];
        let text = concat_messages(&m, "</s>").unwrap();
        assert_eq!(
            text,
            "<|system|>\nbe nice\n<|user|>\nhi\n<|assistant|>\nhello</s>\n"
        );
        let err = concat_messages(&[Message::new("bot", "x")], "</s>").unwrap_err();
        assert!(err.to_string().contains("invalid role \"bot\""));
    }

    fn counts(truncated: usize, no_loss: usize, no_loss_truncated: usize) -> EncodedDataset {
        EncodedDataset {
            examples: vec![
                EncodedExample {
                    ids: vec![1; 128],
                    loss_mask: vec![true; 128],
                };
                16 - no_loss
            ],
            source_index: (0..16 - no_loss).collect(),
            total: 16,
            truncated,
            no_loss,
            no_loss_truncated,
            max_len: 128,
            tokens: 128 * (16 - no_loss),
            loss_tokens: 128 * (16 - no_loss),
        }
    }

    #[test]
    fn summary_explains_truncation_and_skips() {
        // The smoke grid's LIMA rows at max_len 128: all cut, half with the prompt filling it.
        let text = counts(16, 8, 8).to_string();
        for fact in [
            "encoded 8 of 16 examples (1024 tokens, 1024 with loss)",
            "16 longer than max_len 128 tokens were cut at the end",
            "8 of them skipped: the prompt alone fills the 128 tokens",
            "no response token to learn from",
            "expected with a small max_len",
            "--max-len",
            "max_len under [train]",
        ] {
            assert!(text.contains(fact), "{fact:?} not in {text:?}");
        }
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.contains("no assistant turn"), "{text}");

        // Nothing cut: one line, no hint; a skip without truncation is a row with no reply.
        let text = counts(0, 1, 0).to_string();
        assert!(
            text.contains("none longer than max_len 128 tokens"),
            "{text}"
        );
        assert!(text.contains("1 skipped with no assistant turn"), "{text}");
        assert!(!text.contains("expected with"), "{text}");
        assert_eq!(text.lines().count(), 1, "{text}");

        // Cut but none skipped: no skip clause.
        let text = counts(3, 0, 0).to_string();
        assert!(text.contains("3 longer than max_len 128 tokens"), "{text}");
        assert!(!text.contains("skipped"), "{text}");
    }
}
