//! History and audit over HTTP on `onhand serve`: `GET /v1/movements` filtered and paged
//! while movements arrive, and `GET /v1/stock/{sku}/{location}/history` ending at the
//! ledger's level, the count rule and a late delta included; both under `stock:read`.

mod common;

use std::{collections::HashSet, net::SocketAddr};

use common::*;
use onhand_core::{
    config::Config,
    event::{Movement, MovementKind, Source, SourceSystem},
    testing::{at, movement},
};
use serde_json::Value;

/// A movement from `system:instance`, occurred and recorded at `second`.
fn audited(id: &str, sku: &str, location: &str, source: (SourceSystem, &str), second: i64) -> Movement {
    let mut m = movement(id, sku, location, MovementKind::Receipt, 1, at(second));
    m.source = Source { system: source.0, instance: source.1.into(), reference: id.into() };
    m
}

async fn produce_all(config: &Config, movements: &[Movement]) {
    let records: Vec<(String, Vec<u8>)> = movements.iter().map(|m| (m.sku.to_string(), m.to_json())).collect();
    produce(&producer(), &config.kafka.topics.movements, &records).await;
}

fn event_ids(page: &Value) -> Vec<String> {
    page["movements"].as_array().unwrap().iter().map(|m| m["event_id"].as_str().unwrap().to_string()).collect()
}

