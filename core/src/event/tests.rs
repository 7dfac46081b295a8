use std::path::Path;

use chrono::{TimeZone, Utc};
use serde_json::{json, Value};

use super::{schemas::schemas, *};

fn valid() -> Value {
    json!({
        "event_id": "pos:store-001:T1001:1",
        "source": { "system": "pos", "instance": "store-001", "ref": "T1001/1" },
        "sku": "SKU-001",
        "location": "store-001",
        "kind": "sale",
        "quantity": 2,
        "occurred_at": "2026-11-20T10:15:00.123456789Z",
        "recorded_at": "2026-11-20T10:15:01Z"
    })
}

fn with(field: &str, value: Value) -> Vec<u8> {
    let mut m = valid();
    m[field] = value;
    serde_json::to_vec(&m).unwrap()
}

fn adjustment(quantity: i64) -> Vec<u8> {
    let mut m = valid();
    m["kind"] = json!("adjustment");
    m["quantity"] = json!(quantity);
    serde_json::to_vec(&m).unwrap()
}

fn code_of(bytes: &[u8]) -> RejectCode {
    Movement::from_json(bytes).expect_err("must be refused").code
}

#[test]
fn a_valid_movement_is_read_and_kept_to_the_microsecond() {
    let m = Movement::from_json(&serde_json::to_vec(&valid()).unwrap()).unwrap();
    assert_eq!(m.sku.as_str(), "SKU-001");
    assert_eq!(m.delta(), Some(-2));
    assert_eq!(
        m.occurred_at,
        Utc.with_ymd_and_hms(2026, 11, 20, 10, 15, 0).unwrap() + chrono::Duration::microseconds(123_456)
    );
    let again = Movement::from_json(&m.to_json()).unwrap();
    assert_eq!(again, m);
}

#[test]
fn each_kind_has_its_sign_rule() {
    let cases: &[(&str, i64, Option<Option<i64>>)] = &[
        // (kind, quantity, Some(delta) when accepted, None when refused)
        ("receipt", 5, Some(Some(5))),
        ("receipt", 0, None),
        ("return", 1, Some(Some(1))),
        ("transfer_in", 3, Some(Some(3))),
        ("sale", 2, Some(Some(-2))),
        ("sale", -2, None),
        ("transfer_out", 4, Some(Some(-4))),
        ("damage", 1, Some(Some(-1))),
        ("damage", 0, None),
        ("adjustment", -3, Some(Some(-3))),
        ("adjustment", 7, Some(Some(7))),
        ("adjustment", 0, None),
        ("count", 0, Some(None)),
        ("count", 12, Some(None)),
        ("count", -1, None),
        ("reserve", 2, Some(Some(0))),
        ("release", 2, Some(Some(0))),
        ("commit", 2, Some(Some(0))),
        ("commit", 0, None),
    ];
    for (kind, quantity, expected) in cases {
        let mut m = valid();
        m["kind"] = json!(kind);
        m["quantity"] = json!(quantity);
        let result = Movement::from_json(&serde_json::to_vec(&m).unwrap());
        match expected {
            Some(delta) => assert_eq!(result.unwrap().delta(), *delta, "{kind} {quantity}"),
            None => assert_eq!(result.unwrap_err().code, RejectCode::InvalidQuantity, "{kind} {quantity}"),
        }
    }
}

/// C1: the bound is checked on the magnitude, so `i64::MIN` (whose `abs()` wraps to
/// itself in a release build) is refused for every kind, as are the values just past it.
#[test]
fn extreme_quantities_are_refused_for_every_kind() {
    for kind in MovementKind::ALL {
        for quantity in [i64::MIN, i64::MIN + 1, -QUANTITY_MAX - 1, QUANTITY_MAX + 1, i64::MAX] {
            let mut m = valid();
            m["kind"] = json!(kind.as_str());
            m["quantity"] = json!(quantity);
            let refused = Movement::from_json(&serde_json::to_vec(&m).unwrap()).unwrap_err();
            assert_eq!(refused.code, RejectCode::InvalidQuantity, "{kind} {quantity}");
            assert!(refused.message.contains("must be within"), "{kind} {quantity}: {}", refused.message);
        }
    }
}

#[test]
fn text_with_a_nul_character_is_refused() {
    let cases = [
        with("reason", json!("a\u{0}b")),
        with("actor", json!("\u{0}")),
        with("attributes", json!({"k": "v\u{0}"})),
        with("source", json!({"system": "pos", "instance": "s\u{0}", "ref": "r"})),
    ];
    for bytes in cases {
        let code = code_of(&bytes);
        assert!(matches!(code, RejectCode::InvalidField | RejectCode::InvalidSource), "{code}");
    }
}

