//! The edge of `onhand serve`, as a client meets it: API keys and their scopes, the rate
//! limit of each key, and the body limit of every route.

mod common;

use std::net::SocketAddr;

use common::*;
use onhand_core::{auth::Token, store::Store};
use serde_json::{json, Value};

/// A new key of the app's store.
async fn key(store: &dyn Store, scopes: &str) -> String {
    onhand::keys::create(store, "test", scopes).await.expect("a key is created").plaintext
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

    let reader = key(&*app.store, "stock:read").await;
    assert_eq!(http_get_as(addr, "/v1/stock/SKU-1", Some(&reader)).await.1["error"]["code"], "sku_not_found");
    let (status, body) = http_post_as(addr, "/v1/movements", "application/json", "[]", Some(&reader)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("insufficient_scope")));
    assert_eq!(body["error"]["message"], "this route needs an api key with the scope movements:write");
    let put = authorized(reqwest::Client::new().put(format!("http://{addr}/v1/products/01")), Some(&reader));
    let (status, challenge, body) = send(put.body(r#"{"name": "Arroz"}"#), "www-authenticate").await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("insufficient_scope")));
    assert_eq!(challenge.as_deref(), Some(r#"Bearer error="insufficient_scope", scope="admin""#));

    let writer = key(&*app.store, "movements:write").await;
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
    let mut config = test_config(1).await;
    config.http.api_key_cache_ttl_s = 1;
    let app = serve(&config).await;
    let addr = app.local_addr;
    let reader = key(&*app.store, "stock:read").await;
    assert_eq!(http_get_as(addr, "/v1/stock/SKU-1", Some(&reader)).await.0, 404);

    let id = Token::parse(&reader).unwrap().id().to_string();
    onhand::keys::revoke(&*app.store, &id).await.unwrap();
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

    let other = key(&*app.store, "stock:read").await;
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
