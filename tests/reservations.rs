//! Reservations through `onhand serve`: the last unit goes to one checkout across API
//! replicas, a commit becomes a sale the ledger applies, and expiry gives units back.

mod common;

use std::net::SocketAddr;

use common::*;
use onhand::app::StartOptions;
use onhand_core::{clock::Clock, config::ChannelConfig};
use reqwest::Method;
use serde_json::{json, Value};

async fn receive(addr: SocketAddr, id: &str, sku: &str, location: &str, quantity: i64) {
    let movement = json!({
        "event_id": id,
        "source": { "system": "api", "instance": "test", "ref": id },
        "sku": sku, "location": location, "kind": "receipt", "quantity": quantity,
        "occurred_at": "2026-11-20T10:00:00Z"
    });
    let (status, answer) = http_post(addr, "/v1/movements", "application/json", movement.to_string()).await;
    assert_eq!(status, 202, "{answer}");
}

async fn reserve(addr: SocketAddr, key: &str, body: Value) -> (u16, Value) {
    http_send(Method::POST, addr, "/v1/reservations", &[("idempotency-key", key)], Some(body)).await
}

/// Waits until the level answers with these on_hand and reserved units.
async fn level_is(addr: SocketAddr, sku: &str, location: &str, on_hand: i64, reserved: i64) -> Value {
    eventually(&format!("{sku}@{location} at {on_hand} on hand, {reserved} reserved"), 60, || async {
        let (status, level) = http_get(addr, &format!("/v1/stock/{sku}/{location}")).await;
        (status == 200 && level["on_hand"] == on_hand && level["reserved"] == reserved).then_some(level)
    })
    .await
}

