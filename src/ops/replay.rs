//! `onhand replay group|connector`: reads again what Kafka or a source already gave. A
//! consumer group moved back on its topic (`onhand_core::ops::replay`: the ledger's in
//! the database, any other in Kafka), the ERP connector's cursor moved back
//! (`onhand_connectors::erp::replay`), an archived WMS file taken again
//! (`onhand_connectors::wms::replay`). Each says first what it will do and how many
//! records are read again, and does it only with `--yes`: harmless by construction, since
//! every record read again carries the event id it had, which the ledger skips.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use onhand_connectors::{erp, section, wms};
use onhand_core::{
    config::Config,
    ops::{
        dlq::Position,
        replay::{self, Keeper, Members, Plan, Request, To},
    },
};
use serde::Serialize;

use super::{Exit, Target};

/// The arguments of `onhand replay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Moves a consumer group back on a topic, so that its consumers read those records
    /// again; refused while the group has live members.
    Group {
        /// The consumer group: the ledger's ([ledger] group_id), the Shopify sink's, any.
        name: String,
        /// The topic: its name, or `movements` or `stock` for the configured ones.
        #[arg(long)]
        topic: String,
        #[command(flatten)]
        to: ToArgs,
        /// The broker cannot describe groups (tansu): its members are stopped, says the
        /// operator.
        #[arg(long)]
        members_stopped: bool,
        /// Move it; without it the command says what it would do and exits 3.
        #[arg(long)]
        yes: bool,
    },
    /// Reads a connector's source again.
    Connector {
        #[command(subcommand)]
        connector: ConnectorReplay,
    },
}

/// Where a group goes: one of the three.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct ToArgs {
    /// The first record at or after this time, in every partition (RFC 3339).
    #[arg(long)]
    to_time: Option<DateTime<Utc>>,
    /// PARTITION:OFFSET, once per partition moved; the others stay.
    #[arg(long, value_name = "P:O")]
    to_offset: Vec<String>,
    /// The oldest record each partition keeps.
    #[arg(long)]
    to_earliest: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum ConnectorReplay {
    /// Moves the ERP poller's cursor back, so that it reads the journal's rows changed at
    /// or after a time again. Run it while the connector is stopped.
    Erp {
        /// The change time from which rows are read again (RFC 3339).
        #[arg(long)]
        since: DateTime<Utc>,
        /// Move it; without it the command says what it would do and exits 3.
        #[arg(long)]
        yes: bool,
    },
    /// Takes an archived WMS file again: copied back into the inbox.
    Wms {
        /// The archived file: its path, or its name in the archive.
        file: PathBuf,
        /// The inbox, replacing [connectors.wms] inbox (as `onhand connector wms --inbox`).
        #[arg(long)]
        inbox: Option<PathBuf>,
        /// Copy it; without it the command says what it would do and exits 3.
        #[arg(long)]
        yes: bool,
    },
}

/// Why reading again is harmless, said by every command: `gives` is what a record read
/// again gives the ledger.
fn harmless(gives: &str) -> String {
    format!("replaying is harmless: {gives}, and the ledger skips an event id it recorded")
}

const GROUP_GIVES: &str = "every record read again carries the event id it had (a level on the stock topic, its \
                           version, which readers compare)";
const ERP_GIVES: &str = "every row read again gives the event id it gave (erp:ROW ID)";
const WMS_GIVES: &str = "every line read again gives the event id it gave (wms:SHA-256:LINE, whatever the file's name)";

pub async fn run(args: Args) -> anyhow::Result<Exit> {
    let config = args.target.config()?;
    match args.command {
        Command::Group { name, topic, to, members_stopped, yes } => {
            let topic = match topic.as_str() {
                "movements" => config.kafka.topics.movements.clone(),
                "stock" => config.kafka.topics.stock.clone(),
                _ => topic,
            };
            let request = Request { group: name, topic, to: to.into_to()?, members_stopped };
            group(&config, &args.target, &request, yes).await
        }
        Command::Connector { connector: ConnectorReplay::Erp { since, yes } } => {
            erp_cursor(&config, &args.target, since, yes).await
        }
        Command::Connector { connector: ConnectorReplay::Wms { file, inbox, yes } } => {
            wms_file(&config, &args.target, &file, inbox, yes)
        }
    }
}

