//! The HTTP API of `onhand serve` against the real broker and PostgreSQL: what a client
//! sees for good and bad input.

mod common;

use common::*;
use serde_json::{json, Value};

fn item(id: &str, sku: &str, kind: &str, quantity: i64) -> Value {
    json!({
        "event_id": id,
        "source": { "system": "api", "instance": "test", "ref": id },
        "sku": sku,
        "location": "store-7",
        "kind": kind,
        "quantity": quantity,
        "occurred_at": "2026-11-20T10:00:00Z"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posted_movements_are_acknowledged_then_applied_and_readable() {
    onhand_core::skip_without_servers!();
    let config = test_config(3).await;
    let app = serve(&config).await;
    let body = json!([item("api-1", "SKU-H", "receipt", 12), item("api-2", "SKU-H", "sale", 5)]);
    let (status, answer) = http_post(app.local_addr, "/v1/movements", "application/json", body.to_string()).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 2);
    assert_eq!(answer["results"][1], json!({ "index": 1, "status": "accepted", "event_id": "api-2" }));

    let stock = eventually("the level over http", 60, || async {
        let (status, body) = http_get(app.local_addr, "/v1/stock/SKU-H").await;
        (status == 200 && body["on_hand"] == 7).then_some(body)
    })
    .await;
    assert_eq!(stock["sku"], "SKU-H");
    assert_eq!(stock["locations"][0]["location"], "store-7");
    assert_eq!(stock["locations"][0]["on_hand"], 7);
    assert!(stock["locations"][0]["version"].as_i64().unwrap() >= 1);
    assert!(stock["locations"][0]["updated_at"].is_string());
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ndjson_items_are_judged_one_by_one() {
    onhand_core::skip_without_servers!();
    let config = test_config(1).await;
    let app = serve(&config).await;
    let body = [
        item("nd-1", "SKU-N", "receipt", 4).to_string(),
        "{not json".to_string(),
        item("nd-3", "SKU-N", "sale", 0).to_string(),
        item("nd-4", "SKU N", "sale", 1).to_string(),
    ]
    .join("\n");
    let (status, answer) = http_post(app.local_addr, "/v1/movements", "application/x-ndjson", body).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!((answer["accepted"].as_i64(), answer["rejected"].as_i64()), (Some(1), Some(3)));
    let codes: Vec<&str> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["error"]["code"].as_str().unwrap_or(r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(codes, ["accepted", "not_json", "invalid_quantity", "invalid_sku"]);
    // The valid item was accepted all the same.
    eventually("the accepted item applied", 60, || async {
        (levels(&app, "SKU-N").await.get("store-7") == Some(&4)).then_some(())
    })
    .await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_a_status_and_a_stable_code() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(1).await;
    config.http.movements_per_request_max = 3;
    config.http.body_bytes_max = 4_096;
    let app = serve(&config).await;
    let addr = app.local_addr;
    let four = json!([
        item("a", "S", "receipt", 1),
        item("b", "S", "receipt", 1),
        item("c", "S", "receipt", 1),
        item("d", "S", "receipt", 1)
    ]);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("application/json", "[{\"event_id\":".into(), 400, "invalid_body"),
        ("application/json", "   ".into(), 422, "no_movements"),
        ("application/json", four.to_string(), 413, "too_many_movements"),
        ("application/json", format!("[{}]", "1,".repeat(3_000) + "1"), 413, "body_too_large"),
        ("application/xml", "<movement/>".into(), 415, "unsupported_media_type"),
    ];
    for (content_type, body, status, code) in cases {
        let (actual, answer) = http_post(addr, "/v1/movements", content_type, body).await;
        assert_eq!((actual, answer["error"]["code"].as_str()), (status, Some(code)), "{answer}");
        assert!(answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(
        http_get(addr, "/v1/stock/NOPE").await,
        (404, json!({"error": {"code": "sku_not_found", "message": "no stock is recorded for sku \"NOPE\""}}))
    );
    assert_eq!(http_get(addr, "/v1/stock/a@b").await.1["error"]["code"], "invalid_sku");
    assert_eq!(http_get(addr, "/v2/nothing").await.1["error"]["code"], "not_found");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_readiness_and_metrics_answer() {
    onhand_core::skip_without_servers!();
    let config = test_config(1).await;
    let app = serve(&config).await;
    assert_eq!(http_get(app.local_addr, "/healthz").await.0, 200);
    // Each component reports its state; the database's is refreshed in the background.
    let ready = eventually("every component running", 30, || async {
        let (status, ready) = http_get(app.local_addr, "/readyz").await;
        (status == 200 && ready["status"] == "ok").then_some(ready)
    })
    .await;
    for (component, state) in [
        ("database", "running"),
        ("ledger", "running"),
        ("relay", "running"),
        ("reservation_expiry", "running"),
        ("source_watch", "running"),
        ("ledger_lag", "running"),
        ("cache_follower", "running"),
        ("cache_preload", "done"),
    ] {
        assert_eq!(ready["components"][component]["state"], state, "{component}: {ready}");
    }
    assert_eq!(ready["components"]["ledger"]["critical"], true);
    let text = reqwest::get(format!("http://{}/metrics", app.local_addr)).await.unwrap().text().await.unwrap();
    // Lag comes from librdkafka's statistics, every 5 seconds, for every owned partition.
    eventually("consumer lag per partition", 30, || async {
        let text = reqwest::get(format!("http://{}/metrics", app.local_addr)).await.ok()?.text().await.ok()?;
        text.contains("onhand_ledger_consumer_lag_messages{partition=\"0\"} 0").then_some(())
    })
    .await;
    for name in [
        "onhand_ledger_movements_applied_total",
        "onhand_ledger_duplicates_skipped_total",
        "onhand_ledger_conflicts_retried_total",
        "onhand_ledger_batch_size_movements_bucket",
        "onhand_ledger_apply_duration_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    // The API describes itself, to anyone, as the committed docs/openapi.json does.
    let (status, document) = http_get_as(app.local_addr, "/openapi.json", None).await;
    assert_eq!((status, document["openapi"].as_str()), (200, Some("3.1.0")));
    let committed: serde_json::Value =
        serde_json::from_str(include_str!("../docs/openapi.json")).expect("docs/openapi.json is JSON");
    assert_eq!(document, committed);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn products_are_created_replaced_and_read() {
    onhand_core::skip_without_servers!();
    let config = test_config(1).await;
    let app = serve(&config).await;
    let client = reqwest::Client::new();
    let put = |body: Value| {
        let client = client.clone();
        async move {
            let response = client
                .put(format!("http://{}/v1/products/01", app.local_addr))
                .bearer_auth(TEST_API_KEY)
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let arroz = json!({ "name": "Arroz", "category": "grocery", "attributes": { "brand": "Tio João" } });
    let (status, created) = put(arroz.clone()).await;
    assert_eq!((status, created["name"].as_str()), (201, Some("Arroz")));
    let (status, _) = put(json!({ "name": "Arroz 5 kg", "category": "grocery" })).await;
    assert_eq!(status, 200);
    let (status, read) = http_get(app.local_addr, "/v1/products/01").await;
    assert_eq!((status, read["name"].as_str(), read["attributes"].clone()), (200, Some("Arroz 5 kg"), json!({})));
    let (status, bad) = put(json!({ "name": "" })).await;
    assert_eq!((status, bad["error"]["code"].as_str()), (422, Some("invalid_product")));
    let (status, bad) = put(json!({ "name": "x", "price": 3 })).await;
    assert_eq!((status, bad["error"]["code"].as_str()), (422, Some("invalid_product")));
    assert_eq!(http_get(app.local_addr, "/v1/products/02").await.1["error"]["code"], "product_not_found");
    app.stop().await.unwrap();
}
