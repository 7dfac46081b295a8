//! The contract every store keeps, run on SQLite and on PostgreSQL.

use std::sync::Arc;

use super::*;
use crate::{
    auth::{ApiKey, Scopes, Token},
    event::MovementKind::{self, *},
    testing::{at, fresh_postgres_url, movement},
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
    }
}

async fn on_hand(store: &dyn Store, location: &str) -> Option<i64> {
    let levels = store.stock_by_sku(&Sku::parse("SKU-1").unwrap()).await.unwrap();
    levels.iter().find(|l| l.location.as_str() == location).map(|l| l.on_hand)
}

async fn deltas_are_applied_and_levels_returned(store: Arc<dyn Store>) {
    let applied = store
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

    let stored = store.stock_by_sku(&Sku::parse("SKU-1").unwrap()).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].last_event_id.as_ref().map(EventId::as_str), Some("b"));
    assert_eq!(stored[0].last_movement_at, Some(at(1)));
    assert_eq!(store.movement_count().await.unwrap(), 3);
}

async fn a_movement_delivered_three_times_counts_once(store: Arc<dyn Store>) {
    let first = store.apply_batch(&batch(vec![envelope("a", "s1", Receipt, 5, 0)], 1)).await.unwrap();
    let again = store
        .apply_batch(&batch(vec![envelope("a", "s1", Receipt, 5, 0), envelope("a", "s1", Receipt, 5, 0)], 3))
        .await
        .unwrap();
    assert_eq!((first.applied, again.applied, again.duplicates), (1, 0, 2));
    assert!(again.levels.is_empty(), "a duplicate changes no level");
    assert_eq!(on_hand(&*store, "s1").await, Some(5));
    assert_eq!(store.movement_count().await.unwrap(), 1);
}

async fn a_batch_applied_twice_equals_it_applied_once(store: Arc<dyn Store>) {
    let movements = vec![
        envelope("a", "s1", Receipt, 10, 0),
        envelope("b", "s1", Count, 4, 5),
        envelope("c", "s1", Sale, 1, 3),
        envelope("d", "s2", Adjustment, -2, 1),
    ];
    store.apply_batch(&batch(movements.clone(), 4)).await.unwrap();
    let before = store.stock_by_sku(&Sku::parse("SKU-1").unwrap()).await.unwrap();
    let replay = store.apply_batch(&batch(movements, 4)).await.unwrap();
    assert_eq!(replay.duplicates, 4);
    assert_eq!(store.stock_by_sku(&Sku::parse("SKU-1").unwrap()).await.unwrap(), before);
    assert_eq!(on_hand(&*store, "s1").await, Some(4));
    assert_eq!(on_hand(&*store, "s2").await, Some(-2));
}

async fn a_late_count_keeps_a_sale_that_is_delivered_again_beside_it(store: Arc<dyn Store>) {
    store.apply_batch(&batch(vec![envelope("sale-30", "s1", Sale, 2, 30)], 1)).await.unwrap();
    // A replay brings the sale again, in the batch of a count taken before it.
    let replay = store
        .apply_batch(&batch(vec![envelope("sale-30", "s1", Sale, 2, 30), envelope("count-10", "s1", Count, 50, 10)], 2))
        .await
        .unwrap();
    assert_eq!((replay.applied, replay.duplicates), (1, 1));
    assert_eq!(on_hand(&*store, "s1").await, Some(48));
}

async fn a_policy_is_part_of_the_level_and_bumps_its_version(store: Arc<dyn Store>) {
    let key = (Sku::parse("SKU-1").unwrap(), LocationId::parse("s1").unwrap());
    // Set before any movement: the level exists with nothing on hand.
    let level = store.set_policy(&key, StockPolicy { safety_stock: 2, reorder_point: Some(5) }).await.unwrap();
    assert_eq!((level.on_hand, level.safety_stock, level.reorder_point, level.version), (0, 2, Some(5), 1));
    assert_eq!(level.last_event_id, None);
    // The ledger keeps the policy, and its write is one more version.
    let applied = store.apply_batch(&batch(vec![envelope("a", "s1", Receipt, 10, 0)], 1)).await.unwrap();
    let published = &applied.levels[0];
    assert_eq!((published.on_hand, published.safety_stock, published.version, published.available()), (10, 2, 2, 8));
    let level = store.set_policy(&key, StockPolicy { safety_stock: 4, reorder_point: None }).await.unwrap();
    assert_eq!((level.on_hand, level.safety_stock, level.reorder_point, level.version), (10, 4, None, 3));
    assert_eq!(store.unpublished_levels(Utc::now(), 10).await.unwrap().len(), 1, "the policy write is unpublished");
}

