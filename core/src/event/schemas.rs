//! The JSON Schemas of the wire types, as committed under `schemas/`.

use schemars::Schema;

use super::{alert::AlertEvent, Movement, StockLevel};

/// The JSON Schemas generated from the wire types, by file name under `schemas/`.
pub fn schemas() -> Vec<(&'static str, String)> {
    let render = |schema: Schema| {
        let mut text = serde_json::to_string_pretty(&schema).expect("a schema always serializes");
        text.push('\n');
        text
    };
    vec![
        ("movement.v1.json", render(schemars::schema_for!(Movement))),
        ("stock-level.v1.json", render(schemars::schema_for!(StockLevel))),
        ("alert.v1.json", render(schemars::schema_for!(AlertEvent))),
    ]
}
