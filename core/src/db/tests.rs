//! The contract both backends keep, run on SQLite and on PostgreSQL.

use std::{collections::BTreeMap, sync::Arc};

use super::*;
use crate::{
    auth::{ApiKey, Scopes, Token},
    event::MovementKind::{self, *},
    reservation::{self, Decision},
    testing::{at, fresh_postgres_url, movement, skip_without_servers},
};

fn envelope(id: &str, location: &str, kind: MovementKind, quantity: i64, second: i64) -> Envelope {
    Envelope { movement: movement(id, "SKU-1", location, kind, quantity, at(second)), partition: 0, offset: 0 }
}

fn batch(movements: Vec<Envelope>, next_offset: i64) -> Batch {
    Batch {
        group_id: "ledger".into(),
        topic: "movements".into(),
        movements,
        offsets: vec![PartitionOffset { partition: 0, next_offset }],
        published: Vec::new(),
        settled: Vec::new(),
    }
}

async fn on_hand(db: &dyn Db, location: &str) -> Option<i64> {
    let levels = db.stock_by_sku(&Sku::parse("SKU-1").unwrap()).await.unwrap();
    levels.iter().find(|l| l.location.as_str() == location).map(|l| l.on_hand)
}

async fn deltas_are_applied_and_levels_returned(db: Arc<dyn Db>) {
    let applied = db
        .apply_batch(&batch(
            vec![
                envelope("a", "s1", Receipt, 10, 0),
                envelope("b", "s1", Sale, 3, 1),
                envelope("c", "s2", Receipt, 4, 2),
            ],
            3,
        ))
        .await
        .unwrap();
    assert_eq!((applied.applied, applied.duplicates, applied.superseded), (3, 0, 0));
    let mut levels: Vec<(String, i64, i64)> =
        applied.levels.iter().map(|l| (l.location.to_string(), l.on_hand, l.version)).collect();
    levels.sort();
    assert_eq!(levels, vec![("s1".into(), 7, 1), ("s2".into(), 4, 1)]);

    let stored = db.stock_by_sku(&Sku::parse("SKU-1").unwrap()).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].last_event_id.as_ref().map(EventId::as_str), Some("b"));
    assert_eq!(stored[0].last_movement_at, Some(at(1)));
    assert_eq!(db.movement_count().await.unwrap(), 3);
}

async fn a_movement_delivered_three_times_counts_once(db: Arc<dyn Db>) {
    let first = db.apply_batch(&batch(vec![envelope("a", "s1", Receipt, 5, 0)], 1)).await.unwrap();
    let again = db
        .apply_batch(&batch(vec![envelope("a", "s1", Receipt, 5, 0), envelope("a", "s1", Receipt, 5, 0)], 3))
        .await
        .unwrap();
    assert_eq!((first.applied, again.applied, again.duplicates), (1, 0, 2));
    assert!(again.levels.is_empty(), "a duplicate changes no level");
    assert_eq!(on_hand(&*db, "s1").await, Some(5));
    assert_eq!(db.movement_count().await.unwrap(), 1);
}

async fn a_batch_applied_twice_equals_it_applied_once(db: Arc<dyn Db>) {
    let movements = vec![
        envelope("a", "s1", Receipt, 10, 0),
        envelope("b", "s1", Count, 4, 5),
        envelope("c", "s1", Sale, 1, 3),
        envelope("d", "s2", Adjustment, -2, 1),
    ];
    db.apply_batch(&batch(movements.clone(), 4)).await.unwrap();
    let before = db.stock_by_sku(&Sku::parse("SKU-1").unwrap()).await.unwrap();
    let replay = db.apply_batch(&batch(movements, 4)).await.unwrap();
    assert_eq!(replay.duplicates, 4);
    assert_eq!(db.stock_by_sku(&Sku::parse("SKU-1").unwrap()).await.unwrap(), before);
    assert_eq!(on_hand(&*db, "s1").await, Some(4));
    assert_eq!(on_hand(&*db, "s2").await, Some(-2));
}

async fn a_late_count_keeps_a_sale_that_is_delivered_again_beside_it(db: Arc<dyn Db>) {
    db.apply_batch(&batch(vec![envelope("sale-30", "s1", Sale, 2, 30)], 1)).await.unwrap();
    // A replay brings the sale again, in the batch of a count taken before it.
    let replay = db
        .apply_batch(&batch(vec![envelope("sale-30", "s1", Sale, 2, 30), envelope("count-10", "s1", Count, 50, 10)], 2))
        .await
        .unwrap();
    assert_eq!((replay.applied, replay.duplicates), (1, 1));
    assert_eq!(on_hand(&*db, "s1").await, Some(48));
}

async fn a_policy_is_part_of_the_level_and_bumps_its_version(db: Arc<dyn Db>) {
    let key = (Sku::parse("SKU-1").unwrap(), LocationId::parse("s1").unwrap());
    // Set before any movement: the level exists with nothing on hand.
    let level = db.set_policy(&key, StockPolicy { safety_stock: 2, reorder_point: Some(5) }).await.unwrap();
    assert_eq!((level.on_hand, level.safety_stock, level.reorder_point, level.version), (0, 2, Some(5), 1));
    assert_eq!(level.last_event_id, None);
    // The ledger keeps the policy, and its write is one more version.
    let applied = db.apply_batch(&batch(vec![envelope("a", "s1", Receipt, 10, 0)], 1)).await.unwrap();
    let published = &applied.levels[0];
    assert_eq!((published.on_hand, published.safety_stock, published.version, published.available()), (10, 2, 2, 8));
    let level = db.set_policy(&key, StockPolicy { safety_stock: 4, reorder_point: None }).await.unwrap();
    assert_eq!((level.on_hand, level.safety_stock, level.reorder_point, level.version), (10, 4, None, 3));
    assert_eq!(db.unpublished_levels(Utc::now(), 10).await.unwrap().levels.len(), 1, "the policy write is unpublished");
}

async fn every_level_can_be_paged_through(db: Arc<dyn Db>) {
    let mut movements = Vec::new();
    for (i, sku) in ["A", "B", "C"].iter().enumerate() {
        for location in ["s1", "s2"] {
            let mut e = envelope(&format!("{sku}-{location}"), location, Receipt, 1, i as i64);
            e.movement.sku = Sku::parse(*sku).unwrap();
            movements.push(e);
        }
    }
    db.apply_batch(&batch(movements, 6)).await.unwrap();
    let first = db.stock_page(None, 3).await.unwrap();
    let keys = |page: &[StockLevel]| page.iter().map(|l| format!("{}@{}", l.sku, l.location)).collect::<Vec<_>>();
    assert_eq!(keys(&first), ["A@s1", "A@s2", "B@s1"]);
    let second = db.stock_page(Some(&first[1].sku), 4).await.unwrap();
    assert_eq!(keys(&second), ["B@s1", "B@s2", "C@s1", "C@s2"]);
    assert!(db.stock_page(Some(&second[3].sku), 4).await.unwrap().is_empty());
}

async fn products_are_created_replaced_and_read(db: Arc<dyn Db>) {
    let product = |sku: &str, name: &str| {
        let input = crate::product::ProductInput {
            name: name.into(),
            category: Some("grocery".into()),
            attributes: [("brand".to_string(), "Tio João".to_string())].into(),
        };
        Product::parse(Sku::parse(sku).unwrap(), input).unwrap()
    };
    assert_eq!(db.put_products(&[product("01", "Arroz"), product("02", "Feijão")]).await.unwrap(), 2);
    assert_eq!(db.put_products(&[product("01", "Arroz 5 kg"), product("03", "Café")]).await.unwrap(), 1);
    let stored = db.product(&Sku::parse("01").unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.product, product("01", "Arroz 5 kg"));
    assert!(db.product(&Sku::parse("99").unwrap()).await.unwrap().is_none());
}

async fn offsets_are_saved_and_never_go_back(db: Arc<dyn Db>) {
    assert!(db.consumer_offsets("ledger", "movements").await.unwrap().is_empty());
    db.apply_batch(&batch(vec![envelope("a", "s1", Receipt, 1, 0)], 42)).await.unwrap();
    // A late batch from a consumer that lost the partition must not rewind it.
    db.apply_batch(&batch(vec![], 7)).await.unwrap();
    let offsets = db.consumer_offsets("ledger", "movements").await.unwrap();
    assert_eq!(offsets, vec![PartitionOffset { partition: 0, next_offset: 42 }]);
    assert!(db.consumer_offsets("other-group", "movements").await.unwrap().is_empty());
    db.reset_consumer_offsets("ledger", "movements").await.unwrap();
    assert!(db.consumer_offsets("ledger", "movements").await.unwrap().is_empty());
}

async fn offsets_are_rewound_only_backwards(db: Arc<dyn Db>) {
    let mut two = batch(vec![envelope("a", "s1", Receipt, 1, 0)], 40);
    two.offsets.push(PartitionOffset { partition: 1, next_offset: 9 });
    db.apply_batch(&two).await.unwrap();
    let to = |partition, next_offset| PartitionOffset { partition, next_offset };
    // Partition 0 goes back; 1 would go forward and stays; 2 has none saved and stays so.
    let moved = db.rewind_consumer_offsets("ledger", "movements", &[to(0, 10), to(1, 12), to(2, 3)]).await.unwrap();
    assert_eq!(moved, vec![to(0, 10)]);
    assert_eq!(db.consumer_offsets("ledger", "movements").await.unwrap(), vec![to(0, 10), to(1, 9)]);
    assert!(db.rewind_consumer_offsets("other-group", "movements", &[to(0, 1)]).await.unwrap().is_empty());
    // The ledger saves its offsets forward from there again.
    db.apply_batch(&batch(vec![envelope("a", "s1", Receipt, 1, 0)], 11)).await.unwrap();
    assert_eq!(db.consumer_offsets("ledger", "movements").await.unwrap()[0], to(0, 11));
    assert_eq!(db.movement_count().await.unwrap(), 1, "the movement read again is a duplicate");
}

