//! From what a till and a store's stock report say to movements: pure functions.
//!
//! A till's feed is NDJSON, one [`PosLine`] per sale or return line; the store agent adds
//! its sequence number (`seq`). The stock report is the original brief's format, kept as
//! it is: `{"id_produto", "nome_produto", "quantidade", "id_loja", "nome_loja"}`, one
//! object or an array, answered with `"alerta"` when the quantity is low.

use chrono::{DateTime, Utc};
use onhand_core::event::{InvalidMovement, LocationId, Movement, SourceSystem};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The alert text of the original brief.
pub const LOW_STOCK_ALERT: &str = "Produto com estoque baixo";

/// What a line of a till's feed records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PosKind {
    Sale,
    Return,
    /// A count of the shelf (a stock report forwarded by the store agent).
    Count,
}

impl PosKind {
    fn movement_kind(self) -> &'static str {
        match self {
            PosKind::Sale => "sale",
            PosKind::Return => "return",
            PosKind::Count => "count",
        }
    }
}

/// One line of a till's feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PosLine {
    /// The store agent's sequence number of this line; absent when a till posts directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    /// The till's transaction; with `line`, it makes the event id, so a resent line counts once.
    pub transaction_id: String,
    pub line: u32,
    pub kind: PosKind,
    pub sku: String,
    /// Units sold or returned (> 0), or counted (>= 0).
    pub quantity: i64,
    pub occurred_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub till: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cashier: Option<String>,
}

/// The movement a line records at `store`, checked by the same gate as every movement.
pub fn to_movement(
    store: &LocationId,
    line: &PosLine,
    system: SourceSystem,
    now: DateTime<Utc>,
) -> Result<Movement, InvalidMovement> {
    let mut attributes = serde_json::Map::new();
    if let Some(till) = &line.till {
        attributes.insert("till".into(), json!(till));
    }
    if let Some(seq) = line.seq {
        attributes.insert("seq".into(), json!(seq.to_string()));
    }
    let system = serde_json::to_value(system).expect("a source system serializes");
    let movement = json!({
        "event_id": format!("pos:{store}:{}:{}", line.transaction_id, line.line),
        "source": { "system": system, "instance": store.as_str(), "ref": format!("{}/{}", line.transaction_id, line.line) },
        "sku": line.sku,
        "location": store.as_str(),
        "kind": line.kind.movement_kind(),
        "quantity": line.quantity,
        "occurred_at": line.occurred_at,
        "actor": line.cashier,
        "correlation_id": format!("pos:{store}:{}", line.transaction_id),
        "attributes": attributes,
    });
    let mut value = movement;
    if line.cashier.is_none() {
        value.as_object_mut().expect("an object").remove("actor");
    }
    Movement::accept_json(&serde_json::to_vec(&value).expect("JSON serializes"), now)
}

/// A till's feed: NDJSON, or one JSON array. Each line is read on its own.
pub fn read_lines(body: &[u8]) -> Vec<Result<PosLine, String>> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        return match serde_json::from_slice::<Vec<serde_json::Value>>(body) {
            Ok(items) => items.into_iter().map(|v| serde_json::from_value(v).map_err(|e| e.to_string())).collect(),
            Err(e) => vec![Err(e.to_string())],
        };
    }
    body.split(|b| *b == b'\n')
        .filter(|line| line.iter().any(|b| !b.is_ascii_whitespace()))
        .map(|line| serde_json::from_slice(line).map_err(|e| e.to_string()))
        .collect()
}

/// One record of a store's stock report, as the original brief has it. Unknown fields are
/// kept and answered back: the report is accepted as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockReport {
    pub id_produto: String,
    pub nome_produto: String,
    pub quantidade: i64,
    pub id_loja: String,
    pub nome_loja: String,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// A stock report: one object or an array of them. `true` when it was an array, so the
/// answer has the same shape.
pub fn read_reports(body: &[u8]) -> Result<(Vec<StockReport>, bool), String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    match value {
        serde_json::Value::Array(items) => {
            let reports = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| serde_json::from_value(item).map_err(|e| format!("record {i}: {e}")))
                .collect::<Result<_, _>>()?;
            Ok((reports, true))
        }
        object => Ok((vec![serde_json::from_value(object).map_err(|e| e.to_string())?], false)),
    }
}

/// The location of a store's report: `format` with `{id_loja}` replaced.
pub fn report_location(format: &str, report: &StockReport) -> Result<LocationId, InvalidMovement> {
    LocationId::parse(format.replace("{id_loja}", &report.id_loja))
}

/// The count line a report records; `transaction_id` is the report's own id (one per
/// record), so a forwarded report counts once.
pub fn report_line(report: &StockReport, transaction_id: &str, occurred_at: DateTime<Utc>) -> PosLine {
    PosLine {
        seq: None,
        transaction_id: transaction_id.to_string(),
        line: 1,
        kind: PosKind::Count,
        sku: report.id_produto.clone(),
        quantity: report.quantidade,
        occurred_at,
        till: None,
        cashier: None,
    }
}

/// The record as answered: as it came, with the alert when the quantity is at or below
/// the reorder point.
pub fn answer_report(report: &StockReport, reorder_point: i64) -> serde_json::Value {
    let mut value = serde_json::to_value(report).expect("a report serializes");
    if report.quantidade <= reorder_point {
        value["alerta"] = json!(LOW_STOCK_ALERT);
    }
    value
}
