//! `implicit serve` (placeholder until the server lands).

use crate::error::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ServeArgs {
    /// Model folder.
    #[arg(long)]
    model: PathBuf,
}

pub fn run(args: ServeArgs) -> Result<()> {
    crate::bail!("serve: not implemented yet ({})", args.model.display())
}