async fn the_count_rule_holds_across_batches(db: Arc<dyn Db>) {
    // A sale at t=20 arrives first; the count taken at t=10 arrives later and keeps it.
    db.apply_batch(&batch(vec![envelope("sale-20", "s1", Sale, 2, 20)], 1)).await.unwrap();
    db.apply_batch(&batch(vec![envelope("count-10", "s1", Count, 50, 10)], 2)).await.unwrap();
    assert_eq!(on_hand(&*db, "s1").await, Some(48));
    // A receipt that occurred before the count is recorded but changes nothing.
    let late = db.apply_batch(&batch(vec![envelope("receipt-5", "s1", Receipt, 9, 5)], 3)).await.unwrap();
    assert_eq!((late.applied, late.superseded), (0, 1));
    assert_eq!(on_hand(&*db, "s1").await, Some(48));
    // An older count changes nothing; a newer one sets the level.
    db.apply_batch(&batch(vec![envelope("count-1", "s1", Count, 1, 1)], 4)).await.unwrap();
    assert_eq!(on_hand(&*db, "s1").await, Some(48));
    db.apply_batch(&batch(vec![envelope("sale-40", "s1", Sale, 5, 40), envelope("count-30", "s1", Count, 30, 30)], 6))
        .await
        .unwrap();
    assert_eq!(on_hand(&*db, "s1").await, Some(25));
    let level = &db.stock_by_sku(&Sku::parse("SKU-1").unwrap()).await.unwrap()[0];
    assert_eq!(level.last_count_at, Some(at(30)));
}

