//! The levels as the recorded movements make them: a pure fold over a level's movements
//! in ledger order, through the ledger's own rule ([`rules::apply`]), so that `onhand
//! verify` and `onhand rebuild` cannot disagree with the ledger about what a movement
//! does. The one thing the fold keeps that the ledger reads from its table instead is, for
//! the count rule, the deltas recorded so far and when they occurred.

use std::{collections::BTreeMap, ops::Bound};

use chrono::{DateTime, Utc};

use crate::{
    event::{Movement, Source},
    ledger::rules::{self, Effect, LevelKey, LevelState, OutOfRange},
};

/// One level's movements folded so far.
#[derive(Debug, Clone)]
pub struct LevelFold {
    key: LevelKey,
    state: Option<LevelState>,
    /// The deltas recorded so far, summed by when they occurred: what a count that comes
    /// next adds of those that occurred after it. Those at or before the count on_hand is
    /// based on are dropped, since no count that can still apply is older.
    deltas: BTreeMap<DateTime<Utc>, i128>,
    source: Option<String>,
    movements: u64,
    refused: Option<OutOfRange>,
}

/// A level recomputed from its movements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recomputed {
    pub key: LevelKey,
    /// What the rules make of the movements; nothing on hand when none applied.
    pub state: LevelState,
    /// The source (`system:instance`) of the last movement that changed the level.
    pub source: Option<String>,
    /// How many movements were folded.
    pub movements: u64,
    /// The first movement the rules refused (it would take the level out of range), which
    /// the ledger would have dead-lettered rather than recorded; the fold went on without it.
    pub refused: Option<OutOfRange>,
}

/// A level with no movement: nothing on hand, no count.
pub fn empty_state() -> LevelState {
    LevelState { on_hand: 0, last_movement_at: None, last_event_id: None, last_count: None }
}

/// A source as `system:instance` (`pos:store-012`), the way reports group by it.
pub fn source_name(source: &Source) -> String {
    let system = serde_json::to_value(source.system).ok();
    let system = system.as_ref().and_then(|v| v.as_str()).unwrap_or("unknown");
    format!("{system}:{}", source.instance)
}

impl LevelFold {
    pub fn new(key: LevelKey) -> Self {
        LevelFold { key, state: None, deltas: BTreeMap::new(), source: None, movements: 0, refused: None }
    }

    pub fn key(&self) -> &LevelKey {
        &self.key
    }

    /// Applies the level's next movement in ledger order, as the ledger applied it, and
    /// answers what it did; `None` for a reservation event, which changes no level, and for
    /// a movement the rules refuse.
    pub fn push(&mut self, m: &Movement) -> Option<Effect> {
        if m.kind.is_reservation_event() {
            return None;
        }
        self.movements += 1;
        let later_deltas = match m.delta() {
            Some(_) => 0,
            None => self.deltas.range((Bound::Excluded(m.occurred_at), Bound::Unbounded)).map(|(_, sum)| sum).sum(),
        };
        let (next, effect) = match rules::apply(self.state.as_ref(), m, later_deltas) {
            Ok(applied) => applied,
            Err(refused) => {
                self.refused.get_or_insert(refused);
                return None;
            }
        };
        match m.delta() {
            Some(delta) => *self.deltas.entry(m.occurred_at).or_default() += i128::from(delta),
            None if effect == Effect::Applied => self.deltas = self.deltas.split_off(&after(m.occurred_at)),
            None => {}
        }
        if effect == Effect::Applied {
            self.source = Some(source_name(&m.source));
        }
        self.state = Some(next);
        Some(effect)
    }

    pub fn finish(self) -> Recomputed {
        Recomputed {
            key: self.key,
            state: self.state.unwrap_or_else(empty_state),
            source: self.source,
            movements: self.movements,
            refused: self.refused,
        }
    }
}

/// The first instant after `t` (times are kept to the microsecond).
fn after(t: DateTime<Utc>) -> DateTime<Utc> {
    t + chrono::Duration::microseconds(1)
}

