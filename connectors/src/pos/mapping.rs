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

/// One record of a store's stock report, as the original brief has it, with two optional
/// fields of onhand's. Unknown fields are kept and answered back: the report is accepted
/// as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockReport {
    pub id_produto: String,
    pub nome_produto: String,
    pub quantidade: i64,
    pub id_loja: String,
    pub nome_loja: String,
    /// The record's own identity, kept by the client through retries: a record sent twice
    /// with the same one counts once. (Or the request's `Idempotency-Key` header.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_relatorio: Option<String>,
    /// When the shelf was counted (RFC 3339); when the report arrived, when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contado_em: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// The longest `id_relatorio` or `Idempotency-Key` of a stock report.
pub const REPORT_ID_LEN_MAX: usize = 255;

/// Where a record's identity comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportIdentity<'a> {
    /// The request's `Idempotency-Key`: record `i` of it.
    Key(&'a str),
    /// Neither a key nor `id_relatorio`: a fresh id, so a resend counts again.
    None,
}

/// The transaction id a report record counts under: derived from `id_relatorio`, else
/// from the request's key and the record's position, else fresh. Hashed, so that any id a
/// client keeps (up to [`REPORT_ID_LEN_MAX`] characters) makes an event id of bounded
/// length. `Err` names what is wrong with the client's id.
pub fn report_transaction_id(
    report: &StockReport,
    identity: ReportIdentity<'_>,
    index: usize,
) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    let digest = |text: &str| hex::encode(&Sha256::digest(text.as_bytes())[..12]);
    let valid = |id: &str| !id.is_empty() && id.len() <= REPORT_ID_LEN_MAX && id.bytes().all(|b| b.is_ascii_graphic());
    match (&report.id_relatorio, identity) {
        (Some(id), _) if !valid(id) => {
            Err(format!("id_relatorio must be 1 to {REPORT_ID_LEN_MAX} visible ascii characters"))
        }
        (Some(id), _) => Ok(format!("report-{}", digest(id))),
        (None, ReportIdentity::Key(key)) => Ok(format!("report-{}-{index}", digest(key))),
        (None, ReportIdentity::None) => Ok(format!("report-{}", uuid::Uuid::new_v4().simple())),
    }
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

/// The count line a report records; `transaction_id` is the record's identity (see
/// [`report_transaction_id`]), so a resent or forwarded report counts once. The count
/// occurred when the record says it was counted, else at `received_at`.
pub fn report_line(report: &StockReport, transaction_id: &str, received_at: DateTime<Utc>) -> PosLine {
    let occurred_at = report.contado_em.unwrap_or(received_at);
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