async fn two_writers_on_one_row_lose_no_update(db: Arc<dyn Db>) {
    let writer = |name: &'static str| {
        let db = Arc::clone(&db);
        tokio::spawn(async move {
            let mut conflicts = 0;
            for i in 0..100 {
                let e = envelope(&format!("{name}-{i}"), "s1", Receipt, 1, i);
                let mut b = batch(vec![e], 1);
                b.group_id = name.into();
                loop {
                    match db.apply_batch(&b).await {
                        Ok(applied) => {
                            conflicts += applied.conflicts_retried;
                            break;
                        }
                        Err(e) if e.is_retryable() => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            conflicts
        })
    };
    let (a, b) = (writer("a"), writer("b"));
    let _conflicts = a.await.unwrap() + b.await.unwrap();
    assert_eq!(on_hand(&*db, "s1").await, Some(200));
    let level = &db.stock_by_sku(&Sku::parse("SKU-1").unwrap()).await.unwrap()[0];
    assert_eq!(level.version, 200, "every write bumps the version once");
}

async fn levels_stay_unpublished_until_their_publication_is_recorded(db: Arc<dyn Db>) {
    let first = db
        .apply_batch(&batch(vec![envelope("a", "s1", Receipt, 5, 0), envelope("b", "s2", Receipt, 6, 1)], 2))
        .await
        .unwrap();
    let names = |pending: &Unpublished| -> Vec<(String, i64)> {
        pending.levels.iter().map(|l| (l.location.to_string(), l.version)).collect()
    };
    // The batch owes the publication of both levels it wrote.
    let pending = db.unpublished_levels(Utc::now(), 100).await.unwrap();
    assert_eq!(names(&pending), [("s1".into(), 1), ("s2".into(), 1)]);
    assert_eq!((first.owed.len(), &pending.owed), (1, &first.owed));
    // s1 changes again in the batch that settles the first publication: only s1, owed
    // by the second batch, is left, at its new version.
    let mut next = batch(vec![envelope("c", "s1", Sale, 1, 3)], 3);
    next.settled = first.owed.clone();
    let second = db.apply_batch(&next).await.unwrap();
    let pending = db.unpublished_levels(Utc::now(), 100).await.unwrap();
    assert_eq!((names(&pending), &pending.owed), (vec![("s1".into(), 2)], &second.owed));
    // A publication owed is settled once, and written before a time to be swept.
    let mut settle = batch(vec![], 3);
    settle.settled = second.owed.clone();
    db.apply_batch(&settle).await.unwrap();
    db.apply_batch(&settle).await.unwrap();
    assert!(db.unpublished_levels(Utc::now(), 100).await.unwrap().levels.is_empty());
    let third = db.apply_batch(&batch(vec![envelope("d", "s3", Receipt, 1, 3)], 4)).await.unwrap();
    assert_eq!(db.unpublished_levels(Utc::now(), 100).await.unwrap().owed, third.owed);
    assert!(db.unpublished_levels(Utc::now() - chrono::Duration::seconds(60), 100).await.unwrap().owed.is_empty());

    // Another writer's level is unpublished by its version until an acknowledgement is
    // recorded. Acknowledgements of two versions in one batch, the newer first: the newer
    // one counts, and an older one arriving later does not move the level backwards.
    let key = (Sku::parse("SKU-1").unwrap(), LocationId::parse("s2").unwrap());
    db.set_policy(&key, StockPolicy { safety_stock: 1, reorder_point: None }).await.unwrap();
    let mut settle = batch(vec![], 4);
    settle.settled = db.unpublished_levels(Utc::now(), 100).await.unwrap().owed;
    db.apply_batch(&settle).await.unwrap();
    let pending = db.unpublished_levels(Utc::now(), 100).await.unwrap();
    assert_eq!((names(&pending), pending.owed.len()), (vec![("s2".into(), 2)], 0));
    let ack = |version| Published { sku: key.0.clone(), location: key.1.clone(), version };
    let mut late = batch(vec![], 4);
    late.published = vec![ack(2), ack(1)];
    db.apply_batch(&late).await.unwrap();
    late.published = vec![ack(1)];
    db.apply_batch(&late).await.unwrap();
    assert!(db.unpublished_levels(Utc::now(), 100).await.unwrap().levels.is_empty());
}

fn config(all: bool, locations: &[&str]) -> crate::config::ChannelConfig {
    crate::config::ChannelConfig {
        all_locations: all,
        locations: locations.iter().map(|l| l.to_string()).collect(),
        ..Default::default()
    }
}

fn line(sku: &str, quantity: i64, location: Option<&str>) -> reservation::LineRequest {
    reservation::LineRequest {
        sku: Sku::parse(sku).unwrap(),
        quantity,
        location: location.map(|l| LocationId::parse(l).unwrap()),
    }
}

/// Takes a reservation with idempotency key `key` and request text `key` too, so that one
/// key always carries the same request.
async fn reserve(
    db: &dyn Db,
    key: &str,
    serving: &crate::config::ChannelConfig,
    lines: &[reservation::LineRequest],
) -> Reserved {
    let id = format!("r-{key}");
    let new = NewReservation {
        owner: "k1",
        idempotency_key: key,
        request: key,
        id: &id,
        channel: "web",
        serving,
        lines,
        now: at(100),
        expires_at: at(700),
    };
    db.reserve(&new).await.unwrap()
}

/// A decision as the HTTP API answers it: 201 with the reservation, 409 with the short lines.
fn answer_of(reserved: &Reserved) -> (u16, serde_json::Value) {
    match reserved {
        Reserved::Decided { decision, .. } | Reserved::Replayed(decision) => match decision {
            Decision::Held(reservation) => (201, serde_json::to_value(reservation).unwrap()),
            Decision::Short(lines) => (409, serde_json::json!({ "short_lines": lines })),
        },
        Reserved::KeyReused => (0, serde_json::Value::Null),
    }
}

async fn level(db: &dyn Db, sku: &str, location: &str) -> StockLevel {
    let levels = db.stock_by_sku(&Sku::parse(sku).unwrap()).await.unwrap();
    levels.into_iter().find(|l| l.location.as_str() == location).unwrap()
}

async fn stock(db: &dyn Db, sku: &str, location: &str, quantity: i64) {
    let m = movement(&format!("stock-{sku}-{location}"), sku, location, Receipt, quantity, at(0));
    db.apply_batch(&batch(vec![Envelope { movement: m, partition: 0, offset: 0 }], 1)).await.unwrap();
}

async fn a_reservation_holds_units_at_the_most_available_serving_location(db: Arc<dyn Db>) {
    stock(&*db, "SKU-1", "s1", 3).await;
    stock(&*db, "SKU-1", "s2", 5).await;
    stock(&*db, "SKU-1", "dc", 50).await;
    let web = config(false, &["s1", "s2"]);
    let reserved = reserve(&*db, "a", &web, &[line("SKU-1", 2, None), line("SKU-1", 3, None)]).await;
    let (status, body) = answer_of(&reserved);
    assert_eq!(status, 201, "{body}");
    // s2 has the most (5): the first line takes 2 there, leaving 3, tied with s1 (3): s1 first by name.
    assert_eq!(body["lines"][0]["location"], "s2");
    assert_eq!(body["lines"][1]["location"], "s1");
    let Reserved::Decided { levels, outbox, .. } = reserved else { panic!("decided") };
    assert_eq!(levels.len(), 2);
    assert_eq!(outbox.len(), 2, "one reserve event per line");
    assert!(outbox[0].payload.contains("\"kind\":\"reserve\""));
    let s2 = level(&*db, "SKU-1", "s2").await;
    assert_eq!((s2.on_hand, s2.reserved, s2.available(), s2.version), (5, 2, 3, 2));
    assert_eq!(level(&*db, "SKU-1", "dc").await.reserved, 0, "dc does not serve the channel");
    let stored = db.reservation("r-a").await.unwrap().unwrap();
    assert_eq!((stored.status, stored.lines.len()), (reservation::Status::Held, 2));
}

async fn a_short_reservation_holds_nothing_and_suggests_similar_products(db: Arc<dyn Db>) {
    stock(&*db, "SKU-1", "s1", 1).await;
    stock(&*db, "SKU-2", "s1", 9).await;
    stock(&*db, "RICE-W", "s1", 4).await;
    stock(&*db, "RICE-B", "s1", 8).await;
    stock(&*db, "BEANS", "s1", 20).await;
    let product = |sku: &str, category: &str, brand: &str| Product {
        sku: Sku::parse(sku).unwrap(),
        name: sku.to_lowercase(),
        category: Some(category.into()),
        attributes: [("brand".to_string(), brand.to_string())].into(),
    };
    db.put_products(&[
        product("RICE-1KG", "rice", "tio"),
        product("RICE-W", "rice", "camil"),
        product("RICE-B", "rice", "camil"),
        product("BEANS", "beans", "tio"),
    ])
    .await
    .unwrap();
    stock(&*db, "RICE-1KG", "s1", 1).await;
    let all = config(true, &[]);
    let reserved =
        reserve(&*db, "b", &all, &[line("SKU-2", 1, None), line("RICE-1KG", 3, None), line("SKU-1", 2, Some("s1"))])
            .await;
    let (status, body) = answer_of(&reserved);
    assert_eq!(status, 409, "{body}");
    let short = body["short_lines"].as_array().unwrap();
    assert_eq!(short.len(), 2, "{body}");
    assert_eq!((short[0]["line"].as_i64(), short[0]["available"].as_i64()), (Some(2), Some(1)));
    let suggested: Vec<&str> =
        short[0]["suggestions"].as_array().unwrap().iter().map(|s| s["sku"].as_str().unwrap()).collect();
    // Same category first (most available first), then a shared attribute.
    assert_eq!(suggested, vec!["RICE-B", "RICE-W", "BEANS"]);
    assert_eq!(short[1]["suggestions"], serde_json::json!([]), "SKU-1 is not in the catalog");
    assert_eq!(level(&*db, "SKU-2", "s1").await.reserved, 0, "all lines or none");
    assert!(db.reservation("r-b").await.unwrap().is_none());
}

async fn a_retry_gets_the_first_answer_and_another_request_is_refused(db: Arc<dyn Db>) {
    stock(&*db, "SKU-1", "s1", 1).await;
    let all = config(true, &[]);
    let first = answer_of(&reserve(&*db, "c", &all, &[line("SKU-1", 1, None)]).await);
    assert_eq!(first.0, 201);
    let retry = reserve(&*db, "c", &all, &[line("SKU-1", 1, None)]).await;
    assert!(matches!(retry, Reserved::Replayed(_)));
    assert_eq!(answer_of(&retry), first, "the same answer, not a second hold");
    assert_eq!(level(&*db, "SKU-1", "s1").await.reserved, 1);
    // A short answer is replayed too, even after stock arrived.
    let short = answer_of(&reserve(&*db, "d", &all, &[line("SKU-1", 1, None)]).await);
    assert_eq!(short.0, 409);
    stock(&*db, "SKU-1", "s2", 5).await;
    assert_eq!(answer_of(&reserve(&*db, "d", &all, &[line("SKU-1", 1, None)]).await), short);
    let new = NewReservation {
        owner: "k1",
        idempotency_key: "c",
        request: "another request",
        id: "r-other",
        channel: "web",
        serving: &all,
        lines: &[line("SKU-1", 1, None)],
        now: at(100),
        expires_at: at(700),
    };
    assert!(matches!(db.reserve(&new).await.unwrap(), Reserved::KeyReused));
}

async fn a_committed_reservation_is_released_by_its_sales_once(db: Arc<dyn Db>) {
    stock(&*db, "SKU-1", "s1", 5).await;
    let all = config(true, &[]);
    reserve(&*db, "e", &all, &[line("SKU-1", 2, None)]).await;
    let closed = db.close_reservation("r-e", reservation::Status::Committed, at(200)).await.unwrap();
    assert!(matches!(closed.closing, Closing::Done(ref r) if r.status == reservation::Status::Committed));
    let sales: Vec<Movement> =
        closed.outbox.iter().map(|r| Movement::from_json(r.payload.as_bytes()).unwrap()).collect();
    let kinds: Vec<MovementKind> = sales.iter().map(|m| m.kind).collect();
    assert_eq!(kinds, vec![MovementKind::Commit, Sale]);
    let held = level(&*db, "SKU-1", "s1").await;
    assert_eq!((held.on_hand, held.reserved, held.available()), (5, 2, 3), "a commit alone changes no level");

    let envelopes: Vec<Envelope> =
        sales.iter().map(|m| Envelope { movement: m.clone(), partition: 0, offset: 0 }).collect();
    let applied = db.apply_batch(&batch(envelopes.clone(), 2)).await.unwrap();
    assert_eq!((applied.applied, applied.recorded, applied.released), (1, 1, 2));
    let sold = level(&*db, "SKU-1", "s1").await;
    assert_eq!((sold.on_hand, sold.reserved, sold.available()), (3, 0, 3), "available never jumps");
    let again = db.apply_batch(&batch(envelopes, 2)).await.unwrap();
    assert_eq!((again.duplicates, again.released), (2, 0));
    // A sale that only names the line settles nothing.
    let mut forged = sales[1].clone();
    forged.event_id = EventId::parse(format!("{}-again", forged.event_id)).unwrap();
    db.apply_batch(&batch(vec![Envelope { movement: forged, partition: 0, offset: 0 }], 3)).await.unwrap();
    assert_eq!(level(&*db, "SKU-1", "s1").await.reserved, 0);
    let twice = db.close_reservation("r-e", reservation::Status::Committed, at(201)).await.unwrap();
    assert!(matches!(twice.closing, Closing::Already(_)) && twice.outbox.is_empty());
}

async fn cancelled_and_expired_reservations_release_their_units(db: Arc<dyn Db>) {
    stock(&*db, "SKU-1", "s1", 5).await;
    let all = config(true, &[]);
    reserve(&*db, "f", &all, &[line("SKU-1", 2, None)]).await;
    reserve(&*db, "g", &all, &[line("SKU-1", 3, None)]).await;
    assert_eq!(level(&*db, "SKU-1", "s1").await.available(), 0);

    let cancelled = db.close_reservation("r-f", reservation::Status::Cancelled, at(200)).await.unwrap();
    assert!(matches!(cancelled.closing, Closing::Done(_)));
    assert_eq!(cancelled.levels[0].reserved, 3);
    assert!(cancelled.outbox[0].payload.contains("\"kind\":\"release\""));
    let commit_cancelled = db.close_reservation("r-f", reservation::Status::Committed, at(201)).await.unwrap();
    assert!(matches!(commit_cancelled.closing, Closing::Refused(ref r) if r.status == reservation::Status::Cancelled));

    assert!(db.due_reservations(at(699), 10).await.unwrap().is_empty());
    assert_eq!(db.due_reservations(at(700), 10).await.unwrap(), vec!["r-g".to_string()]);
    // A commit that comes after the time is up expires the reservation instead.
    let late = db.close_reservation("r-g", reservation::Status::Committed, at(701)).await.unwrap();
    assert!(matches!(late.closing, Closing::Refused(ref r) if r.status == reservation::Status::Expired));
    assert_eq!(level(&*db, "SKU-1", "s1").await.reserved, 0);
    assert!(db.due_reservations(at(800), 10).await.unwrap().is_empty());
    assert!(matches!(
        db.close_reservation("nope", reservation::Status::Cancelled, at(800)).await.unwrap().closing,
        Closing::NotFound
    ));
}

async fn the_outbox_keeps_records_until_they_are_deleted(db: Arc<dyn Db>) {
    stock(&*db, "SKU-1", "s1", 5).await;
    reserve(&*db, "h", &config(true, &[]), &[line("SKU-1", 1, None)]).await;
    let records = db.outbox(at(101), 0, 10).await.unwrap();
    assert_eq!(records.len(), 1);
    assert!(db.outbox(at(100), 0, 10).await.unwrap().is_empty(), "only records written before the time");
    db.delete_outbox(&[records[0].id]).await.unwrap();
    assert!(db.outbox(at(101), 0, 10).await.unwrap().is_empty());
    assert_eq!(db.forget_idempotency_keys(at(101)).await.unwrap(), 1);
}

async fn concurrent_reservations_never_promise_the_last_unit_twice(db: Arc<dyn Db>) {
    stock(&*db, "SKU-1", "s1", 1).await;
    let all = config(true, &[]);
    let attempts = (0..20).map(|i| {
        let db = Arc::clone(&db);
        let all = all.clone();
        tokio::spawn(
            async move { answer_of(&reserve(&*db, &format!("k{i}"), &all, &[line("SKU-1", 1, None)]).await).0 },
        )
    });
    let mut statuses: Vec<u16> = Vec::new();
    for attempt in attempts {
        statuses.push(attempt.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 19, "{statuses:?}");
    assert_eq!(level(&*db, "SKU-1", "s1").await.reserved, 1);
}

async fn api_keys_are_stored_as_hashes_listed_and_revoked(db: Arc<dyn Db>) {
    let token = Token::generate();
    let scopes = Scopes::parse("stock:read,movements:write").unwrap();
    let key = ApiKey::new(&token, "pos sync", scopes).unwrap();
    db.create_api_key(&key).await.unwrap();
    let stored = db.api_key(token.id()).await.unwrap().expect("the key is stored");
    assert_eq!(stored, key);
    assert!(stored.verifies(&token));
    assert!(db.create_api_key(&key).await.is_err(), "an id is never reused");
    assert_eq!(db.api_key("0123456789ab").await.unwrap(), None);

    let other = ApiKey::new(&Token::generate(), "dev", Scopes::admin()).unwrap();
    db.create_api_key(&other).await.unwrap();
    let names: Vec<String> = db.api_keys(10).await.unwrap().into_iter().map(|k| k.name).collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"pos sync".to_string()) && names.contains(&"dev".to_string()));
    assert_eq!(db.api_keys(1).await.unwrap().len(), 1);

    assert!(db.revoke_api_key(token.id()).await.unwrap());
    assert!(!db.revoke_api_key(token.id()).await.unwrap(), "a revoked key is not revoked twice");
    assert!(!db.revoke_api_key("0123456789ab").await.unwrap());
    let revoked = db.api_key(token.id()).await.unwrap().unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(!revoked.verifies(&token));
    assert!(db.api_key(other.id.as_str()).await.unwrap().unwrap().revoked_at.is_none());
}

async fn connectors_keep_their_state(db: Arc<dyn Db>) {
    assert_eq!(db.connector_state("shopify", "cursor").await.unwrap(), None);
    db.set_connector_state("shopify", "cursor", "2026-11-22T10:00:00Z").await.unwrap();
    db.set_connector_state("shopify", "cursor", "2026-11-22T11:00:00Z").await.unwrap();
    db.set_connector_state("erp", "cursor", "42").await.unwrap();
    assert_eq!(db.connector_state("shopify", "cursor").await.unwrap().as_deref(), Some("2026-11-22T11:00:00Z"));
    assert_eq!(db.connector_state("erp", "cursor").await.unwrap().as_deref(), Some("42"));
}

async fn sources_and_location_names_are_kept(db: Arc<dyn Db>) {
    use crate::freshness::SourceUpdate;
    let received = |first, last| SourceUpdate::Received { epoch: "e1".into(), first, last };
    db.update_source("pos:s1", &received(1, 10), at(1)).await.unwrap();
    let state = db.update_source("pos:s1", &received(21, 30), at(2)).await.unwrap();
    assert_eq!((state.acked_seq, state.max_seq, state.gap_since), (10, 30, Some(at(2))));
    db.update_source("erp", &SourceUpdate::Health { healthy: false, detail: Some("kafka".into()) }, at(3))
        .await
        .unwrap();
    let sources = db.sources().await.unwrap();
    assert_eq!(sources.iter().map(|s| s.source.as_str()).collect::<Vec<_>>(), vec!["erp", "pos:s1"]);
    assert_eq!(sources[1], state);
    assert!(!sources[0].healthy);
    let names = [(LocationId::parse("store-001").unwrap(), "Mercado Central".to_string())];
    assert_eq!(db.name_locations(&names).await.unwrap(), 1);
    assert_eq!(db.name_locations(&names).await.unwrap(), 0);
}

async fn what_was_heard_from_each_source_is_kept_newest_first(db: Arc<dyn Db>) {
    use crate::event::SourceSystem::{Erp, Pos, StoreAgent};
    // A movement of `system:instance` the ledger recorded at `second`.
    let heard = |id: &str, system, instance: &str, second| {
        let mut e = envelope(id, "s1", Receipt, 1, second);
        e.movement.source = crate::event::Source { system, instance: instance.into(), reference: id.into() };
        e.movement.recorded_at = at(second);
        e
    };
    db.apply_batch(&batch(vec![heard("e1", Erp, "erp-main", 10), heard("p1", Pos, "s1", 5)], 2)).await.unwrap();
    // An older batch recorded after a newer one does not move the time back; a store's
    // agent and its till are one source.
    db.apply_batch(&batch(vec![heard("e2", Erp, "erp-main", 3), heard("p2", StoreAgent, "s1", 20)], 4)).await.unwrap();
    // A duplicate too says its source is alive.
    db.apply_batch(&batch(vec![heard("p1", Pos, "s1", 5)], 5)).await.unwrap();
    db.record_error("erp", "the journal is unreachable", at(30)).await.unwrap();
    db.record_error("shopify-sink", &"x".repeat(2000), at(31)).await.unwrap();
    let signals = db.source_signals().await.unwrap();
    type Seen<'a> = (&'a str, Option<DateTime<Utc>>, Option<&'a str>, Option<DateTime<Utc>>);
    let seen: Vec<Seen> = signals
        .iter()
        .map(|s| (s.source.as_str(), s.last_movement_at, s.last_error.as_deref().map(|e| &e[..4]), s.last_error_at))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("erp", Some(at(10)), Some("the "), Some(at(30))),
            ("pos:s1", Some(at(20)), None, None),
            ("shopify-sink", None, Some("xxxx"), Some(at(31))),
        ]
    );
    assert_eq!(signals[2].last_error.as_ref().map(String::len), Some(500), "an error is cut short");
    // A movement heard after the error keeps the error: it is the last one met.
    db.apply_batch(&batch(vec![heard("e3", Erp, "erp-main", 40)], 6)).await.unwrap();
    let erp = db.source_signals().await.unwrap().remove(0);
    assert_eq!((erp.last_movement_at, erp.last_error_at), (Some(at(40)), Some(at(30))));
}

