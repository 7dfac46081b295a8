//! `onhand dlq list|show|redrive` run as the operator runs them (the built binary), against
//! the real broker and PostgreSQL of `scripts/test` and against `onhand dev`: Shopify's
//! dead letters for a product the catalog lacked count once after the product is added and
//! they are re-driven (twice: still once); the listing filters by header and prints JSON;
//! a record is shown whole; a redrive asks for `--yes`; a record that fails again is
//! reported with its new reason; `onhand dev` keeps its dead letters across a restart.

mod common;

use std::{net::SocketAddr, path::Path};

use common::{ops::*, process::*, shopify::*, *};
use onhand_core::{
    config::Config,
    event::{MovementKind, Sku},
    product::Product,
};
use rdkafka::{
    producer::{FutureProducer, FutureRecord},
    ClientConfig,
};
use serde_json::{json, Value};

const ORDERS_CREATE: &str = include_str!("../connectors/src/shopify/fixtures/orders_create.json");
const RICE: &str = "7891000100103";
const OIL: &str = "7891000100257";
const OIL_VARIANT: &str = "49148385";

/// `onhand dlq ARGS --config FILE`, on the tokio blocking pool.
async fn dlq(config_file: &Path, args: &[&str]) -> Run {
    let mut all: Vec<String> = vec!["dlq".into()];
    all.extend(args.iter().map(|a| a.to_string()));
    all.extend(["--config".to_string(), config_file.display().to_string()]);
    onhand_async(&all.iter().map(String::as_str).collect::<Vec<_>>()).await
}

async fn shopify_config(admin: SocketAddr) -> Config {
    let mut config = test_config(3).await;
    let mut section = section(admin);
    section["reconcile"] = json!({ "interval_s": 3600, "initial_lookback_h": 1 });
    config.connectors.insert("shopify".into(), section);
    config
}

fn product(sku: &str, variant: &str) -> Product {
    Product {
        sku: Sku::parse(sku).unwrap(),
        name: format!("product {sku}"),
        category: None,
        attributes: [("shopify_variant_id".to_string(), variant.to_string())].into(),
    }
}

/// The Done-when of issue 11: dead letters for an unknown product, the product added,
/// `redrive`, the levels count them once; re-driven again, still once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_products_dead_letters_count_once_after_the_product_is_added_and_redriven() {
    onhand_core::skip_without_servers!();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeShopify::start().await;
    let config = shopify_config(fake.addr).await;
    let app = serve(&config).await;
    // Rice is in the catalog; oil is not yet.
    app.db.put_products(&[product(RICE, "808950810")]).await.unwrap();
    let order: Value = serde_json::from_str(ORDERS_CREATE).unwrap();
    let quantity = |variant: &str| {
        let lines = order["line_items"].as_array().unwrap();
        lines.iter().find(|l| l["variant_id"].as_u64().is_some_and(|v| v.to_string() == variant)).unwrap()["quantity"]
            .as_i64()
            .unwrap()
    };
    let (status, answer) = deliver(app.local_addr, "orders/create", "e-1", ORDERS_CREATE, SECRET).await;
    assert_eq!((status, answer["movements"].as_u64(), answer["dead_letters"].as_u64()), (200, Some(1), Some(1)));
    on_hand_is(&app, RICE, "dc-sp", -quantity("808950810")).await;
    let file = config_file(&config, dir.path());

    let listed = dlq(&file, &["list", "--json"]).await;
    assert_eq!(listed.code, 0);
    let listing = listed.json();
    assert_eq!(listing["matched"], 1, "{listing}");
    assert_eq!(listing["by_reason"]["shopify_unmapped_sku"], 1);
    assert_eq!(listing["records"][0]["source"], "shopify");
    let oil_event = listing["records"][0]["event_id"].as_str().unwrap().to_string();
    assert!(oil_event.starts_with("shopify:order:"), "{oil_event}");

    // Before the product exists, the line cannot be mapped: refused, with the reason.
    let early = dlq(&file, &["redrive", "--reason", "shopify_unmapped_sku", "--yes"]).await;
    assert_eq!(early.code, 1, "nothing could go");
    assert!(early.stdout.contains("still shopify_unmapped_sku"), "{}", early.stdout);

    let csv = dir.path().join("products.csv");
    std::fs::write(&csv, format!("sku,name,shopify_variant_id\n{OIL},Óleo de soja 900 ml,{OIL_VARIANT}\n")).unwrap();
    let imported = onhand(&["products", "import", &csv.display().to_string(), "--database-url", &config.database.url]);
    assert_eq!(imported.code, 0, "{}", imported.stderr);

    let asked = dlq(&file, &["redrive", "--reason", "shopify_unmapped_sku"]).await;
    assert_eq!(asked.code, 3, "without --yes nothing is sent");
    assert!(asked.stdout.contains("1 record(s) to send") && asked.stdout.contains("--yes"), "{}", asked.stdout);
    let before = app.db.movement_count().await.unwrap();
    assert_eq!(before, 1, "only rice's sale so far");

    for round in 0..2 {
        let sent = dlq(&file, &["redrive", "--reason", "shopify_unmapped_sku", "--yes", "--wait-s", "60"]).await;
        assert_eq!(sent.code, 0, "round {round}: {}", sent.stdout);
        assert!(sent.stdout.contains(&oil_event), "{}", sent.stdout);
        assert!(sent.stdout.contains("1 recorded, 0 failed again, 0 pending, 0 refused"), "{}", sent.stdout);
        on_hand_is(&app, OIL, "dc-sp", -quantity(OIL_VARIANT)).await;
        assert_eq!(app.db.movement_count().await.unwrap(), 2, "round {round}: the oil sale, once");
    }
    on_hand_is(&app, RICE, "dc-sp", -quantity("808950810")).await;
    eventually("the second redrive skipped as a duplicate", 30, || async {
        (metric(&app, "onhand_ledger_duplicates_skipped_total") >= 1.0).then_some(())
    })
    .await;
    assert_eq!(metric(&app, "onhand_dead_letters_total{reason_code=\"shopify_unmapped_sku\"}"), 1.0);
    app.stop().await.unwrap();
}

