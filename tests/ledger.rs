//! The ledger against the real broker and PostgreSQL: exactly-once under re-delivery,
//! crashes and consumer-group rebalances, and dead letters.

mod common;

use std::{collections::HashMap, time::Duration};

use common::*;
use onhand::app::StartOptions;
use onhand_core::{
    event::{MovementKind::*, StockLevel},
    ledger::{FaultInjection, LedgerError},
};
use rdkafka::message::{Headers, Message};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_movement_delivered_three_times_counts_once() {
    onhand_core::skip_without_servers!();
    let config = test_config(3).await;
    let app = serve(&config).await;
    let record = movement_json("pos:store-1:T9:1", "SKU-A", "store-1", Receipt, 7, 0);
    let producer = producer();
    for _ in 0..3 {
        produce(&producer, &config.kafka.topics.movements, std::slice::from_ref(&record)).await;
    }
    eventually("two duplicates skipped", 60, || async {
        (metric(&app, "onhand_ledger_duplicates_skipped_total") == 2.0).then_some(())
    })
    .await;
    assert_eq!(app.db.movement_count().await.unwrap(), 1);
    assert_eq!(levels(&app, "SKU-A").await, HashMap::from([("store-1".into(), 7)]));
    assert_eq!(metric(&app, "onhand_ledger_movements_applied_total"), 1.0);
    let db = std::sync::Arc::clone(&app.db);

    // The level after the change is published on the stock topic, keyed sku@location.
    let published = consume_all(&config.kafka.topics.stock, 1);
    assert_eq!(published[0].key(), Some(&b"SKU-A@store-1"[..]));
    let level: StockLevel = serde_json::from_slice(published[0].payload().unwrap()).unwrap();
    assert_eq!((level.on_hand, level.version), (7, 1));
    app.stop().await.unwrap();
    // A clean stop records the publications in flight: nothing is left to republish.
    assert!(db.unpublished_levels(chrono::Utc::now(), 10).await.unwrap().levels.is_empty());
}

/// on_hand per (sku, location).
type Levels = HashMap<(String, String), i64>;

/// Movements over 20 SKUs x 4 locations, keyed records ready to produce, and the
/// on_hand each level must end with.
fn workload(prefix: &str, count: usize) -> (Vec<(String, Vec<u8>)>, Levels) {
    let mut records = Vec::with_capacity(count);
    let mut expected = Levels::new();
    for i in 0..count {
        let sku = format!("SKU-{}", i % 20);
        let location = format!("store-{}", (i / 20) % 4);
        let (kind, quantity, delta) = if i % 3 == 0 { (Sale, 2, -2) } else { (Receipt, 5, 5) };
        records.push(movement_json(&format!("{prefix}-{i}"), &sku, &location, kind, quantity, i as i64));
        *expected.entry((sku, location)).or_default() += delta;
    }
    (records, expected)
}

