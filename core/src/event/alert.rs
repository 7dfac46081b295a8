//! The alert event `onhand.alert.v1`: one change of an alert (raised, acknowledged,
//! resolved), published on `onhand.alerts.v1` keyed by its subject and pushed to webhook
//! subscribers as it is.

use chrono::{DateTime, Utc};
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};

use super::{EventId, LocationId, Sku, SourceSystem};

/// The schema id of an alert event, also its `$id` in `schemas/alert.v1.json`.
pub const ALERT_SCHEMA: &str = "onhand.alert.v1";

/// What an alert is about.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Available at or below the reorder point.
    LowStock,
    /// Nothing available.
    OutOfStock,
    /// on_hand below zero: more was sold than the location had.
    Oversold,
    /// More units reserved than on hand: a till sold units a checkout holds.
    ReservationExceedsStock,
    /// A source not heard from for longer than its interval.
    SourceSilent,
}

impl AlertKind {
    pub const ALL: [AlertKind; 5] = [
        AlertKind::LowStock,
        AlertKind::OutOfStock,
        AlertKind::Oversold,
        AlertKind::ReservationExceedsStock,
        AlertKind::SourceSilent,
    ];

    /// The kinds a stock level raises; the rest are about sources.
    pub const OF_LEVELS: [AlertKind; 4] =
        [AlertKind::LowStock, AlertKind::OutOfStock, AlertKind::Oversold, AlertKind::ReservationExceedsStock];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::LowStock => "low_stock",
            AlertKind::OutOfStock => "out_of_stock",
            AlertKind::Oversold => "oversold",
            AlertKind::ReservationExceedsStock => "reservation_exceeds_stock",
            AlertKind::SourceSilent => "source_silent",
        }
    }

    pub fn parse(text: &str) -> Option<AlertKind> {
        AlertKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl std::fmt::Display for AlertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an alert is in its life: raised (`open`), seen by someone (`acknowledged`), over
/// (`resolved`, by the condition clearing). A new crossing is a new alert.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Open,
    Acknowledged,
    Resolved,
}

impl AlertState {
    pub const ALL: [AlertState; 3] = [AlertState::Open, AlertState::Acknowledged, AlertState::Resolved];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Open => "open",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn parse(text: &str) -> Option<AlertState> {
        AlertState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// An alert as it stands: in the database, in `GET /v1/alerts`, and in each event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct Alert {
    /// `alr_` and 24 hex digits, derived from the crossing that raised it, so that two
    /// replicas deciding the same crossing name the same alert.
    pub id: String,
    pub kind: AlertKind,
    pub state: AlertState,
    /// `sku@location` for a level's alerts, the source's name for `source_silent`; the
    /// key on `onhand.alerts.v1`.
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<Sku>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<LocationId>,
    /// The source of a `source_silent` alert (`erp`, `pos:store-012`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// What happened, for people.
    pub message: String,
    pub raised_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// The API key that acknowledged it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    /// When it last changed state.
    pub changed_at: DateTime<Utc>,
    pub details: AlertDetails,
}

/// What the alert knows of its cause; each kind fills its own fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct AlertDetails {
    /// The level when the alert was raised (alerts of levels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LevelFigures>,
    /// The available units at or below which `low_stock` is raised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reorder_point: Option<i64>,
    /// `low_stock` resolves once available is above `reorder_point` plus this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hysteresis: Option<i64>,
    /// `oversold`: the movements that took on_hand below zero, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub movements: Vec<EventId>,
    /// `oversold`: what would make the level whole again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<Compensation>,
    /// `reservation_exceeds_stock`: the held reservations with units here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reservations: Vec<ReservationAtRisk>,
    /// `source_silent`: when the source was last heard from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heard_at: Option<DateTime<Utc>>,
    /// `source_silent`: how long it may stay quiet, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silent_after_s: Option<u64>,
}

/// The figures of a level an alert was raised on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct LevelFigures {
    pub on_hand: i64,
    pub reserved: i64,
    pub safety_stock: i64,
    pub available: i64,
    pub version: i64,
}

/// A proposal that would make an oversold level whole; a person decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Compensation {
    /// Move units from the location of the same channel with the most available.
    Transfer { from: LocationId, to: LocationId, quantity: i64, channel: String },
    /// No location of its channels has stock: cancel the latest online order line of
    /// the SKU, which took the units.
    CancelOrderLine { event_id: EventId, system: SourceSystem, quantity: i64 },
    /// Neither is possible: count the location, its figures may be wrong.
    Count { reason: String },
}

/// A held reservation with units at a level whose stock no longer covers them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct ReservationAtRisk {
    pub reservation_id: String,
    pub quantity: i64,
    pub expires_at: DateTime<Utc>,
}

/// One change of an alert: published on `onhand.alerts.v1` with key `subject`, sent to
/// webhooks, streamed. `event_id` is unique per change (`{id}:{state}`), so a consumer
/// that sees one twice can tell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[schemars(title = "onhand.alert.v1", transform = alert_id)]
pub struct AlertEvent {
    pub event_id: String,
    #[serde(flatten)]
    pub alert: Alert,
}

fn alert_id(schema: &mut Schema) {
    schema.insert("$id".into(), ALERT_SCHEMA.into());
}

impl AlertEvent {
    /// The event of the alert's current state.
    pub fn of(alert: Alert) -> AlertEvent {
        AlertEvent { event_id: format!("{}:{}", alert.id, alert.state.as_str()), alert }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an alert always serializes")
    }
}
