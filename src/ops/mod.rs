//! The operator's commands: `onhand verify`, `rebuild`, `replay`, `dlq` and `doctor`.
//! Each finds the deployment the way `onhand serve` does (`--config`, the environment,
//! `--database-url`, `--brokers`) or a running `onhand dev` (`--dev DATA_DIR`), prints
//! for people or, with `--json`, one JSON document on stdout, draws progress on stderr,
//! and ends with an [`Exit`] code scripts can act on.
//!
//! The work itself lives in `onhand_core::ops`; this module is the command line around it:
//! what every command shares, here; each command in its own file; `command` lists them.

pub mod command;
pub mod dlq;
pub mod doctor;
pub mod rebuild;
pub mod replay;
pub mod verify;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use indicatif::{ProgressBar, ProgressStyle};
use onhand_core::{config::Config, ops::Progress};

/// The file in `onhand dev`'s data directory with the address of its embedded Kafka,
/// written at every start, for the operator's commands to find it.
pub const DEV_BROKERS_FILE: &str = "kafka-brokers";

/// The file in `onhand dev`'s data directory that keeps its dead letters across restarts
/// (`onhand_core::kafka::journal`), one JSON line each.
pub const DEV_DEAD_LETTERS_FILE: &str = "dead-letters.ndjson";

/// Which deployment a command works on, and how it answers.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// A TOML file (see deploy/onhand.toml); ONHAND_SECTION__FIELD and DATABASE_URL override it.
    #[arg(long, env = "ONHAND_CONFIG", global = true, conflicts_with = "dev")]
    pub config: Option<PathBuf>,
    /// The database, replacing the configured one: postgres://... or sqlite://FILE.
    #[arg(long, global = true)]
    pub database_url: Option<String>,
    /// Kafka bootstrap servers, replacing the configured ones.
    #[arg(long, global = true)]
    pub brokers: Option<String>,
    /// Work on the `onhand dev` that keeps its data in DATA_DIR (its SQLite file, and its
    /// embedded Kafka while it runs).
    #[arg(long, value_name = "DATA_DIR", global = true)]
    pub dev: Option<PathBuf>,
    /// One JSON document on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Target {
    /// The configuration of the deployment: `onhand dev`'s own for `--dev`, else the file
    /// and environment as `onhand serve` reads them; `--database-url` and `--brokers` win.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.dev {
            Some(data_dir) => dev_config(data_dir)?,
            None => Config::read(self.config.as_deref())?,
        };
        if let Some(url) = &self.database_url {
            config.database.url.clone_from(url);
        }
        if let Some(brokers) = &self.brokers {
            config.kafka.brokers.clone_from(brokers);
        }
        if self.dev.is_none() {
            config.check()?;
        }
        Ok(config)
    }

    /// A progress bar on stderr for work of `total` steps (`None`: not known): rate and
    /// ETA, hidden with `--json` and when stderr is not a terminal.
    pub fn progress(&self) -> Bar {
        Bar::new(self.json)
    }

    /// Prints `report`: its JSON with `--json`, else the text `render` makes of it.
    pub fn print<T: serde::Serialize>(&self, report: &T, render: impl FnOnce(&T) -> String) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(report)?);
        } else {
            print!("{}", render(report));
        }
        Ok(())
    }
}

/// `onhand dev`'s configuration, as `App::dev` builds it for DATA_DIR.
fn dev_config(data_dir: &Path) -> anyhow::Result<Config> {
    let database = data_dir.join("onhand.db");
    anyhow::ensure!(database.exists(), "{}: no onhand dev database here", database.display());
    let mut config = Config::default();
    config.database.url = format!("sqlite://{}", database.display());
    // The embedded Kafka lives only while `onhand dev` runs; without it, the commands
    // that need Kafka say so.
    let brokers = data_dir.join(DEV_BROKERS_FILE);
    config.kafka.brokers = std::fs::read_to_string(&brokers).map(|s| s.trim().to_string()).unwrap_or_default();
    Ok(config)
}

/// How a command ended, as its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done, and nothing is wrong.
    Ok,
    /// 1: the command ran and found something wrong (a drift, a record that failed again).
    Problems,
    /// 3: the command showed what it would do and did nothing: run it again with `--yes`.
    NotConfirmed,
}

/// 2: the command could not run (no database, a bad argument); `main` prints why.
pub const EXIT_ERROR: u8 = 2;

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(match exit {
            Exit::Ok => 0,
            Exit::Problems => 1,
            Exit::NotConfirmed => 3,
        })
    }
}

/// A progress bar on stderr, for `onhand_core::ops`' long work.
#[derive(Debug, Clone)]
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new(hidden: bool) -> Bar {
        let bar = if hidden { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
        Bar { bar }
    }
}

impl Progress for Bar {
    fn start(&self, what: &str, total: Option<u64>) {
        let template = match total {
            Some(total) => {
                self.bar.set_length(total);
                "{msg:>12} [{bar:30}] {human_pos}/{human_len} {per_sec} eta {eta}"
            }
            None => {
                self.bar.unset_length();
                "{msg:>12} {spinner} {human_pos} {per_sec} {elapsed}"
            }
        };
        let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
        self.bar.set_style(style.progress_chars("=> "));
        self.bar.set_message(what.to_string());
        self.bar.set_position(0);
        self.bar.reset_eta();
        self.bar.enable_steady_tick(Duration::from_millis(200));
    }

    fn advance(&self, steps: u64) {
        self.bar.inc(steps);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
