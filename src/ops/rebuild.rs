//! `onhand rebuild`: recomputes the levels from the recorded movements and writes back
//! those that drifted, in one transaction during which the ledger waits, then publishes
//! them. Without `--yes` it says what it would write and exits 3. The work is
//! `onhand_core::ops::rebuild`; this is its command line.

use std::{fmt::Write as _, time::Duration};

use onhand_core::{
    kafka,
    ops::{
        rebuild::{self, Publication},
        verify::Drift,
    },
};
use serde::Serialize;

use super::{Exit, Target};

/// The arguments of `onhand rebuild`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Writes the levels; without it the command says what it would write and exits 3.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub target: Target,
}

/// What `onhand rebuild` did, or would do.
#[derive(Debug, Serialize)]
struct Report {
    /// Whether the levels were written.
    written: bool,
    /// The levels that drifted: written when `written`, else to be written.
    levels: Vec<Drift>,
    /// The stock topic's answer, once written; `None` without brokers.
    publication: Option<Publication>,
    stock_topic: String,
}

pub async fn run(args: Args) -> anyhow::Result<Exit> {
    let config = args.target.config()?;
    let db = crate::boot::db(&config, 2).await?;
    let bar = args.target.progress();
    let stock_topic = config.kafka.topics.stock.clone();
    if !args.yes {
        let levels = rebuild::plan(&*db, &bar).await?;
        let report = Report { written: false, levels, publication: None, stock_topic };
        args.target.print(&report, render)?;
        return Ok(if report.levels.is_empty() { Exit::Ok } else { Exit::NotConfirmed });
    }
    let rebuilt = rebuild::rebuild(&*db, &bar).await?;
    // Once committed, the levels are published; without brokers (onhand dev stopped) they
    // stay unpublished in the database, and the ledger publishes them when it starts.
    let publication = if config.kafka.brokers.trim().is_empty() {
        None
    } else {
        let producer = kafka::Producer::new(&config.kafka, Duration::from_millis(20))?;
        Some(rebuild::publish(&*db, &producer, &stock_topic, &rebuilt.written).await)
    };
    let failed = publication.as_ref().is_some_and(|p| p.failed > 0);
    let report = Report { written: true, levels: rebuilt.rewritten, publication, stock_topic };
    args.target.print(&report, render)?;
    Ok(if failed { Exit::Problems } else { Exit::Ok })
}

fn render(report: &Report) -> String {
    let verb = if report.written { "rewrote" } else { "would rewrite" };
    let mut out = format!("{verb} {} level(s)", report.levels.len());
    out.push_str(if report.written { ", the ledger paused meanwhile\n" } else { "\n" });
    for d in &report.levels {
        let found = d.found.map_or("no level".to_string(), |f| f.to_string());
        let _ = writeln!(out, "  {}  on_hand {found} -> {}  [{}]", d.level, d.expected, d.differs.join(", "));
    }
    match (&report.publication, report.written) {
        (_, false) if !report.levels.is_empty() => {
            out.push_str(
                "nothing written: run again with --yes to write them (the ledger waits while they are written; \
                 reserved units and stock policies are kept)\n",
            );
        }
        (Some(p), true) => {
            let _ = writeln!(out, "published {} level(s) on {}, {} failed", p.published, report.stock_topic, p.failed);
            if p.failed > 0 {
                out.push_str("the levels not published stay unpublished; the ledger's sweep publishes them\n");
            }
        }
        (None, true) if !report.levels.is_empty() => {
            out.push_str("no brokers: the levels stay unpublished until the ledger starts and publishes them\n");
        }
        _ => {}
    }
    out
}