impl ToArgs {
    fn into_to(self) -> anyhow::Result<To> {
        if let Some(at) = self.to_time {
            return Ok(To::Time(at));
        }
        if self.to_earliest {
            return Ok(To::Earliest);
        }
        let mut offsets = BTreeMap::new();
        for text in &self.to_offset {
            let p: Position = text.parse().context("--to-offset")?;
            anyhow::ensure!(offsets.insert(p.partition, p.offset).is_none(), "--to-offset names {} twice", p.partition);
        }
        Ok(To::Offsets(offsets))
    }
}

/// What `onhand replay group` did, or would do.
#[derive(Debug, Serialize)]
struct GroupReport {
    #[serde(flatten)]
    plan: Plan,
    moved: bool,
    /// The group's offsets afterwards, as read back.
    offsets: BTreeMap<i32, i64>,
}

async fn group(config: &Config, target: &Target, request: &Request, yes: bool) -> anyhow::Result<Exit> {
    let db = crate::boot::db(config, 2).await?;
    let plan = replay::plan(config, &*db, request).await?;
    let mut report = GroupReport { plan, moved: false, offsets: BTreeMap::new() };
    let nothing = report.plan.moves().next().is_none();
    if !report.plan.refused.is_empty() || nothing || !yes {
        target.print(&report, render_group_plan)?;
        return Ok(match (report.plan.refused.is_empty(), nothing) {
            (false, _) => Exit::Problems,
            (true, true) => Exit::Ok,
            (true, false) => Exit::NotConfirmed,
        });
    }
    report.offsets = replay::apply(config, &*db, &report.plan).await?;
    report.moved = true;
    let arrived = report.plan.moves().all(|m| report.offsets.get(&m.partition) == Some(&m.target));
    target.print(&report, render_group_moved)?;
    Ok(if arrived { Exit::Ok } else { Exit::Problems })
}

fn render_group_plan(report: &GroupReport) -> String {
    let plan = &report.plan;
    let mut out = render_group_head(plan);
    for m in &plan.partitions {
        let committed = m.committed.map_or_else(|| "none".to_string(), |c| c.to_string());
        let what = match (m.moves, m.committed) {
            (true, _) => format!("re-reads {}", m.rereads),
            (false, Some(c)) if c == m.target => "stays".to_string(),
            (false, None) if plan.offsets_kept_in == Keeper::Database => "stays (reads from the oldest)".to_string(),
            (false, _) => "stays (it has not read that far)".to_string(),
        };
        let _ = writeln!(out, "  partition {:<3} {committed:>10} -> {:<10} {what}", m.partition, m.target);
    }
    let _ = writeln!(out, "{} record(s) read again in all", plan.rereads);
    for refusal in &plan.refused {
        let _ = writeln!(out, "refused ({}): {}", refusal.code, refusal.reason);
    }
    let _ = writeln!(out, "{}", harmless(GROUP_GIVES));
    if !plan.refused.is_empty() {
        let _ = writeln!(out, "nothing moved");
    } else if plan.moves().next().is_none() {
        let _ = writeln!(out, "nothing to move");
    } else {
        let _ = writeln!(out, "nothing moved: run again with --yes to move the group");
    }
    out
}

fn render_group_head(plan: &Plan) -> String {
    let kept = match plan.offsets_kept_in {
        Keeper::Database => {
            "the ledger's group: its offsets are kept in the database and only move back; the \
                             ledger resumes from them when it starts"
        }
        Keeper::Kafka => "its offsets are committed in Kafka",
    };
    let members = match &plan.members {
        Members::Stopped => "members: none live".to_string(),
        Members::Live { count, state } => format!("members: {count} live ({state})"),
        Members::Unknown { why } => format!("members: unknown ({why})"),
        Members::Asserted { why } => format!("members: stopped, says the operator (--members-stopped; {why})"),
    };
    format!("group {} on {}, back to {}\n{kept}\n{members}\n", plan.group, plan.topic, plan.to)
}

fn render_group_moved(report: &GroupReport) -> String {
    let plan = &report.plan;
    let mut out = render_group_head(plan);
    for m in plan.moves() {
        let now = report.offsets.get(&m.partition).map_or_else(|| "none".to_string(), |o| o.to_string());
        let from = m.committed.map_or_else(|| "none".to_string(), |c| c.to_string());
        let _ = writeln!(out, "  partition {:<3} {from:>10} -> {now:<10} re-reads {}", m.partition, m.rereads);
    }
    let _ = writeln!(out, "moved: {} record(s) will be read again when its consumers start", plan.rereads);
    let _ = writeln!(out, "{}", harmless(GROUP_GIVES));
    out
}

