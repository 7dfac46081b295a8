//! From a row of the ERP's stock journal to a movement: pure functions.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use onhand_core::event::{LocationId, Movement, MovementKind};
use serde::Serialize;
use serde_json::json;

/// One row of the journal, with the columns the journal query returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalRow {
    pub id: i64,
    pub changed_at: DateTime<Utc>,
    pub item: String,
    pub warehouse: String,
    pub movement_type: String,
    /// Signed as the ERP keeps it: outbound rows are often negative.
    pub quantity: i64,
    pub reference: Option<String>,
}

/// The ERP's codes, checked once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codes {
    pub kinds: BTreeMap<String, MovementKind>,
    pub locations: BTreeMap<String, LocationId>,
    pub instance: String,
}

impl Codes {
    /// Reads the configured maps; the message names the bad entry.
    pub fn new(
        kinds: &BTreeMap<String, String>,
        locations: &BTreeMap<String, String>,
        instance: &str,
    ) -> Result<Codes, String> {
        let kinds = kinds
            .iter()
            .map(|(code, kind)| {
                let known = MovementKind::ALL.into_iter().find(|k| k.as_str() == kind && !k.is_reservation_event());
                known.map(|k| (code.clone(), k)).ok_or_else(|| format!("kinds.{code}: {kind:?} is not a movement kind"))
            })
            .collect::<Result<_, _>>()?;
        let locations = locations
            .iter()
            .map(|(code, location)| {
                LocationId::parse(location.clone())
                    .map(|l| (code.clone(), l))
                    .map_err(|e| format!("locations.{code}: {}", e.message))
            })
            .collect::<Result<_, _>>()?;
        Ok(Codes { kinds, locations, instance: instance.to_string() })
    }
}

/// Why a row cannot become a movement: a stable code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmapped {
    pub code: &'static str,
    pub message: String,
}

/// The movement a journal row records; its event id is `erp:journal:{id}`, so a row read
/// again after a crash counts once.
pub fn to_movement(row: &JournalRow, codes: &Codes, now: DateTime<Utc>) -> Result<Movement, Unmapped> {
    let kind = codes.kinds.get(&row.movement_type).ok_or_else(|| Unmapped {
        code: "erp_unknown_movement_type",
        message: format!("movement type {:?} is not in [connectors.erp.kinds]", row.movement_type),
    })?;
    let location = codes.locations.get(&row.warehouse).ok_or_else(|| Unmapped {
        code: "erp_unknown_warehouse",
        message: format!("warehouse {:?} is not in [connectors.erp.locations]", row.warehouse),
    })?;
    // The kind carries the direction; only an adjustment keeps the ERP's sign. Saturating:
    // i64::MIN has no absolute value, and i64::MAX is refused as out of range all the same.
    let quantity = if *kind == MovementKind::Adjustment { row.quantity } else { row.quantity.saturating_abs() };
    let mut movement = json!({
        "event_id": format!("erp:journal:{}", row.id),
        "source": { "system": "erp", "instance": codes.instance, "ref": format!("journal:{}", row.id) },
        "sku": row.item,
        "location": location.as_str(),
        "kind": kind.as_str(),
        "quantity": quantity,
        "occurred_at": row.changed_at,
        "attributes": { "erp_movement_type": row.movement_type },
    });
    if let Some(reference) = &row.reference {
        movement["attributes"]["reference"] = json!(reference);
    }
    Movement::accept_json(&serde_json::to_vec(&movement).expect("JSON serializes"), now)
        .map_err(|e| Unmapped { code: e.code.as_str(), message: e.message })
}
