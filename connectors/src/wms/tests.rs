//! The WMS mapping on realistic rows of both formats, every reason a row is refused, the
//! drop convention and the moves to `archive/` and `rejected/`.

use std::time::{Duration, SystemTime};

use chrono::{SubsecRound, TimeZone, Utc};
use onhand_core::event::{LocationId, MovementKind};

use super::{
    mapping::*,
    source::{csv_reader, file_backoff, joined, kafka_retryable, move_file, ready_files, send_backoff, Entry},
    WmsConfig,
};

const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 15, 0, 0).unwrap()
}

fn file(location_default: Option<&LocationId>) -> FileContext<'_> {
    FileContext::new(SHA, "movements-20261122.csv", "wms-dc-sp", location_default, now())
}

fn movements_format() -> Format {
    read_header("sku,location,kind,quantity,occurred_at,reference".split(','), false).unwrap()
}

fn row(format: &Format, line: u64, text: &str) -> Result<onhand_core::event::Movement, LineError> {
    let fields: Vec<&str> = text.split(',').collect();
    to_movement(format, &file(None), line, &fields).map(|m| m.movement)
}

#[test]
fn a_movements_row_becomes_a_movement_with_the_files_hash_and_line_as_its_id() {
    let format = movements_format();
    let receipt = row(&format, 2, "7891000100103,dc-sp,receipt,480,2026-11-20T09:10:00-03:00,ASN-2026-0042/1").unwrap();
    assert_eq!(receipt.event_id.as_str(), format!("wms:{SHA}:2"));
    assert_eq!((receipt.kind, receipt.quantity, receipt.delta()), (MovementKind::Receipt, 480, Some(480)));
    assert_eq!(receipt.location.as_str(), "dc-sp");
    assert_eq!(receipt.occurred_at, Utc.with_ymd_and_hms(2026, 11, 20, 12, 10, 0).unwrap());
    assert_eq!(receipt.recorded_at, now());
    assert_eq!((receipt.source.instance.as_str(), receipt.source.reference.as_str()), ("wms-dc-sp", "ASN-2026-0042/1"));
    assert_eq!(receipt.attributes.get("file").map(String::as_str), Some("movements-20261122.csv"));
    let out = row(&format, 3, "7891000100257,dc-sp,transfer_out,24,2026-11-20T09:12:00Z,").unwrap();
    assert_eq!((out.delta(), out.source.reference.as_str()), (Some(-24), "line 3"), "no reference: the line");
    let fix = row(&format, 4, "7891000100257,dc-sp,adjustment,-2,2026-11-20T09:12:00Z,INV-7").unwrap();
    assert_eq!(fix.delta(), Some(-2));
}

#[test]
fn the_bytes_produced_are_the_movement_the_ledger_reads() {
    let format = movements_format();
    let text = "7891000100103,dc-sp,receipt,480,2026-11-20T09:10:00.1234567-03:00,\"ASN \"\"42\"\", ç\"";
    let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(text.as_bytes());
    let record = reader.records().next().unwrap().unwrap();
    let fields: Vec<&str> = record.iter().collect();
    let later = now() + chrono::Duration::nanoseconds(1_234_567);
    let mapped = to_movement(&format, &FileContext::new(SHA, "m.csv", "wms-dc-sp", None, later), 2, &fields).unwrap();
    assert_eq!(mapped.movement.source.reference, "ASN \"42\", ç");
    let read = onhand_core::event::Movement::from_json(&mapped.payload).unwrap();
    assert_eq!(read, mapped.movement, "{}", String::from_utf8_lossy(&mapped.payload));
    assert_eq!(read.recorded_at, later.trunc_subsecs(6));
}

#[test]
fn every_kind_a_wms_sends_is_taken_and_reservation_kinds_are_refused() {
    let format = movements_format();
    for kind in ["receipt", "transfer_out", "transfer_in", "damage", "adjustment", "count", "sale", "return"] {
        assert!(row(&format, 2, &format!("SKU-1,dc-sp,{kind},1,2026-11-20T09:10:00Z,r")).is_ok(), "{kind}");
    }
    for kind in ["reserve", "release", "commit"] {
        let refused = row(&format, 2, &format!("SKU-1,dc-sp,{kind},1,2026-11-20T09:10:00Z,r")).unwrap_err();
        assert_eq!(refused.code, "kind_not_accepted", "{kind}");
    }
}