async fn get_ok(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = http_get(addr, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

async fn refused(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let (status, body) = http_get(addr, path).await;
    (status, body["error"]["code"].as_str().unwrap_or_default().into(), body["error"]["message"].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn movements_are_filtered_and_paged_with_nothing_twice_while_more_arrive() {
    onhand_core::skip_without_servers!();
    let config = test_config(3).await;
    let app = serve(&config).await;
    let addr = app.local_addr;
    let (till, erp) = ((SourceSystem::Pos, "store-1"), (SourceSystem::Erp, "erp-main"));
    let mut first = Vec::new();
    for i in 0..12 {
        let (sku, location) = (["SKU-H1", "SKU-H2"][i % 2], ["store-1", "dc"][i / 6]);
        first.push(audited(&format!("h-{i:02}"), sku, location, if i % 3 == 0 { erp } else { till }, i as i64));
    }
    first[5].actor = Some("clerk-7".into());
    first[5].correlation_id = Some("order-55".into());
    produce_all(&config, &first).await;
    until_recorded(&app, 12, 60).await;

    let all = get_ok(addr, "/v1/movements").await;
    let newest_first: Vec<String> = (0..12).rev().map(|i| format!("h-{i:02}")).collect();
    assert_eq!(event_ids(&all), newest_first);
    assert!(all["next_cursor"].is_null(), "one page holds them all");
    let item = &all["movements"][6];
    assert_eq!(item["event_id"], "h-05");
    assert_eq!(
        (item["kind"].as_str(), item["quantity"].as_i64(), item["delta"].as_i64()),
        (Some("receipt"), Some(1), Some(1))
    );
    assert_eq!((item["effect"].as_str(), item["actor"].as_str()), (Some("applied"), Some("clerk-7")));
    assert_eq!(item["correlation_id"], "order-55");
    assert_eq!(item["source"], serde_json::json!({ "system": "pos", "instance": "store-1", "ref": "h-05" }));
    assert_eq!(item["occurred_at"], "2026-11-20T09:00:05Z");
    assert!(item["applied_at"].is_string() && item["reason"].is_null());

    let ids = |page: Value| event_ids(&page);
    assert_eq!(ids(get_ok(addr, "/v1/movements?sku=SKU-H1&location=dc").await), ["h-10", "h-08", "h-06"]);
    assert_eq!(ids(get_ok(addr, "/v1/movements?location=store-1&source=erp:erp-main").await), ["h-03", "h-00"]);
    assert_eq!(ids(get_ok(addr, "/v1/movements?source=erp:erp-main").await), ["h-09", "h-06", "h-03", "h-00"]);
    let window = "/v1/movements?since=2026-11-20T09:00:02Z&until=2026-11-20T09:00:05Z";
    assert_eq!(ids(get_ok(addr, window).await), ["h-04", "h-03", "h-02"], "since in, until out");

    // Pages of five; after the first, one movement recorded before all of them and one
    // recorded after arrive. The older one is in a later page; the newer one is above
    // the first page, where the next reading from the top finds it.
    let mut seen = Vec::new();
    let mut path = "/v1/movements?limit=5".to_string();
    let mut arrivals = Some([audited("h-old", "SKU-H1", "dc", till, -60), audited("h-new", "SKU-H1", "dc", till, 60)]);
    loop {
        let page = get_ok(addr, &path).await;
        seen.extend(event_ids(&page));
        if let Some(arrivals) = arrivals.take() {
            produce_all(&config, &arrivals).await;
            until_recorded(&app, 14, 60).await;
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/movements?limit=5&cursor={cursor}"),
            None => break,
        }
    }
    let mut expected = newest_first.clone();
    expected.push("h-old".into());
    assert_eq!(seen, expected, "every page in order, nothing twice, nothing skipped");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());
    assert_eq!(ids(get_ok(addr, "/v1/movements?limit=1").await), ["h-new"]);

    let page = get_ok(addr, "/v1/movements?limit=2&sku=SKU-H1").await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let (status, code, message) = refused(addr, &format!("/v1/movements?limit=2&sku=SKU-H2&cursor={cursor}")).await;
    assert_eq!((status, code.as_str()), (422, "invalid_cursor"), "{message}");
    for forged in ["abc", "djEuMDAwMDAwMDAwMDAwMDAwMC4xLmE", "AAAA"] {
        let (status, code, message) = refused(addr, &format!("/v1/movements?cursor={forged}")).await;
        assert_eq!((status, code.as_str()), (422, "invalid_cursor"), "{forged}: {message}");
    }
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_parameters_are_refused_naming_the_field_and_the_routes_need_stock_read() {
    onhand_core::skip_without_servers!();
    let config = test_config(1).await;
    let app = serve(&config).await;
    let addr = app.local_addr;
    produce_all(&config, &[audited("p-1", "SKU-P", "store-1", (SourceSystem::Api, "test"), 0)]).await;
    until_recorded(&app, 1, 60).await;

    let cases = [
        ("/v1/movements?limit=0", "invalid_parameter", "limit"),
        ("/v1/movements?limit=1001", "invalid_parameter", "limit"),
        ("/v1/movements?limit=ten", "invalid_parameter", "limit"),
        ("/v1/movements?since=yesterday", "invalid_parameter", "since"),
        ("/v1/movements?until=2026-13-01T00:00:00Z", "invalid_parameter", "until"),
        ("/v1/movements?sku=a%20b", "invalid_parameter", "sku"),
        ("/v1/movements?location=", "invalid_parameter", "location"),
        ("/v1/movements?source=till", "invalid_parameter", "source"),
        ("/v1/movements?source=store:store-1", "invalid_parameter", "source"),
        ("/v1/movements?sku=A&sku=B", "invalid_parameter", "sku"),
        ("/v1/movements?skus=A", "invalid_parameter", "skus"),
        ("/v1/stock/SKU-P/store-1/history?step=1w", "invalid_parameter", "step"),
        ("/v1/stock/SKU-P/store-1/history?step=0s", "invalid_parameter", "step"),
        (
            "/v1/stock/SKU-P/store-1/history?since=2026-11-21T00:00:00Z&until=2026-11-20T00:00:00Z",
            "invalid_parameter",
            "since",
        ),
        ("/v1/stock/SKU-P/store-1/history?step=1m", "too_many_points", "1440 steps"),
        ("/v1/stock/SKU-P/store-1/history?cursor=x", "invalid_parameter", "cursor"),
    ];
    for (path, code, named) in cases {
        let (status, got, message) = refused(addr, path).await;
        assert_eq!((status, got.as_str()), (422, code), "{path}: {message}");
        assert!(message.contains(named), "{path}: {message} names {named}");
    }
    assert_eq!(refused(addr, "/v1/stock/SKU-P/elsewhere/history").await.1, "location_not_found");
    assert_eq!(refused(addr, "/v1/stock/SKU-NONE/store-1/history").await.1, "sku_not_found");
    assert_eq!(refused(addr, "/v1/stock/SKU-P/bad%20place/history").await.0, 400);

    let writer = onhand::keys::create(&*app.db, "writer", "movements:write", None).await.unwrap().plaintext;
    let reader = onhand::keys::create(&*app.db, "reader", "stock:read", None).await.unwrap().plaintext;
    for path in ["/v1/movements", "/v1/stock/SKU-P/store-1/history"] {
        let (status, body) = http_get_as(addr, path, None).await;
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("missing_api_key")), "{path}");
        let (status, body) = http_get_as(addr, path, Some(&writer)).await;
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("insufficient_scope")), "{path}");
        assert_eq!(http_get_as(addr, path, Some(&reader)).await.0, 200, "{path}");
    }
    // The same path still takes movements with movements:write, and only with it.
    let body = audited("p-2", "SKU-P", "store-1", (SourceSystem::Api, "test"), 1).to_json();
    let (status, _) = http_post_as(addr, "/v1/movements", "application/json", body.clone(), Some(&reader)).await;
    assert_eq!(status, 403);
    let (status, answer) = http_post_as(addr, "/v1/movements", "application/json", body, Some(&writer)).await;
    assert_eq!(status, 202, "{answer}");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_levels_history_ends_at_the_ledgers_level_with_a_count_and_a_late_delta() {
    onhand_core::skip_without_servers!();
    let config = test_config(3).await;
    let app = serve(&config).await;
    let addr = app.local_addr;
    let minute = |n: i64| at(n * 60);
    let at_minute = |id: &str, kind: MovementKind, quantity: i64, n: i64| {
        let mut m = movement(id, "SKU-C", "store-1", kind, quantity, minute(n));
        m.recorded_at = minute(20);
        m
    };
    let before = [
        at_minute("c-receipt", MovementKind::Receipt, 10, 1),
        at_minute("c-sale", MovementKind::Sale, 3, 2),
        at_minute("c-count", MovementKind::Count, 20, 5),
        at_minute("c-after", MovementKind::Sale, 1, 7),
    ];
    produce_all(&config, &before).await;
    until_recorded(&app, 4, 60).await;
    // A sale from before the count arrives after it: the count already holds it.
    produce_all(&config, &[at_minute("c-late", MovementKind::Sale, 2, 4)]).await;
    until_recorded(&app, 5, 60).await;

    let history =
        get_ok(addr, "/v1/stock/SKU-C/store-1/history?since=2026-11-20T09:00:00Z&until=2026-11-20T09:10:00Z&step=2m")
            .await;
    let points: Vec<(i64, i64)> = history["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["on_hand"].as_i64().unwrap(), p["movements"].as_i64().unwrap()))
        .collect();
    // [0, 2): receipt; [2, 4): sale; [4, 6): the late sale, then the count; [6, 8): sale.
    assert_eq!(points, [(10, 1), (7, 1), (20, 2), (19, 1), (19, 0)], "{history}");
    assert_eq!(history["points"][0]["at"], "2026-11-20T09:02:00Z");
    assert_eq!((history["step_s"].as_i64(), history["start_on_hand"].as_i64()), (Some(120), Some(0)));
    let level = get_ok(addr, "/v1/stock/SKU-C/store-1").await;
    assert_eq!(level["on_hand"], 19, "the ledger's level, where the history ends");
    let effects = get_ok(addr, "/v1/movements?sku=SKU-C&source=api:test").await;
    let late = effects["movements"].as_array().unwrap().iter().find(|m| m["event_id"] == "c-late").unwrap();
    assert_eq!((late["effect"].as_str(), late["delta"].as_i64()), (Some("superseded"), Some(-2)));
    let count = effects["movements"].as_array().unwrap().iter().find(|m| m["event_id"] == "c-count").unwrap();
    assert!(count["delta"].is_null());

    // Starting after the count: from the count and the deltas after it, to the same end.
    let later =
        get_ok(addr, "/v1/stock/SKU-C/store-1/history?since=2026-11-20T09:06:00Z&until=2026-11-20T09:30:00Z&step=1h")
            .await;
    assert_eq!(later["start_on_hand"], 20);
    assert_eq!((later["points"][0]["on_hand"].as_i64(), later["points"][0]["movements"].as_i64()), (Some(19), Some(1)));
    assert_eq!(later["points"].as_array().unwrap().len(), 1, "the last step is cut short at until");
    // The default window is the last day by the hour: these movements are older.
    let recent = get_ok(addr, "/v1/stock/SKU-C/store-1/history").await;
    assert_eq!(recent["points"].as_array().unwrap().len(), 24);
    assert!(recent["points"].as_array().unwrap().iter().all(|p| p["on_hand"] == 19 && p["movements"] == 0));
    app.stop().await.unwrap();
}
