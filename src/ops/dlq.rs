//! `onhand dlq list|show|redrive`: the dead-letter topic for people. `list` reads it
//! whole and filters by the `onhand.dlq.*` headers, `show` prints one record whole, and
//! `redrive` sends chosen records back to the movements topic (their event ids kept, so
//! twice is harmless) once their cause is fixed, then reports what each became. The work
//! is `onhand_core::ops::dlq`; this is its command line, and the connectors' part of a
//! redrive ([`Connectors`]), which core cannot name.

use std::{fmt::Write as _, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use onhand_connectors::{erp, pos, shopify};
use onhand_core::{
    config::Config,
    db::Catalog,
    event::Movement,
    kafka,
    ops::dlq::{self, Filter, Followed, Letter, Listing, Outcome, Plan, Position, Remap, Shown},
};
use serde::Serialize;

use super::{Exit, Target};

/// The arguments of `onhand dlq`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// One line per dead letter (position, time, reason, source, event id, sku@location)
    /// and a summary by reason and source.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Lines printed at most; the summary counts every record the filter keeps.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// One dead letter whole: headers, key, payload.
    Show {
        /// PARTITION:OFFSET, as `onhand dlq list` prints it.
        position: String,
    },
    /// Sends dead letters back to the movements topic, their event ids kept, and reports
    /// which were recorded, which failed again and which are still pending.
    Redrive {
        /// PARTITION:OFFSET of each record; or choose them with the filter options.
        positions: Vec<String>,
        #[command(flatten)]
        filter: FilterArgs,
        /// How long to wait for each record's outcome.
        #[arg(long, default_value_t = 60)]
        wait_s: u64,
        /// Send them; without it the command says what it would send and exits 3.
        #[arg(long)]
        yes: bool,
    },
}

/// Which dead letters, by their headers.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// Only this reason code (onhand.dlq.reason_code), e.g. shopify_unmapped_sku.
    #[arg(long = "reason")]
    reason_code: Option<String>,
    /// Only this source (onhand.dlq.source): the movements topic, erp, shopify, pos:STORE.
    #[arg(long)]
    source: Option<String>,
    /// Only records dead-lettered at or after this time (RFC 3339, 2026-11-20T18:00:00Z).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Only records dead-lettered before this time (RFC 3339).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
}

impl From<FilterArgs> for Filter {
    fn from(a: FilterArgs) -> Filter {
        Filter { reason_code: a.reason_code, source: a.source, since: a.since, until: a.until }
    }
}

pub async fn run(args: Args) -> anyhow::Result<Exit> {
    let config = args.target.config()?;
    match args.command {
        Command::List { filter, limit } => {
            let listing = dlq::list(&config.kafka, filter.into(), limit, &args.target.progress()).await?;
            args.target.print(&listing, render_listing)?;
            Ok(Exit::Ok)
        }
        Command::Show { position } => {
            let position: Position = position.parse()?;
            let letters = dlq::fetch(&config.kafka, &[position], &args.target.progress()).await?;
            let shown = Shown::of(&letters[0]);
            args.target.print(&shown, render_shown)?;
            Ok(Exit::Ok)
        }
        Command::Redrive { positions, filter, wait_s, yes } => {
            let redrive = Redrive { positions, filter: filter.into(), wait: Duration::from_secs(wait_s), yes };
            redrive.run(&config, &args.target).await
        }
    }
}

fn render_listing(listing: &Listing) -> String {
    let mut out = String::new();
    for line in &listing.records {
        let failed_at = line.failed_at.as_deref().unwrap_or("-");
        let _ =
            write!(out, "{:<9} {failed_at}  {:<26} {:<22}", line.position.to_string(), line.reason_code, line.source);
        if let Some(id) = &line.event_id {
            let _ = write!(out, " {id}");
        }
        if let Some(level) = &line.level {
            let _ = write!(out, " {level}");
        }
        let _ = writeln!(out);
    }
    if (listing.records.len() as u64) < listing.matched {
        let _ = writeln!(out, "... {} more (--limit)", listing.matched - listing.records.len() as u64);
    }
    let _ = writeln!(out, "{} of {} dead letters in {} match", listing.matched, listing.read, listing.topic);
    for (title, counts) in [("by reason", &listing.by_reason), ("by source", &listing.by_source)] {
        if !counts.is_empty() {
            let _ = writeln!(out, "{title}:");
            for (name, n) in counts {
                let _ = writeln!(out, "  {n:>8}  {name}");
            }
        }
    }
    out
}