/// What `onhand replay connector erp` did, or would do.
#[derive(Debug, Serialize)]
struct ErpReport {
    #[serde(flatten)]
    plan: erp::replay::Plan,
    moved: bool,
}

async fn erp_cursor(config: &Config, target: &Target, since: DateTime<Utc>, yes: bool) -> anyhow::Result<Exit> {
    let section_value = config
        .connectors
        .get(erp::NAME)
        .context("[connectors.erp] is not in this configuration: run with the deployment's (--config)")?;
    let erp_config: erp::ErpConfig = section(erp::NAME, section_value)?;
    let db = crate::boot::db(config, 2).await?;
    let plan = erp::replay::plan(&erp_config, &*db, since, &target.progress()).await?;
    let mut report = ErpReport { plan, moved: false };
    if report.plan.refused.is_some() || !yes {
        target.print(&report, render_erp)?;
        return Ok(if report.plan.refused.is_some() { Exit::Problems } else { Exit::NotConfirmed });
    }
    erp::replay::apply(&*db, &report.plan).await?;
    report.moved = true;
    target.print(&report, render_erp)?;
    Ok(Exit::Ok)
}

fn render_erp(report: &ErpReport) -> String {
    let plan = &report.plan;
    let mut out = format!("erp cursor back to {}\n", plan.since.to_rfc3339());
    if let Some(refusal) = &plan.refused {
        let _ = writeln!(out, "refused ({}): {}\nnothing moved", refusal.code, refusal.reason);
        return out;
    }
    if let Some(cursor) = plan.cursor {
        let _ = writeln!(out, "  cursor now  {} (row {})", cursor.changed_at.to_rfc3339(), cursor.id);
    }
    let _ = writeln!(out, "  cursor to   just before the rows changed at {}", plan.since.to_rfc3339());
    let _ = writeln!(out, "{} journal row(s) read again", plan.rows);
    let _ = writeln!(out, "{}", harmless(ERP_GIVES));
    let _ = writeln!(
        out,
        "the erp connector reads its cursor when it starts: stop it before (a running one writes its own cursor over \
         this one), start it after"
    );
    let _ = writeln!(out, "{}", if report.moved { "moved" } else { "nothing moved: run again with --yes to move it" });
    out
}

/// What `onhand replay connector wms` did, or would do.
#[derive(Debug, Serialize)]
struct WmsReport {
    #[serde(flatten)]
    plan: wms::replay::Plan,
    copied: bool,
}

fn wms_file(
    config: &Config,
    target: &Target,
    file: &std::path::Path,
    inbox: Option<PathBuf>,
    yes: bool,
) -> anyhow::Result<Exit> {
    let mut section_value =
        config.connectors.get(wms::NAME).cloned().unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()));
    if let (Some(inbox), Some(object)) = (inbox, section_value.as_object_mut()) {
        object.insert("inbox".into(), serde_json::json!(inbox));
    }
    let wms_config: wms::WmsConfig = section(wms::NAME, &section_value)?;
    anyhow::ensure!(
        !wms_config.inbox.as_os_str().is_empty(),
        "[connectors.wms] inbox is not set: run with the deployment's configuration (--config) or pass --inbox"
    );
    let plan = wms::replay::plan(&wms_config, file)?;
    let mut report = WmsReport { plan, copied: false };
    if yes {
        wms::replay::apply(&report.plan)?;
        report.copied = true;
    }
    target.print(&report, render_wms)?;
    Ok(if yes { Exit::Ok } else { Exit::NotConfirmed })
}

fn render_wms(report: &WmsReport) -> String {
    let plan = &report.plan;
    let mut out = format!("wms file {} taken again\n", plan.file.display());
    let _ = writeln!(
        out,
        "  into        {}{}",
        plan.into.display(),
        if plan.marker { " (with its .done marker)" } else { "" }
    );
    let _ = writeln!(out, "  sha256      {}", plan.sha256);
    let _ = writeln!(out, "{} line(s) read again", plan.lines);
    let _ = writeln!(out, "{}", harmless(WMS_GIVES));
    let _ = writeln!(
        out,
        "{}",
        if report.copied {
            "copied: the wms connector takes it at its next scan"
        } else {
            "nothing copied: run again with --yes to copy it"
        }
    );
    out
}
