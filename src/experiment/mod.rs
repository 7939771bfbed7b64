//! `implicit experiment`: one config reproduces the paper's tables (Hewitt et al., 2024) for a
//! set of models: the grid of settings × seeds with the paper's epoch selection, every
//! evaluation, and tables and plots traceable to their artifacts. Resumable and idempotent:
//! see [`store`].

pub mod config;
pub mod figures;
pub mod layout;
pub mod plan;
pub mod rates;
pub mod report;
pub mod run;
mod setting;
pub mod similarity;
pub mod store;

pub use config::{ExperimentConfig, Setting};
pub use run::{run_experiment, RunOptions};
