//! The alerts' rules: when a stock level or a source raises an alert, when the alert is
//! over, and what it says. Pure functions; the services that follow the stock topic,
//! check the sources and deliver the alerts are the files below.
//!
//! - `follower`: follows the stock topic in its own consumer group and decides each level
//!   version once, in the database transaction that records the decision.
//! - `delivery`: what runs on one replica at a time: the alert events onto the alerts
//!   topic, the silent sources' check, and the webhooks.
//!
//! A level's alerts, with `available` as the channels see it (`StockLevel::available`):
//!
//! | kind | raised when | resolved when |
//! |---|---|---|
//! | `low_stock` | available <= reorder point | available > reorder point + hysteresis |
//! | `out_of_stock` | available == 0 | available > 0 |
//! | `oversold` | on_hand < 0 | on_hand >= 0 |
//! | `reservation_exceeds_stock` | reserved > on_hand | reserved <= on_hand |
//!
//! Each crossing is one alert: raised once, resolved once, and raised anew (a new id) at
//! the next crossing.

pub mod delivery;
pub mod follower;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::{
    config::ChannelConfig,
    event::{
        alert::{Alert, AlertDetails, AlertKind, AlertState, Compensation, LevelFigures},
        EventId, LocationId, SourceSystem, StockLevel,
    },
};

/// The thresholds of one level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// The level's own reorder point, or the configured default.
    pub reorder_point: i64,
    pub hysteresis: i64,
}

/// Where a level stands against one kind's condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// The alert should be open.
    Holds,
    /// The alert should be resolved.
    Clear,
    /// Neither (the hysteresis band of `low_stock`): an open alert stays open, none is
    /// raised.
    Between,
}

/// Where `level` stands against `kind`'s condition; a source's kind always answers
/// `Between`, since levels do not decide it.
pub fn condition(kind: AlertKind, level: &StockLevel, thresholds: Thresholds) -> Condition {
    let holds = |yes: bool| if yes { Condition::Holds } else { Condition::Clear };
    let available = level.available();
    match kind {
        AlertKind::LowStock if available <= thresholds.reorder_point => Condition::Holds,
        AlertKind::LowStock if available > thresholds.reorder_point.saturating_add(thresholds.hysteresis) => {
            Condition::Clear
        }
        AlertKind::LowStock => Condition::Between,
        AlertKind::OutOfStock => holds(available == 0),
        AlertKind::Oversold => holds(level.on_hand < 0),
        AlertKind::ReservationExceedsStock => holds(level.reserved > 0 && level.reserved > level.on_hand),
        AlertKind::SourceSilent => Condition::Between,
    }
}

/// What to do with one kind of a level's alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Raise(AlertKind),
    Resolve(AlertKind),
}

/// The changes `level` makes, given the kinds of its alerts that are not resolved yet.
pub fn decide(level: &StockLevel, unresolved: &[AlertKind], thresholds: Thresholds) -> Vec<Change> {
    AlertKind::OF_LEVELS
        .into_iter()
        .filter_map(|kind| match (condition(kind, level, thresholds), unresolved.contains(&kind)) {
            (Condition::Holds, false) => Some(Change::Raise(kind)),
            (Condition::Clear, true) => Some(Change::Resolve(kind)),
            _ => None,
        })
        .collect()
}

/// The subject of a level's alerts, and their key on the alerts topic.
pub fn level_subject(level: &StockLevel) -> String {
    level.kafka_key()
}

/// The id of the alert of `kind` about `subject` raised by `crossing` (the level version,
/// or the time a source was last heard): the same crossing always names the same alert.
pub fn alert_id(kind: AlertKind, subject: &str, crossing: &str) -> String {
    let digest = Sha256::digest(format!("{kind}|{subject}|{crossing}"));
    format!("alr_{}", &hex::encode(digest)[..24])
}

/// What a level's alert says, beyond its kind: the figures, and what each kind names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// `oversold`: the level's newest movements, newest first, with their signed change
    /// of on_hand (`None` for a count) and source system.
    pub recent: Vec<(EventId, Option<i64>, SourceSystem)>,
    /// `oversold`: the SKU's levels at every location.
    pub levels_of_sku: Vec<StockLevel>,
    /// `reservation_exceeds_stock`: the held reservations with units at the level.
    pub reservations: Vec<crate::event::alert::ReservationAtRisk>,
}

/// The alert `kind` raised on `level` at `now`.
pub fn raise(
    kind: AlertKind,
    level: &StockLevel,
    thresholds: Thresholds,
    evidence: &Evidence,
    channels: &BTreeMap<String, ChannelConfig>,
    now: DateTime<Utc>,
) -> Alert {
    let subject = level_subject(level);
    let figures = LevelFigures {
        on_hand: level.on_hand,
        reserved: level.reserved,
        safety_stock: level.safety_stock,
        available: level.available(),
        version: level.version,
    };
    let mut details = AlertDetails { level: Some(figures), ..AlertDetails::default() };
    let message = match kind {
        AlertKind::LowStock => {
            details.reorder_point = Some(thresholds.reorder_point);
            details.hysteresis = Some(thresholds.hysteresis);
            format!(
                "{subject}: {} available, at or below the reorder point {}",
                figures.available, thresholds.reorder_point
            )
        }
        AlertKind::OutOfStock => format!("{subject}: nothing available ({} on hand)", level.on_hand),
        AlertKind::Oversold => {
            details.movements = oversold_by(level.on_hand, &evidence.recent);
            details.compensation = Some(compensation(level, evidence, channels));
            format!("{subject}: oversold, {} on hand", level.on_hand)
        }
        AlertKind::ReservationExceedsStock => {
            details.reservations = evidence.reservations.clone();
            format!("{subject}: {} reserved but {} on hand", level.reserved, level.on_hand)
        }
        AlertKind::SourceSilent => unreachable!("a level does not raise source_silent"),
    };
    Alert {
        id: alert_id(kind, &subject, &level.version.to_string()),
        kind,
        state: AlertState::Open,
        subject,
        sku: Some(level.sku.clone()),
        location: Some(level.location.clone()),
        source: None,
        message,
        raised_at: now,
        acknowledged_at: None,
        acknowledged_by: None,
        resolved_at: None,
        changed_at: now,
        details,
    }
}

