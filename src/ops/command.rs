//! The list of the operator's commands, apart from what they share (`ops`), which each
//! command's file imports.

use super::{dlq, doctor, rebuild, replay, verify, Exit};

/// The operator's commands, as `onhand` lists them.
#[derive(Debug, clap::Subcommand)]
pub enum Operation {
    /// Recomputes every level from the movements and compares: exits 1 on any drift.
    Verify(verify::Args),
    /// Recomputes the levels from the movements and swaps them in, the ledger paused.
    Rebuild(rebuild::Args),
    /// Reads again what Kafka or a source already gave: consumer groups, connector cursors.
    Replay(replay::Args),
    /// The dead-letter topic: list, show, and send records back once their cause is fixed.
    Dlq(dlq::Args),
    /// Checks a deployment end to end and says what is wrong and how to fix it.
    Doctor(doctor::Args),
}

/// Runs `operation`.
pub async fn run(operation: Operation) -> anyhow::Result<Exit> {
    match operation {
        Operation::Verify(args) => verify::run(args).await,
        Operation::Rebuild(args) => rebuild::run(args).await,
        Operation::Replay(args) => replay::run(args).await,
        Operation::Dlq(args) => dlq::run(args).await,
        Operation::Doctor(args) => doctor::run(args).await,
    }
}
