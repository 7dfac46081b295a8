//! The signals that show sync degradation before users do, against the real broker and
//! PostgreSQL: a movement's time to the cache is measured per source; `GET /v1/sources`
//! shows every connector's health, its last movement and its last error; the ledger's lag
//! per partition rises while movements wait and falls to zero once they are applied; and
//! duplicates are counted by source.

mod common;

use std::{path::Path, sync::Arc};

use common::{shopify::*, *};
use onhand::app::App;
use onhand_core::{
    config::{ChannelConfig, Config},
    db,
    event::{MovementKind, Sku, SourceSystem},
    lag::LagWatch,
    product::Product,
    telemetry::Metrics,
    testing::{movement, unique_name},
};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const ORDERS_CREATE: &str = include_str!("../connectors/src/shopify/fixtures/orders_create.json");
const RICE: &str = "7891000100103";
const OIL: &str = "7891000100257";
const RICE_ITEM: u64 = 271878346596884015;
const OIL_ITEM: u64 = 271878346596884016;

/// POS, WMS and Shopify (webhooks, reconciliation and sink) on one service.
async fn every_connector(inbox: &Path, shopify: std::net::SocketAddr) -> Config {
    let mut config = test_config(3).await;
    config.channels.insert(
        "web".into(),
        ChannelConfig { all_locations: false, locations: vec!["dc-sp".into()], ..ChannelConfig::default() },
    );
    config.connectors.insert("pos".into(), json!({}));
    config
        .connectors
        .insert("wms".into(), json!({ "inbox": inbox, "scan_interval_ms": 200, "source_instance": "wms-dc-sp" }));
    let mut section = section(shopify);
    section["location_map"] = json!({ "48752903": "dc-sp" });
    section["reconcile"] = json!({ "interval_s": 1, "initial_lookback_h": 1 });
    section["http"] = json!({ "request_timeout_ms": 2000, "backoff_ms_min": 50, "backoff_ms_max": 500 });
    section["sink"] = json!({ "channel": "web", "location_id": 48752903, "group_id": unique_name("sink"),
                              "linger_ms": 50, "batch_size_max": 10 });
    config.connectors.insert("shopify".into(), section);
    config
}

async fn sources(app: &App) -> Vec<Value> {
    let (status, answer) = http_get(app.local_addr, "/v1/sources").await;
    assert_eq!(status, 200, "{answer}");
    answer["sources"].as_array().cloned().unwrap_or_default()
}

/// Waits until `/v1/sources` shows `name` as `check` wants it.
async fn source_where(app: &App, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    eventually(&format!("{name} {what} in /v1/sources"), 60, || async {
        sources(app).await.into_iter().find(|s| s["source"] == name && check(s))
    })
    .await
}