#[test]
fn each_bad_row_is_refused_with_the_code_of_the_rule_it_breaks() {
    let format = movements_format();
    let cases = [
        ("SKU/1,dc-sp,receipt,1,2026-11-20T09:10:00Z,r", "invalid_sku"),
        (",dc-sp,receipt,1,2026-11-20T09:10:00Z,r", "invalid_sku"),
        ("SKU-1,dc sp,receipt,1,2026-11-20T09:10:00Z,r", "invalid_location"),
        ("SKU-1,dc-sp,gift,1,2026-11-20T09:10:00Z,r", "unknown_kind"),
        ("SKU-1,dc-sp,receipt,0,2026-11-20T09:10:00Z,r", "invalid_quantity"),
        ("SKU-1,dc-sp,adjustment,0,2026-11-20T09:10:00Z,r", "invalid_quantity"),
        ("SKU-1,dc-sp,count,-1,2026-11-20T09:10:00Z,r", "invalid_quantity"),
        ("SKU-1,dc-sp,receipt,2000000000,2026-11-20T09:10:00Z,r", "invalid_quantity"),
        ("SKU-1,dc-sp,receipt,1.5,2026-11-20T09:10:00Z,r", "schema_violation"),
        ("SKU-1,dc-sp,receipt,,2026-11-20T09:10:00Z,r", "schema_violation"),
        ("SKU-1,dc-sp,receipt,1,20/11/2026 09:10,r", "schema_violation"),
        ("SKU-1,dc-sp,receipt,1,2026-11-20T09:10:00,r", "schema_violation"),
        ("SKU-1,dc-sp,receipt,1,1999-12-31T23:59:59Z,r", "invalid_time"),
        ("SKU-1,dc-sp,receipt,1,2026-11-24T15:00:01Z,r", "invalid_time"),
        ("SKU-1,dc-sp,receipt,1,2026-11-20T09:10:00Z,", "ok"),
    ];
    for (text, code) in cases {
        let verdict = row(&format, 7, text).map(|_| "ok").map_err(|e| (e.line, e.code));
        assert_eq!(verdict.unwrap_or_else(|(line, code)| if line == 7 { code } else { "wrong line" }), code, "{text}");
    }
    let long_reference = format!("SKU-1,dc-sp,receipt,1,2026-11-20T09:10:00Z,{}", "R".repeat(129));
    assert_eq!(row(&format, 2, &long_reference).unwrap_err().code, "invalid_source");
}

#[test]
fn a_snapshot_row_is_a_count_at_its_location_or_the_configured_one() {
    let format = read_header("sku,location,quantity,counted_at".split(','), false).unwrap();
    let count = row(&format, 2, "7891000100103,dc-sp,37,2026-11-20T06:00:00-03:00").unwrap();
    assert_eq!((count.kind, count.quantity, count.delta()), (MovementKind::Count, 37, None));
    assert_eq!(count.occurred_at, Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 0).unwrap());
    assert_eq!(count.correlation_id, Some(format!("wms:snapshot:{SHA}")));
    assert_eq!(row(&format, 3, "7891000100103,dc-sp,-1,2026-11-20T06:00:00Z").unwrap_err().code, "invalid_quantity");

    let dc = LocationId::parse("dc-sp").unwrap();
    let without = read_header(["sku", "quantity", "counted_at"], true).unwrap();
    let count = to_movement(&without, &file(Some(&dc)), 2, &["SKU-9", "0", "2026-11-20T06:00:00Z"]).unwrap().movement;
    assert_eq!((count.location.as_str(), count.quantity), ("dc-sp", 0));
    let refused = read_header(["sku", "quantity", "counted_at"], false).unwrap_err();
    assert!(refused.message.contains("location"), "{}", refused.message);
}

#[test]
fn the_header_tells_the_format_in_any_order_and_refuses_anything_else() {
    let shuffled = read_header([" Reference", "SKU", "kind", "quantity", "location", "occurred_at"], false).unwrap();
    assert!(matches!(shuffled, Format::Movements { sku: 1, reference: 0, .. }));
    let bom = read_header(["\u{feff}sku", "location", "quantity", "counted_at"], false).unwrap();
    assert!(matches!(bom, Format::Snapshot { sku: 0, location: Some(1), quantity: 2, counted_at: 3 }));
    for bad in [
        &["sku", "location", "kind", "quantity", "occurred_at"][..],
        &["sku", "location", "kind", "quantity", "occurred_at", "reference", "lot"],
        &["sku", "sku", "kind", "quantity", "occurred_at", "reference"],
        &["sku", "location", "kind", "quantity", "counted_at"],
        &["id_produto", "quantidade"],
        &[""],
    ] {
        let refused = read_header(bad.iter().copied(), true).unwrap_err();
        assert_eq!((refused.line, refused.code), (1, UNKNOWN_FORMAT), "{bad:?}");
    }
}