fn render_shown(shown: &Shown) -> String {
    let mut out = format!("position  {}\n", shown.position);
    for (name, value) in &shown.headers {
        let _ = writeln!(out, "header    {name}: {value}");
    }
    let key = match (&shown.key, shown.key_base64) {
        (None, _) => "(none)".to_string(),
        (Some(key), false) => key.clone(),
        (Some(key), true) => format!("{key} (base64)"),
    };
    let _ = writeln!(out, "key       {key}");
    if let Some(truncated) = &shown.truncated {
        let _ = writeln!(out, "TRUNCATED {truncated}");
    }
    let _ = writeln!(out, "payload   {} bytes, {}:", shown.payload_bytes, shown.payload_format);
    let payload = match &shown.payload {
        serde_json::Value::String(text) if shown.payload_format != "json" => text.clone(),
        json => serde_json::to_string_pretty(json).unwrap_or_default(),
    };
    let _ = writeln!(out, "{payload}");
    out
}

/// One `onhand dlq redrive`.
struct Redrive {
    positions: Vec<String>,
    filter: Filter,
    wait: Duration,
    yes: bool,
}

/// What `onhand dlq redrive` did, or would do.
#[derive(Debug, Serialize)]
struct RedriveReport {
    #[serde(flatten)]
    plan: Plan,
    sent: bool,
    outcomes: Vec<Followed>,
    recorded: usize,
    failed_again: usize,
    pending: usize,
}

/// How long a record sent back may wait in the producer's queue.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

impl Redrive {
    async fn run(self, config: &Config, target: &Target) -> anyhow::Result<Exit> {
        let letters = self.letters(config, target).await?;
        let db = crate::boot::db(config, 2).await?;
        let connectors = Connectors { config: config.clone(), catalog: db.clone() };
        let plan = dlq::plan(&config.kafka, &letters, &connectors).await;
        let mut report =
            RedriveReport { plan, sent: false, outcomes: Vec::new(), recorded: 0, failed_again: 0, pending: 0 };
        if !self.yes || report.plan.sends.is_empty() {
            target.print(&report, |r| render_plan(&r.plan, !r.plan.sends.is_empty()))?;
            return Ok(match (report.plan.sends.is_empty(), report.plan.refused.is_empty()) {
                (false, _) => Exit::NotConfirmed,
                (true, true) => Exit::Ok,
                (true, false) => Exit::Problems,
            });
        }
        // The dead-letter topic's ends before anything is sent: a dead letter after them
        // with a sent event id is that record failing again.
        let starts = dlq::ends(&config.kafka, &config.kafka.topics.dlq).await?;
        let producer = kafka::Producer::new(&config.kafka, Duration::from_millis(20))?;
        dlq::send(&producer, &report.plan, SEND_TIMEOUT, &target.progress()).await?;
        report.sent = true;
        report.outcomes = dlq::follow(&config.kafka, &*db, &report.plan, starts, self.wait, &target.progress()).await?;
        for followed in &report.outcomes {
            match followed.outcome {
                Outcome::Recorded => report.recorded += 1,
                Outcome::FailedAgain { .. } => report.failed_again += 1,
                Outcome::Pending => report.pending += 1,
            }
        }
        target.print(&report, render_outcomes)?;
        let clean = report.failed_again == 0 && report.pending == 0 && report.plan.refused.is_empty();
        Ok(if clean { Exit::Ok } else { Exit::Problems })
    }

