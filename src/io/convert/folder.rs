//! What is in an output folder of `convert-gguf`: entries, the files a model folder is made
//! of (what --overwrite replaces), and the staging files of an interrupted conversion.

use crate::error::Result;
use std::fs;
use std::path::Path;

/// Whether a name is a staging file an earlier conversion left (`Staged`'s names), which is
/// neither content nor kept.
pub(super) fn is_staging_leftover(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Whether a file of a model folder is one that loading reads (weights, their index, config,
/// tokenizer, chat template): what `--overwrite` removes so that no part of the old model
/// survives beside the new one.
pub(super) fn is_model_file(name: &str) -> bool {
    name.ends_with(".safetensors")
        || name.ends_with(".safetensors.index.json")
        || [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "tokenizer.model",
            "special_tokens_map.json",
            "added_tokens.json",
            "chat_template.jinja",
        ]
        .contains(&name)
        || is_staging_leftover(name)
}

/// The entries of `dir` (none when it does not exist), by name.
pub(super) fn entries(dir: &Path) -> Result<Vec<String>> {
    match fs::read_dir(dir) {
        Ok(list) => Ok(list
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => crate::bail!("{}: cannot list: {e}", dir.display()),
    }
}
