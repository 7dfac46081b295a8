//! The ERP mapping on journal rows as the fixture ERP writes them.

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use onhand_core::event::MovementKind;

use super::mapping::*;

fn codes() -> Codes {
    let kinds: BTreeMap<String, String> =
        [("ENT", "receipt"), ("SAI", "sale"), ("AJU", "adjustment"), ("INV", "count")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
    let locations: BTreeMap<String, String> =
        [("CD01", "dc-sp"), ("L001", "store-001")].into_iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    Codes::new(&kinds, &locations, "erp-main").unwrap()
}

fn row(id: i64, movement_type: &str, warehouse: &str, quantity: i64) -> JournalRow {
    JournalRow {
        id,
        changed_at: Utc.with_ymd_and_hms(2026, 11, 22, 17, 40, 12).unwrap(),
        item: "7891000100561".into(),
        warehouse: warehouse.into(),
        movement_type: movement_type.into(),
        quantity,
        reference: Some("NF-000123".into()),
    }
}

#[test]
fn journal_rows_become_movements_with_the_kinds_direction() {
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 17, 40, 15).unwrap();
    // (movement type, warehouse, ERP quantity) -> (kind, quantity, delta)
    let cases = [
        ("ENT", "CD01", 480, MovementKind::Receipt, 480, Some(480)),
        ("SAI", "L001", -2, MovementKind::Sale, 2, Some(-2)),
        ("AJU", "L001", -6, MovementKind::Adjustment, -6, Some(-6)),
        ("INV", "L001", 37, MovementKind::Count, 37, None),
    ];
    for (code, warehouse, erp_quantity, kind, quantity, delta) in cases {
        let m = to_movement(&row(981234, code, warehouse, erp_quantity), &codes(), now).unwrap();
        assert_eq!((m.kind, m.quantity, m.delta()), (kind, quantity, delta), "{code}");
        assert_eq!(m.event_id.as_str(), "erp:journal:981234");
        assert_eq!(m.source.reference, "journal:981234");
        assert_eq!(m.attributes.get("reference").map(String::as_str), Some("NF-000123"));
    }
}

#[test]
fn unknown_codes_and_bad_rows_are_refused_with_a_reason() {
    let now = Utc::now();
    assert_eq!(to_movement(&row(1, "XXX", "CD01", 1), &codes(), now).unwrap_err().code, "erp_unknown_movement_type");
    assert_eq!(to_movement(&row(1, "ENT", "ZZ99", 1), &codes(), now).unwrap_err().code, "erp_unknown_warehouse");
    assert_eq!(to_movement(&row(1, "ENT", "CD01", 0), &codes(), now).unwrap_err().code, "invalid_quantity");
    let mut bad_item = row(1, "ENT", "CD01", 1);
    bad_item.item = "7891 000".into();
    assert_eq!(to_movement(&bad_item, &codes(), now).unwrap_err().code, "invalid_sku");
}

#[test]
fn the_code_maps_are_checked_at_start() {
    let kinds: BTreeMap<String, String> = [("RES".to_string(), "reserve".to_string())].into();
    assert!(Codes::new(&kinds, &BTreeMap::new(), "erp").unwrap_err().contains("kinds.RES"));
    let locations: BTreeMap<String, String> = [("X".to_string(), "no/slash".to_string())].into();
    assert!(Codes::new(&BTreeMap::new(), &locations, "erp").unwrap_err().contains("locations.X"));
}

mod debezium {
    use super::super::{debezium::*, DebeziumColumns};

    /// A change event as Debezium's Oracle connector writes it with the JSON converter and
    /// schemas enabled (abridged schema), for an insert into ERP.STOCK_JOURNAL.
    const INSERT: &str = r#"{
      "schema": {"type": "struct", "name": "erp.ERP.STOCK_JOURNAL.Envelope", "optional": false, "fields": []},
      "payload": {
        "before": null,
        "after": {"ID": 981234, "CHANGED_AT": 1795369212000, "ITEM": "7891000100561", "WAREHOUSE": "L001",
                  "MOVEMENT_TYPE": "AJU", "QUANTITY": "-6", "REFERENCE": "NF-000123"},
        "source": {"version": "2.7.3.Final", "connector": "oracle", "name": "erp", "ts_ms": 1795369212000,
                   "snapshot": "false", "db": "ORCLPDB1", "schema": "ERP", "table": "STOCK_JOURNAL",
                   "txId": "0a001b00b3420000", "scn": "2876541", "commit_scn": "2876545", "lcr_position": null},
        "op": "c", "ts_ms": 1795369212455, "transaction": null
      }
    }"#;

    #[test]
    fn an_insert_is_a_journal_row() {
        let Change::Row(row) = read_change(INSERT.as_bytes(), &DebeziumColumns::default()).unwrap() else {
            panic!("an insert is a row")
        };
        assert_eq!((row.id, row.quantity, row.movement_type.as_str()), (981234, -6, "AJU"));
        assert_eq!(row.changed_at.timestamp(), 1_795_369_212);
        assert_eq!(row.reference.as_deref(), Some("NF-000123"));
        // A snapshot read, without the schema wrapper and with micro-second time, too.
        let snapshot = r#"{"before": null, "op": "r", "source": {"scn": "1"},
            "after": {"ID": 1, "CHANGED_AT": 1795369212000000, "ITEM": "A", "WAREHOUSE": "CD01",
                      "MOVEMENT_TYPE": "ENT", "QUANTITY": 480, "REFERENCE": null}}"#;
        let Change::Row(row) = read_change(snapshot.as_bytes(), &DebeziumColumns::default()).unwrap() else {
            panic!("a snapshot read is a row")
        };
        assert_eq!((row.changed_at.timestamp(), row.reference), (1_795_369_212, None));
    }

    #[test]
    fn updates_deletes_and_tombstones_are_not_applied() {
        let update = INSERT.replace(r#""op": "c""#, r#""op": "u""#);
        let delete = INSERT.replace(r#""op": "c""#, r#""op": "d""#);
        let columns = DebeziumColumns::default();
        assert!(matches!(read_change(update.as_bytes(), &columns).unwrap(),
            Change::Changed { op, reason } if op == "u" && reason.contains("2876541")));
        assert!(matches!(read_change(delete.as_bytes(), &columns).unwrap(), Change::Changed { .. }));
        assert_eq!(read_change(b"", &columns).unwrap(), Change::Nothing);
        assert_eq!(read_change(b"{", &columns).unwrap_err().code, "erp_invalid_change_event");
        let no_id = INSERT.replace(r#""ID": 981234"#, r#""ID": "x""#);
        assert!(read_change(no_id.as_bytes(), &columns).unwrap_err().message.contains("ID"));
    }
}

/// C1: an ERP row with a quantity at the edge of i64 is refused for every kind; `i64::MIN`
/// has no magnitude in i64 and is refused before the movement is built.
#[test]
fn extreme_quantities_in_the_journal_are_refused() {
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 17, 40, 15).unwrap();
    for code in ["ENT", "SAI", "AJU", "INV"] {
        for quantity in [i64::MIN, i64::MIN + 1, i64::MAX] {
            let refused = to_movement(&row(1, code, "CD01", quantity), &codes(), now).unwrap_err();
            assert_eq!(refused.code, "invalid_quantity", "{code} {quantity}");
        }
    }
}