async fn levels_below_zero_and_over_reserved_are_counted(db: Arc<dyn Db>) {
    assert_eq!(db.level_anomalies().await.unwrap(), LevelAnomalies::default());
    stock(&*db, "A", "s1", 2).await;
    stock(&*db, "B", "s1", 5).await;
    let sold = Envelope { movement: movement("sold", "A", "s1", Sale, 3, at(10)), partition: 0, offset: 9 };
    db.apply_batch(&batch(vec![sold], 10)).await.unwrap();
    assert_eq!(db.level_anomalies().await.unwrap(), LevelAnomalies { negative: 1, overreserved: 0, reserved: 0 });
    // Reserved is written by reservations; a count that takes the units away leaves it.
    let Reserved::Decided { .. } = reserve(&*db, "r1", &config(false, &["s1"]), &[line("B", 4, None)]).await else {
        panic!("held")
    };
    let counted = Envelope { movement: movement("count", "B", "s1", Count, 1, at(20)), partition: 0, offset: 10 };
    db.apply_batch(&batch(vec![counted], 11)).await.unwrap();
    assert_eq!(db.level_anomalies().await.unwrap(), LevelAnomalies { negative: 1, overreserved: 1, reserved: 4 });
}

async fn duplicates_and_the_newest_movement_of_a_level_are_told_by_source(db: Arc<dyn Db>) {
    let mut from_erp = envelope("e", "s1", Receipt, 5, 0);
    from_erp.movement.source.system = SourceSystem::Erp;
    from_erp.movement.recorded_at = at(50);
    let applied = db.apply_batch(&batch(vec![envelope("a", "s1", Receipt, 5, 0), from_erp.clone()], 2)).await.unwrap();
    let written = &applied.levels[0];
    assert_eq!((written.last_recorded_at, written.last_source), (Some(at(50)), Some(SourceSystem::Erp)));
    let again = db.apply_batch(&batch(vec![from_erp.clone(), from_erp, envelope("a", "s1", Receipt, 5, 0)], 3)).await;
    let counted: Vec<(SourceSystem, u64)> = again.unwrap().duplicates_by_source.into_iter().collect();
    assert_eq!(counted, vec![(SourceSystem::Erp, 2), (SourceSystem::Api, 1)]);
    let read = level(&*db, "SKU-1", "s1").await;
    assert_eq!((read.last_recorded_at, read.last_source), (None, None), "the database keeps no trace of it");
}

async fn products_are_found_by_an_attribute(db: Arc<dyn Db>) {
    let product = |sku: &str, variant: &str| Product {
        sku: Sku::parse(sku).unwrap(),
        name: format!("product {sku}"),
        category: None,
        attributes: BTreeMap::from([
            ("shopify_variant_id".to_string(), variant.to_string()),
            ("colour".to_string(), "red".to_string()),
        ]),
    };
    db.put_products(&[product("SKU-A", "111"), product("SKU-B", "222"), product("SKU-C", "333")]).await.unwrap();
    let found = |name: &'static str, values: &[&str]| {
        let db = Arc::clone(&db);
        let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        async move {
            let products = db.products_by_attribute(name, &values).await.unwrap();
            products.into_iter().map(|p| p.sku.to_string()).collect::<Vec<_>>()
        }
    };
    assert_eq!(found("shopify_variant_id", &["333", "111", "999"]).await, ["SKU-A", "SKU-C"]);
    assert_eq!(found("shopify_variant_id", &["222"]).await, ["SKU-B"]);
    assert!(found("shopify_variant_id", &["red"]).await.is_empty(), "only the named attribute is compared");
    assert_eq!(found("colour", &["red"]).await, ["SKU-A", "SKU-B", "SKU-C"]);
    assert!(found("shopify_variant_id", &[]).await.is_empty());
    assert!(found("bad\"name", &["111"]).await.is_empty());
}

