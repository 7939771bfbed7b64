//! `implicit eval` (placeholder until the evaluations land).

use crate::error::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Response ranking.
    Ranking,
}

pub fn run(cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Ranking => crate::bail!("eval ranking: not implemented yet"),
    }
}
