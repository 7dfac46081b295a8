//! `onhand verify` and `onhand rebuild` run as the operator runs them (the built binary),
//! against the real broker and PostgreSQL of `scripts/test` and against `onhand dev`: a
//! level corrupted by hand is found (exit 1), a rebuild puts it right and publishes it,
//! and verify then passes (exit 0); an outside snapshot's differences are grouped by
//! source and size, and a bad row of it is refused with its line.

mod common;

use std::{path::Path, time::Duration};

use common::{ops::*, process::*, *};
use onhand_core::{config::Config, event::MovementKind, testing::at};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    Message,
};
use serde_json::{json, Value};

/// A movement from `system:instance`, as JSON on the movements topic.
fn from_source(id: &str, sku: &str, location: &str, kind: MovementKind, quantity: i64, system: &str) -> Vec<u8> {
    let m = onhand_core::testing::movement(id, sku, location, kind, quantity, at(quantity));
    let mut value: Value = serde_json::from_slice(&m.to_json()).unwrap();
    value["source"] = json!({ "system": system, "instance": format!("{location}-main"), "ref": id });
    value.to_string().into_bytes()
}

/// Reads the stock topic from its beginning until a record of `key` at `version` arrives.
fn published(config: &Config, key: &str, version: i64) -> Value {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", onhand_core::testing::unique_name("stock-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&config.kafka.topics.stock]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else { continue };
        if message.key() != Some(key.as_bytes()) {
            continue;
        }
        let level: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        if level["version"] == version {
            return level;
        }
    }
    panic!("{key} at version {version} was not published");
}

/// Runs `statement` by hand, as an operator with `psql` or `sqlite3` would.
async fn sql(url: &str, statement: &str) {
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::query(statement).execute(&pool).await.unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query(statement).execute(&pool).await.unwrap();
        pool.close().await;
    }
}