/// A movement of `sku` at `location` from `system:instance`, recorded at `second`.
fn audited(id: &str, sku: &str, location: &str, system: crate::event::SourceSystem, second: i64) -> Envelope {
    let mut m = movement(id, sku, location, Receipt, 1, at(second));
    m.source = crate::event::Source { system, instance: format!("{location}-till"), reference: id.into() };
    m.correlation_id = Some(format!("order-{id}"));
    Envelope { movement: m, partition: 0, offset: 0 }
}

fn movement_query() -> MovementQuery {
    MovementQuery { sku: None, location: None, source: None, since: None, until: None, after: None, limit: 100 }
}

async fn ids(db: &dyn Db, query: &MovementQuery) -> Vec<String> {
    db.movements(query).await.unwrap().iter().map(|r| r.movement.event_id.to_string()).collect()
}

async fn movements_are_filtered_and_paged_newest_recorded_first(db: Arc<dyn Db>) {
    use crate::event::SourceSystem::{Pos, Shopify};
    let recorded = vec![
        audited("a", "SKU-A", "s1", Pos, 0),
        audited("b", "SKU-A", "s2", Shopify, 1),
        audited("c", "SKU-B", "s1", Pos, 2),
        audited("d", "SKU-A", "s1", Pos, 3),
        // Two recorded at the same instant: the event id orders them.
        audited("e2", "SKU-B", "s2", Shopify, 4),
        audited("e1", "SKU-A", "s2", Shopify, 4),
    ];
    db.apply_batch(&batch(recorded, 6)).await.unwrap();
    let all = ids(&*db, &movement_query()).await;
    assert_eq!(all, ["e2", "e1", "d", "c", "b", "a"]);

    let sku = |s: &str| Some(Sku::parse(s).unwrap());
    let location = |l: &str| Some(LocationId::parse(l).unwrap());
    assert_eq!(ids(&*db, &MovementQuery { sku: sku("SKU-A"), ..movement_query() }).await, ["e1", "d", "b", "a"]);
    assert_eq!(ids(&*db, &MovementQuery { location: location("s1"), ..movement_query() }).await, ["d", "c", "a"]);
    let level = MovementQuery { sku: sku("SKU-A"), location: location("s2"), ..movement_query() };
    assert_eq!(ids(&*db, &level).await, ["e1", "b"]);
    let source = MovementQuery { source: Some((Shopify, "s2-till".into())), ..movement_query() };
    assert_eq!(ids(&*db, &source).await, ["e2", "e1", "b"]);
    let other = MovementQuery { source: Some((Pos, "s2-till".into())), ..movement_query() };
    assert!(ids(&*db, &other).await.is_empty(), "the system and the instance both count");
    let window = MovementQuery { since: Some(at(1)), until: Some(at(4)), ..movement_query() };
    assert_eq!(ids(&*db, &window).await, ["d", "c", "b"], "since is inclusive, until is not");

    // Pages of two, each after the last of the one before, while older and newer
    // movements arrive: nothing twice, nothing of what was there skipped.
    let mut query = MovementQuery { limit: 2, ..movement_query() };
    let mut seen = Vec::new();
    let mut arrivals = vec![audited("late-old", "SKU-C", "s1", Pos, -5), audited("new", "SKU-C", "s1", Pos, 60)];
    loop {
        let page = db.movements(&query).await.unwrap();
        seen.extend(page.iter().map(|r| r.movement.event_id.to_string()));
        if let Some(arrival) = arrivals.pop() {
            db.apply_batch(&batch(vec![arrival], 7)).await.unwrap();
        }
        match page.last() {
            Some(last) if page.len() == 2 => query.after = Some(last.key()),
            _ => break,
        }
    }
    assert_eq!(seen, ["e2", "e1", "d", "c", "b", "a", "late-old"], "the newer one is before the first page");

    let first = &db.movements(&MovementQuery { limit: 1, ..movement_query() }).await.unwrap()[0];
    assert_eq!(first.movement.event_id.as_str(), "new");
    assert_eq!((first.delta, first.effect), (Some(1), Effect::Applied));
    assert_eq!(first.movement.correlation_id.as_deref(), Some("order-new"));
    assert_eq!(first.movement.source.instance, "s1-till");
}

async fn a_levels_history_starts_from_its_last_count(db: Arc<dyn Db>) {
    use crate::history::{level_before, Change};
    let arrival = vec![
        envelope("receipt", "s1", Receipt, 10, 10),
        envelope("sale", "s1", Sale, 3, 20),
        envelope("count", "s1", Count, 50, 40),
        envelope("after-count", "s1", Sale, 5, 50),
        envelope("other-level", "s2", Receipt, 7, 30),
    ];
    db.apply_batch(&batch(arrival, 5)).await.unwrap();
    // A sale that occurred before the count arrives after it: recorded, superseded.
    db.apply_batch(&batch(vec![envelope("late-sale", "s1", Sale, 2, 30)], 6)).await.unwrap();
    let key = (Sku::parse("SKU-1").unwrap(), LocationId::parse("s1").unwrap());

    let mut all = db.level_movements(&key, at(0), at(100), 100).await.unwrap();
    let found: Vec<(&str, Change)> = all.iter().map(|m| (m.event_id.as_str(), m.change)).collect();
    assert_eq!(
        found,
        [
            ("receipt", Change::Delta(10)),
            ("sale", Change::Delta(-3)),
            ("late-sale", Change::Delta(-2)),
            ("count", Change::Count(50)),
            ("after-count", Change::Delta(-5)),
        ]
    );
    assert_eq!(db.level_movements(&key, at(20), at(40), 100).await.unwrap().len(), 2, "since in, until out");
    assert_eq!(db.level_movements(&key, at(0), at(100), 2).await.unwrap().len(), 2);

    for second in [0, 10, 11, 25, 35, 40, 41, 55, 100] {
        let start = db.level_start(&key, at(second)).await.unwrap();
        let on_hand = start.count.as_ref().map_or(0, |(_, counted)| i128::from(*counted)) + start.deltas;
        assert_eq!(on_hand, i128::from(level_before(at(second), &mut all)), "before {second}s");
    }
    let start = db.level_start(&key, at(41)).await.unwrap();
    assert_eq!(start.count.map(|(mark, counted)| (mark.event_id.to_string(), counted)), Some(("count".into(), 50)));
    assert_eq!(on_hand(&*db, "s1").await, Some(45), "the ledger's level");
}

async fn recorded_event_ids_are_found(db: Arc<dyn Db>) {
    db.apply_batch(&batch(vec![envelope("a", "s1", Receipt, 5, 0), envelope("b", "s1", Sale, 1, 1)], 2)).await.unwrap();
    let ids: Vec<EventId> = ["b", "zz", "a"].iter().map(|id| EventId::parse(*id).unwrap()).collect();
    let found = db.recorded_event_ids(&ids).await.unwrap();
    assert_eq!(
        found.iter().map(EventId::as_str).collect::<Vec<_>>(),
        ["b", "a"],
        "in the order asked, unknown left out"
    );
    assert!(db.recorded_event_ids(&[]).await.unwrap().is_empty());
}

/// An audit's reader that keeps what it is handed, and has written back what it is told.
#[derive(Default)]
struct Kept {
    counted: (u64, u64),
    levels: Vec<AuditedLevel>,
    movements: Vec<String>,
    rewrites: Vec<LevelRewrite>,
}

impl AuditReader for Kept {
    fn counted(&mut self, levels: u64, movements: u64) {
        self.counted = (levels, movements);
    }

    fn level(&mut self, level: AuditedLevel) {
        assert!(self.movements.is_empty(), "every level comes before the movements");
        self.levels.push(level);
    }

    fn movement(&mut self, movement: Movement) {
        self.movements.push(format!("{}:{}", movement.location, movement.event_id));
    }
}

impl Rebuilding for Kept {
    fn rewrites(&mut self) -> Vec<LevelRewrite> {
        std::mem::take(&mut self.rewrites)
    }
}

fn at_offset(mut e: Envelope, offset: i64) -> Envelope {
    e.offset = offset;
    e
}