async fn assert_levels(app: &onhand::app::App, expected: &Levels) {
    let mut skus: Vec<&String> = expected.keys().map(|(sku, _)| sku).collect();
    skus.sort();
    skus.dedup();
    for sku in skus {
        let actual = levels(app, sku).await;
        for ((s, location), on_hand) in expected.iter().filter(|((s, _), _)| s == sku) {
            assert_eq!(actual.get(location), Some(on_hand), "{s}@{location}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ledger_killed_after_its_database_commit_restarts_without_loss_or_double_count() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(3).await;
    config.ledger.batch_size_max = 100;
    let (records, expected) = workload("crash", 1_000);
    onhand_core::kafka::ensure_topics(&config.kafka).await.unwrap();
    produce(&producer(), &config.kafka.topics.movements, &records).await;
    let options = StartOptions { faults: FaultInjection { crash_after_commits: Some(1) }, ..StartOptions::default() };
    let crashing = serve_with(&config, options).await;
    eventually("the ledger to die after its first commit", 60, || async {
        crashing.ledger().unwrap().is_finished().then_some(())
    })
    .await;
    let applied_before_crash = crashing.db.movement_count().await.unwrap();
    assert!(matches!(crashing.stop().await, Err(LedgerError::InjectedCrash(1))));
    assert!(
        (1..1_000).contains(&applied_before_crash),
        "one batch was committed before the crash: {applied_before_crash}"
    );

    // The restarted ledger resumes from the offsets saved with that batch.
    let restarted = serve(&config).await;
    until_recorded(&restarted, 1_000, 120).await;
    assert_levels(&restarted, &expected).await;
    // The levels of the batch committed just before the crash were never published by
    // the crashed ledger; the restarted one publishes them and records it.
    eventually("every level published", 60, || async {
        restarted.db.unpublished_levels(chrono::Utc::now(), 1_000).await.unwrap().levels.is_empty().then_some(())
    })
    .await;
    assert_eq!(
        metric(&restarted, "onhand_ledger_movements_applied_total") as i64,
        1_000 - applied_before_crash,
        "the restarted ledger applied exactly what the crashed one had not"
    );
    restarted.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_ledgers_in_one_group_split_six_partitions_and_the_levels_are_exact() {
    onhand_core::skip_without_servers!();
    let config = test_config(6).await;
    let first = serve(&config).await;
    let second = serve(&config).await;
    let (a, b) = eventually("both ledgers to own partitions", 90, || async {
        let (a, b) = (first.ledger()?.assignment(), second.ledger()?.assignment());
        (!a.is_empty() && !b.is_empty() && a.len() + b.len() == 6).then_some((a, b))
    })
    .await;
    assert!(a.is_disjoint(&b), "{a:?} and {b:?} overlap");

    let (records, expected) = workload("split", 10_000);
    produce(&producer(), &config.kafka.topics.movements, &records).await;
    until_recorded(&first, 10_000, 180).await;
    assert_levels(&first, &expected).await;
    // A batch's metrics are counted just after its commit: wait for them to catch up.
    let applied = |app: &onhand::app::App| metric(app, "onhand_ledger_movements_applied_total");
    let (applied_a, applied_b) = eventually("the metrics of all 10,000 movements", 30, || async {
        let (a, b) = (applied(&first), applied(&second));
        (a + b == 10_000.0).then_some((a, b))
    })
    .await;
    assert!(applied_a > 0.0 && applied_b > 0.0, "both ledgers applied movements: {applied_a} {applied_b}");
    first.stop().await.unwrap();
    second.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_records_go_to_the_dead_letter_topic_and_the_ledger_goes_on() {
    onhand_core::skip_without_servers!();
    let config = test_config(1).await;
    let app = serve(&config).await;
    let valid = movement_json("good-1", "SKU-D", "dc", Receipt, 3, 0);
    let mut wrong_sign: serde_json::Value = serde_json::from_slice(&valid.1).unwrap();
    wrong_sign["event_id"] = "bad-sign".into();
    wrong_sign["kind"] = "sale".into();
    wrong_sign["quantity"] = (-4).into();
    let mut unknown_kind = wrong_sign.clone();
    unknown_kind["kind"] = "theft".into();
    let mut zero = wrong_sign.clone();
    zero["kind"] = "adjustment".into();
    zero["quantity"] = 0.into();
    let mut oversized = wrong_sign.clone();
    oversized["reason"] = "x".repeat(20_000).into();
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("not_json", b"{oops".to_vec()),
        ("schema_violation", br#"{"event_id": "x"}"#.to_vec()),
        ("unknown_kind", serde_json::to_vec(&unknown_kind).unwrap()),
        ("invalid_quantity", serde_json::to_vec(&wrong_sign).unwrap()),
        ("invalid_quantity", serde_json::to_vec(&zero).unwrap()),
        ("oversized", serde_json::to_vec(&oversized).unwrap()),
    ];
    let mut records: Vec<(String, Vec<u8>)> =
        bad.iter().map(|(_, bytes)| ("SKU-D".to_string(), bytes.clone())).collect();
    records.push(valid);
    produce(&producer(), &config.kafka.topics.movements, &records).await;

    until_recorded(&app, 1, 60).await;
    assert_eq!(levels(&app, "SKU-D").await, HashMap::from([("dc".into(), 3)]));
    let dead = consume_all(&config.kafka.topics.dlq, bad.len());
    for (message, (code, bytes)) in dead.iter().zip(&bad) {
        let header = |name: &str| {
            let headers = message.headers().expect("dead letters carry headers");
            let found = headers.iter().find(|h| h.key == name).and_then(|h| h.value).expect(name);
            String::from_utf8(found.to_vec()).unwrap()
        };
        assert_eq!(message.payload(), Some(&bytes[..]), "the original bytes are kept");
        assert_eq!(header("onhand.dlq.reason_code"), *code);
        assert!(!header("onhand.dlq.reason").is_empty());
        assert_eq!(header("onhand.dlq.topic"), config.kafka.topics.movements);
        assert_eq!(header("onhand.dlq.partition"), "0");
    }
    let offsets: Vec<String> = dead
        .iter()
        .map(|m| {
            let h = m.headers().unwrap();
            String::from_utf8(h.iter().find(|h| h.key == "onhand.dlq.offset").unwrap().value.unwrap().to_vec()).unwrap()
        })
        .collect();
    assert_eq!(offsets, ["0", "1", "2", "3", "4", "5"]);
    assert_eq!(metric(&app, "onhand_ledger_dlq_records_total{reason=\"invalid_quantity\"}"), 2.0);
    app.stop().await.unwrap();
}

/// The headers of a dead letter, by name.
fn dlq_headers(message: &rdkafka::message::OwnedMessage) -> HashMap<String, String> {
    let Some(headers) = message.headers() else { return HashMap::new() };
    headers
        .iter()
        .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).to_string()))
        .collect()
}

/// M1 and C1: a movement the database refuses (here a constraint a DBA added), and one
/// that would take its level beyond the range, are set aside to the dead-letter topic with
/// the reason, and every other movement of their batches is applied: ingestion goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_the_database_or_the_rules_refuse_is_dead_lettered_and_the_rest_applied() {
    onhand_core::skip_without_servers!();
    use sqlx::{Connection, Executor};
    let mut config = test_config(1).await;
    config.ledger.linger_ms = 500;
    let app = serve(&config).await;
    let mut db = sqlx::PgConnection::connect(&config.database.url).await.unwrap();
    db.execute("ALTER TABLE movements ADD CONSTRAINT no_poison CHECK (sku <> 'POISON')").await.unwrap();
    // A level already at the top of its range.
    let edge = onhand_core::ledger::rules::ON_HAND_MAX - 10;
    db.execute(
        format!(
            "INSERT INTO stock_levels (sku, location, on_hand, version, updated_at) VALUES ('SKU-EDGE', 'dc', {edge}, 1, now())"
        )
        .as_str(),
    )
    .await
    .unwrap();
    let records = vec![
        movement_json("ok-1", "SKU-OK", "dc", Receipt, 5, 0),
        movement_json("poison-1", "POISON", "dc", Receipt, 5, 1),
        movement_json("ok-2", "SKU-OK", "dc", Receipt, 6, 2),
        movement_json("edge-1", "SKU-EDGE", "dc", Receipt, 11, 3),
        movement_json("ok-3", "SKU-OK", "dc", Sale, 1, 4),
        movement_json("edge-2", "SKU-EDGE", "dc", Receipt, 10, 5),
    ];
    produce(&producer(), &config.kafka.topics.movements, &records).await;
    until_recorded(&app, 4, 60).await;
    assert_eq!(levels(&app, "SKU-OK").await, HashMap::from([("dc".into(), 10)]));
    assert_eq!(levels(&app, "SKU-EDGE").await, HashMap::from([("dc".into(), edge + 10)]), "at the limit, not past it");
    let dead = consume_all(&config.kafka.topics.dlq, 2);
    let mut reasons: Vec<(String, String)> = dead
        .iter()
        .map(|m| {
            let h = dlq_headers(m);
            (h["onhand.dlq.reason_code"].clone(), h["onhand.dlq.offset"].clone())
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons, [("database_refused".to_string(), "1".to_string()), ("level_out_of_range".into(), "3".into())]);
    let refused = dead.iter().find(|m| dlq_headers(m)["onhand.dlq.reason_code"] == "database_refused").unwrap();
    assert!(dlq_headers(refused)["onhand.dlq.reason"].contains("no_poison"), "the database's own reason");
    let movement: serde_json::Value = serde_json::from_slice(refused.payload().unwrap()).unwrap();
    assert_eq!(movement["event_id"], "poison-1", "the movement as read, ready to be sent again");
    // Nothing stays stuck: a later movement is applied too.
    produce(&producer(), &config.kafka.topics.movements, &[movement_json("ok-4", "SKU-OK", "dc", Receipt, 1, 6)]).await;
    until_recorded(&app, 5, 60).await;
    app.stop().await.unwrap();
}

/// H3: an original too large for the broker is dead-lettered truncated, with its size and
/// SHA-256 in headers, instead of being retried for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_record_is_dead_lettered_truncated_with_its_size_and_digest() {
    onhand_core::skip_without_servers!();
    use sha2::Digest;
    let config = test_config(1).await;
    let app = serve(&config).await;
    let huge = vec![b'x'; onhand_core::kafka::DEAD_LETTER_PAYLOAD_BYTES_MAX + 1];
    produce(
        &producer(),
        &config.kafka.topics.movements,
        &[("SKU-H".into(), huge.clone()), movement_json("after-huge", "SKU-H", "dc", Receipt, 2, 0)],
    )
    .await;
    until_recorded(&app, 1, 60).await;
    let dead = consume_all(&config.kafka.topics.dlq, 1);
    let headers = dlq_headers(&dead[0]);
    assert_eq!(headers["onhand.dlq.reason_code"], "oversized");
    assert_eq!(headers["onhand.dlq.truncated"], "true");
    assert_eq!(headers["onhand.dlq.original_bytes"], huge.len().to_string());
    assert_eq!(headers["onhand.dlq.original_sha256"], hex::encode(sha2::Sha256::digest(&huge)));
    assert_eq!(dead[0].payload().unwrap().len(), onhand_core::kafka::DEAD_LETTER_TRUNCATED_BYTES);
    assert_eq!(metric(&app, "onhand_dlq_truncated_total"), 1.0);
    app.stop().await.unwrap();
}

/// H3: a dead-letter topic that does not exist (a broker without auto-creation) cannot take
/// the letter: the component behind it reports itself blocked, with the reason, within
/// seconds, and keeps trying.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_that_cannot_be_written_blocks_its_component_visibly() {
    onhand_core::skip_without_servers!();
    use onhand_core::{
        health::{Health, State},
        kafka::{dead_letter_until_sent, DeadLetter, Producer},
        telemetry::Metrics,
    };
    let mut config = test_config(1).await;
    config.kafka.produce_timeout_ms = 60_000;
    let metrics = Metrics::new();
    let health = Health::new(metrics.clone());
    let component = health.component("ledger", true);
    component.running();
    let producer = Producer::new(&config.kafka, Duration::from_millis(5)).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let letter = DeadLetter {
        source: "test",
        read_from: None,
        key: None,
        payload: b"{}",
        reason_code: "not_json",
        reason: "test",
    };
    let missing = format!("{}.missing-dlq", config.kafka.topics.dlq);
    let sending = {
        let (component, shutdown, metrics) = (component.clone(), shutdown.clone(), metrics.clone());
        tokio::spawn(async move {
            dead_letter_until_sent(&producer, &missing, letter, Duration::from_secs(5), &shutdown, &component, &metrics)
                .await
        })
    };
    let blocked = eventually("the component blocked", 10, || async {
        match health.state("ledger") {
            Some(State::Blocked(why)) => Some(why),
            _ => None,
        }
    })
    .await;
    assert!(blocked.contains("missing-dlq"), "{blocked}");
    assert!(!health.readiness().ready, "a blocked critical component is not ready");
    shutdown.cancel();
    assert!(!sending.await.unwrap(), "nothing was sent; the caller must not move past the record");
}

