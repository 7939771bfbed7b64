//! implicit: a native transformer runtime for the experiments of
//! "Instruction Following without Instruction Tuning" (Hewitt et al., 2024).

pub mod adapter;
pub mod autograd;
pub mod backend;
pub mod bench;
pub mod cli;
pub mod data;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod generate;
pub mod io;
pub mod model;
pub mod optim;
pub mod plot;
pub mod progress;
pub mod serve;
pub mod tensor;
pub mod toml_file;
pub mod train;

#[cfg(test)]
mod testutil;

pub use error::{Error, Result};