async fn the_audit_reads_levels_then_each_levels_movements_in_ledger_order(db: Arc<dyn Db>) {
    // In the first batch, s1's "z"; in the second, s1's "y" then "x" (by offset), a
    // reservation event, and s2's first movement. Ledger order is not event-id order.
    db.apply_batch(&batch(vec![at_offset(envelope("z", "s1", Receipt, 10, 5), 1)], 2)).await.unwrap();
    let second = vec![
        at_offset(envelope("y", "s1", Count, 20, 6), 3),
        at_offset(envelope("x", "s1", Sale, 1, 7), 4),
        at_offset(envelope("r", "s1", Reserve, 1, 6), 5),
        at_offset(envelope("w", "s2", Receipt, 3, 1), 2),
    ];
    db.apply_batch(&batch(second, 6)).await.unwrap();
    let key = |l: &str| (Sku::parse("SKU-1").unwrap(), LocationId::parse(l).unwrap());
    db.set_policy(&key("s3"), StockPolicy { safety_stock: 1, reorder_point: None }).await.unwrap();
    stock(&*db, "SKU-2", "s1", 5).await;
    reserve(&*db, "a", &config(true, &[]), &[line("SKU-2", 2, None)]).await;
    reserve(&*db, "b", &config(true, &[]), &[line("SKU-2", 1, None)]).await;
    db.close_reservation("r-b", reservation::Status::Cancelled, at(200)).await.unwrap();

    let mut kept = Kept::default();
    let facts = db.audit(&mut kept).await.unwrap();
    assert_eq!(kept.counted, (4, 5), "levels, and the movements that may change one");
    let levels: Vec<(String, i64, i64)> =
        kept.levels.iter().map(|l| (level_name(&l.level), l.level.on_hand, l.published_version)).collect();
    // The ledger's writes are published by the publications their batches owe; the
    // policy's write (s3) by its version. SKU-2@s1's reservations changed only `reserved`.
    assert_eq!(
        levels,
        [("SKU-1@s1".into(), 19, 2), ("SKU-1@s2".into(), 3, 1), ("SKU-1@s3".into(), 0, 0), ("SKU-2@s1".into(), 5, 1)]
    );
    let owed: Vec<String> = facts.owed.iter().map(|((sku, location), _)| format!("{sku}@{location}")).collect();
    assert_eq!(owed, ["SKU-1@s1", "SKU-1@s2", "SKU-2@s1"]);
    assert_eq!(kept.levels[0].last_count.as_ref().map(|c| c.event_id.as_str()), Some("y"));
    assert_eq!(kept.levels[0].state().on_hand, 19);
    assert_eq!(kept.movements, ["s1:z", "s1:y", "s1:x", "s2:w", "s1:stock-SKU-2-s1"]);
    assert_eq!(facts.held, [((Sku::parse("SKU-2").unwrap(), LocationId::parse("s1").unwrap()), 2)]);
    assert_eq!(facts.outbox_records, 3, "the reserve events of both, and b's release");
    assert!(facts.outbox_oldest.is_some());
    let saved: Vec<(&str, i32, i64)> =
        facts.offsets.iter().map(|o| (o.group_id.as_str(), o.partition, o.next_offset)).collect();
    assert_eq!(saved, [("ledger", 0, 6)]);
}

fn level_name(level: &StockLevel) -> String {
    format!("{}@{}", level.sku, level.location)
}

async fn a_rebuild_writes_the_levels_asked_keeping_reserved_units_and_policies(db: Arc<dyn Db>) {
    stock(&*db, "SKU-1", "s1", 5).await;
    let s1 = (Sku::parse("SKU-1").unwrap(), LocationId::parse("s1").unwrap());
    db.set_policy(&s1, StockPolicy { safety_stock: 1, reorder_point: Some(2) }).await.unwrap();
    reserve(&*db, "a", &config(true, &[]), &[line("SKU-1", 2, None)]).await;
    let before = level(&*db, "SKU-1", "s1").await;
    let state = |on_hand| crate::ledger::rules::LevelState {
        on_hand,
        last_movement_at: before.last_movement_at,
        last_event_id: before.last_event_id.clone(),
        last_count: None,
    };

    let s9 = (Sku::parse("SKU-9").unwrap(), LocationId::parse("s9").unwrap());
    let rewrites = vec![
        LevelRewrite { key: s1.clone(), state: state(40), version: Some(before.version) },
        LevelRewrite { key: s9.clone(), state: state(7), version: None },
    ];
    let mut kept = Kept { rewrites, ..Kept::default() };
    let written = db.rebuild(&mut kept).await.unwrap();
    assert_eq!(kept.counted, (1, 1));
    assert_eq!(written.len(), 2);
    let after = level(&*db, "SKU-1", "s1").await;
    assert_eq!(
        (after.on_hand, after.reserved, after.safety_stock, after.reorder_point, after.version),
        (40, 2, 1, Some(2), before.version + 1)
    );
    assert_eq!(written[0], after);
    assert_eq!((level(&*db, "SKU-9", "s9").await.on_hand, written[1].version), (7, 1));
    assert_eq!(db.unpublished_levels(Utc::now(), 10).await.unwrap().levels.len(), 2, "written, not yet published");

    // A version that is not the one stored: nothing at all is written, not even the
    // level before it.
    let rewrites = vec![
        LevelRewrite { key: s1, state: state(0), version: Some(after.version) },
        LevelRewrite { key: s9, state: state(1), version: Some(5) },
    ];
    let mut stale = Kept { rewrites, ..Kept::default() };
    assert!(matches!(db.rebuild(&mut stale).await, Err(DbError::Raced(level)) if level == "SKU-9@s9"));
    assert_eq!((level(&*db, "SKU-9", "s9").await.on_hand, level(&*db, "SKU-1", "s1").await.on_hand), (7, 40));
}

async fn a_lease_is_held_by_one_holder_until_it_expires_or_is_released(db: Arc<dyn Db>) {
    let ttl = std::time::Duration::from_millis(300);
    let a = db.acquire_lease("erp", "a", ttl).await.unwrap().expect("a free lease is taken");
    assert_eq!((a.holder.as_str(), a.taken_from.as_deref()), ("a", None));
    assert!(a.expires_at > a.acquired_at, "{a:?}");
    assert_eq!(db.acquire_lease("erp", "b", ttl).await.unwrap(), None, "held by a");
    assert!(db.acquire_lease("wms", "b", ttl).await.unwrap().is_some(), "another lease is free");
    let renewed = db.acquire_lease("erp", "a", ttl).await.unwrap().expect("its holder renews it");
    assert_eq!(renewed.acquired_at, a.acquired_at, "a renewal keeps when it was taken");
    assert!(renewed.expires_at >= a.expires_at);
    assert!(!db.release_lease("erp", "b").await.unwrap(), "b holds nothing to release");
    tokio::time::sleep(ttl + std::time::Duration::from_millis(100)).await;
    let b = db.acquire_lease("erp", "b", ttl).await.unwrap().expect("an expired lease is taken over");
    assert_eq!((b.holder.as_str(), b.taken_from.as_deref()), ("b", Some("a")));
    assert_eq!(db.acquire_lease("erp", "a", ttl).await.unwrap(), None, "a lost it");
    assert_eq!(db.lease("erp").await.unwrap().map(|l| l.holder), Some("b".to_string()));
    tokio::time::sleep(ttl + std::time::Duration::from_millis(100)).await;
    let own = db.acquire_lease("erp", "b", ttl).await.unwrap().expect("its holder takes its own expired lease");
    assert_eq!(own.taken_from, None, "taking one's own expired lease again is no takeover");
    assert!(own.acquired_at > b.acquired_at);
    assert!(db.release_lease("erp", "b").await.unwrap());
    assert_eq!(db.lease("erp").await.unwrap(), None);
    let again = db.acquire_lease("erp", "a", ttl).await.unwrap().expect("a released lease is free at once");
    assert_eq!(again.taken_from, None, "taking a released lease is no takeover");
}

async fn of_many_replicas_asking_at_once_one_holds_the_lease(db: Arc<dyn Db>) {
    let asking = (0..8).map(|i| {
        let db = Arc::clone(&db);
        tokio::spawn(async move {
            db.acquire_lease("inbox", &format!("replica-{i}"), std::time::Duration::from_secs(30)).await.unwrap()
        })
    });
    let held: Vec<Lease> = futures::future::join_all(asking).await.into_iter().filter_map(|r| r.unwrap()).collect();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(db.lease("inbox").await.unwrap().map(|l| l.holder), Some(held[0].holder.clone()));
}

fn alert_level(location: &str, on_hand: i64, version: i64) -> StockLevel {
    crate::testing::stock_level(location, on_hand, version)
}

fn low_stock(level: &StockLevel) -> crate::event::alert::Alert {
    let thresholds = crate::alerts::Thresholds { reorder_point: 5, hysteresis: 2 };
    let evidence = crate::alerts::Evidence::default();
    crate::alerts::raise(AlertKind::LowStock, level, thresholds, &evidence, &BTreeMap::new(), at(10))
}

fn alerts_progress(next_offset: i64) -> Progress<'static> {
    Progress { group_id: "alerts", topic: "stock", offset: PartitionOffset { partition: 0, next_offset } }
}

async fn a_level_version_is_decided_once_with_the_readers_offset(db: Arc<dyn Db>) {
    let level = alert_level("store-1", 3, 2);
    let key = (level.sku.clone(), level.location.clone());
    let raised = low_stock(&level);
    let raise = |unresolved: &[crate::event::alert::Alert]| {
        assert!(unresolved.is_empty());
        vec![raised.clone()]
    };
    let written = db.decide_level(&alerts_progress(5), &key, 2, &raise).await.unwrap();
    assert_eq!(written, Some(vec![raised.clone()]));
    // The same version, or an older one, read again: decided already, nothing written.
    let never = |_: &[crate::event::alert::Alert]| -> Vec<crate::event::alert::Alert> { panic!("decided twice") };
    assert_eq!(db.decide_level(&alerts_progress(6), &key, 2, &never).await.unwrap(), None);
    assert_eq!(db.decide_level(&alerts_progress(7), &key, 1, &never).await.unwrap(), None);
    assert_eq!(
        db.consumer_offsets("alerts", "stock").await.unwrap(),
        vec![PartitionOffset { partition: 0, next_offset: 7 }]
    );
    // A newer version sees the alert not resolved yet.
    let sees = |unresolved: &[crate::event::alert::Alert]| {
        assert_eq!(unresolved, std::slice::from_ref(&raised));
        Vec::new()
    };
    assert_eq!(db.decide_level(&alerts_progress(8), &key, 3, &sees).await.unwrap(), Some(vec![]));
    // An offset is never saved backwards.
    db.skip_alert_message(&alerts_progress(4)).await.unwrap();
    assert_eq!(db.consumer_offsets("alerts", "stock").await.unwrap()[0].next_offset, 8);
    // Raised once: the same kind and subject again is refused.
    assert!(!db.raise_alert(&raised).await.unwrap());
    let all = db.alerts(&AlertQuery { limit: 10, ..AlertQuery::default() }).await.unwrap();
    assert_eq!(all, vec![raised.clone()]);
    let outbox = db.alert_outbox(10).await.unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].key, "SKU-1@store-1");
    db.delete_alert_outbox(&[outbox[0].id]).await.unwrap();
    assert!(db.alert_outbox(10).await.unwrap().is_empty());
}

