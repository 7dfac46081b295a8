//! Reservations: the promise a checkout gets that its units are kept for it.
//!
//! A reservation holds its units in `stock_levels.reserved` through a conditional update on
//! what is available, decided by the database: two API replicas cannot promise the last
//! unit twice. It ends committed (its lines become sale movements; the ledger applies each
//! sale and releases its units in the same write, so `available` never jumps), cancelled or
//! expired (its units are released). Every change is also a movement (`reserve`, `release`,
//! `commit`) written to the outbox in the same transaction, so the audit trail on Kafka is
//! complete. The pure parts live here; the transactions in `db/reservations.rs`; the
//! routes in `api/reservations.rs`.

pub mod service;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    event::{EventId, LocationId, Movement, MovementKind, Sku, Source, SourceSystem},
    ledger::rules::LevelKey,
};

/// Where a reservation is in its life. Only `held` ones hold units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Held,
    Committed,
    Cancelled,
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Held => "held",
            Status::Committed => "committed",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
        }
    }

    pub fn parse(value: &str) -> Option<Status> {
        [Status::Held, Status::Committed, Status::Cancelled, Status::Expired].into_iter().find(|s| s.as_str() == value)
    }
}

/// A line as asked for: a location, or any location that serves the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRequest {
    pub sku: Sku,
    pub quantity: i64,
    pub location: Option<LocationId>,
}

/// A line as held, numbered from 1 in the order asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Line {
    pub line: i32,
    pub sku: Sku,
    pub location: LocationId,
    pub quantity: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reservation {
    pub id: String,
    pub channel: String,
    pub status: Status,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<DateTime<Utc>>,
    pub lines: Vec<Line>,
    /// The API key that made it: only it, or an admin key, reads and ends it. `None` for
    /// a reservation made before keys owned them.
    #[serde(skip)]
    pub owner: Option<String>,
}

impl Reservation {
    /// Whether `key_id` (an admin when `admin`) may see and end this reservation.
    pub fn belongs_to(&self, key_id: &str, admin: bool) -> bool {
        admin || self.owner.as_deref().is_none_or(|owner| owner == key_id)
    }
}

/// A SKU like a short one that the channel has enough of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Suggestion {
    pub sku: Sku,
    pub name: String,
    /// The most units one location that serves the channel has available.
    pub available: i64,
}

/// A line that cannot be held: what was asked, the most one location can give, and
/// similar SKUs to offer instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShortLine {
    pub line: i32,
    pub sku: Sku,
    pub requested: i64,
    pub available: i64,
    pub suggestions: Vec<Suggestion>,
}

/// What a request for a reservation decided: the first decision for an Idempotency-Key
/// is kept and given again to every retry with that key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every line is held.
    Held(Reservation),
    /// Some lines are short: nothing was held.
    Short(Vec<ShortLine>),
}

/// Picks a location for each line from what is available now (by level), or says which
/// lines are short. A line without a location takes the serving location with the most
/// available (the first by name on a tie), so reservations spread instead of draining one
/// store; lines of the same SKU count what earlier lines took.
pub fn plan(
    lines: &[LineRequest],
    available: &BTreeMap<LevelKey, i64>,
    serves: impl Fn(&LocationId) -> bool,
) -> Result<Vec<LocationId>, Vec<(usize, i64)>> {
    let mut left = available.clone();
    let mut chosen = Vec::with_capacity(lines.len());
    let mut short = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let candidates = left.iter().filter(|((sku, location), _)| {
            *sku == line.sku && line.location.as_ref().map_or_else(|| serves(location), |wanted| wanted == location)
        });
        // max_by_key keeps the last of equal maxima; going backwards makes it the first.
        let best = candidates.rev().max_by_key(|(_, units)| **units).map(|(key, units)| (key.clone(), *units));
        match best {
            Some((key, units)) if units >= line.quantity => {
                *left.get_mut(&key).expect("the best key is in the map") -= line.quantity;
                chosen.push(key.1);
            }
            best => short.push((i, best.map_or(0, |(_, units)| units.max(0)))),
        }
    }
    if short.is_empty() {
        Ok(chosen)
    } else {
        Err(short)
    }
}