fn drop_file(inbox: &Path, name: &str, text: &str) {
    let temporary = inbox.join(format!("{name}.tmp"));
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(temporary, inbox.join(name)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_connector_reports_its_health_last_movement_and_last_error() {
    onhand_core::skip_without_servers!();
    let inbox = tempfile::tempdir().unwrap();
    let fake = FakeShopify::start().await;
    fake.with(|s| s.levels.extend([(RICE_ITEM, 0), (OIL_ITEM, 0)]));
    let app = serve(&every_connector(inbox.path(), fake.addr).await).await;
    let product = |sku: &str, variant: &str, item: u64| Product {
        sku: Sku::parse(sku).unwrap(),
        name: format!("product {sku}"),
        category: None,
        attributes: [
            ("shopify_variant_id".to_string(), variant.to_string()),
            ("shopify_inventory_item_id".to_string(), item.to_string()),
        ]
        .into(),
    };
    app.db.put_products(&[product(RICE, "808950810", RICE_ITEM), product(OIL, "49148385", OIL_ITEM)]).await.unwrap();

    // A store's till, the WMS's file, a Shopify order: each a movement from its source.
    let sale = json!({ "transaction_id": "T1", "line": 1, "kind": "sale", "sku": "R1", "quantity": 1,
                       "occurred_at": "2026-11-22T11:31:07-03:00", "till": "04" });
    let (status, _) =
        http_post(app.local_addr, "/connectors/pos/store-001/sales", "application/x-ndjson", format!("{sale}\n")).await;
    assert_eq!(status, 202);
    // The WMS's SKU is one no other source reads: a level a read brought into the cache
    // before its stock record arrived is not timed again when the record comes.
    drop_file(
        inbox.path(),
        "asn.csv",
        "sku,location,kind,quantity,occurred_at,reference\n7891000100400,dc-sp,receipt,480,2026-11-20T09:10:00-03:00,ASN-1\n",
    );
    let (status, answer) = deliver(app.local_addr, "orders/create", "e-order", ORDERS_CREATE, SECRET).await;
    assert_eq!(status, 200, "{answer}");

    // Each movement was timed from its recorded_at to this instance's cache, by source.
    // A cache that started following the stock topic after a level went out never times
    // it (it follows from the end): another sale of the till's, until one is timed.
    let pos_count = "onhand_query_propagation_seconds_count{source=\"pos\"}";
    let mut again = 1;
    eventually(&format!("{pos_count} observed"), 60, || {
        again += 1;
        let sale = json!({ "transaction_id": format!("T{again}"), "line": 1, "kind": "sale", "sku": "R1",
                           "quantity": 1, "occurred_at": "2026-11-22T11:31:07-03:00", "till": "04" });
        let app = &app;
        async move {
            if metric(app, pos_count) >= 1.0 {
                return Some(());
            }
            if again % 20 == 0 {
                let body = format!("{sale}\n");
                http_post(app.local_addr, "/connectors/pos/store-001/sales", "application/x-ndjson", body).await;
            }
            None
        }
    })
    .await;
    // The same for the WMS's files and Shopify's orders: another one, until one is timed.
    for source in ["wms", "shopify"] {
        let count = format!("onhand_query_propagation_seconds_count{{source=\"{source}\"}}");
        let mut round: u64 = 0;
        eventually(&format!("{count} observed"), 60, || {
            round += 1;
            let (app, count, inbox) = (&app, &count, inbox.path());
            async move {
                if metric(app, count) >= 1.0 {
                    return Some(());
                }
                if round % 20 == 0 && source == "wms" {
                    let line = format!("7891000100400,dc-sp,receipt,1,2026-11-20T09:10:00-03:00,ASN-AGAIN-{round}");
                    let text = format!("sku,location,kind,quantity,occurred_at,reference\n{line}\n");
                    drop_file(inbox, &format!("asn-again-{round}.csv"), &text);
                } else if round % 20 == 0 {
                    let mut order: Value = serde_json::from_str(ORDERS_CREATE).unwrap();
                    order["id"] = json!(900_000_000_000_000_000u64 + round);
                    deliver(app.local_addr, "orders/create", &format!("e-order-{round}"), &order.to_string(), SECRET)
                        .await;
                }
                None
            }
        })
        .await;
    }
    assert_eq!(metric(&app, "onhand_query_propagation_seconds_count{source=\"erp\"}"), 0.0);

    let heard = |s: &Value| s["healthy"] == true && s["last_movement_at"].is_string();
    for name in ["pos:store-001", "wms", "shopify"] {
        let source = source_where(&app, name, "healthy with its last movement", heard).await;
        let age = source["last_movement_age_seconds"].as_i64().expect("an age with the last movement");
        assert!((0..120).contains(&age), "{source}");
        assert!(source["last_error"].is_null(), "{source}");
    }
    // The sink produces no movements: only its health.
    let sink = source_where(&app, "shopify-sink", "healthy", |s| s["healthy"] == true).await;
    assert!(sink["last_movement_at"].is_null(), "{sink}");

    // A bad file: the WMS is unhealthy and says why; the next good file heals it, and the
    // error stays as the last one met.
    drop_file(inbox.path(), "bad.csv", "sku,location,kind,quantity,occurred_at,reference\nX,dc-sp,receipt,0,never,R\n");
    // Its health and its last error are two writes: wait for both.
    let failing =
        source_where(&app, "wms", "unhealthy with its error", |s| s["healthy"] == false && s["last_error"].is_string())
            .await;
    assert!(failing["detail"].as_str().unwrap_or_default().contains("bad.csv"), "{failing}");
    assert!(failing["last_error"].as_str().unwrap_or_default().contains("bad.csv"), "{failing}");
    assert!(failing["last_error_at"].is_string(), "{failing}");
    drop_file(
        inbox.path(),
        "asn-2.csv",
        "sku,location,kind,quantity,occurred_at,reference\n7891000100400,dc-sp,receipt,5,2026-11-20T09:10:00-03:00,ASN-2\n",
    );
    let healed = source_where(&app, "wms", "healthy again", |s| s["healthy"] == true).await;
    assert!(healed["last_error"].as_str().unwrap_or_default().contains("bad.csv"), "{healed}");

    // A silent store is visible by its age: its gauge is exported from what was heard.
    let gauge = "onhand_source_last_movement_age_seconds{source=\"pos:store-001\"}";
    eventually(&format!("{gauge} exported"), 30, || async {
        app.metrics.render().lines().any(|l| l.starts_with(gauge)).then_some(())
    })
    .await;
    app.stop().await.unwrap();
}

/// The sum over partitions of a metric with a `partition` label, from a registry.
fn over_partitions(metrics: &Metrics, name: &str) -> f64 {
    metrics
        .render()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{partition=")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledgers_lag_rises_while_movements_wait_and_falls_to_zero_once_applied() {
    onhand_core::skip_without_servers!();
    let config = test_config(3).await;
    onhand_core::kafka::ensure_topics(&config.kafka).await.unwrap();
    let database = db::open(&config.database.url, 4).await.unwrap();
    // Six movements wait on the topic before any ledger runs; two of them are the same
    // ERP movement delivered twice.
    let erp = |id: &str| {
        let mut m = movement(id, "SKU-L", "dc", MovementKind::Receipt, 1, chrono::Utc::now());
        m.source.system = SourceSystem::Erp;
        m.source.instance = "erp-main".into();
        ("SKU-L".to_string(), m.to_json())
    };
    let mut records: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            let m =
                movement(&format!("api-{i}"), &format!("SKU-{i}"), "dc", MovementKind::Receipt, 1, chrono::Utc::now());
            (m.sku.to_string(), m.to_json())
        })
        .collect();
    records.extend([erp("erp-1"), erp("erp-1")]);
    produce(&producer(), &config.kafka.topics.movements, &records).await;

    let metrics = Metrics::new();
    let watch = LagWatch {
        kafka: config.kafka.clone(),
        group_id: config.ledger.group_id.clone(),
        ledger: database.clone(),
        signals: database.clone(),
        metrics: metrics.clone(),
    };
    let probe = Arc::new(watch.probe().unwrap());
    let lags = watch.measure(probe.clone()).await.unwrap();
    assert_eq!(lags.len(), 3, "one per partition");
    assert_eq!(lags.iter().map(|l| l.behind_movements).sum::<i64>(), 6);
    // The oldest record is read within a wait that a loaded machine can overrun (the lag
    // in seconds then counts from when the partition was first seen behind); read again.
    eventually("the oldest waiting record of each partition read", 30, || async {
        let lags = watch.measure(probe.clone()).await.ok()?;
        lags.iter().filter(|l| l.behind_movements > 0).all(|l| l.oldest_at.is_some()).then_some(())
    })
    .await;
    // The task exports it, in movements and in seconds once a second has passed.
    let stop = CancellationToken::new();
    let task = tokio::spawn(watch.clone().run(stop.clone()));
    eventually("the lag exported", 30, || async {
        let movements = over_partitions(&metrics, "onhand_ledger_behind_movements");
        let seconds = over_partitions(&metrics, "onhand_ledger_behind_seconds");
        (movements == 6.0 && seconds > 0.0).then_some(())
    })
    .await;

    // The ledger starts and applies them: the lag is zero, in the service's own gauges too.
    let app = serve(&config).await;
    until_recorded(&app, 5, 60).await;
    eventually("the lag back to zero", 60, || async {
        let zero = |m: &Metrics| {
            let exported = m.render().contains("onhand_ledger_behind_movements{partition=\"0\"}");
            exported
                && over_partitions(m, "onhand_ledger_behind_movements") == 0.0
                && over_partitions(m, "onhand_ledger_behind_seconds") == 0.0
        };
        (zero(&metrics) && zero(&app.metrics)).then_some(())
    })
    .await;
    stop.cancel();
    task.await.unwrap();

    // The duplicate is counted against its source, and only there.
    assert_eq!(metric(&app, "onhand_ledger_duplicates_total{source=\"erp\"}"), 1.0);
    assert_eq!(metric(&app, "onhand_ledger_duplicates_total{source=\"api\"}"), 0.0);
    // Every source the ledger heard is listed with its last movement, a connector or not.
    let listed = eventually("erp and api in /v1/sources", 30, || async {
        let all = sources(&app).await;
        let named = |name: &str| all.iter().find(|s| s["source"] == name && s["last_movement_at"].is_string()).cloned();
        Some((named("erp")?, named("api")?))
    })
    .await;
    assert!(listed.0["last_movement_age_seconds"].as_i64().is_some_and(|age| age < 120), "{listed:?}");
    assert_eq!(metric(&app, "onhand_ledger_negative_levels"), 0.0);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn levels_below_zero_and_over_reserved_are_gauged() {
    onhand_core::skip_without_servers!();
    let config = test_config(1).await;
    let app = serve(&config).await;
    let sold = movement("sold", "SKU-N", "s1", MovementKind::Sale, 2, chrono::Utc::now());
    produce(&producer(), &config.kafka.topics.movements, &[("SKU-N".to_string(), sold.to_json())]).await;
    eventually("a negative level gauged", 30, || async {
        (metric(&app, "onhand_ledger_negative_levels") == 1.0).then_some(())
    })
    .await;
    assert_eq!(metric(&app, "onhand_ledger_overreserved_levels"), 0.0);
    app.stop().await.unwrap();
}