async fn an_alert_is_acknowledged_once_and_resolved_once(db: Arc<dyn Db>) {
    let raised = low_stock(&alert_level("store-1", 3, 1));
    assert!(db.raise_alert(&raised).await.unwrap());
    let Acknowledged::Done(seen) = db.acknowledge_alert(&raised.id, "key-1", at(20)).await.unwrap() else {
        panic!("acknowledged")
    };
    assert_eq!((seen.state, seen.acknowledged_by.as_deref()), (AlertState::Acknowledged, Some("key-1")));
    assert_eq!(db.acknowledge_alert(&raised.id, "key-2", at(21)).await.unwrap(), Acknowledged::Already(seen));
    let resolved = db.resolve_alert(AlertKind::LowStock, "SKU-1@store-1", at(30)).await.unwrap().unwrap();
    assert_eq!((resolved.state, resolved.resolved_at), (AlertState::Resolved, Some(at(30))));
    assert_eq!(db.resolve_alert(AlertKind::LowStock, "SKU-1@store-1", at(31)).await.unwrap(), None);
    assert!(matches!(db.acknowledge_alert(&raised.id, "key-1", at(40)).await.unwrap(), Acknowledged::Resolved(_)));
    assert_eq!(db.acknowledge_alert("alr_missing", "key-1", at(40)).await.unwrap(), Acknowledged::NotFound);
    // Each change went to the outbox; the next crossing may raise again.
    assert_eq!(db.alert_outbox(10).await.unwrap().len(), 3);
    assert_eq!(db.alert(&raised.id).await.unwrap(), Some(resolved));
    let again = crate::event::alert::Alert { id: "alr_0000000000000000000000ff".into(), ..raised };
    assert!(db.raise_alert(&again).await.unwrap());
    let by = |query: AlertQuery| {
        let db = Arc::clone(&db);
        async move { db.alerts(&AlertQuery { limit: 10, ..query }).await.unwrap().len() }
    };
    assert_eq!(by(AlertQuery { state: Some(AlertState::Open), ..AlertQuery::default() }).await, 1);
    assert_eq!(
        by(AlertQuery { location: Some(LocationId::parse("store-2").unwrap()), ..AlertQuery::default() }).await,
        0
    );
    assert_eq!(by(AlertQuery { kind: Some(AlertKind::Oversold), ..AlertQuery::default() }).await, 0);
    assert_eq!(by(AlertQuery { since: Some(at(25)), ..AlertQuery::default() }).await, 1);
}

async fn subscriptions_get_a_delivery_of_what_they_want(db: Arc<dyn Db>) {
    let subscription = |id: &str, locations: Option<Vec<&str>>, kinds: Option<Vec<AlertKind>>| Subscription {
        id: id.into(),
        url: format!("https://hooks.example/{id}"),
        locations: locations.map(|l| l.into_iter().map(|l| LocationId::parse(l).unwrap()).collect()),
        kinds,
        channel: None,
        secret: format!("secret-of-{id}"),
        created_at: at(0),
        created_by: "key-1".into(),
    };
    db.create_subscription(&subscription("sub_a", Some(vec!["store-1"]), None)).await.unwrap();
    db.create_subscription(&subscription("sub_b", None, Some(vec![AlertKind::SourceSilent]))).await.unwrap();
    let listed = db.subscriptions().await.unwrap();
    assert_eq!(listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["sub_a", "sub_b"]);
    assert!(listed.iter().all(|s| s.secret.is_empty()), "secrets are never read back");
    assert_eq!(listed[0].locations, subscription("sub_a", Some(vec!["store-1"]), None).locations);

    let raised = low_stock(&alert_level("store-1", 3, 1));
    assert!(db.raise_alert(&raised).await.unwrap());
    let due = db.due_deliveries(at(10), 10).await.unwrap();
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!((due[0].url.as_str(), due[0].secret.as_str()), ("https://hooks.example/sub_a", "secret-of-sub_a"));
    assert_eq!(due[0].event_id, format!("{}:open", raised.id));
    let later = Attempt {
        state: DeliveryState::Pending,
        status: Some(500),
        error: Some("answered 500".into()),
        at: at(10),
        next_at: at(11),
    };
    db.record_attempt(due[0].id, &later).await.unwrap();
    assert!(db.due_deliveries(at(10), 10).await.unwrap().is_empty());
    let again = db.due_deliveries(at(11), 10).await.unwrap();
    assert_eq!(again[0].attempts, 1);
    let delivered =
        Attempt { state: DeliveryState::Delivered, status: Some(204), error: None, at: at(11), next_at: at(11) };
    db.record_attempt(again[0].id, &delivered).await.unwrap();
    assert!(db.due_deliveries(at(100), 10).await.unwrap().is_empty());
    let log = db.deliveries("sub_a", 10).await.unwrap().unwrap();
    assert_eq!((log.len(), log[0].state, log[0].attempts), (1, DeliveryState::Delivered, 2));
    assert_eq!(log[0].delivered_at, Some(at(11)));
    assert_eq!(db.deliveries("sub_b", 10).await.unwrap(), Some(vec![]));

    assert!(db.delete_subscription("sub_a").await.unwrap());
    assert!(!db.delete_subscription("sub_a").await.unwrap());
    assert_eq!(db.deliveries("sub_a", 10).await.unwrap(), None);
}

/// A subscription naming a channel gets that channel's order events, once each, and no
/// alerts; an alert subscription gets no order events.
async fn a_channels_subscription_gets_its_order_events_and_no_alerts(db: Arc<dyn Db>) {
    let subscription = |id: &str, channel: Option<&str>| Subscription {
        id: id.into(),
        url: format!("https://hooks.example/{id}"),
        locations: None,
        kinds: None,
        channel: channel.map(str::to_string),
        secret: format!("secret-of-{id}"),
        created_at: at(0),
        created_by: "key-1".into(),
    };
    db.create_subscription(&subscription("sub_web", Some("web"))).await.unwrap();
    db.create_subscription(&subscription("sub_app", Some("app"))).await.unwrap();
    db.create_subscription(&subscription("sub_alerts", None)).await.unwrap();
    let channels: Vec<Option<String>> = db.subscriptions().await.unwrap().into_iter().map(|s| s.channel).collect();
    assert_eq!(channels, [None, Some("app".into()), Some("web".into())], "sub_alerts, sub_app, sub_web");

    db.receive_order(&new_order("o-1", "k-1", "{}", 1)).await.unwrap();
    assert_eq!(db.decide_order(&scheduled("o-1", "morning", 5), None).await.unwrap(), Decided::Done);
    assert!(db.raise_alert(&low_stock(&alert_level("store-1", 3, 1))).await.unwrap());
    let due = db.due_deliveries(at(100), 10).await.unwrap();
    let mut got: Vec<(&str, &str)> = due.iter().map(|d| (d.url.as_str(), d.event_id.as_str())).collect();
    got.sort();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(&got[1..], [("https://hooks.example/sub_web", "e1"), ("https://hooks.example/sub_web", "e2")]);
    assert!(got[0].0.ends_with("/sub_alerts") && got[0].1.ends_with(":open"), "{got:?}");
    assert_eq!(db.deliveries("sub_app", 10).await.unwrap(), Some(vec![]));
}

fn new_order<'a>(id: &'a str, key: &'a str, request: &'a str, second: i64) -> NewOrder<'a> {
    let event = ChannelEvent { key: id, id: "e1", channel: "web", payload: "{\"e\":1}" };
    NewOrder { id, owner: "key-1", idempotency_key: key, channel: "web", request, event, now: at(second) }
}

fn scheduled<'a>(id: &'a str, slot: &'a str, capacity: u32) -> OrderDecision<'a> {
    OrderDecision {
        id,
        status: crate::order::OrderStatus::Scheduled,
        decision: r#"{"location":"dc-01"}"#,
        reservation_id: Some("r-1"),
        booking: Some(Booking {
            location: "dc-01",
            method: "standard",
            date: chrono::NaiveDate::from_ymd_opt(2026, 12, 7).unwrap(),
            slot,
            capacity,
        }),
        event: ChannelEvent { key: id, id: "e2", channel: "web", payload: "{\"e\":2}" },
        now: at(20),
    }
}

fn order_progress(next_offset: i64) -> Progress<'static> {
    Progress { group_id: "orders", topic: "orders", offset: PartitionOffset { partition: 0, next_offset } }
}

