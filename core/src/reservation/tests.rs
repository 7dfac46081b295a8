use super::*;

fn key(sku: &str, location: &str) -> LevelKey {
    (Sku::parse(sku).unwrap(), LocationId::parse(location).unwrap())
}

fn line(sku: &str, quantity: i64, location: Option<&str>) -> LineRequest {
    LineRequest { sku: Sku::parse(sku).unwrap(), quantity, location: location.map(|l| LocationId::parse(l).unwrap()) }
}

fn locations(planned: Result<Vec<LocationId>, Vec<(usize, i64)>>) -> Result<Vec<String>, Vec<(usize, i64)>> {
    planned.map(|ls| ls.into_iter().map(|l| l.to_string()).collect())
}

/// Planned locations, or the short lines with what is available for each.
type Expected = Result<Vec<&'static str>, Vec<(usize, i64)>>;

/// (lines, available by level, serving locations) -> planned locations or short lines.
#[test]
fn lines_go_to_the_serving_location_with_the_most_available() {
    let available =
        BTreeMap::from([(key("A", "dc"), 100), (key("A", "s1"), 2), (key("A", "s2"), 4), (key("B", "s1"), 1)]);
    let stores = |l: &LocationId| l.as_str().starts_with('s');
    let cases: Vec<(Vec<LineRequest>, Expected)> = vec![
        (vec![line("A", 1, None)], Ok(vec!["s2"])),
        // s2 gives 2, leaving 2 there: tied with s1, the first by name wins.
        (vec![line("A", 2, None), line("A", 2, None)], Ok(vec!["s2", "s1"])),
        (vec![line("A", 2, Some("s1")), line("A", 4, None)], Ok(vec!["s1", "s2"])),
        // A line is served from one location: 6 units split over s1 and s2 are short.
        (vec![line("A", 5, None)], Err(vec![(0, 4)])),
        (vec![line("A", 3, Some("s1"))], Err(vec![(0, 2)])),
        (vec![line("B", 1, None), line("B", 1, None), line("C", 1, None)], Err(vec![(1, 0), (2, 0)])),
    ];
    for (lines, expected) in cases {
        let expected = expected.map(|ls| ls.into_iter().map(String::from).collect::<Vec<_>>());
        assert_eq!(locations(plan(&lines, &available, stores)), expected, "{lines:?}");
    }
}

#[test]
fn negative_availability_is_reported_as_none() {
    let available = BTreeMap::from([(key("A", "s1"), -3)]);
    assert_eq!(plan(&[line("A", 1, None)], &available, |_| true), Err(vec![(0, 0)]));
}

#[test]
fn holds_add_up_lines_of_one_level_in_key_order() {
    let l = |n, sku: &str, location: &str, quantity| Line {
        line: n,
        sku: Sku::parse(sku).unwrap(),
        location: LocationId::parse(location).unwrap(),
        quantity,
    };
    let lines = vec![l(1, "B", "s1", 1), l(2, "A", "s2", 2), l(3, "B", "s1", 3)];
    assert_eq!(holds(&lines), vec![(key("A", "s2"), 2), (key("B", "s1"), 4)]);
}

#[test]
fn a_sale_event_id_names_its_reservation_line() {
    let id = "0b7e6c1e-8a3f-4f0e-9d59-2f4f0c1d2e3a";
    assert_eq!(settled_line(&line_event_id(id, 12, "sale")), Some((id, 12)));
    assert_eq!(settled_line(&line_event_id(id, 12, "reserve")), None);
    assert_eq!(settled_line(&EventId::parse("pos:store-1:T1:1").unwrap()), None);
    assert_eq!(settled_line(&EventId::parse("reservation:x:y:sale").unwrap()), None);
}

#[test]
fn a_commit_tells_kafka_both_the_commit_and_the_sale_of_each_line() {
    let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let reservation = Reservation {
        id: "r1".into(),
        channel: "web".into(),
        status: Status::Committed,
        created_at: now,
        expires_at: now,
        closed_at: Some(now),
        owner: None,
        lines: vec![Line {
            line: 1,
            sku: Sku::parse("A").unwrap(),
            location: LocationId::parse("s1").unwrap(),
            quantity: 2,
        }],
    };
    let events = events(&reservation, MovementKind::Commit, now);
    let ids: Vec<&str> = events.iter().map(|m| m.event_id.as_str()).collect();
    assert_eq!(ids, vec!["reservation:r1:1:commit", "reservation:r1:1:sale"]);
    for m in &events {
        // Every event passes the same gate as any movement.
        assert_eq!(&Movement::from_json(&m.to_json()).unwrap(), m);
    }
    assert_eq!(events[1].delta(), Some(-2));
    assert_eq!(events[0].delta(), Some(0));
}

#[test]
fn suggestions_rank_category_then_shared_attributes_then_availability() {
    let s = |sku: &str, available| Suggestion { sku: Sku::parse(sku).unwrap(), name: sku.into(), available };
    let attrs = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mine = attrs(&[("brand", "tio"), ("size", "1kg")]);
    let candidates = vec![
        (s("OTHER", 99), Some("soap".to_string()), attrs(&[])),
        (s("ONE-SHARED", 50), Some("beans".to_string()), attrs(&[("brand", "tio")])),
        (s("TWO-SHARED", 5), None, attrs(&[("brand", "tio"), ("size", "1kg")])),
        (s("SAME-CAT-LOW", 3), Some("rice".to_string()), attrs(&[])),
        (s("SAME-CAT-HIGH", 30), Some("rice".to_string()), attrs(&[])),
    ];
    let ranked: Vec<String> =
        rank_suggestions(Some("rice"), &mine, candidates, 4).into_iter().map(|s| s.sku.to_string()).collect();
    assert_eq!(ranked, vec!["SAME-CAT-HIGH", "SAME-CAT-LOW", "TWO-SHARED", "ONE-SHARED"]);
}
