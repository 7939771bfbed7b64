//! Incremental detokenisation: text deltas as tokens arrive, decoded in the context of the
//! tokens before them.
//!
//! Decoding each token alone loses information: SentencePiece decoders drop the leading space
//! of the first token (`▁Paris` alone is "Paris", after "is" it is " Paris"), and byte-level or
//! byte-fallback vocabularies split characters across tokens. So, as vLLM does, the decoder
//! keeps a few tokens of context before the unread ones and emits the difference between the
//! decoded text with and without the new tokens, holding back an unfinished UTF-8 character.

use crate::error::Result;
use crate::io::tokenizer::Tokenizer;

/// Prompt tokens kept as context for the first generated tokens.
const CONTEXT_TOKENS: usize = 5;

pub struct IncrementalDecoder {
    ids: Vec<u32>,
    /// Start of the context window: `ids[prefix..read]` is text already emitted.
    prefix: usize,
    /// End of what has been emitted.
    read: usize,
}

impl IncrementalDecoder {
    /// A decoder whose output continues `context` (the prompt's ids; only its last few are kept).
    pub fn new(context: &[u32]) -> IncrementalDecoder {
        let tail = &context[context.len().saturating_sub(CONTEXT_TOKENS)..];
        IncrementalDecoder {
            ids: tail.to_vec(),
            prefix: 0,
            read: tail.len(),
        }
    }

    /// Adds a token and returns the text it completes ("" while a character is unfinished).
    /// Special tokens (BOS, EOS) decode to nothing.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read])?;
        let after = tok.decode(&self.ids[self.prefix..])?;
        if after.len() <= before.len()
            || after.ends_with('\u{FFFD}')
            || !after.is_char_boundary(before.len())
        {
            return Ok(String::new());
        }
        let delta = after[before.len()..].to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        // Keep the window short: the context only needs the last few tokens.
        if self.prefix > 4 * CONTEXT_TOKENS {
            self.ids.drain(..self.prefix);
            self.read -= self.prefix;
            self.prefix = 0;
        }
        Ok(delta)
    }
}

impl IncrementalDecoder {
    /// Whatever is still held back (an unfinished character, decoded lossily), at the end.
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String> {
        if self.read == self.ids.len() {
            return Ok(String::new());
        }
        let before = tok.decode(&self.ids[self.prefix..self.read])?;
        let after = tok.decode(&self.ids[self.prefix..])?;
        self.prefix = self.read;
        self.read = self.ids.len();
        if after.len() > before.len() && after.is_char_boundary(before.len()) {
            Ok(after[before.len()..].to_string())
        } else {
            Ok(String::new())
        }
    }
}

/// The text of `generated` as it continues `prompt` (special tokens skipped).
pub fn decode_continuation(tok: &Tokenizer, prompt: &[u32], generated: &[u32]) -> Result<String> {
    let mut dec = IncrementalDecoder::new(prompt);
    let mut text = String::new();
    for &id in generated {
        text.push_str(&dec.push(tok, id)?);
    }
    text.push_str(&dec.flush(tok)?);
    Ok(text)
}
