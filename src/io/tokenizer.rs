//! tokenizer.json through the `tokenizers` crate, with the model's BOS/EOS and the paper's
//! chat format.

use crate::bail;
use crate::error::{Context, Result};
use crate::model::{Architecture, ModelConfig};
use std::path::{Path, PathBuf};

/// The paper's chat template (Tulu): `<|user|>\n{instruction}\n<|assistant|>\n`, which the
/// experiments use for every model (`io::chat_template` renders a model's own template).
pub fn chat_prompt(instruction: &str) -> String {
    format!("<|user|>\n{instruction}\n<|assistant|>\n")
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub path: PathBuf,
    /// Prepended to every prompt when the model has one (Llama `<s>`).
    pub bos: Option<u32>,
    /// Generation stops at any of these.
    pub eos: Vec<u32>,
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json`; BOS and EOS come from the model's config, except that OLMo
    /// begins and ends with `|||IP_ADDRESS|||`, as the paper's code does.
    pub fn load(dir: &Path, config: &ModelConfig) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            bail!(
                "{}: missing tokenizer (tokenizer.json not found)",
                path.display()
            );
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| crate::Error(format!("{}: cannot load tokenizer: {e}", path.display())))?;
        // Llama's tokenizer adds BOS, byte-level BPE ones (GPT-2 style) do not:
        // tokenizer_config.json's add_bos_token says which, as in transformers.
        let bos = if add_bos_token(dir)? {
            config.bos_token_id
        } else {
            None
        };
        let mut tok = Tokenizer {
            inner,
            path,
            bos,
            eos: config.eos_token_ids.clone(),
        };
        if config.arch == Architecture::Olmo {
            let id = tok.token_id("|||IP_ADDRESS|||").with_context(|| {
                format!(
                    "{}: OLMo tokenizer has no |||IP_ADDRESS||| token (the paper's EOS)",
                    tok.path.display()
                )
            })?;
            // The paper's code uses it as both BOS and EOS for OLMo.
            tok.eos = vec![id];
            tok.bos = Some(id);
        }
        Ok(tok)
    }

    /// A tokenizer.json with BOS and EOS given explicitly (no model folder), e.g. for tests.
    pub fn open(path: &Path, bos: Option<u32>, eos: Vec<u32>) -> Result<Tokenizer> {
        Ok(Tokenizer {
            inner: Tokenizer::from_file(path)?,
            path: path.to_path_buf(),
            bos,
            eos,
        })
    }

    /// The string of token `id` in the vocabulary (e.g. "</s>").
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Loads a tokenizer.json on its own (no model), e.g. to test a vocabulary.
    pub fn from_file(path: &Path) -> Result<tokenizers::Tokenizer> {
        tokenizers::Tokenizer::from_file(path)
            .map_err(|e| crate::Error(format!("{}: cannot load tokenizer: {e}", path.display())))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`, without special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| crate::Error(format!("{}: cannot encode: {e}", self.path.display())))?;
        Ok(enc.get_ids().to_vec())
    }

    /// BOS (if any) followed by the tokens of `text`.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self.bos.into_iter().collect();
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| crate::Error(format!("{}: cannot decode: {e}", self.path.display())))
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos.contains(&id)
    }
}

/// `add_bos_token` of dir/tokenizer_config.json; true when the file or the key is absent.
fn add_bos_token(dir: &Path) -> Result<bool> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(true);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    Ok(v.get("add_bos_token")
        .and_then(|b| b.as_bool())
        .unwrap_or(true))
}

/// Turns a growing list of token ids into text pieces as they arrive, holding back bytes of an
/// unfinished UTF-8 character (byte-fallback and byte-level vocabularies split characters).
pub struct StreamDecoder {
    ids: Vec<u32>,
    printed: usize,
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder {
            ids: Vec::new(),
            printed: 0,
        }
    }

    /// Adds a token and returns the newly completed text, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = tok.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}')
            || text.len() < self.printed
            || !text.is_char_boundary(self.printed)
        {
            return Ok(String::new());
        }
        let new = text[self.printed..].to_string();
        self.printed = text.len();
        Ok(new)
    }
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}
