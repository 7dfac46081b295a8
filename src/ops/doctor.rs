//! `onhand doctor`: checks a deployment end to end (configuration, database, brokers,
//! topics, the ledger's lag, clocks, keys) and says in plain words what is wrong and how
//! to fix it. The checks are `onhand_core::ops::doctor`; this prints them. Exits 1 when a
//! check failed; warnings alone exit 0.

use std::fmt::Write as _;

use onhand_core::ops::doctor::{self, Report, Status};

use super::{Exit, Target};

/// The arguments of `onhand doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
}

pub async fn run(args: Args) -> anyhow::Result<Exit> {
    let report = match args.target.config() {
        Ok(config) => doctor::examine(&config, chrono::Utc::now()).await,
        Err(e) => Report::unreadable_config(&format!("{e:#}")),
    };
    args.target.print(&report, render)?;
    Ok(if report.status() == Status::Fail { Exit::Problems } else { Exit::Ok })
}

fn render(report: &Report) -> String {
    let mut out = String::new();
    for check in &report.checks {
        let status = match check.status {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        let _ = writeln!(out, "{status:<5} {:<9} {}", check.area, check.found);
        if let Some(fix) = &check.fix {
            let _ = writeln!(out, "{:15}fix: {fix}", "");
        }
    }
    let count = |status| report.checks.iter().filter(|c| c.status == status).count();
    let _ = writeln!(
        out,
        "\n{} checks: {} ok, {} warnings, {} failed",
        report.checks.len(),
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    );
    out
}
