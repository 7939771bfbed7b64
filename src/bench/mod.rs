//! `implicit bench`: measurements on the GPU against references measured in the same run, out
//! of the runtime library's way (`cli::bench` holds only the commands' arguments):
//!
//! - `kernels`: every CUDA kernel at the paper's shapes (Llama-2-7B: d 4096, FFN 11008, 32
//!   heads of 128, sequences of 2048, vocab 32000), timed with CUDA events ([`timing`]),
//!   against the device-to-device copy bandwidth, cuBLAS and PyTorch's SDPA;
//! - `generate`: greedy decoding tokens/s of a model folder at several batch sizes, and its
//!   load time, beside transformers' `generate`;
//! - `train`: full finetuning steps of a model shape: tokens/s, MFU and peak memory, beside
//!   PyTorch's;
//! - `record`: the commit, command line and date every report carries; `inputs`: random
//!   device buffers and the rates' units.
//!
//! The measuring needs the `cuda` feature; without it each command still checks its arguments
//! (and reads its reference files), then says the binary was built without CUDA. The figures'
//! arithmetic, tables and JSON need no GPU and are unit-tested on every build.

pub mod generate;
#[cfg(feature = "cuda")]
mod inputs;
pub mod kernels;
pub(crate) mod record;
#[cfg(feature = "cuda")]
pub mod timing;
pub mod train;
