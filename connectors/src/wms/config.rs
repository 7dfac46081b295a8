//! `[connectors.wms]`: the inbox the distribution centre's WMS drops its files into, and
//! how hard the connector pushes them to Kafka. Only `inbox` has no default.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::contract::ConnectorError;

/// The connector's name: its section, its component `connector:wms`.
pub const NAME: &str = "wms";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WmsConfig {
    /// The directory the WMS drops its `.csv` files into (`onhand connector wms --inbox`
    /// overrides it).
    pub inbox: PathBuf,
    /// Where a file goes once Kafka acknowledged all its lines; `inbox/archive` when unset.
    pub archive: Option<PathBuf>,
    /// Where a file with any bad line goes, beside its `NAME.errors.json`;
    /// `inbox/rejected` when unset.
    pub rejected: Option<PathBuf>,
    /// How often the inbox is listed, besides the file-system events: files dropped
    /// while the connector was down, or events the watcher missed.
    pub scan_interval_ms: u64,
    /// Lines read, mapped and handed to the producer at a time.
    pub batch_lines_max: usize,
    /// Records sent to Kafka and not acknowledged yet, at most: what bounds memory
    /// whatever the file's size.
    pub in_flight_max: usize,
    /// Attempts to send one record while Kafka answers with retryable errors, with a
    /// doubling pause between them; after that the file is left in the inbox and taken
    /// again at the next scan.
    pub send_attempts_max: u32,
    /// The location of a snapshot whose header has no `location` column.
    pub location: Option<String>,
    /// `source.instance` of every movement, e.g. `wms-dc-sp`.
    pub source_instance: String,
    /// The largest file taken; a larger one is moved to `rejected/` with the reason.
    pub file_bytes_max: u64,
    /// When true, a `NAME.csv` is taken only once `NAME.csv.done` exists: for writers that
    /// cannot write under a temporary name and rename. When false, a `.csv` file is taken
    /// as soon as it is seen (a file with a marker is taken too).
    pub done_marker_required: bool,
}

impl Default for WmsConfig {
    fn default() -> Self {
        Self {
            inbox: PathBuf::new(),
            archive: None,
            rejected: None,
            scan_interval_ms: 5_000,
            batch_lines_max: 2_000,
            in_flight_max: 10_000,
            send_attempts_max: 8,
            location: None,
            source_instance: "wms".into(),
            file_bytes_max: 8 * 1024 * 1024 * 1024,
            done_marker_required: false,
        }
    }
}

impl WmsConfig {
    pub fn archive_dir(&self) -> PathBuf {
        self.archive.clone().unwrap_or_else(|| self.inbox.join("archive"))
    }

    pub fn rejected_dir(&self) -> PathBuf {
        self.rejected.clone().unwrap_or_else(|| self.inbox.join("rejected"))
    }

    /// Refuses a section that cannot work, naming the field.
    pub fn check(&self) -> Result<(), ConnectorError> {
        let invalid = |message: &str| {
            Err(ConnectorError { connector: NAME, message: format!("[connectors.wms] {message}"), retryable: false })
        };
        if self.inbox.as_os_str().is_empty() {
            return invalid("inbox is not set (or pass --inbox)");
        }
        if self.scan_interval_ms == 0 {
            return invalid("scan_interval_ms must be 1 or more");
        }
        if self.batch_lines_max == 0
            || self.in_flight_max == 0
            || self.send_attempts_max == 0
            || self.file_bytes_max == 0
        {
            return invalid("batch_lines_max, in_flight_max, send_attempts_max and file_bytes_max must be 1 or more");
        }
        if self.source_instance.is_empty() || self.source_instance.chars().count() > 64 {
            return invalid("source_instance must be 1 to 64 characters");
        }
        if inside(&self.archive_dir(), &self.inbox) || inside(&self.rejected_dir(), &self.inbox) {
            return invalid("archive and rejected must differ from the inbox");
        }
        Ok(())
    }
}

/// The same directory, as written: files moved there would be taken again.
fn inside(dir: &Path, inbox: &Path) -> bool {
    dir.components().eq(inbox.components())
}