async fn every_level_can_be_paged_through(store: Arc<dyn Store>) {
    let mut movements = Vec::new();
    for (i, sku) in ["A", "B", "C"].iter().enumerate() {
        for location in ["s1", "s2"] {
            let mut e = envelope(&format!("{sku}-{location}"), location, Receipt, 1, i as i64);
            e.movement.sku = Sku::parse(*sku).unwrap();
            movements.push(e);
        }
    }
    store.apply_batch(&batch(movements, 6)).await.unwrap();
    let first = store.stock_page(None, 3).await.unwrap();
    let keys = |page: &[StockLevel]| page.iter().map(|l| format!("{}@{}", l.sku, l.location)).collect::<Vec<_>>();
    assert_eq!(keys(&first), ["A@s1", "A@s2", "B@s1"]);
    let second = store.stock_page(Some(&first[1].sku), 4).await.unwrap();
    assert_eq!(keys(&second), ["B@s1", "B@s2", "C@s1", "C@s2"]);
    assert!(store.stock_page(Some(&second[3].sku), 4).await.unwrap().is_empty());
}

async fn products_are_created_replaced_and_read(store: Arc<dyn Store>) {
    let product = |sku: &str, name: &str| {
        let input = crate::product::ProductInput {
            name: name.into(),
            category: Some("grocery".into()),
            attributes: [("brand".to_string(), "Tio João".to_string())].into(),
        };
        Product::parse(Sku::parse(sku).unwrap(), input).unwrap()
    };
    assert_eq!(store.put_products(&[product("01", "Arroz"), product("02", "Feijão")]).await.unwrap(), 2);
    assert_eq!(store.put_products(&[product("01", "Arroz 5 kg"), product("03", "Café")]).await.unwrap(), 1);
    let stored = store.product(&Sku::parse("01").unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.product, product("01", "Arroz 5 kg"));
    assert!(store.product(&Sku::parse("99").unwrap()).await.unwrap().is_none());
}

async fn offsets_are_saved_and_never_go_back(store: Arc<dyn Store>) {
    assert!(store.consumer_offsets("ledger", "movements").await.unwrap().is_empty());
    store.apply_batch(&batch(vec![envelope("a", "s1", Receipt, 1, 0)], 42)).await.unwrap();
    // A late batch from a consumer that lost the partition must not rewind it.
    store.apply_batch(&batch(vec![], 7)).await.unwrap();
    let offsets = store.consumer_offsets("ledger", "movements").await.unwrap();
    assert_eq!(offsets, vec![PartitionOffset { partition: 0, next_offset: 42 }]);
    assert!(store.consumer_offsets("other-group", "movements").await.unwrap().is_empty());
    store.reset_consumer_offsets("ledger", "movements").await.unwrap();
    assert!(store.consumer_offsets("ledger", "movements").await.unwrap().is_empty());
}

async fn the_count_rule_holds_across_batches(store: Arc<dyn Store>) {
    // A sale at t=20 arrives first; the count taken at t=10 arrives later and keeps it.
    store.apply_batch(&batch(vec![envelope("sale-20", "s1", Sale, 2, 20)], 1)).await.unwrap();
    store.apply_batch(&batch(vec![envelope("count-10", "s1", Count, 50, 10)], 2)).await.unwrap();
    assert_eq!(on_hand(&*store, "s1").await, Some(48));
    // A receipt that occurred before the count is recorded but changes nothing.
    let late = store.apply_batch(&batch(vec![envelope("receipt-5", "s1", Receipt, 9, 5)], 3)).await.unwrap();
    assert_eq!((late.applied, late.superseded), (0, 1));
    assert_eq!(on_hand(&*store, "s1").await, Some(48));
    // An older count changes nothing; a newer one sets the level.
    store.apply_batch(&batch(vec![envelope("count-1", "s1", Count, 1, 1)], 4)).await.unwrap();
    assert_eq!(on_hand(&*store, "s1").await, Some(48));
    store
        .apply_batch(&batch(vec![envelope("sale-40", "s1", Sale, 5, 40), envelope("count-30", "s1", Count, 30, 30)], 6))
        .await
        .unwrap();
    assert_eq!(on_hand(&*store, "s1").await, Some(25));
    let level = &store.stock_by_sku(&Sku::parse("SKU-1").unwrap()).await.unwrap()[0];
    assert_eq!(level.last_count_at, Some(at(30)));
}