/// The Done-when of issue 11: a level corrupted by hand, `verify` finds it and exits
/// non-zero, `rebuild` fixes it (and publishes it), `verify` then passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupted_level_is_found_rebuilt_published_and_then_verified() {
    onhand_core::skip_without_servers!();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(2).await;
    let app = serve(&config).await;
    let records = [
        ("SKU-A", from_source("a-1", "SKU-A", "store-1", MovementKind::Receipt, 10, "pos")),
        ("SKU-A", from_source("a-2", "SKU-A", "store-1", MovementKind::Sale, 3, "pos")),
        ("SKU-A", from_source("a-3", "SKU-A", "store-2", MovementKind::Receipt, 4, "erp")),
        ("SKU-B", from_source("b-1", "SKU-B", "store-1", MovementKind::Receipt, 5, "erp")),
    ];
    let records: Vec<(String, Vec<u8>)> = records.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    produce(&producer(), &config.kafka.topics.movements, &records).await;
    on_hand_is(&app, "SKU-A", "store-1", 7).await;
    on_hand_is(&app, "SKU-B", "store-1", 5).await;
    on_hand_is(&app, "SKU-A", "store-2", 4).await;
    let file = config_file(&config, dir.path());
    let file = file.display().to_string();

    let clean = onhand_async(&["verify", "--config", &file, "--json"]).await;
    assert_eq!(clean.code, 0, "{}", clean.stdout);
    let report = clean.json();
    assert_eq!((report["levels"].as_u64(), report["movements"].as_u64()), (Some(3), Some(4)));
    assert_eq!(report["lag"]["checked"], true, "{report}");
    // Every reader whose offsets the database keeps is checked (the alerts' too, once saved).
    let partitions = report["lag"]["partitions"].as_array().unwrap();
    let lags: Vec<i64> = partitions
        .iter()
        .filter(|p| p["group_id"] == config.ledger.group_id.as_str())
        .map(|p| p["lag"].as_i64().unwrap())
        .collect();
    assert_eq!(lags, [0, 0], "the ledger is at each partition's end: {report}");

    // By hand: one level's on_hand changed, another's row deleted.
    sql(&config.database.url, "UPDATE stock_levels SET on_hand = 107 WHERE sku = 'SKU-A' AND location = 'store-1'")
        .await;
    sql(&config.database.url, "DELETE FROM stock_levels WHERE sku = 'SKU-B'").await;
    let found = onhand_async(&["verify", "--config", &file]).await;
    assert_eq!(found.code, 1, "a drift is a problem");
    assert!(
        found.stdout.contains(
            "drift     SKU-A@store-1  expected 7  found 107 (+100)  [on_hand]  last moved by pos:store-1-main"
        ),
        "{}",
        found.stdout
    );
    assert!(found.stdout.contains("drift     SKU-B@store-1  expected 5  found no level"), "{}", found.stdout);
    assert!(found.stdout.contains("2 drift(s)") && found.stdout.contains("2 problem(s)"), "{}", found.stdout);
    let drifts = onhand_async(&["verify", "--config", &file, "--json"]).await.json()["drifts"].clone();
    assert_eq!(
        drifts[1],
        json!({ "level": "SKU-B@store-1", "expected": 5, "found": null, "differs": ["missing"], "source": "erp:store-1-main" })
    );

    let asked = onhand_async(&["rebuild", "--config", &file]).await;
    assert_eq!(asked.code, 3, "nothing written without --yes");
    assert!(asked.stdout.contains("would rewrite 2 level(s)") && asked.stdout.contains("--yes"), "{}", asked.stdout);
    assert_eq!(levels(&app, "SKU-A").await["store-1"], 107, "still as corrupted");

    let rebuilt = onhand_async(&["rebuild", "--config", &file, "--yes"]).await;
    assert_eq!(rebuilt.code, 0, "{}", rebuilt.stderr);
    assert!(rebuilt.stdout.contains("rewrote 2 level(s)"), "{}", rebuilt.stdout);
    assert!(rebuilt.stdout.contains("  SKU-A@store-1  on_hand 107 -> 7  [on_hand]"), "{}", rebuilt.stdout);
    assert!(rebuilt.stdout.contains("published 2 level(s)"), "{}", rebuilt.stdout);
    let stored = app.db.stock_by_sku(&onhand_core::event::Sku::parse("SKU-A").unwrap()).await.unwrap();
    let level = stored.iter().find(|l| l.location.as_str() == "store-1").unwrap();
    assert_eq!(level.on_hand, 7);
    let on_topic = tokio::task::spawn_blocking({
        let (config, version) = (config.clone(), level.version);
        move || published(&config, "SKU-A@store-1", version)
    })
    .await
    .unwrap();
    assert_eq!(on_topic["on_hand"], 7, "the corrected level is on the stock topic: {on_topic}");
    on_hand_is(&app, "SKU-B", "store-1", 5).await;

    let again = onhand_async(&["verify", "--config", &file]).await;
    assert_eq!(again.code, 0, "{}", again.stdout);
    assert!(again.stdout.contains("no problem"), "{}", again.stdout);
    assert_eq!(onhand_async(&["rebuild", "--config", &file]).await.code, 0, "nothing left to rebuild");

    // The ledger goes on after the rebuild: a sale lands on the rebuilt level.
    let sale = from_source("a-4", "SKU-A", "store-1", MovementKind::Sale, 2, "pos");
    produce(&producer(), &config.kafka.topics.movements, &[("SKU-A".into(), sale)]).await;
    on_hand_is(&app, "SKU-A", "store-1", 5).await;

    // Reserved units that no reservation holds are a problem too, which a rebuild keeps.
    sql(&config.database.url, "UPDATE stock_levels SET reserved = 3 WHERE sku = 'SKU-A' AND location = 'store-2'")
        .await;
    let reserved = onhand_async(&["verify", "--config", &file]).await;
    assert_eq!(reserved.code, 1);
    assert!(
        reserved.stdout.contains("reserved  SKU-A@store-2  reserved 3  held by reservations 0"),
        "{}",
        reserved.stdout
    );
    sql(&config.database.url, "UPDATE stock_levels SET reserved = 0 WHERE sku = 'SKU-A' AND location = 'store-2'")
        .await;

    against_a_snapshot(&file, dir.path()).await;
    app.stop().await.unwrap();
}

