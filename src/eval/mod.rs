//! The paper's evaluations.
//!
//! * [`ranking`]: response ranking (Section 4.2 of the paper): does the model score an
//!   instruction's own response above responses to other instructions?
//! * [`judge`]: AlpacaEval 2's pairwise judge (`weighted_alpaca_eval_gpt4_turbo`) against an
//!   OpenAI-compatible endpoint ([`endpoint`], over [`http`]: ureq, http or https, retries) or a
//!   model run in-process ([`judge_local`]); an endpoint's replies are kept in a [`journal`] so
//!   that a rerun resumes.
//! * [`winrate`]: AlpacaEval's raw win rate with its standard error, and the length-controlled
//!   win rate through a logistic GLM ([`glm`]).
//! * [`pyrandom`]: CPython's `random` module, which both protocols use to draw and to swap.

pub mod endpoint;
pub mod glm;
pub mod http;
pub mod journal;
pub mod judge;
pub mod judge_local;
pub mod pyrandom;
pub mod ranking;
pub mod sha512;
pub mod winrate;

use crate::error::{Context, Result};
use crate::io::atomic::write_atomic;
use std::path::Path;

/// Progress on stderr for ranking and judging (see [`crate::progress`]).
pub use crate::progress::Progress;

/// Writes `value` as pretty JSON to `out` atomically (see [`write_atomic`]), so an interrupted
/// run never leaves half a file behind.
pub fn write_json_atomic<T: serde::Serialize>(out: &Path, value: &T) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(value)
        .with_context(|| format!("{}: cannot write JSON", out.display()))?;
    json.push(b'\n');
    write_atomic(out, &json)
}

/// Reads and parses a JSON file; errors name the file (and serde's line and column).
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}
