//! Reading and writing model files: safetensors (memory-mapped), GGUF, tokenizers.

pub mod atomic;
pub mod chat_template;
pub mod convert;
pub mod digest;
pub mod gguf;
pub mod safetensors;
pub mod tokenizer;
