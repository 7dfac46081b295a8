//! From the WMS's CSV files to movements: pure functions.
//!
//! Two formats, told apart by the header row (`docs/connectors/wms.md`):
//!
//! - movements: `sku,location,kind,quantity,occurred_at,reference`, one movement a row;
//! - a stock snapshot: `sku,location,quantity,counted_at`, the full count of the
//!   distribution centre at a time, one `count` a row (`location` may be left out when
//!   `[connectors.wms] location` names it).
//!
//! Every row goes through [`Movement::accept_json`], the gate every movement passes, so a
//! row is refused with the same code the HTTP API would answer. The event id is
//! `wms:{sha256 of the file}:{line}`: the same file dropped again makes the same ids.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use onhand_core::event::{InvalidMovement, LocationId, Movement, RejectCode};
use serde::Serialize;

/// The header is not one of the two formats; the whole file is refused on line 1.
pub const UNKNOWN_FORMAT: &str = "wms_unknown_format";
/// A row the CSV reader cannot read: a wrong number of fields, bytes that are not UTF-8.
pub const UNREADABLE_LINE: &str = "wms_unreadable_line";
/// The file cannot be read at all (its permissions); moved aside on line 0.
pub const UNREADABLE_FILE: &str = "wms_unreadable_file";
/// The file is larger than `file_bytes_max`; moved aside on line 0.
pub const FILE_TOO_LARGE: &str = "wms_file_too_large";
/// Kafka refuses its records for good (authorization, a record it will never take).
pub const KAFKA_REFUSED: &str = "wms_kafka_refused";

/// What is wrong with one line of a file, as `NAME.errors.json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineError {
    /// 1-based, as an editor shows it; the header is line 1.
    pub line: u64,
    /// A movement's reject code (`docs/events.md`), or one of the `wms_` codes above.
    pub code: &'static str,
    pub message: String,
}

impl LineError {
    fn rejected(line: u64, e: InvalidMovement) -> LineError {
        LineError { line, code: e.code.as_str(), message: e.message }
    }
}

/// Which format a file is in, with the position of each column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Movements {
        sku: usize,
        location: usize,
        kind: usize,
        quantity: usize,
        occurred_at: usize,
        reference: usize,
    },
    /// `location` is `None` when the file leaves it to the configuration.
    Snapshot {
        sku: usize,
        location: Option<usize>,
        quantity: usize,
        counted_at: usize,
    },
}

const MOVEMENT_COLUMNS: [&str; 6] = ["sku", "location", "kind", "quantity", "occurred_at", "reference"];
const SNAPSHOT_COLUMNS: [&str; 4] = ["sku", "location", "quantity", "counted_at"];

/// Reads the header row: the column names in any order, each once, no other column.
/// Names are compared without surrounding spaces, case or a byte-order mark. A snapshot
/// may leave `location` out only when the configuration names one (`location_default`).
pub fn read_header<'a>(names: impl IntoIterator<Item = &'a str>, location_default: bool) -> Result<Format, LineError> {
    let names: Vec<String> =
        names.into_iter().map(|n| n.trim_start_matches('\u{feff}').trim().to_ascii_lowercase()).collect();
    let bad = |message: String| LineError { line: 1, code: UNKNOWN_FORMAT, message };
    let position = |name: &str| names.iter().position(|n| n == name);
    let expected = if position("counted_at").is_some() { &SNAPSHOT_COLUMNS[..] } else { &MOVEMENT_COLUMNS[..] };
    for (i, name) in names.iter().enumerate() {
        if !expected.contains(&name.as_str()) || names[..i].contains(name) {
            return Err(bad(format!(
                "column {name:?} is unknown or repeated; expected the columns {} (movements) or {} (snapshot)",
                MOVEMENT_COLUMNS.join(","),
                SNAPSHOT_COLUMNS.join(",")
            )));
        }
    }
    let missing: Vec<&str> = expected.iter().copied().filter(|c| position(c).is_none()).collect();
    let required = |c: &str| position(c).ok_or_else(|| bad(format!("the header lacks {}", missing.join(", "))));
    if expected.len() == SNAPSHOT_COLUMNS.len() {
        if position("location").is_none() && !location_default {
            return Err(bad("the snapshot has no location column and [connectors.wms] location is not set".into()));
        }
        return Ok(Format::Snapshot {
            sku: required("sku")?,
            location: position("location"),
            quantity: required("quantity")?,
            counted_at: required("counted_at")?,
        });
    }
    Ok(Format::Movements {
        sku: required("sku")?,
        location: required("location")?,
        kind: required("kind")?,
        quantity: required("quantity")?,
        occurred_at: required("occurred_at")?,
        reference: required("reference")?,
    })
}

/// What every row of one file shares.
#[derive(Debug, Clone)]
pub struct FileContext<'a> {
    /// The SHA-256 of the file's bytes, in lower-case hex.
    pub sha256: &'a str,
    pub file_name: &'a str,
    pub source_instance: &'a str,
    /// The location of a snapshot without a location column.
    pub location_default: Option<&'a LocationId>,
    /// When onhand took the file: every movement's `recorded_at`, to the microsecond.
    now: DateTime<Utc>,
    /// `now` as written in every record, formatted once for the whole file.
    recorded_at: String,
}