#[test]
fn the_pending_hash_makes_the_same_verdicts_as_the_real_one() {
    assert_eq!(SHA256_PENDING.len(), SHA.len());
    let format = movements_format();
    let mut pending = file(None);
    pending.sha256 = SHA256_PENDING;
    let long = format!("SKU-1,dc-sp,receipt,1,2026-11-20T09:10:00Z,{}", "R".repeat(128));
    let fields: Vec<&str> = long.split(',').collect();
    assert_eq!(
        to_movement(&format, &pending, 999_999_999, &fields).is_ok(),
        to_movement(&format, &file(None), 999_999_999, &fields).is_ok()
    );
}

fn entry(name: &str, second: u64) -> Entry {
    Entry { name: name.into(), modified: SystemTime::UNIX_EPOCH + Duration::from_secs(second) }
}

#[test]
fn only_complete_csv_files_are_taken_oldest_first() {
    let entries = [
        entry("b.csv", 20),
        entry("a.csv", 30),
        entry("c.csv.tmp", 1),
        entry(".d.csv", 1),
        entry("e.csv", 10),
        entry("e.csv.done", 40),
        entry("notes.txt", 1),
        entry("f.csv.done", 5),
    ];
    let names = |marker| ready_files(&entries, marker).iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(false), ["e.csv", "b.csv", "a.csv"]);
    assert_eq!(names(true), ["e.csv"], "with markers required, only a file with its marker");
}

#[test]
fn a_file_moves_under_a_free_name_with_its_errors_and_its_marker_goes() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, rejected) = (dir.path(), dir.path().join("rejected"));
    std::fs::create_dir(&rejected).unwrap();
    for round in 0..2 {
        std::fs::write(inbox.join("x.csv"), "sku\n").unwrap();
        std::fs::write(inbox.join("x.csv.done"), "").unwrap();
        let errors = rejected.join(".x.csv.errors.json.tmp");
        std::fs::write(&errors, "{}").unwrap();
        let to = move_file(&inbox.join("x.csv"), &rejected, Some(&errors)).unwrap();
        let stem = if round == 0 { "x" } else { "x.1" };
        assert_eq!(to, rejected.join(format!("{stem}.csv")));
        assert!(rejected.join(format!("{stem}.errors.json")).exists());
        assert!(!inbox.join("x.csv").exists() && !inbox.join("x.csv.done").exists());
    }
}

#[test]
fn retries_back_off_within_bounds() {
    assert_eq!(file_backoff(1), Duration::from_secs(1));
    assert_eq!(file_backoff(3), Duration::from_secs(4));
    assert_eq!(file_backoff(100), Duration::from_secs(300));
    assert_eq!(send_backoff(1), Duration::from_millis(100));
    assert_eq!(send_backoff(100), Duration::from_secs(10));
    use rdkafka::{error::KafkaError, types::RDKafkaErrorCode};
    assert!(kafka_retryable(&KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)));
    assert!(kafka_retryable(&KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)));
    assert!(!kafka_retryable(&KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed)));
}

#[test]
fn a_section_without_an_inbox_or_with_zero_limits_is_refused() {
    assert!(WmsConfig::default().check().is_err());
    let config = WmsConfig { inbox: "/srv/wms/inbox".into(), ..WmsConfig::default() };
    config.check().unwrap();
    assert_eq!(config.archive_dir(), std::path::Path::new("/srv/wms/inbox/archive"));
    assert!(WmsConfig { in_flight_max: 0, ..config.clone() }.check().is_err());
    assert!(WmsConfig { archive: Some("/srv/wms/inbox".into()), ..config }.check().is_err());
}