async fn an_order_is_received_once_per_key_and_decided_once(db: Arc<dyn Db>) {
    use crate::order::OrderStatus;
    assert_eq!(db.order_queue().await.unwrap(), OrderQueue::default());
    let Received::New(first) = db.receive_order(&new_order("o-1", "k1", "{}", 1)).await.unwrap() else { panic!("new") };
    assert_eq!((first.status, first.received_at, first.decided_at), (OrderStatus::Received, at(1), None));
    // The key again: the same order is the one recorded; another order is refused.
    let Received::Replayed(again) = db.receive_order(&new_order("o-2", "k1", "{}", 2)).await.unwrap() else {
        panic!("replayed")
    };
    assert_eq!(again.id, "o-1");
    assert_eq!(db.receive_order(&new_order("o-3", "k1", r#"{"x":1}"#, 3)).await.unwrap(), Received::KeyReused);
    assert!(matches!(db.receive_order(&new_order("o-4", "k2", "{}", 4)).await.unwrap(), Received::New(_)));
    assert_eq!(db.order_queue().await.unwrap(), OrderQueue { waiting: 2, oldest_received_at: Some(at(1)) });
    assert_eq!(db.waiting_orders(at(4), 10).await.unwrap(), ["o-1"]);
    assert_eq!(db.waiting_orders(at(5), 10).await.unwrap(), ["o-1", "o-4"]);

    assert_eq!(db.decide_order(&scheduled("o-1", "am", 5), Some(&order_progress(1))).await.unwrap(), Decided::Done);
    // Delivered again, or taken by a second worker: nothing more is written, the offset is saved.
    assert_eq!(db.decide_order(&scheduled("o-1", "am", 5), Some(&order_progress(2))).await.unwrap(), Decided::Already);
    assert_eq!(db.consumer_offsets("orders", "orders").await.unwrap()[0].next_offset, 2);
    let decided = db.order("o-1").await.unwrap().unwrap();
    assert_eq!(
        (decided.status, decided.reservation_id.as_deref(), decided.decided_at),
        (OrderStatus::Scheduled, Some("r-1"), Some(at(20)))
    );
    assert_eq!(decided.decision.as_deref(), Some(r#"{"location":"dc-01"}"#));
    let monday = chrono::NaiveDate::from_ymd_opt(2026, 12, 7).unwrap();
    assert_eq!(db.booked_slots("dc-01", "standard", monday, monday).await.unwrap(), [(monday, "am".to_string(), 1)]);
    assert_eq!(db.order_queue().await.unwrap(), OrderQueue { waiting: 1, oldest_received_at: Some(at(4)) });
    assert_eq!(db.order("o-404").await.unwrap(), None);
    // An event for each change written, none for a replay or a decision taken again.
    let events = db.order_outbox(10).await.unwrap();
    let keys: Vec<(&str, &str)> = events.iter().map(|e| (e.key.as_str(), e.payload.as_str())).collect();
    assert_eq!(keys, [("o-1", "{\"e\":1}"), ("o-4", "{\"e\":1}"), ("o-1", "{\"e\":2}")]);
    db.delete_order_outbox(&[events[0].id, events[1].id]).await.unwrap();
    assert_eq!(db.order_outbox(10).await.unwrap().len(), 1);
}

async fn a_slot_never_takes_more_orders_than_its_capacity(db: Arc<dyn Db>) {
    let ids: Vec<String> = (0..10).map(|i| format!("o-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let key = format!("k{i}");
        db.receive_order(&new_order(id, &key, "{}", i as i64)).await.unwrap();
    }
    let decisions = ids.iter().map(|id| {
        let db = Arc::clone(&db);
        let id = id.clone();
        tokio::spawn(async move { db.decide_order(&scheduled(&id, "am", 3), None).await.unwrap() })
    });
    let outcomes: Vec<Decided> = futures::future::join_all(decisions).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(outcomes.iter().filter(|d| **d == Decided::Done).count(), 3, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|d| **d == Decided::SlotFull).count(), 7, "{outcomes:?}");
    // A full slot wrote nothing: those orders still wait, and take the next slot.
    assert_eq!(db.order_queue().await.unwrap().waiting, 7);
    let waiting = db.waiting_orders(at(100), 10).await.unwrap();
    assert_eq!(db.decide_order(&scheduled(&waiting[0], "pm", 3), None).await.unwrap(), Decided::Done);
    let monday = chrono::NaiveDate::from_ymd_opt(2026, 12, 7).unwrap();
    let booked = db.booked_slots("dc-01", "standard", monday, monday).await.unwrap();
    assert_eq!(booked, [(monday, "am".to_string(), 3), (monday, "pm".to_string(), 1)]);
    // A slot without capacity takes none.
    assert_eq!(db.decide_order(&scheduled(&waiting[1], "eve", 0), None).await.unwrap(), Decided::SlotFull);
}

macro_rules! contract {
    ($backend:ident, $open:expr) => {
        mod $backend {
            use super::*;
            contract!(@each $open;
                deltas_are_applied_and_levels_returned,
                a_movement_delivered_three_times_counts_once,
                a_batch_applied_twice_equals_it_applied_once,
                offsets_are_saved_and_never_go_back,
                offsets_are_rewound_only_backwards,
                the_count_rule_holds_across_batches,
                products_are_created_replaced_and_read,
                api_keys_are_stored_as_hashes_listed_and_revoked,
                every_level_can_be_paged_through,
                a_policy_is_part_of_the_level_and_bumps_its_version,
                a_late_count_keeps_a_sale_that_is_delivered_again_beside_it,
                levels_stay_unpublished_until_their_publication_is_recorded,
                two_writers_on_one_row_lose_no_update,
                a_reservation_holds_units_at_the_most_available_serving_location,
                a_short_reservation_holds_nothing_and_suggests_similar_products,
                a_retry_gets_the_first_answer_and_another_request_is_refused,
                a_committed_reservation_is_released_by_its_sales_once,
                cancelled_and_expired_reservations_release_their_units,
                the_outbox_keeps_records_until_they_are_deleted,
                concurrent_reservations_never_promise_the_last_unit_twice,
                connectors_keep_their_state,
                sources_and_location_names_are_kept,
                what_was_heard_from_each_source_is_kept_newest_first,
                levels_below_zero_and_over_reserved_are_counted,
                duplicates_and_the_newest_movement_of_a_level_are_told_by_source,
                products_are_found_by_an_attribute,
                movements_are_filtered_and_paged_newest_recorded_first,
                a_levels_history_starts_from_its_last_count,
                recorded_event_ids_are_found,
                the_audit_reads_levels_then_each_levels_movements_in_ledger_order,
                a_rebuild_writes_the_levels_asked_keeping_reserved_units_and_policies,
                a_lease_is_held_by_one_holder_until_it_expires_or_is_released,
                of_many_replicas_asking_at_once_one_holds_the_lease,
                a_level_version_is_decided_once_with_the_readers_offset,
                an_alert_is_acknowledged_once_and_resolved_once,
                subscriptions_get_a_delivery_of_what_they_want,
                a_channels_subscription_gets_its_order_events_and_no_alerts,
                an_order_is_received_once_per_key_and_decided_once,
                a_slot_never_takes_more_orders_than_its_capacity);
        }
    };
    (@each $open:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some((db, _dir)) = $open.await else { return };
                super::$case(db).await;
            }
        )*
    };
}

async fn open_sqlite() -> (Arc<dyn Db>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("onhand.db").display());
    (open(&url, 4).await.unwrap(), dir)
}

/// `None`, with a line on stderr, when the servers of `scripts/test` are not configured.
async fn open_postgres() -> Option<(Arc<dyn Db>, ())> {
    if skip_without_servers() {
        return None;
    }
    Some((open(&fresh_postgres_url().await, 8).await.unwrap(), ()))
}

contract!(sqlite, async { Some(open_sqlite().await) });
contract!(postgres, open_postgres());

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn arb_envelopes() -> impl Strategy<Value = Vec<Envelope>> {
        let kinds = vec![Receipt, Sale, Return, TransferOut, TransferIn, Damage, Adjustment, Count];
        prop::collection::vec(
            (prop::sample::select(kinds), 1i64..30, prop::sample::select(vec!["s1", "s2"]), 0i64..20),
            1..30,
        )
        .prop_map(|items| {
            items
                .into_iter()
                .enumerate()
                .map(|(i, (kind, quantity, location, second))| {
                    envelope(&format!("e{i}"), location, kind, quantity, second)
                })
                .collect()
        })
    }

    /// Applies the movements in batches of `size` and returns (location, on_hand) pairs.
    fn levels_after(batches: &[Vec<Envelope>], times: usize) -> Vec<(String, i64)> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (db, _dir) = open_sqlite().await;
            for _ in 0..times {
                for b in batches {
                    db.apply_batch(&batch(b.clone(), 1)).await.unwrap();
                }
            }
            let mut levels: Vec<(String, i64)> = db
                .stock_by_sku(&Sku::parse("SKU-1").unwrap())
                .await
                .unwrap()
                .into_iter()
                .map(|l| (l.location.to_string(), l.on_hand))
                .collect();
            levels.sort();
            levels
        })
    }

    fn chunks(movements: &[Envelope], size: usize) -> Vec<Vec<Envelope>> {
        movements.chunks(size).map(<[Envelope]>::to_vec).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Through the real database: any order and any batching of the same movements give
        /// the same levels, and applying every batch twice equals applying it once.
        #[test]
        fn order_batching_and_repetition_do_not_change_the_levels(
            (movements, shuffled) in arb_envelopes().prop_flat_map(|m| (Just(m.clone()), Just(m).prop_shuffle())),
            size_a in 1usize..8,
            size_b in 1usize..8,
        ) {
            let once = levels_after(&chunks(&movements, size_a), 1);
            prop_assert_eq!(&once, &levels_after(&chunks(&shuffled, size_b), 1));
            prop_assert_eq!(&once, &levels_after(&chunks(&movements, size_a), 2));
        }
    }
}