impl<'a> FileContext<'a> {
    pub fn new(
        sha256: &'a str,
        file_name: &'a str,
        source_instance: &'a str,
        location_default: Option<&'a LocationId>,
        now: DateTime<Utc>,
    ) -> Self {
        let now = now.trunc_subsecs(6);
        let recorded_at = now.to_rfc3339_opts(SecondsFormat::Micros, true);
        FileContext { sha256, file_name, source_instance, location_default, now, recorded_at }
    }
}

/// A row accepted: the movement, and the bytes to produce, which are exactly the bytes the
/// gate accepted (`recorded_at` included), so nothing is encoded twice.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub movement: Movement,
    pub payload: Vec<u8>,
}

/// A stand-in for the hash while the file is checked, before its hash is known: event ids
/// made with it have the length and the characters of the real ones, so a row that passes
/// with it passes with the real hash.
pub const SHA256_PENDING: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The event id of a file's line.
pub fn event_id(sha256: &str, line: u64) -> String {
    format!("wms:{sha256}:{line}")
}

/// The movement of one row (`fields`, at `line`), checked by [`Movement::accept_json`].
pub fn to_movement(format: &Format, file: &FileContext<'_>, line: u64, fields: &[&str]) -> Result<Mapped, LineError> {
    let field = |i: usize| fields.get(i).copied().unwrap_or_default();
    let candidate = match *format {
        Format::Movements { sku, location, kind, quantity, occurred_at, reference } => Candidate {
            reference: field(reference),
            sku: field(sku),
            location: field(location),
            kind: field(kind),
            quantity: integer(line, field(quantity))?,
            occurred_at: time(line, "occurred_at", field(occurred_at))?,
            snapshot: false,
        },
        Format::Snapshot { sku, location, quantity, counted_at } => Candidate {
            reference: "",
            sku: field(sku),
            location: match (location, file.location_default) {
                (Some(i), _) => field(i),
                (None, Some(default)) => default.as_str(),
                (None, None) => "",
            },
            kind: "count",
            quantity: integer(line, field(quantity))?,
            occurred_at: time(line, "counted_at", field(counted_at))?,
            snapshot: true,
        },
    };
    let payload = candidate.to_json(file, line);
    match Movement::accept_json(&payload, file.now) {
        Ok(movement) => Ok(Mapped { movement, payload }),
        Err(e) => Err(LineError::rejected(line, e)),
    }
}

/// A row's fields, before the gate.
struct Candidate<'a> {
    /// The WMS's document and line; the file's line when empty.
    reference: &'a str,
    sku: &'a str,
    location: &'a str,
    kind: &'a str,
    quantity: i64,
    occurred_at: &'a str,
    /// A snapshot's counts share a correlation id.
    snapshot: bool,
}

impl Candidate<'_> {
    /// The movement as JSON, written directly: millions of rows go through here twice, and
    /// building a `serde_json::Value` first would double the cost.
    fn to_json(&self, file: &FileContext<'_>, line: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        let text = |out: &mut Vec<u8>, value: &str| serde_json::to_writer(out, value).expect("writes to memory");
        write!(out, r#"{{"event_id":"{}","source":{{"system":"wms","instance":"#, event_id(file.sha256, line)).ok();
        text(&mut out, file.source_instance);
        out.extend_from_slice(br#","ref":"#);
        if self.reference.is_empty() {
            write!(out, r#""line {line}""#).ok();
        } else {
            text(&mut out, self.reference);
        }
        out.extend_from_slice(br#"},"sku":"#);
        text(&mut out, self.sku);
        out.extend_from_slice(br#","location":"#);
        text(&mut out, self.location);
        out.extend_from_slice(br#","kind":"#);
        text(&mut out, self.kind);
        write!(out, r#","quantity":{},"occurred_at":"#, self.quantity).ok();
        text(&mut out, self.occurred_at);
        write!(out, r#","recorded_at":"{}""#, file.recorded_at).ok();
        if self.snapshot {
            write!(out, r#","correlation_id":"wms:snapshot:{}""#, file.sha256).ok();
        }
        out.extend_from_slice(br#","attributes":{"file":"#);
        text(&mut out, file.file_name);
        write!(out, r#","line":"{line}"}}}}"#).ok();
        out
    }
}

/// A quantity is a whole number of units, as in a movement.
fn integer(line: u64, text: &str) -> Result<i64, LineError> {
    text.parse().map_err(|_| {
        let message = format!("quantity {text:?} is not a whole number");
        LineError::rejected(line, InvalidMovement { code: RejectCode::SchemaViolation, message })
    })
}

/// Times are RFC 3339 with an offset, as in a movement: `2026-11-20T09:10:00-03:00`.
/// Checked here for a clearer message than the gate's; passed on as written.
fn time<'a>(line: u64, column: &str, text: &'a str) -> Result<&'a str, LineError> {
    match DateTime::parse_from_rfc3339(text) {
        Ok(_) => Ok(text),
        Err(_) => {
            let message = format!("{column} {text:?} is not an RFC 3339 time with an offset");
            Err(LineError::rejected(line, InvalidMovement { code: RejectCode::SchemaViolation, message }))
        }
    }
}