/// Listing by reason, source and time, in text and JSON; one record shown whole; a
/// redrive without `--yes`; a record that fails again; one that is no movement.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_listing_filters_show_prints_whole_and_a_record_that_fails_again_says_why() {
    onhand_core::skip_without_servers!();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(2).await;
    let app = serve(&config).await;
    let file = config_file(&config, dir.path());
    let (good_key, good) = movement_json("good-1", "SKU-1", "store-1", MovementKind::Receipt, 5, 0);
    let mut zero: Value =
        serde_json::from_slice(&movement_json("zero-1", "SKU-2", "store-1", MovementKind::Sale, 1, 1).1).unwrap();
    zero["quantity"] = json!(0);
    produce(
        &producer(),
        &config.kafka.topics.movements,
        &[(good_key, good), ("SKU-2".into(), zero.to_string().into_bytes()), ("SKU-3".into(), b"{not json".to_vec())],
    )
    .await;
    let listing = eventually("two dead letters", 60, || async {
        let listed = dlq(&file, &["list", "--json"]).await;
        let listing = listed.json();
        (listing["matched"] == 2).then_some(listing)
    })
    .await;
    assert_eq!(listing["by_reason"], json!({ "invalid_quantity": 1, "not_json": 1 }));
    assert_eq!(listing["by_source"][&config.kafka.topics.movements], 2);

    let quantity = dlq(&file, &["list", "--reason", "invalid_quantity", "--json"]).await.json();
    assert_eq!(quantity["matched"], 1);
    let line = &quantity["records"][0];
    assert_eq!((line["event_id"].as_str(), line["level"].as_str()), (Some("zero-1"), Some("SKU-2@store-1")));
    let position = line["position"].as_str().unwrap().to_string();
    assert_eq!(dlq(&file, &["list", "--source", "erp", "--json"]).await.json()["matched"], 0);
    assert_eq!(dlq(&file, &["list", "--since", "2999-01-01T00:00:00Z", "--json"]).await.json()["matched"], 0);
    assert_eq!(dlq(&file, &["list", "--until", "2999-01-01T00:00:00Z", "--json"]).await.json()["matched"], 2);
    let text = dlq(&file, &["list"]).await;
    assert!(
        text.stdout.contains(&format!("{position} ")) && text.stdout.contains("zero-1 SKU-2@store-1"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("2 of 2 dead letters") && text.stdout.contains("by reason:"), "{}", text.stdout);
    let limited = dlq(&file, &["list", "--limit", "1"]).await;
    assert!(limited.stdout.contains("... 1 more (--limit)"), "{}", limited.stdout);

    let shown = dlq(&file, &["show", &position]).await;
    assert_eq!(shown.code, 0);
    assert!(shown.stdout.contains("header    onhand.dlq.reason_code: invalid_quantity"), "{}", shown.stdout);
    assert!(shown.stdout.contains("key       SKU-2") && shown.stdout.contains("\"quantity\": 0"), "{}", shown.stdout);
    let shown = dlq(&file, &["show", &position, "--json"]).await.json();
    assert_eq!(
        (shown["payload_format"].as_str(), shown["payload"]["event_id"].as_str()),
        (Some("json"), Some("zero-1"))
    );
    let not_json = dlq(&file, &["list", "--reason", "not_json", "--json"]).await.json();
    let not_json_at = not_json["records"][0]["position"].as_str().unwrap().to_string();
    let shown = dlq(&file, &["show", &not_json_at, "--json"]).await.json();
    assert_eq!((shown["payload_format"].as_str(), shown["payload"].as_str()), (Some("text"), Some("{not json")));
    for bad in ["0:999999", "nonsense", "-1:0"] {
        let missing = dlq(&file, &["show", bad]).await;
        assert_eq!(missing.code, 2, "{bad}: {}", missing.stderr);
    }

    let asked = dlq(&file, &["redrive", &position]).await;
    assert_eq!(asked.code, 3);
    assert!(asked.stdout.contains("nothing sent"), "{}", asked.stdout);
    let again = dlq(&file, &["redrive", &position, "--yes", "--wait-s", "60"]).await;
    assert_eq!(again.code, 1, "it failed again");
    assert!(again.stdout.contains("failed again") && again.stdout.contains("invalid_quantity"), "{}", again.stdout);
    let refused = dlq(&file, &["redrive", &not_json_at, "--yes"]).await;
    assert_eq!(refused.code, 1);
    assert!(refused.stdout.contains("not a movement"), "{}", refused.stdout);
    let neither = dlq(&file, &["redrive", "--yes"]).await;
    assert_eq!(neither.code, 2, "nothing named");

    assert_eq!(metric(&app, "onhand_dead_letters_total{reason_code=\"invalid_quantity\"}"), 2.0, "first and again");
    assert_eq!(metric(&app, "onhand_dead_letters_total{reason_code=\"not_json\"}"), 1.0);
    assert_eq!(app.db.movement_count().await.unwrap(), 1);
    app.stop().await.unwrap();
}

