//! The inputs of the parsers' fuzz harness: what a hostile or broken client sends. Every
//! parser of outside input (a movement, an NDJSON body, a stock report, a till's line, a
//! WMS file, Shopify's payloads, Debezium's change events) is fed these in a property
//! test that asserts it answers an error or a value, never a panic.
//!
//! Three kinds of input, mixed: arbitrary bytes; a valid sample with bytes flipped,
//! inserted, removed or cut; and a valid JSON sample with one value replaced by one of the
//! values that break careless code (the edges of i64 and u64, floats, huge and empty
//! strings, U+0000, the wrong type).

use proptest::{prelude::*, sample::Index};
use serde_json::{json, Value};

/// How many inputs each parser of the harness is fed by default; `PROPTEST_CASES`
/// overrides it, for a longer run.
pub const CASES: u32 = 2_000;

/// The proptest configuration of the harness's tests.
pub fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(CASES);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// The values that break careless code.
pub fn nasty_value() -> impl Strategy<Value = Value> {
    let fixed = vec![
        json!(i64::MIN),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(-1),
        json!(0),
        json!(1.5),
        json!(-0.0),
        json!(1e308),
        json!(""),
        json!("\u{0}"),
        json!("x".repeat(70_000)),
        json!("9223372036854775808"),
        json!("-9223372036854775809"),
        json!("2026-13-45T99:99:99Z"),
        json!("+262143-12-31T23:59:59Z"),
        Value::Null,
        json!([]),
        json!({}),
        json!(true),
        json!([[[[[[[[[[1]]]]]]]]]]),
    ];
    prop_oneof![
        prop::sample::select(fixed),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,40}".prop_map(Value::from),
    ]
}

/// `seed` (JSON) with one of its values, anywhere in it, replaced by a nasty one.
pub fn json_mutation(seed: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seed: Value = serde_json::from_str(seed).expect("a JSON seed");
    (any::<Index>(), nasty_value()).prop_map(move |(at, replacement)| {
        let mut value = seed.clone();
        let mut pointers = Vec::new();
        collect_pointers(&value, String::new(), &mut pointers);
        if let Some(pointer) = pointers.get(at.index(pointers.len().max(1))) {
            if let Some(slot) = value.pointer_mut(pointer) {
                *slot = replacement;
            }
        }
        serde_json::to_vec(&value).expect("JSON serializes")
    })
}

fn collect_pointers(value: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                collect_pointers(child, format!("{at}/{}", key.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                collect_pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// `seed` with a few bytes flipped, inserted, removed, or the rest cut off.
pub fn byte_mutation(seed: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((any::<Index>(), any::<u8>(), 0u8..4), 1..8).prop_map(move |edits| {
        let mut bytes = seed.to_vec();
        for (at, byte, edit) in edits {
            if bytes.is_empty() {
                bytes.push(byte);
                continue;
            }
            let i = at.index(bytes.len());
            match edit {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                2 => {
                    bytes.remove(i);
                }
                _ => bytes.truncate(i),
            }
        }
        bytes
    })
}

/// Arbitrary bytes, `seed` mutated byte by byte, and, when `seed` is JSON, `seed` with a
/// nasty value: what every parser of the harness is fed.
pub fn hostile(seed: &'static str) -> BoxedStrategy<Vec<u8>> {
    let arbitrary = prop::collection::vec(any::<u8>(), 0..512);
    if serde_json::from_str::<Value>(seed).is_ok() {
        prop_oneof![arbitrary, byte_mutation(seed.as_bytes()), json_mutation(seed), json_mutation(seed)].boxed()
    } else {
        prop_oneof![arbitrary, byte_mutation(seed.as_bytes())].boxed()
    }
}
