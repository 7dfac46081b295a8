//! `onhand rebuild`: (being built).

use super::{Exit, Target};

/// The arguments of `onhand rebuild`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
}

pub async fn run(args: Args) -> anyhow::Result<Exit> {
    let _config = args.target.config()?;
    anyhow::bail!("onhand rebuild is not built yet")
}