#[test]
fn bad_input_is_refused_with_a_stable_code() {
    let long = "x".repeat(200);
    let cases: Vec<(Vec<u8>, RejectCode)> = vec![
        (b"not json".to_vec(), RejectCode::NotJson),
        (b"{\"event_id\":".to_vec(), RejectCode::NotJson),
        (b"[1,2]".to_vec(), RejectCode::SchemaViolation),
        (with("quantity", json!("two")), RejectCode::SchemaViolation),
        (with("quantity", json!(1.5)), RejectCode::SchemaViolation),
        (with("unknown_field", json!(1)), RejectCode::SchemaViolation),
        (with("occurred_at", json!("yesterday")), RejectCode::SchemaViolation),
        (with("kind", json!("theft")), RejectCode::UnknownKind),
        (with("event_id", json!("")), RejectCode::InvalidEventId),
        (with("event_id", json!(long)), RejectCode::InvalidEventId),
        (with("event_id", json!("has space")), RejectCode::InvalidEventId),
        (with("sku", json!("")), RejectCode::InvalidSku),
        (with("sku", json!("a/b")), RejectCode::InvalidSku),
        (with("sku", json!("a@b")), RejectCode::InvalidSku),
        (with("location", json!("x".repeat(65))), RejectCode::InvalidLocation),
        (with("source", json!({"system": "pos", "instance": "", "ref": "r"})), RejectCode::InvalidSource),
        (with("source", json!({"system": "fax", "instance": "i", "ref": "r"})), RejectCode::SchemaViolation),
        (with("actor", json!("")), RejectCode::InvalidField),
        (with("reason", json!(long.repeat(10))), RejectCode::InvalidField),
        (with("attributes", json!({"k": "v".repeat(300)})), RejectCode::InvalidField),
        (with("reason", json!("r".repeat(MOVEMENT_BYTES_MAX))), RejectCode::Oversized),
        (with("quantity", json!(QUANTITY_MAX + 1)), RejectCode::InvalidQuantity),
        // An adjustment may be negative, so only the range check can refuse this one.
        (adjustment(i64::MIN), RejectCode::InvalidQuantity),
        (with("occurred_at", json!("-5000-01-01T00:00:00Z")), RejectCode::InvalidTime),
        (with("occurred_at", json!("1999-12-31T23:59:59Z")), RejectCode::InvalidTime),
        (with("occurred_at", json!("2026-11-21T10:15:02Z")), RejectCode::InvalidTime),
    ];
    for (bytes, code) in cases {
        assert_eq!(code_of(&bytes), code, "{}", String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn reservation_events_travel_on_kafka_but_are_not_accepted_from_clients() {
    let mut m = valid();
    m["kind"] = json!("reserve");
    let bytes = serde_json::to_vec(&m).unwrap();
    assert!(Movement::from_json(&bytes).unwrap().kind.is_reservation_event());
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 8, 0, 0).unwrap();
    assert_eq!(Movement::accept_json(&bytes, now).unwrap_err().code, RejectCode::KindNotAccepted);
}

#[test]
fn recorded_at_is_required_on_kafka_and_stamped_on_acceptance() {
    let mut m = valid();
    m.as_object_mut().unwrap().remove("recorded_at");
    let bytes = serde_json::to_vec(&m).unwrap();
    assert_eq!(code_of(&bytes), RejectCode::SchemaViolation);

    let now = Utc.with_ymd_and_hms(2026, 11, 22, 8, 0, 0).unwrap();
    assert_eq!(Movement::accept_json(&bytes, now).unwrap().recorded_at, now);
    // A client's recorded_at is replaced: onhand says when it accepted a movement.
    let stamped = Movement::accept_json(&serde_json::to_vec(&valid()).unwrap(), now).unwrap();
    assert_eq!(stamped.recorded_at, now);
}

#[test]
fn an_accepted_movement_fits_on_kafka_once_stamped() {
    let mut m = valid();
    m.as_object_mut().unwrap().remove("recorded_at");
    // Attributes of multi-byte characters fill it to just under the limit as sent; it is
    // over the limit once onhand adds recorded_at.
    let mut attributes = serde_json::Map::new();
    let len = |m: &Value| serde_json::to_vec(m).unwrap().len();
    for i in 0.. {
        let left = MOVEMENT_BYTES_MAX - 10 - len(&m);
        if left < 16 {
            break;
        }
        let value = if left > 800 { "€".repeat(256) } else { "x".repeat((left - 10).min(256)) };
        attributes.insert(format!("a{i:02}"), json!(value));
        m["attributes"] = Value::Object(attributes.clone());
    }
    let bytes = serde_json::to_vec(&m).unwrap();
    assert!((MOVEMENT_BYTES_MAX - 30..=MOVEMENT_BYTES_MAX).contains(&bytes.len()), "{}", bytes.len());
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 8, 0, 0).unwrap();
    assert_eq!(Movement::accept_json(&bytes, now).unwrap_err().code, RejectCode::Oversized);
}

#[test]
fn an_encoded_movement_grows_by_less_than_the_margin_accept_json_relies_on() {
    // The worst case: shortest times, no recorded_at, strings the encoder cannot shorten.
    let text = "\\u0001\\\"€x".repeat(20);
    let input = format!(
        r#"{{"event_id":"e","source":{{"system":"api","instance":"i","ref":"r"}},"sku":"S","location":"L",
           "kind":"receipt","quantity":1,"occurred_at":"2026-11-20T09:10:00Z","reason":"{text}"}}"#
    )
    .replace(['\n', ' '], "");
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 8, 0, 0).unwrap() + chrono::Duration::microseconds(123_456);
    let encoded = Movement::accept_json(input.as_bytes(), now).unwrap().to_json();
    assert!(encoded.len() <= input.len() + 59, "{} from {}", encoded.len(), input.len());
    assert!(encoded.len() > input.len(), "recorded_at was added");
}

