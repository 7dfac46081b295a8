//! The edge of `onhand serve`, as a client meets it: API keys and their scopes, the rate
//! limit of each key, and the body limit of every route.

mod common;

use std::net::SocketAddr;

use common::*;
use onhand_core::{auth::Token, db::Db};
use serde_json::{json, Value};

/// A new key of the app's store.
async fn key(db: &dyn Db, scopes: &str) -> String {
    onhand::keys::create(db, "test", scopes, None).await.expect("a key is created").plaintext
}

/// A new key bound to a source (`store:store-012`, `erp:erp-main`).
async fn bound_key(db: &dyn Db, scopes: &str, bound_to: &str) -> String {
    onhand::keys::create(db, "bound", scopes, Some(bound_to)).await.expect("a key is created").plaintext
}

fn movement(event_id: &str, system: &str, instance: &str, location: &str) -> Value {
    json!({
        "event_id": event_id, "source": { "system": system, "instance": instance, "ref": "r" },
        "sku": "SKU-S", "location": location, "kind": "sale", "quantity": 1, "occurred_at": "2026-11-20T10:00:00Z"
    })
}

/// H5: a writer speaks only for its source. A key bound to a store writes that store's
/// movements under its own ids; no key but an admin's claims the ids of onhand's
/// connectors and reservations; every refusal says why, with a stable code.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_writes_only_what_its_source_may_say() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(1).await;
    config.connectors.insert("pos".into(), json!({}));
    let app = serve(&config).await;
    let addr = app.local_addr;
    let store_12 = bound_key(&*app.db, "movements:write", "store:store-012").await;
    let erp = bound_key(&*app.db, "movements:write", "erp:erp-main").await;
    let unbound = key(&*app.db, "movements:write").await;
    let post = |key: String, body: Value| async move {
        http_post_as(addr, "/v1/movements", "application/json", body.to_string(), Some(&key)).await
    };
    let cases = [
        (store_12.clone(), movement("pos:store-012:T1:1", "pos", "store-012", "store-012"), 202, None),
        (
            store_12.clone(),
            movement("pos:store-013:T1:1", "pos", "store-013", "store-013"),
            403,
            Some("source_not_allowed"),
        ),
        (
            store_12.clone(),
            movement("pos:store-012:T2:1", "pos", "store-012", "store-013"),
            403,
            Some("location_not_allowed"),
        ),
        (store_12.clone(), movement("mine-1", "pos", "store-012", "store-012"), 403, Some("event_id_not_allowed")),
        (unbound.clone(), movement("erp:journal:981234", "erp", "erp-main", "dc"), 403, Some("event_id_not_allowed")),
        (unbound.clone(), movement("reservation:r1:1:sale", "api", "x", "dc"), 403, Some("event_id_not_allowed")),
        (unbound.clone(), movement("api-import-1", "api", "importer", "dc"), 202, None),
        (erp.clone(), movement("erp:erp-main:981234", "erp", "erp-main", "dc"), 202, None),
        (erp.clone(), movement("erp:erp-main:981235", "wms", "erp-main", "dc"), 403, Some("source_not_allowed")),
        (TEST_API_KEY.to_string(), movement("erp:journal:1", "erp", "erp-main", "dc"), 202, None),
    ];
    for (key, body, status, code) in cases {
        let id = body["event_id"].clone();
        let (got, answer) = post(key, body).await;
        assert_eq!(got, status, "{id}: {answer}");
        if let Some(code) = code {
            assert_eq!(answer["error"]["code"], code, "{id}: {answer}");
        }
    }
    // The store's POS routes: its own store only; an agent's progress needs the store's key.
    let sale = r#"{"transaction_id":"T9","line":1,"kind":"sale","sku":"SKU-S","quantity":1,"occurred_at":"2026-11-20T10:00:00Z"}"#;
    let (status, answer) =
        http_post_as(addr, "/connectors/pos/store-013/sales", "application/x-ndjson", sale, Some(&store_12)).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (403, Some("location_not_allowed")), "{answer}");
    let (status, _) =
        http_post_as(addr, "/connectors/pos/store-012/sales", "application/x-ndjson", sale, Some(&store_12)).await;
    assert_eq!(status, 202);
    let beat = json!({ "epoch": "e-new", "head_seq": 10 }).to_string();
    for (key, status) in [(&unbound, 403), (&store_12, 204)] {
        let (got, answer) =
            http_post_as(addr, "/connectors/pos/store-012/heartbeat", "application/json", beat.clone(), Some(key))
                .await;
        assert_eq!(got, status, "{answer}");
    }
    app.stop().await.unwrap();
}