#[test]
fn a_row_is_numbered_by_the_line_it_starts_on_blank_lines_before_it_included() {
    // The CSV reader counts skipped blank lines into the next row: a row after a blank
    // line has the blank line's number (docs/connectors/wms.md says so). Quoted newlines
    // and blank lines still count, so ids stay unique and later rows match an editor.
    let text = "sku,location,quantity,counted_at\n\nSKU-1,dc-sp,1,2026-11-20T06:00:00Z\n\"SKU\n2\",dc-sp,1,x\nSKU-3, dc-sp ,3,2026-11-20T06:00:00Z\n";
    let mut reader = csv_reader(text.as_bytes());
    let lines: Vec<(u64, String)> = reader
        .records()
        .map(|r| r.unwrap())
        .map(|r| (r.position().unwrap().line(), r.get(1).unwrap().to_string()))
        .collect();
    assert_eq!(lines, [(2, "dc-sp".to_string()), (4, "dc-sp".to_string()), (6, "dc-sp".to_string())]);
}

/// C1: a WMS row with a quantity at the edge of i64 is refused, whatever its kind.
#[test]
fn extreme_quantities_in_a_file_are_refused() {
    let format = movements_format();
    for kind in ["receipt", "sale", "transfer_out", "adjustment", "count"] {
        for quantity in [i64::MIN, i64::MAX] {
            let text = format!("S1,dc-sp,{kind},{quantity},2026-11-20T09:10:00Z,");
            let refused = row(&format, 2, &text).unwrap_err();
            assert_eq!(refused.code, "invalid_quantity", "{kind} {quantity}");
        }
    }
}

/// M5: a file the connector cannot read, or that is too large, fails the same way every
/// time and is moved aside; a passing failure leaves it for a later attempt.
#[test]
fn lasting_failures_of_a_file_are_told_from_passing_ones() {
    use std::{io, path::PathBuf};

    use super::source::WmsError;
    let io_error = |kind| WmsError::Io { path: PathBuf::from("f.csv"), source: io::Error::from(kind) };
    assert!(!io_error(io::ErrorKind::PermissionDenied).retryable());
    assert!(!WmsError::TooLarge { path: PathBuf::from("f.csv"), bytes: 2, max: 1 }.retryable());
    assert!(io_error(io::ErrorKind::Interrupted).retryable());
    assert!(WmsError::Stopped.retryable());
}

const FILE_SEED: &str = "sku,location,kind,quantity,occurred_at,reference
7891000100103,dc-sp,receipt,480,2026-11-20T09:10:00-03:00,ASN-2026-0042/1
7891000100103,dc-sp,adjustment,-2,2026-11-20T11:30:00-03:00,
";
const SNAPSHOT_SEED: &str = "sku,quantity,counted_at
7891000100103,480,2026-11-20T09:10:00-03:00
";

/// Reads a whole file as the connector does: the header, then every row through the gate.
fn read_file(bytes: &[u8], location_default: Option<&LocationId>) {
    let mut reader = super::source::csv_reader(bytes);
    let Ok(header) = reader.headers().cloned() else { return };
    let Ok(format) = read_header(header.iter(), location_default.is_some()) else { return };
    let context = file(location_default);
    for (i, record) in reader.records().enumerate() {
        let Ok(record) = record else { continue };
        let fields: Vec<&str> = record.iter().collect();
        let _ = to_movement(&format, &context, i as u64 + 2, &fields);
    }
}

proptest::proptest! {
    #![proptest_config(onhand_core::fuzzing::config())]

    /// Fuzz harness: a WMS file, whatever its bytes, gives movements or line errors, never
    /// a panic.
    #[test]
    fn a_wms_file_never_panics(bytes in onhand_core::fuzzing::hostile(FILE_SEED), snapshot in onhand_core::fuzzing::hostile(SNAPSHOT_SEED)) {
        read_file(&bytes, None);
        let dc = LocationId::parse("dc-sp").unwrap();
        read_file(&snapshot, Some(&dc));
    }
}

/// A blocking step the runtime cancelled as the process stopped is a clean stop, not a
/// panic of the scan; a step that panicked still panics.
#[tokio::test]
async fn a_cancelled_blocking_step_is_a_stop() {
    use super::source::WmsError;
    let never = tokio::spawn(std::future::pending::<Result<(), WmsError>>());
    never.abort();
    let cancelled = never.await.expect_err("aborted");
    assert!(cancelled.is_cancelled());
    assert!(matches!(joined::<()>(Err(cancelled)), Err(WmsError::Stopped)));
    let panicked = tokio::spawn(async { panic!("a bug") }).await.map(|()| Ok::<(), WmsError>(()));
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| joined(panicked)));
    assert!(unwound.is_err(), "a panic is not turned into a stop");
}