/// The movements that took on_hand below zero: from the newest back, the decreases until
/// on_hand before them was not negative; oldest first. A count ends the walk (it set the
/// level whatever came before).
pub fn oversold_by(on_hand: i64, recent: &[(EventId, Option<i64>, SourceSystem)]) -> Vec<EventId> {
    let mut taken = Vec::new();
    let mut after = on_hand;
    for (event_id, delta, _) in recent {
        if after >= 0 {
            break;
        }
        let Some(delta) = *delta else {
            taken.push(event_id.clone());
            break;
        };
        if delta < 0 {
            taken.push(event_id.clone());
        }
        after = after.saturating_sub(delta);
    }
    taken.reverse();
    taken
}

/// What would make an oversold level whole: the units from the location, among those that
/// serve a channel with this one, with the most available; else the cancellation of the
/// newest online sale of the SKU here; else a count.
pub fn compensation(
    level: &StockLevel,
    evidence: &Evidence,
    channels: &BTreeMap<String, ChannelConfig>,
) -> Compensation {
    let deficit = level.on_hand.saturating_neg();
    let here = level.location.as_str();
    let best = channels
        .iter()
        .filter(|(_, channel)| channel.serves(here))
        .flat_map(|(name, channel)| {
            evidence
                .levels_of_sku
                .iter()
                .filter(move |other| other.location.as_str() != here && channel.serves(other.location.as_str()))
                .map(move |other| (other.available(), name, &other.location))
        })
        .filter(|(available, _, _)| *available > 0)
        // The most available; among equals, the first location and channel by name.
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.2.cmp(a.2)).then_with(|| b.1.cmp(a.1)));
    if let Some((available, channel, from)) = best {
        return Compensation::Transfer {
            from: from.clone(),
            to: level.location.clone(),
            quantity: available.min(deficit),
            channel: channel.clone(),
        };
    }
    let online = evidence.recent.iter().find(|(_, delta, system)| delta.is_some_and(|d| d < 0) && is_online(*system));
    if let Some((event_id, Some(delta), system)) = online {
        return Compensation::CancelOrderLine {
            event_id: event_id.clone(),
            system: *system,
            quantity: delta.saturating_neg().min(deficit),
        };
    }
    Compensation::Count {
        reason: format!("no location serving a channel with {here} has stock, and no online sale took it"),
    }
}

/// A sale through the web store, or through the API (an online checkout's committed
/// reservation).
fn is_online(system: SourceSystem) -> bool {
    matches!(system, SourceSystem::Shopify | SourceSystem::Api)
}

/// The `source_silent` alert of `source`, last heard at `last_heard_at`.
pub fn silent(source: &str, last_heard_at: DateTime<Utc>, silent_after_s: u64, now: DateTime<Utc>) -> Alert {
    let kind = AlertKind::SourceSilent;
    let quiet_s = (now - last_heard_at).num_seconds();
    let location = source.strip_prefix("pos:").map(LocationId::parse);
    Alert {
        id: alert_id(kind, source, &last_heard_at.timestamp_micros().to_string()),
        kind,
        state: AlertState::Open,
        subject: source.to_string(),
        sku: None,
        location: location.and_then(Result::ok),
        source: Some(source.to_string()),
        message: format!("{source}: not heard from for {quiet_s} s (allowed {silent_after_s} s)"),
        raised_at: now,
        acknowledged_at: None,
        acknowledged_by: None,
        resolved_at: None,
        changed_at: now,
        details: AlertDetails {
            last_heard_at: Some(last_heard_at),
            silent_after_s: Some(silent_after_s),
            ..AlertDetails::default()
        },
    }
}

/// Whether a source last heard at `last_heard_at` is silent at `now`. The API's callers
/// write when they have something, so their silence is no news; an interval of 0 turns
/// the check off for a source.
pub fn is_silent(source: &str, last_heard_at: DateTime<Utc>, silent_after_s: u64, now: DateTime<Utc>) -> bool {
    if silent_after_s == 0 || source == SourceSystem::Api.as_str() {
        return false;
    }
    let allowed = chrono::Duration::seconds(i64::try_from(silent_after_s).unwrap_or(i64::MAX / 1_000_000));
    now.signed_duration_since(last_heard_at) > allowed
}

/// `alert` resolved at `now`.
pub fn resolved(mut alert: Alert, now: DateTime<Utc>) -> Alert {
    alert.state = AlertState::Resolved;
    alert.resolved_at = Some(now);
    alert.changed_at = now;
    alert
}

#[cfg(test)]
mod tests;