/// H1: a flood of invented keys is limited per client address before it costs reads, and
/// the ledger, on a pool of its own, applies movements all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_invented_keys_is_limited_and_does_not_stop_the_ledger() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(1).await;
    config.database.connections_max = 2;
    // A slow refill, so that a loaded machine spreading the flood over seconds lets few
    // more through: at most 10 at once and one a second.
    config.http.unverified_per_address_per_s = 1;
    config.http.unverified_per_address_burst = 10;
    let app = serve(&config).await;
    let addr = app.local_addr;
    assert_eq!(http_get(addr, "/v1/stock/SKU-F").await.0, 404, "the known key, cached before the flood");
    let flood = futures::future::join_all((0..300).map(|_| {
        let key = Token::generate().reveal();
        async move { http_get_as(addr, "/v1/stock/SKU-1", Some(&key)).await.0 }
    }));
    let record = movement_json("flood-1", "SKU-F", "dc", onhand_core::event::MovementKind::Receipt, 4, 0);
    let (test_producer, records) = (producer(), [record]);
    let (statuses, ()) = tokio::join!(flood, produce(&test_producer, &config.kafka.topics.movements, &records));
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(limited >= 240, "most invented keys are refused before a read: {limited} of 300 limited");
    until_recorded(&app, 1, 30).await;
    assert_eq!(http_get(addr, "/v1/stock/SKU-F").await.0, 200, "a cached key is not held back by the flood");
    app.stop().await.unwrap();
}

/// M7: a query of many unknown SKUs reads them at once, remembers them as missing for a
/// moment, and costs one request of the key's limit per SKU.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_of_many_skus_costs_one_request_per_sku() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(1).await;
    config.http.rate_limit_per_s = 1;
    config.http.rate_limit_burst = 600;
    // One read of 500 SKUs on a loaded machine may take longer than the default budget.
    config.query.database_budget_ms = 10_000;
    let app = serve(&config).await;
    let addr = app.local_addr;
    let skus: Vec<String> = (0..500).map(|i| format!("NOPE-{i}")).collect();
    let query = json!({ "skus": skus }).to_string();
    let (status, answer) = http_post(addr, "/v1/stock/query", "application/json", query.clone()).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 500);
    assert!(results.iter().all(|r| r["error"]["code"] == "sku_not_found"));
    assert_eq!(metric(&app, "onhand_query_reads_total{source=\"database\"}"), 500.0);
    let (status, answer) = http_post(addr, "/v1/stock/query", "application/json", query).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (429, Some("rate_limited")), "500 + 500 > 600");
    app.stop().await.unwrap();
}

/// The status, one header and the body of a request.
async fn send(request: reqwest::RequestBuilder, header: &str) -> (u16, Option<String>, Value) {
    let response = request.send().await.expect("the api answers");
    let status = response.status().as_u16();
    let header = response.headers().get(header).map(|v| v.to_str().unwrap().to_string());
    (status, header, response.json().await.unwrap_or(Value::Null))
}

fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> reqwest::RequestBuilder {
    authorized(reqwest::Client::new().get(format!("http://{addr}{path}")), key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_needs_a_valid_key_with_the_scope_of_its_route() {
    onhand_core::skip_without_servers!();
    let config = test_config(1).await;
    let app = serve(&config).await;
    let addr = app.local_addr;

    let (status, challenge, body) = send(get(addr, "/v1/stock/SKU-1", None), "www-authenticate").await;
    assert_eq!(
        (status, body["error"]["code"].as_str(), challenge.as_deref()),
        (401, Some("missing_api_key"), Some("Bearer"))
    );
    let stranger = Token::generate().reveal();
    for wrong in [stranger.as_str(), "not-a-key", &TEST_API_KEY.replace("0123", "3210")] {
        let (status, challenge, body) = send(get(addr, "/v1/stock/SKU-1", Some(wrong)), "www-authenticate").await;
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_api_key")), "{wrong}");
        assert_eq!(challenge.as_deref(), Some(r#"Bearer error="invalid_token""#));
    }

    let reader = key(&*app.db, "stock:read").await;
    assert_eq!(http_get_as(addr, "/v1/stock/SKU-1", Some(&reader)).await.1["error"]["code"], "sku_not_found");
    let (status, body) = http_post_as(addr, "/v1/movements", "application/json", "[]", Some(&reader)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("insufficient_scope")));
    assert_eq!(body["error"]["message"], "this route needs an api key with the scope movements:write");
    let put = authorized(reqwest::Client::new().put(format!("http://{addr}/v1/products/01")), Some(&reader));
    let (status, challenge, body) = send(put.body(r#"{"name": "Arroz"}"#), "www-authenticate").await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("insufficient_scope")));
    assert_eq!(challenge.as_deref(), Some(r#"Bearer error="insufficient_scope", scope="admin""#));

    let writer = key(&*app.db, "movements:write").await;
    assert_eq!(http_get_as(addr, "/v1/stock/SKU-1", Some(&writer)).await.0, 403);
    let (status, body) = http_post_as(addr, "/v1/movements", "application/json", "[]", Some(&writer)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("no_movements")), "past the key: {body}");

    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(reqwest::get(format!("http://{addr}{open}")).await.unwrap().status(), 200, "{open} needs no key");
    }
    assert_eq!(metric(&app, "onhand_api_requests_refused_total{reason=\"invalid_api_key\"}"), 3.0);
    assert_eq!(metric(&app, "onhand_api_requests_refused_total{reason=\"insufficient_scope\"}"), 3.0);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_key_is_refused_once_its_cached_copy_expires() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(1).await;
    config.http.api_key_cache_ttl_s = 1;
    let app = serve(&config).await;
    let addr = app.local_addr;
    let reader = key(&*app.db, "stock:read").await;
    assert_eq!(http_get_as(addr, "/v1/stock/SKU-1", Some(&reader)).await.0, 404);

    let id = Token::parse(&reader).unwrap().id().to_string();
    onhand::keys::revoke(&*app.db, &id).await.unwrap();
    eventually("the revoked key refused", 10, || async {
        let (status, body) = http_get_as(addr, "/v1/stock/SKU-1", Some(&reader)).await;
        (status == 401).then_some(body)
    })
    .await;
    let (status, body) = http_get_as(addr, "/v1/stock/SKU-1", Some(&reader)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_api_key")), "and it stays refused");
    assert_eq!(http_get(addr, "/v1/stock/SKU-1").await.0, 404, "other keys work on");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_key_is_rate_limited_on_its_own() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(1).await;
    config.http.rate_limit_per_s = 1;
    config.http.rate_limit_burst = 3;
    let app = serve(&config).await;
    let addr = app.local_addr;
    // The bucket holds 3 and refills one a second: at most a fourth request passes, had
    // the first three taken over a second.
    let mut passed = 0;
    let (status, retry_after, body) = loop {
        let answer = send(get(addr, "/v1/stock/SKU-1", Some(TEST_API_KEY)), "retry-after").await;
        if answer.0 != 404 || passed == 10 {
            break answer;
        }
        passed += 1;
    };
    assert!((3..=4).contains(&passed), "{passed} requests passed");
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limited")), "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"), "one request a second: the next one is due within a second");

    let other = key(&*app.db, "stock:read").await;
    assert_eq!(http_get_as(addr, "/v1/stock/SKU-1", Some(&other)).await.0, 404, "another key has its own bucket");
    assert_eq!(
        reqwest::get(format!("http://{addr}/healthz")).await.unwrap().status(),
        200,
        "open routes are not limited"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(http_get(addr, "/v1/stock/SKU-1").await.0, 404, "after Retry-After, the key works again");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_body_gets_body_too_large_on_every_route() {
    onhand_core::skip_without_servers!();
    let config = test_config(1).await;
    let app = serve(&config).await;
    let addr = app.local_addr;
    let client = reqwest::Client::new();
    let big = json!({ "name": "x".repeat(70 * 1024) }).to_string();
    let requests = [
        client.put(format!("http://{addr}/v1/products/01")),
        client.put(format!("http://{addr}/v1/stock/SKU-1/s1/policy")),
        client.post(format!("http://{addr}/v1/stock/query")),
    ];
    for request in requests {
        let (status, _, body) = send(authorized(request, Some(TEST_API_KEY)).body(big.clone()), "content-type").await;
        assert_eq!((status, body["error"]["code"].as_str()), (413, Some("body_too_large")), "{body}");
        assert_eq!(body["error"]["message"], "the request body is larger than 65536 bytes");
    }
    app.stop().await.unwrap();
}