/// The units to hold at each level for these lines, in key order: every writer takes the
/// rows of a level in the same order, so two reservations wait instead of deadlocking.
pub fn holds(lines: &[Line]) -> Vec<(LevelKey, i64)> {
    let mut total: BTreeMap<LevelKey, i64> = BTreeMap::new();
    for line in lines {
        *total.entry((line.sku.clone(), line.location.clone())).or_default() += line.quantity;
    }
    total.into_iter().collect()
}

/// The event id of what happened to a line: `reservation:{id}:{line}:{what}`, where `what`
/// is `reserve`, `release`, `commit` or `sale`.
fn line_event_id(id: &str, line: i32, what: &str) -> EventId {
    EventId::parse(format!("reservation:{id}:{line}:{what}")).expect("reservation ids make valid event ids")
}

/// The reservation and line a sale of a committed reservation settles, read from its event id.
pub fn settled_line(event_id: &EventId) -> Option<(&str, i32)> {
    let rest = event_id.as_str().strip_prefix("reservation:")?.strip_suffix(":sale")?;
    let (id, line) = rest.rsplit_once(':')?;
    Some((id, line.parse().ok()?))
}

/// The movements that tell Kafka what happened to a reservation: one event of `kind` per
/// line, and, for a commit, the sale of each line that the ledger applies.
pub fn events(reservation: &Reservation, kind: MovementKind, now: DateTime<Utc>) -> Vec<Movement> {
    let mut out = Vec::with_capacity(reservation.lines.len() * 2);
    for line in &reservation.lines {
        let movement = |kind: MovementKind, what: &str| Movement {
            event_id: line_event_id(&reservation.id, line.line, what),
            source: Source {
                system: SourceSystem::Api,
                instance: "reservations".to_string(),
                reference: format!("{}/{}", reservation.id, line.line),
            },
            sku: line.sku.clone(),
            location: line.location.clone(),
            kind,
            quantity: line.quantity,
            occurred_at: now,
            recorded_at: now,
            actor: None,
            reason: None,
            correlation_id: Some(format!("reservation:{}", reservation.id)),
            attributes: BTreeMap::from([
                ("reservation_id".to_string(), reservation.id.clone()),
                ("line".to_string(), line.line.to_string()),
                ("channel".to_string(), reservation.channel.clone()),
            ]),
        };
        out.push(movement(kind, kind.as_str()));
        if kind == MovementKind::Commit {
            out.push(movement(MovementKind::Sale, "sale"));
        }
    }
    out
}

/// Ranks candidates for a short SKU: same category first, then more shared attributes,
/// then more available; at most `limit`.
pub fn rank_suggestions(
    category: Option<&str>,
    attributes: &HashMap<String, String>,
    candidates: Vec<(Suggestion, Option<String>, HashMap<String, String>)>,
    limit: usize,
) -> Vec<Suggestion> {
    let mut scored: Vec<(bool, usize, Suggestion)> = candidates
        .into_iter()
        .map(|(suggestion, their_category, their_attributes)| {
            let same_category = category.is_some() && their_category.as_deref() == category;
            let shared = attributes.iter().filter(|(k, v)| their_attributes.get(*k) == Some(*v)).count();
            (same_category, shared, suggestion)
        })
        .filter(|(same_category, shared, _)| *same_category || *shared > 0)
        .collect();
    scored
        .sort_by(|a, b| (b.0, b.1, b.2.available).cmp(&(a.0, a.1, a.2.available)).then_with(|| a.2.sku.cmp(&b.2.sku)));
    scored.into_iter().take(limit).map(|(_, _, s)| s).collect()
}

#[cfg(test)]
mod tests;
