use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::*;
use crate::{
    event::{MovementKind, QUANTITY_MAX},
    testing,
};

fn movement(id: &str, location: &str, kind: MovementKind, quantity: i64, minute: i64) -> Movement {
    testing::movement(id, "SKU-1", location, kind, quantity, testing::at(minute * 60))
}

/// The reference model: movements arrive one at a time, duplicates are skipped, and a
/// count sees every delta recorded before it that occurred after it.
fn replay(movements: &[Movement]) -> HashMap<LevelKey, LevelState> {
    let mut seen = HashSet::new();
    let mut recorded: Vec<&Movement> = Vec::new();
    let mut levels: HashMap<LevelKey, LevelState> = HashMap::new();
    for m in movements {
        if !seen.insert(m.event_id.clone()) {
            continue;
        }
        let key = (m.sku.clone(), m.location.clone());
        let later: i128 = recorded
            .iter()
            .filter(|r| (r.sku.clone(), r.location.clone()) == key && r.occurred_at > m.occurred_at)
            .filter_map(|r| r.delta())
            .map(i128::from)
            .sum();
        let (next, _) = apply(levels.get(&key), m, later).expect("small quantities stay in range");
        levels.insert(key, next);
        recorded.push(m);
    }
    levels
}

fn on_hand(levels: &HashMap<LevelKey, LevelState>) -> Vec<(String, i64, Option<CountMark>)> {
    let mut out: Vec<_> = levels.iter().map(|((_, l), s)| (l.to_string(), s.on_hand, s.last_count.clone())).collect();
    out.sort();
    out
}

use MovementKind::*;

#[test]
fn the_rules_table() {
    // (movements in arrival order, on_hand after the last one)
    let cases: Vec<(&str, Vec<Movement>, i64)> = vec![
        (
            "deltas add up",
            vec![
                movement("a", "s1", Receipt, 10, 0),
                movement("b", "s1", Sale, 3, 1),
                movement("c", "s1", Damage, 1, 2),
            ],
            6,
        ),
        (
            "transfers and returns",
            vec![
                movement("a", "s1", TransferIn, 5, 0),
                movement("b", "s1", TransferOut, 2, 1),
                movement("c", "s1", Return, 1, 2),
            ],
            4,
        ),
        ("an adjustment is signed", vec![movement("a", "s1", Adjustment, -4, 0)], -4),
        ("a count sets on_hand", vec![movement("a", "s1", Receipt, 10, 0), movement("b", "s1", Count, 7, 5)], 7),
        ("a delta after the count adds", vec![movement("a", "s1", Count, 7, 5), movement("b", "s1", Sale, 2, 6)], 5),
        (
            "a late delta from before the count is recorded only",
            vec![movement("a", "s1", Count, 7, 5), movement("b", "s1", Sale, 2, 4)],
            7,
        ),
        (
            "a delta at the count's instant is part of the count",
            vec![movement("a", "s1", Count, 7, 5), movement("b", "s1", Sale, 2, 5)],
            7,
        ),
        (
            "a late count keeps the deltas that came after it",
            vec![movement("a", "s1", Sale, 2, 6), movement("b", "s1", Count, 7, 5)],
            5,
        ),
        (
            "an older count changes nothing",
            vec![movement("a", "s1", Count, 7, 5), movement("b", "s1", Count, 50, 1)],
            7,
        ),
        ("a newer count replaces", vec![movement("a", "s1", Count, 7, 5), movement("b", "s1", Count, 50, 9)], 50),
        ("a count at zero", vec![movement("a", "s1", Receipt, 3, 0), movement("b", "s1", Count, 0, 1)], 0),
        ("selling past zero goes negative", vec![movement("a", "s1", Sale, 2, 0)], -2),
    ];
    for (name, movements, expected) in cases {
        let levels = replay(&movements);
        assert_eq!(levels.values().next().unwrap().on_hand, expected, "{name}");
    }
}

#[test]
fn a_batch_plan_equals_one_at_a_time() {
    let movements = vec![
        movement("a", "s1", Receipt, 10, 0),
        movement("b", "s1", Sale, 2, 8),
        movement("c", "s1", Count, 20, 5),
        movement("d", "s1", Sale, 1, 3),
        movement("e", "s1", Receipt, 4, 9),
    ];
    let refs: Vec<&Movement> = movements.iter().collect();
    let plan = plan_key(None, &refs, &HashMap::new()).unwrap();
    let expected = replay(&movements);
    assert_eq!(plan.state.as_ref().map(|s| s.on_hand), expected.values().next().map(|s| s.on_hand));
    assert_eq!(plan.state.unwrap().on_hand, 20 - 2 + 4);
    assert_eq!(plan.applied, 4);
    assert_eq!(plan.superseded, vec![EventId::parse("d").unwrap()]);
}

