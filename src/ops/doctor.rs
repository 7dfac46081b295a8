//! `onhand doctor`: (being built).

use super::{Exit, Target};

/// The arguments of `onhand doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
}

pub async fn run(args: Args) -> anyhow::Result<Exit> {
    let _config = args.target.config()?;
    anyhow::bail!("onhand doctor is not built yet")
}
