//! `onhand verify`: recomputes every level from the recorded movements and compares it
//! with what is stored, checks reserved units, the outbox, publications and the ledger's
//! lag, and with `--against FILE` compares the levels with an outside system's snapshot.
//! Exits 1 on any problem, 0 when everything is right. The work is
//! `onhand_core::ops::verify`; this is its command line.

use std::{fmt::Write as _, io::BufReader, path::PathBuf};

use anyhow::Context as _;
use onhand_core::ops::verify::{self, Against, Report, Snapshot, Tolerance};

use super::{Exit, Target};

/// The arguments of `onhand verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Compares the levels with an outside system's snapshot too (an ERP or WMS export,
    /// Shopify's levels): CSV sku,location,quantity, with or without that header.
    #[arg(long, value_name = "FILE")]
    pub against: Option<PathBuf>,
    /// How old an outbox record, or a level not yet published, may be before it is a problem.
    #[arg(long, default_value_t = 60)]
    pub grace_s: u32,
    /// How many movements the ledger may be behind on a partition before it is a problem.
    #[arg(long, default_value_t = 1000)]
    pub lag_max: i64,
    #[command(flatten)]
    pub target: Target,
}

pub async fn run(args: Args) -> anyhow::Result<Exit> {
    let config = args.target.config()?;
    let snapshot = match &args.against {
        Some(path) => {
            let file = std::fs::File::open(path).with_context(|| format!("{}: cannot be read", path.display()))?;
            Some(Snapshot::read(&path.display().to_string(), BufReader::new(file))?)
        }
        None => None,
    };
    let db = crate::boot::db(&config, 2).await?;
    let tolerance = Tolerance { grace: chrono::Duration::seconds(args.grace_s.into()), lag_max: args.lag_max };
    let bar = args.target.progress();
    let (mut report, saved) = verify::verify(&*db, snapshot, tolerance, &bar).await?;
    let (group, topic) = (&config.ledger.group_id, &config.kafka.topics.movements);
    verify::lag(&mut report, &config.kafka, group, topic, &saved, args.lag_max).await;
    args.target.print(&report, render)?;
    Ok(if report.problems == 0 { Exit::Ok } else { Exit::Problems })
}

fn render(report: &Report) -> String {
    let mut out = String::new();
    for d in &report.drifts {
        let found = d.found.map_or("no level".to_string(), |f| f.to_string());
        let by = d.found.map(|f| format!(" ({:+})", f - d.expected)).unwrap_or_default();
        let source = d.source.as_deref().unwrap_or("no movement");
        let _ = writeln!(
            out,
            "drift     {}  expected {}  found {found}{by}  [{}]  last moved by {source}",
            d.level,
            d.expected,
            d.differs.join(", ")
        );
    }
    for r in &report.refused {
        let _ = writeln!(out, "refused   {}  {}: {}", r.level, r.event_id, r.reason);
    }
    for r in &report.reserved {
        let _ = writeln!(out, "reserved  {}  reserved {}  held by reservations {}", r.level, r.reserved, r.held);
    }
    if let Some(outbox) = &report.outbox {
        let age = outbox.oldest_age_s.map(|s| format!(", the oldest {s} s old")).unwrap_or_default();
        let stuck = if outbox.stuck { "  STUCK: is the relay of onhand serve running?" } else { "" };
        let _ = writeln!(out, "outbox    {} record(s){age}{stuck}", outbox.records);
    }
    let unpublished = &report.unpublished;
    let _ = writeln!(out, "unpublished {} level(s), {} overdue", unpublished.levels, unpublished.overdue);
    for level in &unpublished.overdue_levels {
        let _ = writeln!(out, "  overdue {level}");
    }
    render_lag(&mut out, report);
    if let Some(against) = &report.against {
        render_against(&mut out, against);
    }
    let against = report.against.as_ref().map(|a| format!(", {} difference(s) from {}", a.differences.len(), a.file));
    let _ = writeln!(
        out,
        "{} level(s) and {} movement(s) verified: {} drift(s), {} refused, {} reserved drift(s){}; {}",
        report.levels,
        report.movements,
        report.drifts.len(),
        report.refused.len(),
        report.reserved.len(),
        against.unwrap_or_default(),
        match report.problems {
            0 => "no problem".to_string(),
            n => format!("{n} problem(s)"),
        }
    );
    out
}

fn render_lag(out: &mut String, report: &Report) {
    let lag = &report.lag;
    if !lag.checked {
        let note = lag.note.as_deref().unwrap_or("not asked");
        let _ = writeln!(out, "lag       not checked: {note}");
        return;
    }
    for p in &lag.partitions {
        let saved = p.saved.map_or("none".to_string(), |s| s.to_string());
        let behind = if p.behind { "  BEHIND" } else { "" };
        let _ = writeln!(
            out,
            "lag       {} on {}:{}  saved {saved}  end {}  lag {}{behind}",
            p.group_id, p.topic, p.partition, p.end, p.lag
        );
    }
}

fn render_against(out: &mut String, against: &Against) {
    let _ = writeln!(
        out,
        "against   {}: {} level(s), {} matching, {} different; {} level(s) with stock in onhand are not in the file",
        against.file,
        against.rows,
        against.matching,
        against.differences.len(),
        against.not_in_file
    );
    for d in &against.differences {
        let _ = writeln!(
            out,
            "  {:<32} onhand {:>8}  outside {:>8}  {:>+8}  {:<7} {}",
            d.level, d.onhand, d.outside, d.difference, d.size, d.source
        );
    }
    if !against.differences.is_empty() {
        let _ = writeln!(out, "  by source:       levels    units");
        for (source, group) in &against.by_source {
            let _ = writeln!(out, "    {source:<16} {:>6} {:>8}", group.levels, group.units);
        }
        let _ = writeln!(out, "  by size:         levels    units");
        for bucket in &against.by_size {
            let _ = writeln!(out, "    {:<16} {:>6} {:>8}", bucket.size, bucket.levels, bucket.units);
        }
    }
}
