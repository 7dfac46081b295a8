//! The POS mapping on realistic input: tills' lines, the brief's stock report.

use chrono::{TimeZone, Utc};
use onhand_core::event::{LocationId, MovementKind, RejectCode, SourceSystem};

use super::mapping::*;

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 15, 0, 0).unwrap()
}

fn store() -> LocationId {
    LocationId::parse("store-012").unwrap()
}

const FEED: &str = r#"{"seq":41,"transaction_id":"T000123","line":1,"kind":"sale","sku":"7891000100103","quantity":2,"occurred_at":"2026-11-22T11:31:07-03:00","till":"04","cashier":"cashier-0871"}
{"seq":42,"transaction_id":"T000123","line":2,"kind":"return","sku":"7891000100257","quantity":1,"occurred_at":"2026-11-22T11:31:09-03:00"}

{"transaction_id":"T000124","line":1,"kind":"sale","sku":"7891000100103","quantity":0,"occurred_at":"2026-11-22T11:32:00-03:00"}
{"transaction_id":"T000125","line":1,"kind":"gift","sku":"7891000100103","quantity":1,"occurred_at":"2026-11-22T11:33:00-03:00"}
"#;

#[test]
fn a_tills_feed_becomes_sales_and_returns_with_stable_event_ids() {
    let lines = read_lines(FEED.as_bytes());
    assert_eq!(lines.len(), 4, "blank lines are skipped");
    assert!(lines[3].as_ref().unwrap_err().contains("gift"), "an unknown kind is refused when read");
    let sale = to_movement(&store(), lines[0].as_ref().unwrap(), SourceSystem::StoreAgent, now()).unwrap();
    assert_eq!(sale.event_id.as_str(), "pos:store-012:T000123:1");
    assert_eq!((sale.kind, sale.quantity, sale.delta()), (MovementKind::Sale, 2, Some(-2)));
    assert_eq!(sale.occurred_at, Utc.with_ymd_and_hms(2026, 11, 22, 14, 31, 7).unwrap());
    assert_eq!(sale.actor.as_deref(), Some("cashier-0871"));
    assert_eq!(sale.attributes.get("seq").map(String::as_str), Some("41"));
    assert_eq!(sale.attributes.get("till").map(String::as_str), Some("04"));
    assert_eq!(sale.correlation_id.as_deref(), Some("pos:store-012:T000123"));
    let returned = to_movement(&store(), lines[1].as_ref().unwrap(), SourceSystem::Pos, now()).unwrap();
    assert_eq!((returned.kind, returned.delta(), returned.actor), (MovementKind::Return, Some(1), None));
    let zero = to_movement(&store(), lines[2].as_ref().unwrap(), SourceSystem::Pos, now()).unwrap_err();
    assert_eq!(zero.code, RejectCode::InvalidQuantity);
}

#[test]
fn a_json_array_is_a_feed_too() {
    let array = format!("[{}]", FEED.lines().take(2).collect::<Vec<_>>().join(","));
    assert!(read_lines(array.as_bytes()).iter().all(Result::is_ok));
    assert_eq!(read_lines(b"[{").len(), 1);
}