/// C1: a level never wraps. At the edge of the range a movement is refused, naming it,
/// and the level it would have changed is left as it was.
#[test]
fn a_level_that_would_leave_its_range_is_refused_not_wrapped() {
    let state = |on_hand| LevelState { on_hand, last_movement_at: None, last_event_id: None, last_count: None };
    let cases: Vec<(&str, i64, Movement, i128, Option<i64>)> = vec![
        // (case, on_hand before, movement, recorded later deltas, Some(on_hand after) or refused)
        ("a receipt up to the limit", ON_HAND_MAX - 5, movement("a", "s1", Receipt, 5, 0), 0, Some(ON_HAND_MAX)),
        ("a receipt past the limit", ON_HAND_MAX - 5, movement("a", "s1", Receipt, 6, 0), 0, None),
        ("a sale past the limit", -ON_HAND_MAX, movement("a", "s1", Sale, 1, 0), 0, None),
        ("an adjustment down", 0, movement("a", "s1", Adjustment, -QUANTITY_MAX, 0), 0, Some(-QUANTITY_MAX)),
        ("a count plus huge later deltas", 0, movement("a", "s1", Count, 1, 0), i128::from(i64::MAX) * 4, None),
        ("a count within range", 7, movement("a", "s1", Count, 3, 0), -10, Some(-7)),
    ];
    for (case, before, m, later, expected) in cases {
        match (apply(Some(&state(before)), &m, later), expected) {
            (Ok((next, _)), Some(on_hand)) => assert_eq!(next.on_hand, on_hand, "{case}"),
            (Err(e), None) => assert_eq!(e.event_id.as_str(), "a", "{case}"),
            (outcome, _) => panic!("{case}: {outcome:?}"),
        }
    }
    // In a batch, the plan is refused as a whole, naming the movement that overflowed.
    let batch = [movement("b", "s1", Receipt, QUANTITY_MAX, 1), movement("c", "s1", Receipt, QUANTITY_MAX, 2)];
    let refs: Vec<&Movement> = batch.iter().collect();
    let refused = plan_key(Some(&state(ON_HAND_MAX - QUANTITY_MAX)), &refs, &HashMap::new()).unwrap_err();
    assert_eq!(refused.event_id.as_str(), "c");
    assert!(refused.reason.contains("beyond the limit"), "{}", refused.reason);
}

fn arb_movement(i: usize, with_counts: bool) -> impl Strategy<Value = Movement> {
    let kinds = if with_counts {
        vec![Receipt, Sale, Return, TransferOut, TransferIn, Damage, Adjustment, Count]
    } else {
        vec![Receipt, Sale, Return, TransferOut, TransferIn, Damage, Adjustment]
    };
    (prop::sample::select(kinds), 1i64..50, prop::bool::ANY, prop::sample::select(vec!["s1", "s2", "dc"]), 0i64..30)
        .prop_map(move |(kind, q, negative, location, minute)| {
            let quantity = if kind == Adjustment && negative { -q } else { q };
            movement(&format!("e{i}"), location, kind, quantity, minute)
        })
}

fn arb_history(with_counts: bool) -> impl Strategy<Value = Vec<Movement>> {
    (1usize..40).prop_flat_map(move |n| (0..n).map(|i| arb_movement(i, with_counts)).collect::<Vec<_>>())
}

proptest! {
    #[test]
    fn any_order_of_the_same_deltas_gives_the_same_levels(
        (history, shuffled) in arb_history(false).prop_flat_map(|h| (Just(h.clone()), Just(h).prop_shuffle()))
    ) {
        prop_assert_eq!(on_hand(&replay(&history)), on_hand(&replay(&shuffled)));
    }

    #[test]
    fn with_counts_the_order_still_does_not_matter(
        (history, shuffled) in arb_history(true).prop_flat_map(|h| (Just(h.clone()), Just(h).prop_shuffle()))
    ) {
        prop_assert_eq!(on_hand(&replay(&history)), on_hand(&replay(&shuffled)));
    }

    #[test]
    fn a_history_delivered_twice_equals_it_delivered_once(history in arb_history(true)) {
        let mut twice = history.clone();
        twice.extend(history.iter().cloned());
        prop_assert_eq!(on_hand(&replay(&history)), on_hand(&replay(&twice)));
    }
}