/// L5: a saved offset beyond its partition's end (the topic was recreated) is said loudly:
/// a metric, and the ledger blocked in `/readyz` with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saved_offset_beyond_the_partitions_end_is_reported() {
    onhand_core::skip_without_servers!();
    let config = test_config(1).await;
    onhand_core::kafka::ensure_topics(&config.kafka).await.unwrap();
    let db = onhand_core::db::open(&config.database.url, 2).await.unwrap();
    let batch = onhand_core::db::Batch {
        group_id: config.ledger.group_id.clone(),
        topic: config.kafka.topics.movements.clone(),
        movements: Vec::new(),
        offsets: vec![onhand_core::db::PartitionOffset { partition: 0, next_offset: 1_000 }],
        published: Vec::new(),
        settled: Vec::new(),
    };
    db.apply_batch(&batch).await.unwrap();
    let app = serve(&config).await;
    eventually("the offset beyond the end counted", 60, || async {
        (metric(&app, "onhand_ledger_offsets_beyond_end_total") >= 1.0).then_some(())
    })
    .await;
    let (status, ready) = http_get(app.local_addr, "/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["components"]["ledger"]["state"], "blocked");
    assert!(ready["components"]["ledger"]["detail"].as_str().unwrap().contains("beyond"), "{ready}");
    app.stop().await.unwrap();
}
