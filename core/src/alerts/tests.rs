use chrono::TimeZone;
use proptest::prelude::*;

use super::*;
use crate::testing::stock_level;

fn level(location: &str, on_hand: i64, reserved: i64) -> StockLevel {
    StockLevel {
        reserved,
        updated_at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
        ..stock_level(location, on_hand, 7)
    }
}

const T: Thresholds = Thresholds { reorder_point: 5, hysteresis: 2 };

fn id(text: &str) -> EventId {
    EventId::parse(text).unwrap()
}

#[test]
fn low_stock_is_raised_at_the_reorder_point_and_resolved_above_the_band() {
    assert_eq!(decide(&level("s1", 6, 0), &[], T), vec![]);
    assert_eq!(decide(&level("s1", 5, 0), &[], T), vec![Change::Raise(AlertKind::LowStock)]);
    // Hovering inside the band changes nothing either way.
    for on_hand in 6..=7 {
        assert_eq!(decide(&level("s1", on_hand, 0), &[AlertKind::LowStock], T), vec![]);
        assert_eq!(decide(&level("s1", on_hand, 0), &[], T), vec![]);
    }
    assert_eq!(decide(&level("s1", 8, 0), &[AlertKind::LowStock], T), vec![Change::Resolve(AlertKind::LowStock)]);
}

#[test]
fn a_sold_out_level_raises_each_of_its_kinds_once() {
    let sold = level("s1", -1, 2);
    let changes = decide(&sold, &[], T);
    assert_eq!(
        changes,
        vec![
            Change::Raise(AlertKind::LowStock),
            Change::Raise(AlertKind::OutOfStock),
            Change::Raise(AlertKind::Oversold),
            Change::Raise(AlertKind::ReservationExceedsStock),
        ]
    );
    assert_eq!(decide(&sold, &AlertKind::OF_LEVELS, T), vec![]);
    assert_eq!(
        decide(&level("s1", 20, 0), &AlertKind::OF_LEVELS, T),
        AlertKind::OF_LEVELS.into_iter().map(Change::Resolve).collect::<Vec<_>>()
    );
}

#[test]
fn the_same_crossing_names_the_same_alert() {
    assert_eq!(alert_id(AlertKind::Oversold, "A@s1", "7"), alert_id(AlertKind::Oversold, "A@s1", "7"));
    assert_ne!(alert_id(AlertKind::Oversold, "A@s1", "7"), alert_id(AlertKind::Oversold, "A@s1", "8"));
    assert_ne!(alert_id(AlertKind::Oversold, "A@s1", "7"), alert_id(AlertKind::LowStock, "A@s1", "7"));
    assert_eq!(alert_id(AlertKind::Oversold, "A@s1", "7").len(), 28);
}

#[test]
fn the_movements_that_took_it_below_zero_are_named_oldest_first() {
    // 3 on hand, then sales of 2 (s-a), a receipt of 1 (r), sales of 2 (s-b) and 3 (s-c):
    // on_hand is -3. Newest first: s-c took it from 0 to -3, s-b from 2 to 0; s-b is where
    // it stopped being enough.
    let recent = vec![
        (id("s-c"), Some(-3), SourceSystem::Pos),
        (id("s-b"), Some(-2), SourceSystem::Shopify),
        (id("r"), Some(1), SourceSystem::Erp),
        (id("s-a"), Some(-2), SourceSystem::Pos),
    ];
    assert_eq!(oversold_by(-3, &recent), vec![id("s-c")]);
    assert_eq!(oversold_by(-4, &recent), vec![id("s-b"), id("s-c")]);
    assert_eq!(oversold_by(0, &recent), Vec::<EventId>::new());
}

fn channels(entries: &[(&str, &[&str])]) -> BTreeMap<String, ChannelConfig> {
    entries
        .iter()
        .map(|(name, locations)| {
            let locations = locations.iter().map(|l| l.to_string()).collect();
            (name.to_string(), ChannelConfig { all_locations: false, locations, ..ChannelConfig::default() })
        })
        .collect()
}

#[test]
fn an_oversold_level_is_made_whole_from_the_richest_location_of_its_channels() {
    let oversold = level("s1", -2, 0);
    let evidence = Evidence {
        levels_of_sku: vec![level("s1", -2, 0), level("s2", 1, 0), level("s3", 9, 0), level("dc", 50, 0)],
        ..Evidence::default()
    };
    let serving = channels(&[("stores", &["s1", "s2", "s3"]), ("web", &["dc"])]);
    assert_eq!(
        compensation(&oversold, &evidence, &serving),
        Compensation::Transfer {
            from: LocationId::parse("s3").unwrap(),
            to: LocationId::parse("s1").unwrap(),
            quantity: 2,
            channel: "stores".into()
        }
    );
}

#[test]
fn without_stock_nearby_the_latest_online_sale_is_cancelled_or_the_level_counted() {
    let oversold = level("s1", -2, 0);
    let mut evidence = Evidence {
        levels_of_sku: vec![level("s1", -2, 0), level("s2", 0, 0)],
        recent: vec![(id("till"), Some(-1), SourceSystem::Pos), (id("web"), Some(-5), SourceSystem::Shopify)],
        ..Evidence::default()
    };
    let serving = channels(&[("stores", &["s1", "s2"])]);
    assert_eq!(
        compensation(&oversold, &evidence, &serving),
        Compensation::CancelOrderLine { event_id: id("web"), system: SourceSystem::Shopify, quantity: 2 }
    );
    evidence.recent.pop();
    assert!(matches!(compensation(&oversold, &evidence, &serving), Compensation::Count { .. }));
}

#[test]
fn a_source_is_silent_only_past_its_interval() {
    let heard = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
    assert!(!is_silent("erp", heard, 60, heard + chrono::Duration::seconds(60)));
    assert!(is_silent("erp", heard, 60, heard + chrono::Duration::seconds(61)));
    assert!(!is_silent("erp", heard, u64::MAX, heard + chrono::Duration::days(10_000)));
    // Off for a source whose interval is 0, and for the API's callers.
    assert!(!is_silent("pos:store-1", heard, 0, heard + chrono::Duration::days(1)));
    assert!(!is_silent("api", heard, 60, heard + chrono::Duration::days(1)));
    let alert = silent("pos:store-012", heard, 60, heard + chrono::Duration::seconds(90));
    assert_eq!(alert.location, Some(LocationId::parse("store-012").unwrap()));
    assert_eq!(alert.subject, "pos:store-012");
}

proptest! {
    /// Whatever the figures, a level never both raises and resolves a kind, never raises
    /// what is open, and the arithmetic cannot overflow.
    #[test]
    fn decisions_are_consistent(on_hand in any::<i64>(), reserved in 0..i64::MAX, rp in any::<i64>(), h in 0..i64::MAX) {
        let thresholds = Thresholds { reorder_point: rp, hysteresis: h };
        let level = level("s1", on_hand, reserved);
        let none = decide(&level, &[], thresholds);
        prop_assert!(none.iter().all(|c| matches!(c, Change::Raise(_))));
        let all = decide(&level, &AlertKind::OF_LEVELS, thresholds);
        prop_assert!(all.iter().all(|c| matches!(c, Change::Resolve(_))));
        let _ = oversold_by(on_hand, &[(id("x"), Some(i64::MIN), SourceSystem::Pos), (id("y"), Some(i64::MAX), SourceSystem::Pos)]);
    }
}
