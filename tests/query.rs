//! The stock read path of `onhand serve`: availability with reserved units and safety
//! stock, channels, the cache kept fresh by the stock topic, and stale answers while the
//! database is down.

mod common;

use std::net::SocketAddr;

use common::*;
use onhand_core::config::ChannelConfig;
use serde_json::{json, Value};

fn receipt(id: &str, sku: &str, location: &str, quantity: i64) -> Value {
    json!({
        "event_id": id,
        "source": { "system": "api", "instance": "test", "ref": id },
        "sku": sku, "location": location, "kind": "receipt", "quantity": quantity,
        "occurred_at": "2026-11-20T10:00:00Z"
    })
}

async fn post(addr: SocketAddr, movements: Value) {
    let (status, answer) = http_post(addr, "/v1/movements", "application/json", movements.to_string()).await;
    assert_eq!(status, 202, "{answer}");
}

/// Waits until the SKU's total on_hand is `on_hand`, and returns the answer.
async fn stock_once(addr: SocketAddr, sku: &str, on_hand: i64) -> Value {
    eventually(&format!("{sku} at {on_hand}"), 60, || async {
        let (status, body) = http_get(addr, &format!("/v1/stock/{sku}")).await;
        (status == 200 && body["on_hand"] == on_hand).then_some(body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_show_what_each_channel_may_sell() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(3).await;
    config.channels.insert(
        "ecommerce".into(),
        ChannelConfig { all_locations: false, locations: vec!["dc".into()], ..ChannelConfig::default() },
    );
    let app = serve(&config).await;
    let addr = app.local_addr;
    post(addr, json!([receipt("q-1", "SKU-Q", "store-1", 10), receipt("q-2", "SKU-Q", "dc", 4)])).await;
    stock_once(addr, "SKU-Q", 14).await;

    let policy = json!({ "safety_stock": 3, "reorder_point": 5 }).to_string();
    let response = reqwest::Client::new()
        .put(format!("http://{addr}/v1/stock/SKU-Q/store-1/policy"))
        .bearer_auth(TEST_API_KEY)
        .body(policy)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let level: Value = response.json().await.unwrap();
    assert_eq!((level["safety_stock"].as_i64(), level["available"].as_i64()), (Some(3), Some(7)));

    let (status, stock) = http_get(addr, "/v1/stock/SKU-Q").await;
    assert_eq!(status, 200);
    assert_eq!((stock["on_hand"].as_i64(), stock["available"].as_i64()), (Some(14), Some(11)), "{stock}");
    assert_eq!(stock["stale"], false);
    assert!(stock["as_of"].is_string());
    let (_, one) = http_get(addr, "/v1/stock/SKU-Q/store-1").await;
    assert_eq!(
        (one["on_hand"].as_i64(), one["reorder_point"].as_i64(), one["stale"].as_bool()),
        (Some(10), Some(5), Some(false))
    );

    let (_, web) = http_get(addr, "/v1/availability/SKU-Q?channel=ecommerce").await;
    assert_eq!(web["available"], 4, "only the DC serves ecommerce: {web}");
    let (_, all) = http_get(addr, "/v1/availability/SKU-Q?channel=all").await;
    assert_eq!(all["available"], 11);

    let errors = [
        ("/v1/availability/SKU-Q?channel=fax", 404, "unknown_channel"),
        ("/v1/availability/SKU-Q", 400, "missing_channel"),
        ("/v1/stock/SKU-Q/nowhere", 404, "location_not_found"),
        ("/v1/stock/SKU-Q/no%20where", 400, "invalid_location"),
        ("/v1/stock/UNKNOWN", 404, "sku_not_found"),
    ];
    for (path, status, code) in errors {
        let (actual, body) = http_get(addr, path).await;
        assert_eq!((actual, body["error"]["code"].as_str()), (status, Some(code)), "{path}: {body}");
    }
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_query_answers_each_sku() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(3).await;
    config.query.query_skus_max = 4;
    let app = serve(&config).await;
    let addr = app.local_addr;
    post(
        addr,
        json!([
            receipt("b-1", "SKU-B1", "s1", 1),
            receipt("b-2", "SKU-B2", "s1", 2),
            receipt("b-3", "SKU-B2", "s2", 3)
        ]),
    )
    .await;
    stock_once(addr, "SKU-B2", 5).await;
    stock_once(addr, "SKU-B1", 1).await;

    let query = json!({ "skus": ["SKU-B1", "SKU-B2", "SKU-NONE", "bad sku"], "locations": ["s2"] });
    let (status, body) = http_post(addr, "/v1/stock/query", "application/json", query.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["stock"]["locations"], json!([]), "SKU-B1 has no stock at s2");
    assert_eq!(results[1]["stock"]["on_hand"], 3);
    assert_eq!(results[2]["error"]["code"], "sku_not_found");
    assert_eq!(results[3]["error"]["code"], "invalid_sku");

    let too_many = json!({ "skus": ["a", "b", "c", "d", "e"] });
    let (status, body) = http_post(addr, "/v1/stock/query", "application/json", too_many.to_string()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("too_many_skus")));
    let (status, body) = http_post(addr, "/v1/stock/query", "application/json", "{\"sku\": 1}").await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("invalid_request")));
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cache_follows_the_stock_topic_without_waiting_for_its_ttl() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(3).await;
    config.query.cache_ttl_s = 3_600;
    let app = serve(&config).await;
    let addr = app.local_addr;
    post(addr, json!([receipt("c-1", "SKU-C", "s1", 5)])).await;
    stock_once(addr, "SKU-C", 5).await;
    let database_reads = metric(&app, "onhand_query_reads_total{source=\"database\"}");

    post(addr, json!([receipt("c-2", "SKU-C", "s1", 2)])).await;
    stock_once(addr, "SKU-C", 7).await;
    assert_eq!(
        metric(&app, "onhand_query_reads_total{source=\"database\"}"),
        database_reads,
        "the new level came from the stock topic, not from a database read"
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_database_down_reads_are_stale_then_fresh_again() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(3).await;
    // Every read goes to the database, so that an outage shows at once.
    config.query.cache_ttl_s = 0;
    let upstream: SocketAddr =
        config.database.url.split('@').nth(1).unwrap().split('/').next().unwrap().parse().unwrap();
    let proxy = Proxy::start(upstream).await;
    config.database.url = config.database.url.replace(&upstream.to_string(), &proxy.addr.to_string());
    let app = serve(&config).await;
    let addr = app.local_addr;
    // A replica without the ledger, as an API role runs.
    let mut replica_config = config.clone();
    replica_config.ledger.enabled = false;
    let replica = serve(&replica_config).await;
    post(addr, json!([receipt("d-1", "SKU-D", "s1", 9)])).await;
    stock_once(addr, "SKU-D", 9).await;
    stock_once(replica.local_addr, "SKU-D", 9).await;

    proxy.cut();
    let stale = eventually("a stale answer", 30, || async {
        let (status, body) = http_get(addr, "/v1/stock/SKU-D").await;
        (status == 200 && body["stale"] == true).then_some(body)
    })
    .await;
    assert_eq!(stale["on_hand"], 9, "the last known level: {stale}");
    // The ledger's process is not ready without its database; the API replica is, degraded,
    // so that a load balancer keeps sending it the reads it answers stale.
    let ready = |addr| async move { http_get(addr, "/readyz").await };
    let (status, body) = eventually("the ledger's process unready", 30, || async {
        let answer = ready(addr).await;
        (answer.0 == 503).then_some(answer)
    })
    .await;
    assert_eq!((status, &body["components"]["database"]["critical"]), (503, &json!(true)), "{body}");
    let (status, body) = eventually("the replica degraded", 30, || async {
        let answer = ready(replica.local_addr).await;
        (answer.1["status"] == "degraded").then_some(answer)
    })
    .await;
    assert_eq!((status, &body["components"]["database"]["critical"]), (200, &json!(false)), "{body}");
    let (status, body) = http_get(replica.local_addr, "/v1/stock/SKU-D").await;
    assert_eq!((status, &body["stale"], &body["on_hand"]), (200, &json!(true), &json!(9)), "{body}");
    let (status, never_seen) = http_get(addr, "/v1/stock/SKU-NEVER").await;
    assert_eq!((status, never_seen["error"]["code"].as_str()), (503, Some("stock_unavailable")));

    proxy.restore();
    let fresh = eventually("a fresh answer", 60, || async {
        let (status, body) = http_get(addr, "/v1/stock/SKU-D").await;
        (status == 200 && body["stale"] == false).then_some(body)
    })
    .await;
    assert_eq!(fresh["on_hand"], 9);
    replica.stop().await.unwrap();
    app.stop().await.unwrap();
}
