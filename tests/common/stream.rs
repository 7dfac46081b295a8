//! What the tests of the live stream and the dashboard share: an alert change as the
//! alerts topic carries it.

use chrono::Utc;
use onhand_core::event::{
    alert::{Alert, AlertDetails, AlertEvent, AlertKind, AlertState},
    LocationId, Sku,
};

/// A `low_stock` alert of `sku@location` in `state`.
pub fn alert_event(id: &str, sku: &str, location: &str, state: AlertState) -> AlertEvent {
    let now = Utc::now();
    AlertEvent::of(Alert {
        id: id.to_string(),
        kind: AlertKind::LowStock,
        state,
        subject: format!("{sku}@{location}"),
        sku: Some(Sku::parse(sku).expect("a valid sku")),
        location: Some(LocationId::parse(location).expect("a valid location")),
        source: None,
        message: format!("{sku} is low at {location}"),
        raised_at: now,
        acknowledged_at: None,
        acknowledged_by: None,
        resolved_at: None,
        changed_at: now,
        details: AlertDetails::default(),
    })
}