fn dev_producer(data_dir: &Path) -> FutureProducer {
    let brokers = std::fs::read_to_string(data_dir.join("kafka-brokers")).unwrap();
    ClientConfig::new().set("bootstrap.servers", brokers.trim()).create().unwrap()
}

async fn start_dev(data_dir: &Path, name: &str) -> Process {
    let addr = free_addr();
    let process = Process::dev(addr, data_dir, data_dir, name);
    eventually(&format!("onhand dev ({name}) answers"), 120, || async {
        let response = reqwest::get(format!("http://{addr}/readyz")).await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    process
}

async fn dev_dlq(data_dir: &Path) -> Value {
    let dir = data_dir.display().to_string();
    let run = tokio::task::spawn_blocking(move || onhand(&["dlq", "list", "--dev", &dir, "--json"])).await.unwrap();
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.json()
}

/// `onhand dev`'s embedded Kafka is lost at every stop; its dead letters are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn onhand_dev_keeps_its_dead_letters_across_a_restart() {
    onhand_core::skip_without_servers!();
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path(), "dev-1").await;
    let topic = onhand_core::config::Topics::default();
    let send = |producer: FutureProducer, payload: &'static str| {
        let movements = topic.movements.clone();
        async move {
            let record = FutureRecord::to(&movements).key("SKU-D").payload(payload);
            producer.send(record, std::time::Duration::from_secs(10)).await.unwrap();
        }
    };
    send(dev_producer(data.path()), "first: not json").await;
    let first = eventually("a dead letter in dev", 60, || async {
        let listing = dev_dlq(data.path()).await;
        (listing["matched"] == 1).then_some(listing)
    })
    .await;
    assert!(dev.terminate(), "onhand dev stops cleanly");

    let dev = start_dev(data.path(), "dev-2").await;
    let kept = dev_dlq(data.path()).await;
    assert_eq!(kept["matched"], 1, "{kept}");
    assert_eq!(kept["records"][0], first["records"][0], "the same record at the same position");
    send(dev_producer(data.path()), "second: not json").await;
    eventually("the second dead letter beside the first", 60, || async {
        (dev_dlq(data.path()).await["matched"] == 2).then_some(())
    })
    .await;
    dev.kill();
    let dev = start_dev(data.path(), "dev-3").await;
    assert_eq!(dev_dlq(data.path()).await["matched"], 2, "killed, not stopped: still both");
    let journal = std::fs::read_to_string(data.path().join("dead-letters.ndjson")).unwrap();
    assert_eq!(journal.lines().count(), 2, "each once, not again at each start");
    assert!(dev.terminate());
}
