//! Between text and vocabulary entries, for the two vocabulary styles the engine loads:
//! SentencePiece (Llama-2: a space is `▁`, bytes outside the vocabulary are `<0xNN>`) and
//! byte-level BPE (GPT-2, OLMo, SmolLM2: every byte is a printable stand-in character, a space
//! is `Ġ`, a newline `Ċ`).
//!
//! Used to resolve the rule adapter's token lists, written as text, to ids of any vocabulary
//! (" I" is `▁I` in Llama-2 and `ĠI` in OLMo), and to show a token's bytes in logprobs.

use crate::io::tokenizer::Tokenizer;
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VocabStyle {
    SentencePiece,
    ByteLevel,
}

pub struct VocabText {
    pub style: VocabStyle,
    /// GPT-2's `bytes_to_unicode`: byte -> stand-in character, and back.
    byte_char: [char; 256],
    char_byte: HashMap<char, u8>,
}

/// GPT-2's reversible byte -> character table: printable Latin-1 bytes stand for themselves,
/// the others (controls, space, a few) are shifted to U+0100 and up, in byte order.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        table[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(next).expect("U+0100.. are characters");
            next += 1;
            c
        };
    }
    table
}

impl VocabText {
    /// Tells the style from how the tokenizer spells a space: `▁b` or `Ġb` in "a b".
    pub fn detect(tok: &Tokenizer) -> VocabText {
        let byte_char = bytes_to_unicode();
        let spelled: String = tok
            .encode("a b")
            .unwrap_or_default()
            .iter()
            .filter_map(|&id| tok.id_to_token(id))
            .collect();
        let style = if spelled.contains('▁') || !spelled.contains('Ġ') {
            VocabStyle::SentencePiece
        } else {
            VocabStyle::ByteLevel
        };
        VocabText {
            style,
            byte_char,
            char_byte: byte_char
                .iter()
                .enumerate()
                .map(|(b, &c)| (c, b as u8))
                .collect(),
        }
    }

    /// The vocabulary entry that spells exactly `text` as one token, if there is one: " I" is
    /// `▁I` (SentencePiece) or `ĠI` (byte-level); "\n" is `<0x0A>` or `Ċ`.
    pub fn lookup(&self, tok: &Tokenizer, text: &str) -> Option<u32> {
        if text.is_empty() {
            return None;
        }
        match self.style {
            VocabStyle::SentencePiece => tok.token_id(&text.replace(' ', "▁")).or_else(|| {
                // Byte fallback: a single byte outside the vocabulary is `<0xNN>`.
                let [b] = text.as_bytes() else { return None };
                tok.token_id(&format!("<0x{b:02X}>"))
            }),
            VocabStyle::ByteLevel => {
                let spelled: String = text.bytes().map(|b| self.byte_char[b as usize]).collect();
                tok.token_id(&spelled).or_else(|| tok.token_id(text))
            }
        }
    }

    /// The bytes token `id` stands for (special tokens: their name, e.g. `</s>`).
    pub fn token_bytes(&self, tok: &Tokenizer, id: u32) -> Vec<u8> {
        let Some(s) = tok.id_to_token(id) else {
            return Vec::new();
        };
        match self.style {
            VocabStyle::SentencePiece => {
                let hex = s
                    .strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .filter(|h| h.len() == 2);
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => vec![b],
                    None => s.replace('▁', " ").into_bytes(),
                }
            }
            VocabStyle::ByteLevel => s
                .chars()
                .map(|c| self.char_byte.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .unwrap_or_else(|| s.into_bytes()),
        }
    }

    /// A token as text, for display (invalid UTF-8 of a partial character replaced by U+FFFD).
    pub fn token_text(&self, tok: &Tokenizer, id: u32) -> String {
        String::from_utf8_lossy(&self.token_bytes(tok, id)).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::bytes_to_unicode;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = bytes_to_unicode();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'A' as usize], 'A');
        assert_eq!(t[0xAD], 'Ń');
        let mut seen: Vec<char> = t.to_vec();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 256, "a bijection");
    }
}