fn web_channel() -> ChannelConfig {
    ChannelConfig { all_locations: false, locations: vec!["dc".into(), "store-1".into()], ..ChannelConfig::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_checkouts_for_the_last_unit_through_two_replicas_get_it_once() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(3).await;
    config.channels.insert("web".into(), web_channel());
    let first = serve(&config).await;
    // A second API replica on the same database, sharing nothing else but Kafka.
    let mut replica_config = config.clone();
    replica_config.ledger.enabled = false;
    let second = serve(&replica_config).await;
    let addrs = [first.local_addr, second.local_addr];
    receive(addrs[0], "last-unit", "SKU-L", "store-1", 1).await;
    level_is(addrs[0], "SKU-L", "store-1", 1, 0).await;

    let checkouts = (0..50).map(|i| async move {
        let body = json!({ "channel": "web", "lines": [{ "sku": "SKU-L", "quantity": 1 }] });
        reserve(addrs[i % 2], &format!("checkout-{i}"), body).await
    });
    let answers = futures::future::join_all(checkouts).await;
    let held: Vec<&Value> = answers.iter().filter(|(status, _)| *status == 201).map(|(_, body)| body).collect();
    let refused: Vec<&Value> = answers.iter().filter(|(status, _)| *status == 409).map(|(_, body)| body).collect();
    assert_eq!((held.len(), refused.len()), (1, 49), "{answers:?}");
    assert!(refused.iter().all(|body| body["error"]["code"] == "insufficient_stock"));
    assert_eq!(refused[0]["short_lines"][0]["available"], 0);
    let id = held[0]["id"].as_str().expect("a reservation id");
    assert_eq!((held[0]["status"].as_str(), held[0]["lines"][0]["location"].as_str()), (Some("held"), Some("store-1")));
    // Both replicas see the unit reserved: the second through the stock topic.
    for addr in addrs {
        let level = level_is(addr, "SKU-L", "store-1", 1, 1).await;
        assert_eq!(level["available"], 0);
    }

    // The commit becomes a sale; the ledger applies it and releases the unit in one write.
    let (status, committed) =
        http_send(Method::POST, addrs[1], &format!("/v1/reservations/{id}/commit"), &[], None).await;
    assert_eq!((status, committed["status"].as_str()), (200, Some("committed")), "{committed}");
    level_is(addrs[0], "SKU-L", "store-1", 0, 0).await;
    // receipt + reserve + commit + sale: the audit trail is on Kafka and in the ledger.
    until_recorded(&first, 4, 60).await;
    let (status, again) = http_send(Method::POST, addrs[0], &format!("/v1/reservations/{id}/commit"), &[], None).await;
    assert_eq!((status, &again), (200, &committed), "a second commit answers the same");
    second.stop().await.unwrap();
    first.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_reservation_gives_its_units_back_and_refuses_its_commit() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(3).await;
    config.channels.insert("web".into(), web_channel());
    config.reservations.expiry_interval_ms = 50;
    // Time is moved by hand: the test never waits for a reservation to run out.
    let clock = Clock::manual();
    let app = serve_with(&config, StartOptions { clock: clock.clone(), ..StartOptions::default() }).await;
    let addr = app.local_addr;
    receive(addr, "exp-1", "SKU-E", "dc", 2).await;
    level_is(addr, "SKU-E", "dc", 2, 0).await;

    let (status, held) =
        reserve(addr, "exp", json!({ "channel": "web", "lines": [{ "sku": "SKU-E", "quantity": 2 }] })).await;
    assert_eq!(status, 201, "{held}");
    let id = held["id"].as_str().expect("a reservation id");
    level_is(addr, "SKU-E", "dc", 2, 2).await;

    clock.advance(chrono::Duration::seconds(599));
    let (_, still) = http_get(addr, &format!("/v1/reservations/{id}")).await;
    assert_eq!(still["status"], "held", "the default hold is 10 minutes");
    clock.advance(chrono::Duration::seconds(2));
    level_is(addr, "SKU-E", "dc", 2, 0).await;
    let (_, expired) = http_get(addr, &format!("/v1/reservations/{id}")).await;
    assert_eq!(expired["status"], "expired");
    let (status, refused) = http_send(Method::POST, addr, &format!("/v1/reservations/{id}/commit"), &[], None).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (409, Some("reservation_expired")), "{refused}");
    // receipt + reserve + release, and no sale.
    until_recorded(&app, 3, 60).await;
    assert_eq!(metric(&app, "onhand_reservations_closed_total{status=\"expired\"}"), 1.0);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reservation_requests_are_checked_and_replayed() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(3).await;
    config.channels.insert("web".into(), web_channel());
    let app = serve(&config).await;
    let addr = app.local_addr;
    receive(addr, "chk-1", "SKU-C", "dc", 5).await;
    receive(addr, "chk-2", "SKU-C", "store-9", 50).await;
    level_is(addr, "SKU-C", "dc", 5, 0).await;

    let body = json!({ "channel": "web", "lines": [{ "sku": "SKU-C", "quantity": 2 }], "ttl_s": 60 });
    let (status, first) = reserve(addr, "same-key", body.clone()).await;
    assert_eq!((status, first["lines"][0]["location"].as_str()), (201, Some("dc")), "store-9 does not serve web");
    assert_eq!(reserve(addr, "same-key", body.clone()).await, (201, first.clone()), "a retry gets the first answer");
    let other = json!({ "channel": "web", "lines": [{ "sku": "SKU-C", "quantity": 1 }] });
    let cases = [
        (reserve(addr, "same-key", other).await, 422, "idempotency_key_reused"),
        (
            http_send(Method::POST, addr, "/v1/reservations", &[], Some(body.clone())).await,
            400,
            "idempotency_key_required",
        ),
        (
            reserve(addr, "k2", json!({ "channel": "nope", "lines": [{ "sku": "SKU-C", "quantity": 1 }] })).await,
            404,
            "unknown_channel",
        ),
        (
            reserve(
                addr,
                "k3",
                json!({ "channel": "web", "lines": [{ "sku": "SKU-C", "quantity": 1, "location": "store-9" }] }),
            )
            .await,
            422,
            "location_not_in_channel",
        ),
        (
            reserve(addr, "k4", json!({ "channel": "web", "lines": [{ "sku": "bad sku", "quantity": 1 }] })).await,
            422,
            "invalid_request",
        ),
        (
            reserve(addr, "k5", json!({ "channel": "web", "lines": [{ "sku": "SKU-C", "quantity": 0 }] })).await,
            422,
            "invalid_request",
        ),
        (reserve(addr, "k6", json!({ "channel": "web", "lines": [] })).await, 422, "invalid_request"),
        (http_get(addr, "/v1/reservations/unknown").await, 404, "reservation_not_found"),
    ];
    for ((status, answer), expected_status, code) in cases {
        assert_eq!((status, answer["error"]["code"].as_str()), (expected_status, Some(code)), "{answer}");
    }

    // Idempotency keys are each API key's own: another checkout service may use the same.
    let other_service = onhand::keys::create(&*app.db, "checkout-b", "reservations:write", None).await.unwrap();
    let reader = onhand::keys::create(&*app.db, "reader", "stock:read", None).await.unwrap();
    let as_key = |key: &str| format!("Bearer {key}");
    let (status, theirs) = http_send(
        Method::POST,
        addr,
        "/v1/reservations",
        &[("idempotency-key", "same-key"), ("authorization", &as_key(&other_service.plaintext))],
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 201, "{theirs}");
    assert_ne!(theirs["id"], first["id"]);
    // L1: a reservation is its key's own: another key neither reads nor ends it.
    let mine = first["id"].as_str().unwrap();
    let theirs_key = as_key(&other_service.plaintext);
    for (method, path) in [
        (Method::GET, format!("/v1/reservations/{mine}")),
        (Method::POST, format!("/v1/reservations/{mine}/cancel")),
        (Method::POST, format!("/v1/reservations/{mine}/commit")),
    ] {
        let (status, answer) = http_send(method, addr, &path, &[("authorization", &theirs_key)], None).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (404, Some("reservation_not_found")), "{path}");
    }
    let (status, refused) = http_send(
        Method::POST,
        addr,
        "/v1/reservations",
        &[("idempotency-key", "k7"), ("authorization", &as_key(&reader.plaintext))],
        Some(body.clone()),
    )
    .await;
    assert_eq!((status, refused["error"]["code"].as_str()), (403, Some("insufficient_scope")));

    let id = first["id"].as_str().expect("a reservation id");
    let (status, cancelled) = http_send(Method::POST, addr, &format!("/v1/reservations/{id}/cancel"), &[], None).await;
    assert_eq!((status, cancelled["status"].as_str()), (200, Some("cancelled")));
    level_is(addr, "SKU-C", "dc", 5, 2).await;
    let (status, refused) = http_send(Method::POST, addr, &format!("/v1/reservations/{id}/commit"), &[], None).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (409, Some("reservation_not_held")), "{refused}");
    app.stop().await.unwrap();
}