async fn two_writers_on_one_row_lose_no_update(store: Arc<dyn Store>) {
    let writer = |name: &'static str| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut conflicts = 0;
            for i in 0..100 {
                let e = envelope(&format!("{name}-{i}"), "s1", Receipt, 1, i);
                let mut b = batch(vec![e], 1);
                b.group_id = name.into();
                loop {
                    match store.apply_batch(&b).await {
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
    assert_eq!(on_hand(&*store, "s1").await, Some(200));
    let level = &store.stock_by_sku(&Sku::parse("SKU-1").unwrap()).await.unwrap()[0];
    assert_eq!(level.version, 200, "every write bumps the version once");
}

async fn levels_stay_unpublished_until_their_publication_is_recorded(store: Arc<dyn Store>) {
    store
        .apply_batch(&batch(vec![envelope("a", "s1", Receipt, 5, 0), envelope("b", "s2", Receipt, 6, 1)], 2))
        .await
        .unwrap();
    let pending = store.unpublished_levels(Utc::now(), 100).await.unwrap();
    assert_eq!(pending.len(), 2);
    // s1 changes again in the batch that records both publications: only s2 is done.
    let mut next = batch(vec![envelope("c", "s1", Sale, 1, 3)], 3);
    next.published = pending
        .iter()
        .map(|l| Published { sku: l.sku.clone(), location: l.location.clone(), version: l.version })
        .collect();
    store.apply_batch(&next).await.unwrap();
    let pending = store.unpublished_levels(Utc::now(), 100).await.unwrap();
    assert_eq!(pending.iter().map(|l| (l.location.as_str(), l.version)).collect::<Vec<_>>(), [("s1", 2)]);
    // Acknowledgements of two versions in one batch, the newer first: the newer one counts,
    // and an older one arriving later does not move the level backwards.
    let ack = |version| Published { sku: pending[0].sku.clone(), location: pending[0].location.clone(), version };
    let mut late = batch(vec![], 3);
    late.published = vec![ack(2), ack(1)];
    store.apply_batch(&late).await.unwrap();
    late.published = vec![ack(1)];
    store.apply_batch(&late).await.unwrap();
    assert!(store.unpublished_levels(Utc::now(), 100).await.unwrap().is_empty());
}

async fn api_keys_are_stored_as_hashes_listed_and_revoked(store: Arc<dyn Store>) {
    let token = Token::generate();
    let scopes = Scopes::parse("stock:read,movements:write").unwrap();
    let key = ApiKey::new(&token, "pos sync", scopes).unwrap();
    store.create_api_key(&key).await.unwrap();
    let stored = store.api_key(token.id()).await.unwrap().expect("the key is stored");
    assert_eq!(stored, key);
    assert!(stored.verifies(&token));
    assert!(store.create_api_key(&key).await.is_err(), "an id is never reused");
    assert_eq!(store.api_key("0123456789ab").await.unwrap(), None);

    let other = ApiKey::new(&Token::generate(), "dev", Scopes::admin()).unwrap();
    store.create_api_key(&other).await.unwrap();
    let names: Vec<String> = store.api_keys(10).await.unwrap().into_iter().map(|k| k.name).collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"pos sync".to_string()) && names.contains(&"dev".to_string()));
    assert_eq!(store.api_keys(1).await.unwrap().len(), 1);

    assert!(store.revoke_api_key(token.id()).await.unwrap());
    assert!(!store.revoke_api_key(token.id()).await.unwrap(), "a revoked key is not revoked twice");
    assert!(!store.revoke_api_key("0123456789ab").await.unwrap());
    let revoked = store.api_key(token.id()).await.unwrap().unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(!revoked.verifies(&token));
    assert!(store.api_key(other.id.as_str()).await.unwrap().unwrap().revoked_at.is_none());
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
                the_count_rule_holds_across_batches,
                products_are_created_replaced_and_read,
                api_keys_are_stored_as_hashes_listed_and_revoked,
                every_level_can_be_paged_through,
                a_policy_is_part_of_the_level_and_bumps_its_version,
                a_late_count_keeps_a_sale_that_is_delivered_again_beside_it,
                levels_stay_unpublished_until_their_publication_is_recorded,
                two_writers_on_one_row_lose_no_update);
        }
    };
    (@each $open:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _dir) = $open.await;
                super::$case(store).await;
            }
        )*
    };
}

async fn open_sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("onhand.db").display());
    (open(&url, 4).await.unwrap(), dir)
}

async fn open_postgres() -> (Arc<dyn Store>, ()) {
    (open(&fresh_postgres_url().await, 8).await.unwrap(), ())
}

contract!(sqlite, open_sqlite());
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
            let (store, _dir) = open_sqlite().await;
            for _ in 0..times {
                for b in batches {
                    store.apply_batch(&batch(b.clone(), 1)).await.unwrap();
                }
            }
            let mut levels: Vec<(String, i64)> = store
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

        /// Through the real store: any order and any batching of the same movements give
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