/// Folds movements that come a level at a time (as `db::Audit` reads them), answering
/// each level once its last movement has passed.
#[derive(Debug, Default)]
pub struct Folds {
    current: Option<LevelFold>,
}

impl Folds {
    /// Folds `m`; when it begins another level, answers the level before it, done.
    pub fn push(&mut self, m: &Movement) -> Option<Recomputed> {
        let same = self.current.as_ref().is_some_and(|f| f.key.0 == m.sku && f.key.1 == m.location);
        let done = if same {
            None
        } else {
            self.current.replace(LevelFold::new((m.sku.clone(), m.location.clone()))).map(LevelFold::finish)
        };
        if let Some(fold) = &mut self.current {
            fold.push(m);
        }
        done
    }

    /// The last level, once every movement is pushed.
    pub fn finish(&mut self) -> Option<Recomputed> {
        self.current.take().map(LevelFold::finish)
    }
}

/// Every level the movements make, each level's movements taken in the order given.
pub fn recompute<'a>(movements: impl IntoIterator<Item = &'a Movement>) -> BTreeMap<LevelKey, Recomputed> {
    let mut folds: BTreeMap<LevelKey, LevelFold> = BTreeMap::new();
    for m in movements {
        let key = (m.sku.clone(), m.location.clone());
        folds.entry(key.clone()).or_insert_with(|| LevelFold::new(key)).push(m);
    }
    folds.into_iter().map(|(key, fold)| (key, fold.finish())).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use proptest::prelude::*;

    use super::*;
    use crate::{
        event::{EventId, MovementKind::*},
        ledger::rules::{plan_key, CountMark},
        testing::{at, movement},
    };

    fn m(id: &str, kind: crate::event::MovementKind, quantity: i64, second: i64) -> Movement {
        movement(id, "SKU-1", "s1", kind, quantity, at(second))
    }

    #[test]
    fn deltas_add_up_and_a_count_sets_on_hand_with_what_occurred_after_it() {
        let movements = [
            m("a", Receipt, 10, 0),
            m("b", Sale, 3, 50),
            // Taken at 40 s, before the sale at 50 s that arrived first: 20 + (-3).
            m("count", Count, 20, 40),
            // From before the count: recorded, superseded.
            m("late", Sale, 5, 30),
            m("c", Receipt, 2, 60),
            m("reserve", Reserve, 4, 70),
        ];
        let levels = recompute(&movements);
        let level = &levels[&(movements[0].sku.clone(), movements[0].location.clone())];
        assert_eq!(level.state.on_hand, 19);
        assert_eq!(level.state.last_count, Some(CountMark { at: at(40), event_id: EventId::parse("count").unwrap() }));
        assert_eq!(level.state.last_event_id.as_ref().map(EventId::as_str), Some("c"));
        assert_eq!(level.state.last_movement_at, Some(at(60)));
        assert_eq!(level.movements, 5, "the reservation event is no level's");
        assert_eq!(level.source.as_deref(), Some("api:test"));
        assert_eq!(level.refused, None);
    }

    #[test]
    fn a_movement_beyond_the_range_is_refused_and_the_fold_goes_on() {
        let movements = [m("over", Receipt, 1, 0), m("again", Receipt, 2, 1), m("fine", Sale, 1, 2)];
        let mut fold = LevelFold::new((movements[0].sku.clone(), movements[0].location.clone()));
        fold.state = Some(LevelState { on_hand: rules::ON_HAND_MAX, ..empty_state() });
        let effects: Vec<Option<Effect>> = movements.iter().map(|m| fold.push(m)).collect();
        assert_eq!(effects, [None, None, Some(Effect::Applied)]);
        let done = fold.finish();
        assert_eq!(done.state.on_hand, rules::ON_HAND_MAX - 1);
        assert_eq!(done.refused.map(|r| r.event_id.to_string()), Some("over".to_string()), "the first is kept");
    }

    #[test]
    fn folds_answer_each_level_when_the_next_begins() {
        let mut other = m("x", Receipt, 1, 0);
        other.location = crate::event::LocationId::parse("s2").unwrap();
        let mut folds = Folds::default();
        assert_eq!(folds.push(&m("a", Receipt, 2, 0)), None);
        assert_eq!(folds.push(&m("b", Receipt, 3, 1)), None);
        let first = folds.push(&other).expect("s1 is done");
        assert_eq!((first.key.1.as_str(), first.state.on_hand), ("s1", 5));
        assert_eq!(folds.finish().map(|r| r.state.on_hand), Some(1));
        assert_eq!(folds.finish(), None);
    }

    /// The ledger as it runs: the movements arrive in batches; each batch is planned with
    /// `plan_key` from the level as stored, and a count sees the deltas recorded in earlier
    /// batches that occurred after it (the database's `recorded_later`). Duplicates are
    /// skipped. Answers the level and which movements were superseded.
    fn ledger(batches: &[Vec<Movement>]) -> (Option<LevelState>, HashSet<String>) {
        let mut stored: Option<LevelState> = None;
        let mut recorded: Vec<Movement> = Vec::new();
        let mut superseded = HashSet::new();
        for batch in batches {
            let mut seen: HashSet<&EventId> = recorded.iter().map(|m| &m.event_id).collect();
            let new: Vec<&Movement> = batch.iter().filter(|m| seen.insert(&m.event_id)).collect();
            let later: HashMap<EventId, i128> = new
                .iter()
                .filter(|m| m.delta().is_none())
                .map(|c| {
                    let sum = recorded
                        .iter()
                        .filter(|r| r.occurred_at > c.occurred_at)
                        .filter_map(Movement::delta)
                        .map(i128::from)
                        .sum();
                    (c.event_id.clone(), sum)
                })
                .collect();
            let plan = plan_key(stored.as_ref(), &new, &later).expect("small quantities stay in range");
            superseded.extend(plan.superseded.iter().map(ToString::to_string));
            if let Some(state) = plan.state {
                stored = Some(state);
            }
            recorded.extend(new.into_iter().cloned());
        }
        (stored, superseded)
    }

    fn arb_movements() -> impl Strategy<Value = Vec<Movement>> {
        let kinds = vec![Receipt, Sale, Return, TransferOut, TransferIn, Damage, Adjustment, Count];
        prop::collection::vec((prop::sample::select(kinds), 1i64..40, 0i64..12, 0usize..40), 1..40).prop_map(|items| {
            items
                .into_iter()
                .enumerate()
                .map(|(i, (kind, quantity, second, again))| {
                    // Now and then a movement delivered again: the same event id.
                    let id = if again < i && again % 5 == 0 { format!("e{again}") } else { format!("e{i}") };
                    m(&id, kind, quantity, second)
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the movements and however the ledger batched them, folding them in the
        /// order they were recorded (each once) gives the ledger's level: on_hand, the count
        /// it is based on, the last movement, and which movements were superseded.
        #[test]
        fn the_fold_agrees_with_the_ledger_however_it_batched(
            movements in arb_movements(),
            cuts in prop::collection::vec(0usize..40, 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| *c < movements.len()).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut batches = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([movements.len()]) {
                batches.push(movements[start..cut.max(start)].to_vec());
                start = cut.max(start);
            }
            let (stored, ledger_superseded) = ledger(&batches);

            // Recorded once each, in arrival order: what the movements table holds.
            let mut seen = HashSet::new();
            let recorded: Vec<&Movement> = movements.iter().filter(|m| seen.insert(m.event_id.clone())).collect();
            let mut fold = LevelFold::new((movements[0].sku.clone(), movements[0].location.clone()));
            let mut fold_superseded = HashSet::new();
            for m in &recorded {
                if fold.push(m) == Some(Effect::Superseded) {
                    fold_superseded.insert(m.event_id.to_string());
                }
            }
            let done = fold.finish();
            prop_assert_eq!(Some(done.state), stored);
            prop_assert_eq!(fold_superseded, ledger_superseded);
        }
    }
}
