use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::{
    event::{Movement, MovementKind},
    ledger::rules::plan_key,
    testing,
};

use MovementKind::*;

fn minute(n: i64) -> DateTime<Utc> {
    testing::at(n * 60)
}

fn movement(id: &str, kind: MovementKind, quantity: i64, at_minute: i64) -> Movement {
    testing::movement(id, "SKU-1", "s1", kind, quantity, minute(at_minute))
}

fn level_movement(m: &Movement) -> LevelMovement {
    LevelMovement {
        occurred_at: m.occurred_at,
        event_id: m.event_id.clone(),
        change: match m.delta() {
            Some(delta) => Change::Delta(delta),
            None => Change::Count(m.quantity),
        },
    }
}

/// The ledger's level after the movements arrive in this order, in one batch.
fn ledger_on_hand(arrival: &[Movement]) -> i64 {
    let refs: Vec<&Movement> = arrival.iter().collect();
    let plan = plan_key(None, &refs, &HashMap::new()).expect("small quantities stay in range");
    plan.state.map_or(0, |s| s.on_hand)
}

fn window(since: i64, until: i64, step: i64) -> Window {
    Window::new(minute(since), minute(until), Duration::minutes(step)).unwrap()
}

#[test]
fn deltas_a_count_and_a_late_delta_from_before_it_chart_the_ledgers_level() {
    // In arrival order: the sale at minute 4 arrives after the count at minute 5 it
    // precedes, so the count already holds it and it changes nothing.
    let arrival = vec![
        movement("receipt", Receipt, 10, 1),
        movement("sale", Sale, 3, 2),
        movement("count", Count, 20, 5),
        movement("late-sale", Sale, 2, 4),
        movement("after", Sale, 1, 7),
        movement("reserve", Reserve, 1, 8),
    ];
    let mut movements: Vec<LevelMovement> = arrival.iter().map(level_movement).collect();
    let points = chart(&window(0, 10, 2), &Start::default(), &mut movements);
    let levels: Vec<(i64, u64)> = points.iter().map(|p| (p.on_hand, p.movements)).collect();
    // [0, 2): receipt; [2, 4): sale; [4, 6): late sale then count; [6, 8): sale; [8, 10): reserve.
    assert_eq!(levels, [(10, 1), (7, 1), (20, 2), (19, 1), (19, 1)]);
    assert_eq!(points[0].at, minute(2));
    assert_eq!(points.last().unwrap().on_hand, ledger_on_hand(&arrival));
}

#[test]
fn a_window_starts_from_the_level_before_it_and_ends_at_until() {
    let start =
        Start { count: Some((CountMark { at: minute(0), event_id: EventId::parse("c").unwrap() }, 5)), deltas: 2 };
    let mut movements = vec![level_movement(&movement("a", Receipt, 1, 3))];
    let points = chart(&window(1, 6, 2), &start, &mut movements);
    let shown: Vec<_> = points.iter().map(|p| (p.at, p.on_hand, p.movements)).collect();
    assert_eq!(shown, [(minute(3), 7, 0), (minute(5), 8, 1), (minute(6), 8, 0)], "the last step is cut at until");
}

#[test]
fn a_delta_at_a_counts_instant_is_part_of_the_count_whatever_its_id() {
    for id in ["a-before", "z-after"] {
        let arrival = vec![movement("m-count", Count, 5, 1), movement(id, Sale, 2, 1)];
        let mut movements: Vec<LevelMovement> = arrival.iter().map(level_movement).collect();
        let points = chart(&window(0, 2, 2), &Start::default(), &mut movements);
        assert_eq!(points[0].on_hand, 5, "{id}");
        assert_eq!(ledger_on_hand(&arrival), 5, "{id}");
    }
}

#[test]
fn a_window_is_bounded() {
    let at = minute(0);
    assert_eq!(Window::new(at, at, Duration::minutes(1)), Err(WindowError::Empty));
    assert_eq!(Window::new(at, minute(1), Duration::milliseconds(10)), Err(WindowError::StepTooShort));
    assert_eq!(Window::new(at, minute(1001), Duration::minutes(1)), Err(WindowError::TooManyPoints { points: 1001 }));
    assert_eq!(Window::new(at, minute(1000), Duration::minutes(1)).map(|w| w.points()), Ok(1000));
    let wide = Window::new(at - Duration::days(365 * 200), at, Duration::days(365)).unwrap();
    assert_eq!(wide.points(), 200);
    assert_eq!(wide.end(199), at);
}

fn arb_movements() -> impl Strategy<Value = Vec<Movement>> {
    let kinds = vec![Receipt, Sale, Return, TransferOut, Damage, Adjustment, Count, Reserve];
    prop::collection::vec((prop::sample::select(kinds), 1i64..30, 0i64..20), 1..40).prop_map(|items| {
        items
            .into_iter()
            .enumerate()
            .map(|(i, (kind, quantity, at))| movement(&format!("e{i:02}"), kind, quantity, at))
            .collect()
    })
}

proptest! {
    /// Whatever order the movements arrived in, the chart ends at the ledger's level, and
    /// every point is the level folded from the beginning up to its end.
    #[test]
    fn the_chart_ends_at_the_ledgers_level_in_any_arrival_order(
        arrival in arb_movements().prop_shuffle(),
        step in 1i64..7,
    ) {
        let mut movements: Vec<LevelMovement> = arrival.iter().map(level_movement).collect();
        let points = chart(&window(0, 21, step), &Start::default(), &mut movements.clone());
        prop_assert_eq!(points.last().unwrap().on_hand, ledger_on_hand(&arrival));
        for p in &points {
            prop_assert_eq!(p.on_hand, level_before(p.at, &mut movements));
        }
        prop_assert_eq!(points.iter().map(|p| p.movements).sum::<u64>(), arrival.len() as u64);
    }
}