    async fn letters(&self, config: &Config, target: &Target) -> anyhow::Result<Vec<Letter>> {
        match (self.positions.is_empty(), self.filter.is_empty()) {
            (false, false) => anyhow::bail!("name records (PARTITION:OFFSET ...) or filter them, not both"),
            (true, true) => anyhow::bail!(
                "name the records to send (PARTITION:OFFSET ...) or choose them with --reason, --source, --since, --until"
            ),
            (false, true) => {
                let positions = self.positions.iter().map(|p| p.parse()).collect::<Result<Vec<Position>, _>>()?;
                Ok(dlq::fetch(&config.kafka, &positions, &target.progress()).await?)
            }
            (true, false) => Ok(dlq::select(&config.kafka, &self.filter, &target.progress()).await?),
        }
    }
}

fn render_plan(plan: &Plan, confirm: bool) -> String {
    let mut out = format!("{} record(s) to send to {}", plan.sends.len(), plan.movements_topic);
    let _ = writeln!(out, ", {} refused", plan.refused.len());
    for out_record in &plan.sends {
        let _ = writeln!(out, "  send    {:<9} {}", out_record.from.to_string(), out_record.event_id);
    }
    render_refused(&mut out, plan);
    if confirm {
        let _ = writeln!(
            out,
            "nothing sent: run again with --yes to send them (sending a record twice is harmless: the ledger skips an \
             event id it recorded)"
        );
    }
    out
}

fn render_refused(out: &mut String, plan: &Plan) {
    for refused in &plan.refused {
        let _ = writeln!(
            out,
            "  refused {:<9} {} from {}: {}",
            refused.from.to_string(),
            refused.reason_code,
            refused.source,
            refused.why
        );
    }
}

fn render_outcomes(report: &RedriveReport) -> String {
    let mut out = format!("sent {} record(s) to {}\n", report.plan.sends.len(), report.plan.movements_topic);
    for followed in &report.outcomes {
        let from = followed.from.to_string();
        let _ = match &followed.outcome {
            Outcome::Recorded => writeln!(out, "  recorded     {from:<9} {}", followed.event_id),
            Outcome::FailedAgain { at, reason_code, reason } => {
                writeln!(out, "  failed again {from:<9} {} at {at}: {reason_code}: {reason}", followed.event_id)
            }
            Outcome::Pending => writeln!(out, "  pending      {from:<9} {}", followed.event_id),
        };
    }
    render_refused(&mut out, &report.plan);
    let _ = writeln!(
        out,
        "{} recorded, {} failed again, {} pending, {} refused (a record recorded before counts once: its event id repeats)",
        report.recorded,
        report.failed_again,
        report.pending,
        report.plan.refused.len()
    );
    out
}

/// The connectors' part of a redrive: a connector's dead letter is its outside system's
/// record, which only the connector can map again, or whose way back it names.
struct Connectors {
    config: Config,
    catalog: Arc<dyn Catalog>,
}

#[async_trait]
impl Remap for Connectors {
    async fn remap(&self, letter: &Letter) -> Option<Result<Vec<Movement>, String>> {
        let source = letter.source();
        if source == shopify::NAME {
            return Some(self.shopify(letter).await);
        }
        let why = if source == erp::NAME {
            "an ERP journal row: fix [connectors.erp.kinds] or [connectors.erp.locations], then move the ERP cursor \
             back (onhand replay connector erp --since T) to read it again"
        } else if source.starts_with(&format!("{}:", pos::NAME)) {
            "a line a store agent forwarded that is no POS line: fix the till's export and let the store send it again"
        } else {
            return None;
        };
        Some(Err(why.to_string()))
    }
}

impl Connectors {
    async fn shopify(&self, letter: &Letter) -> Result<Vec<Movement>, String> {
        let Some(section) = self.config.connectors.get(shopify::NAME) else {
            return Err(
                "[connectors.shopify] is not in this configuration: run with the deployment's (--config)".into()
            );
        };
        let config = shopify::config::ShopifyConfig::from_section(&self.config, section).map_err(|e| e.to_string())?;
        let (code, reason) = (letter.reason_code(), letter.reason());
        shopify::redrive::remap(&config, &*self.catalog, &letter.payload, code, reason).await
    }
}