#[test]
fn the_briefs_stock_report_is_accepted_as_it_is_and_answered_with_its_alert() {
    let single = r#"{"id_produto": "01", "nome_produto": "Arroz", "quantidade": 10, "id_loja": "001", "nome_loja": "Mercado Central"}"#;
    let (reports, array) = read_reports(single.as_bytes()).unwrap();
    assert!(!array);
    assert_eq!(report_location("store-{id_loja}", &reports[0]).unwrap().as_str(), "store-001");
    assert_eq!(answer_report(&reports[0], 5).get("alerta"), None);
    let low = r#"[{"id_produto": "01", "nome_produto": "Arroz", "quantidade": 5, "id_loja": "001", "nome_loja": "Mercado Central"},
                 {"id_produto": "02", "nome_produto": "Feijão", "quantidade": 40, "id_loja": "001", "nome_loja": "Mercado Central", "lote": "L7"}]"#;
    let (reports, array) = read_reports(low.as_bytes()).unwrap();
    assert!(array);
    let answered = answer_report(&reports[0], 5);
    assert_eq!(answered["alerta"], LOW_STOCK_ALERT);
    assert_eq!(answered["quantidade"], 5);
    assert_eq!(answer_report(&reports[1], 5)["lote"], "L7", "unknown fields are answered back");

    let line = report_line(&reports[0], "report-1", now());
    let count = to_movement(&store(), &line, SourceSystem::StoreAgent, now()).unwrap();
    assert_eq!(
        (count.kind, count.quantity, count.event_id.as_str()),
        (MovementKind::Count, 5, "pos:store-012:report-1:1")
    );
    assert!(read_reports(br#"{"id_produto": "01"}"#).unwrap_err().contains("nome_produto"));
}

/// C1: a till's line and a stock report with a quantity at the edge of i64 are refused as
/// invalid quantities, never wrapped (the store agent checks lines with this mapping too).
#[test]
fn extreme_quantities_from_a_till_or_a_report_are_refused() {
    for kind in ["sale", "return", "count"] {
        for quantity in [i64::MIN, i64::MAX, -1_000_000_001, 1_000_000_001] {
            let line = format!(
                r#"{{"transaction_id":"T1","line":1,"kind":"{kind}","sku":"S1","quantity":{quantity},"occurred_at":"2026-11-22T11:31:07Z"}}"#
            );
            let read = read_lines(line.as_bytes()).remove(0).unwrap();
            let refused = to_movement(&store(), &read, SourceSystem::Pos, now()).unwrap_err();
            assert_eq!(refused.code, RejectCode::InvalidQuantity, "{kind} {quantity}");
        }
    }
    let report = format!(
        r#"{{"id_produto":"01","nome_produto":"Arroz","quantidade":{},"id_loja":"012","nome_loja":"Mercado Central"}}"#,
        i64::MIN
    );
    let (reports, _) = read_reports(report.as_bytes()).unwrap();
    let line = report_line(&reports[0], "report-1", now());
    assert_eq!(to_movement(&store(), &line, SourceSystem::Pos, now()).unwrap_err().code, RejectCode::InvalidQuantity);
}

const REPORT_SEED: &str = r#"[{"id_produto":"01","nome_produto":"Arroz","quantidade":10,"id_loja":"001","nome_loja":"Mercado Central","id_relatorio":"c-1","contado_em":"2026-11-22T08:00:00-03:00"}]"#;
const LINE_SEED: &str = r#"{"seq":41,"transaction_id":"T000123","line":1,"kind":"sale","sku":"7891000100103","quantity":2,"occurred_at":"2026-11-22T11:31:07-03:00","till":"04","cashier":"c"}"#;

proptest::proptest! {
    #![proptest_config(onhand_core::fuzzing::config())]

    /// Fuzz harness: a till's feed, whatever its bytes, gives lines or reasons, and every
    /// line a movement or a reason; never a panic.
    #[test]
    fn a_tills_feed_never_panics(bytes in onhand_core::fuzzing::hostile(LINE_SEED)) {
        for line in read_lines(&bytes).into_iter().flatten() {
            let _ = to_movement(&store(), &line, SourceSystem::StoreAgent, now());
        }
    }

    /// Fuzz harness: the brief's stock report, likewise, down to the answer with its alert.
    #[test]
    fn a_stock_report_never_panics(bytes in onhand_core::fuzzing::hostile(REPORT_SEED)) {
        if let Ok((reports, _)) = read_reports(&bytes) {
            for (i, report) in reports.iter().enumerate() {
                let _ = report_location("store-{id_loja}", report);
                if let Ok(id) = report_transaction_id(report, ReportIdentity::Key("k"), i) {
                    let line = report_line(report, &id, now());
                    let _ = to_movement(&store(), &line, SourceSystem::Pos, now());
                }
                let _ = answer_report(report, 5);
            }
        }
    }
}