/// `--against FILE`: the differences from an outside snapshot, grouped by source and size.
async fn against_a_snapshot(file: &str, dir: &Path) {
    let csv = dir.join("erp.csv");
    std::fs::write(&csv, "sku,location,quantity\nSKU-A,store-1,5\nSKU-B,store-1,4\nSKU-C,store-9,12\n").unwrap();
    let csv = csv.display().to_string();
    let run = onhand_async(&["verify", "--config", file, "--against", &csv, "--json"]).await;
    assert_eq!(run.code, 1, "differences from the snapshot are problems");
    let against = run.json()["against"].clone();
    assert_eq!((against["rows"].as_u64(), against["matching"].as_u64()), (Some(3), Some(1)));
    assert_eq!(against["not_in_file"], 1, "SKU-A@store-2");
    assert_eq!(
        against["differences"],
        json!([
            { "level": "SKU-B@store-1", "onhand": 5, "outside": 4, "difference": 1, "source": "erp:store-1-main", "size": "1" },
            { "level": "SKU-C@store-9", "onhand": 0, "outside": 12, "difference": -12, "source": "none", "size": "6-20" },
        ])
    );
    assert_eq!(
        against["by_source"],
        json!({ "erp:store-1-main": { "levels": 1, "units": 1 }, "none": { "levels": 1, "units": 12 } })
    );
    assert_eq!(
        against["by_size"],
        json!([{ "size": "1", "levels": 1, "units": 1 }, { "size": "6-20", "levels": 1, "units": 12 }])
    );
    let text = onhand_async(&["verify", "--config", file, "--against", &csv]).await;
    assert!(text.stdout.contains("3 level(s), 1 matching, 2 different"), "{}", text.stdout);
    assert!(text.stdout.contains("by source:") && text.stdout.contains("by size:"), "{}", text.stdout);

    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "sku,location,quantity\nSKU-A,store-1,5\nSKU-B,store-1,four\n").unwrap();
    let bad = bad.display().to_string();
    let refused = onhand_async(&["verify", "--config", file, "--against", &bad]).await;
    assert_eq!(refused.code, 2, "a bad file stops the command");
    assert!(
        refused.stderr.contains(&format!("{bad}:3: quantity \"four\" is not a whole number")),
        "{}",
        refused.stderr
    );
}

/// The same on `onhand dev`'s SQLite file, with its embedded Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn onhand_dev_is_verified_and_rebuilt_too() {
    onhand_core::skip_without_servers!();
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let dev = Process::dev(addr, data.path(), data.path(), "dev");
    let key = eventually("onhand dev answers", 120, || async {
        let response = reqwest::get(format!("http://{addr}/readyz")).await.ok()?;
        // The admin key is written once the service is up: wait for both.
        let key = std::fs::read_to_string(data.path().join("dev-api-key")).ok()?;
        response.status().is_success().then(|| key.trim().to_string())
    })
    .await;
    let movement = json!({
        "event_id": "dev-1", "source": { "system": "api", "instance": "test", "ref": "dev-1" },
        "sku": "SKU-DEV", "location": "store-001", "kind": "receipt", "quantity": 10,
        "occurred_at": "2026-11-20T10:00:00Z"
    });
    let (status, _) = http_post_as(addr, "/v1/movements", "application/json", movement.to_string(), Some(&key)).await;
    assert_eq!(status, 202);
    let url = format!("sqlite://{}", data.path().join("onhand.db").display());
    eventually("the receipt applied", 60, || async {
        let pool = sqlx::SqlitePool::connect(&url).await.ok()?;
        let n: Option<i64> = sqlx::query_scalar("SELECT on_hand FROM stock_levels").fetch_optional(&pool).await.ok()?;
        (n == Some(10)).then_some(())
    })
    .await;
    let dir = data.path().display().to_string();
    assert_eq!(onhand_async(&["verify", "--dev", &dir]).await.code, 0);

    sql(&url, "UPDATE stock_levels SET on_hand = 3").await;
    let found = onhand_async(&["verify", "--dev", &dir, "--json"]).await;
    assert_eq!(found.code, 1);
    assert_eq!(found.json()["drifts"][0]["level"], "SKU-DEV@store-001");
    let rebuilt = onhand_async(&["rebuild", "--dev", &dir, "--yes", "--json"]).await;
    assert_eq!(rebuilt.code, 0, "{}", rebuilt.stderr);
    assert_eq!(rebuilt.json()["publication"], json!({ "published": 1, "failed": 0 }));
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let (on_hand, unpublished): (i64, i64) =
        sqlx::query_as("SELECT on_hand, version - published_version FROM stock_levels").fetch_one(&pool).await.unwrap();
    assert_eq!((on_hand, unpublished), (10, 0), "rebuilt, and its publication recorded");
    assert_eq!(onhand_async(&["verify", "--dev", &dir]).await.code, 0);
    assert!(dev.terminate());
}
