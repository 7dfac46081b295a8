//! The ledger's rules as pure functions: how a movement changes the level of its
//! sku@location. The backends call [`plan_key`] inside their transaction; the tests drive
//! it directly. `docs/consistency.md` states the rules in prose.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::event::{EventId, LocationId, Movement, Sku};

/// One row of stock: a SKU at a location.
pub type LevelKey = (Sku, LocationId);

/// The most units a level may hold on hand, either way. Far above any real stock (a
/// million movements of the largest quantity), and small enough that nothing computed
/// from levels overflows: what is available, a SKU's total over every location, or the
/// number a JavaScript client reads (2^53).
pub const ON_HAND_MAX: i64 = 1_000_000_000_000_000;

/// A movement the rules refuse: applying it would take its level beyond [`ON_HAND_MAX`].
/// The ledger dead-letters it with this reason instead of recording it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{event_id}: {reason}")]
pub struct OutOfRange {
    pub event_id: EventId,
    pub reason: String,
}

/// `value` as an on-hand quantity, when it is within [`ON_HAND_MAX`] either way.
fn on_hand_within(m: &Movement, value: i128) -> Result<i64, OutOfRange> {
    match i64::try_from(value) {
        Ok(v) if v.unsigned_abs() <= ON_HAND_MAX.unsigned_abs() => Ok(v),
        _ => Err(OutOfRange {
            event_id: m.event_id.clone(),
            reason: format!(
                "{} of {} would put on_hand of {}@{} at {value}, beyond the limit of {ON_HAND_MAX} either way",
                m.kind, m.quantity, m.sku, m.location
            ),
        }),
    }
}

/// The count that on_hand is based on. Counts are ordered by `(at, event_id)`, so two
/// counts taken at the same instant still have a fixed order, whatever order they arrive in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CountMark {
    pub at: DateTime<Utc>,
    pub event_id: EventId,
}

/// What the rules know of a level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelState {
    pub on_hand: i64,
    /// The newest `occurred_at` among the movements recorded for this level; `None` for a
    /// level created by its stock policy before any movement.
    pub last_movement_at: Option<DateTime<Utc>>,
    /// The last movement that was applied, in arrival order.
    pub last_event_id: Option<EventId>,
    pub last_count: Option<CountMark>,
}

/// What a movement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// It changed on_hand (or, for a count, set it).
    Applied,
    /// It is recorded but changes nothing: a delta that occurred at or before the count
    /// on_hand is based on, or a count older than that count.
    Superseded,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Applied => "applied",
            Effect::Superseded => "superseded",
        }
    }
}

/// Applies one new movement to a level. `later_deltas` matters only for a count: the sum
/// of the deltas already recorded for this level that occurred after the count, which the
/// counted quantity does not include yet (wide, as a sum of any number of deltas is).
/// Refused when the level would leave the range of [`ON_HAND_MAX`]: never a wrap.
pub fn apply(state: Option<&LevelState>, m: &Movement, later_deltas: i128) -> Result<(LevelState, Effect), OutOfRange> {
    let last_count = state.and_then(|s| s.last_count.as_ref());
    let effect = match (m.delta(), last_count) {
        (Some(_), Some(count)) if m.occurred_at <= count.at => Effect::Superseded,
        (None, Some(count)) if (m.occurred_at, &m.event_id) <= (count.at, &count.event_id) => Effect::Superseded,
        _ => Effect::Applied,
    };
    let last_movement_at = state.and_then(|s| s.last_movement_at).max(Some(m.occurred_at));
    let next = match (effect, state) {
        (Effect::Superseded, Some(s)) => LevelState { last_movement_at, ..s.clone() },
        (Effect::Superseded, None) => unreachable!("only a level with a count can supersede"),
        (Effect::Applied, _) => LevelState {
            on_hand: match m.delta() {
                Some(delta) => on_hand_within(m, i128::from(state.map_or(0, |s| s.on_hand)) + i128::from(delta))?,
                None => on_hand_within(m, i128::from(m.quantity) + later_deltas)?,
            },
            last_movement_at,
            last_event_id: Some(m.event_id.clone()),
            last_count: match m.delta() {
                Some(_) => last_count.cloned(),
                None => Some(CountMark { at: m.occurred_at, event_id: m.event_id.clone() }),
            },
        },
    };
    Ok((next, effect))
}

/// The outcome of a batch's new movements for one level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPlan {
    /// The new state, or `None` when nothing was applied and the row stays as it is.
    pub state: Option<LevelState>,
    pub applied: u64,
    pub superseded: Vec<EventId>,
}

/// Applies a batch's new movements for one level, in arrival order. `recorded_later` gives,
/// for each count, the sum of deltas recorded before this batch that occurred after it;
/// deltas earlier in the same batch are added here. Refused, naming the first movement
/// that cannot apply, when one would take the level out of range.
pub fn plan_key(
    prior: Option<&LevelState>,
    movements: &[&Movement],
    recorded_later: &HashMap<EventId, i128>,
) -> Result<KeyPlan, OutOfRange> {
    let mut state = prior.cloned();
    let mut plan = KeyPlan { state: None, applied: 0, superseded: Vec::new() };
    for (i, m) in movements.iter().enumerate() {
        let later_deltas = match m.delta() {
            Some(_) => 0,
            None => {
                let in_batch: i128 = movements[..i]
                    .iter()
                    .filter(|earlier| earlier.occurred_at > m.occurred_at)
                    .filter_map(|earlier| earlier.delta())
                    .map(i128::from)
                    .sum();
                recorded_later.get(&m.event_id).copied().unwrap_or(0) + in_batch
            }
        };
        let (next, effect) = apply(state.as_ref(), m, later_deltas)?;
        match effect {
            Effect::Applied => plan.applied += 1,
            Effect::Superseded => plan.superseded.push(m.event_id.clone()),
        }
        state = Some(next);
    }
    if plan.applied > 0 {
        plan.state = state;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests;