#[test]
fn reject_codes_are_unique() {
    let mut codes: Vec<&str> = RejectCode::ALL.iter().map(|c| c.as_str()).collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), RejectCode::ALL.len());
}

/// The committed schemas are generated from these types; run with `UPDATE_SCHEMAS=1` to
/// regenerate them after a change.
#[test]
fn committed_schemas_are_up_to_date() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
    for (name, generated) in schemas() {
        let path = dir.join(name);
        if update {
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "schemas/{name} is stale: run `UPDATE_SCHEMAS=1 cargo test -p onhand-core committed_schemas` and commit it"
        );
    }
}

#[test]
fn the_schema_carries_the_quantity_rules() {
    let (_, text) = &schemas()[0];
    let schema: Value = serde_json::from_str(text).unwrap();
    assert_eq!(schema["$id"], MOVEMENT_SCHEMA);
    assert_eq!(schema["allOf"].as_array().unwrap().len(), 3);
    assert_eq!(schema["properties"]["sku"]["$ref"], "#/$defs/Sku");
}

/// Every ```json block of docs/events.md is a movement that passes validation, and
/// together they show every kind.
#[test]
fn the_documented_examples_are_valid_movements() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/events.md");
    let doc = std::fs::read_to_string(&path).expect("docs/events.md exists");
    let mut kinds = std::collections::BTreeSet::new();
    for block in doc.split("```json\n").skip(1) {
        let json = block.split("```").next().unwrap_or_default();
        let movement = Movement::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{json}"));
        kinds.insert(movement.kind.as_str());
    }
    assert_eq!(kinds.len(), MovementKind::ALL.len(), "one example per kind, found {kinds:?}");
}

/// The fuzz harness's movement: the JSON every way in hands to the gate, as it travels on
/// Kafka and as a client submits it.
const SEED: &str = r#"{"event_id":"pos:store-001:T1001:1","source":{"system":"pos","instance":"store-001","ref":"T1001/1"},
"sku":"SKU-001","location":"store-001","kind":"adjustment","quantity":-2,"occurred_at":"2026-11-20T10:15:00Z",
"recorded_at":"2026-11-20T10:15:01Z","reason":"r","attributes":{"k":"v"}}"#;

proptest::proptest! {
    #![proptest_config(crate::fuzzing::config())]

    /// Fuzz harness: the gate answers a movement or a reason for any bytes, never a panic,
    /// and what it accepts encodes and reads back the same.
    #[test]
    fn the_gate_never_panics(bytes in crate::fuzzing::hostile(SEED)) {
        if let Ok(m) = Movement::from_json(&bytes) {
            proptest::prop_assert_eq!(Movement::from_json(&m.to_json()), Ok(m.clone()));
            let _ = m.delta();
        }
        let _ = Movement::accept_json(&bytes, Utc::now());
    }
}
