//! Alerts end to end, on the real broker and PostgreSQL of `scripts/test`: each crossing
//! of a level raises its alert once and resolves it once, through two replicas, a stop
//! and a restart; a silent source is told and forgotten once heard from; webhooks are
//! signed, retried, dead-lettered, and logged; acknowledging answers the same twice.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use chrono::Utc;
use common::{
    webhooks::{receiver, signed_by},
    *,
};
use onhand_core::{
    event::{MovementKind, SourceSystem},
    testing::movement,
};
use serde_json::{json, Value};

/// A movement recorded now by the tills of `store`, keyed by its SKU.
fn till_movement(id: &str, store: &str, kind: MovementKind, quantity: i64) -> (String, Vec<u8>) {
    let mut m = movement(&format!("pos:{store}:{id}"), SKU, store, kind, quantity, Utc::now());
    m.source.system = SourceSystem::Pos;
    m.source.instance = store.into();
    (SKU.to_string(), m.to_json())
}

const SKU: &str = "7891000100103";

async fn alerts(addr: SocketAddr, query: &str) -> Vec<Value> {
    let (status, body) = http_get(addr, &format!("/v1/alerts?{query}")).await;
    assert_eq!(status, 200, "{body}");
    body["alerts"].as_array().unwrap().clone()
}

/// Waits until the alerts `query` selects are, by kind, in the states `expected` says.
async fn alerts_are(addr: SocketAddr, query: &str, expected: &[(&str, &str)]) -> Vec<Value> {
    let expected: BTreeMap<String, String> = expected.iter().map(|(k, s)| (k.to_string(), s.to_string())).collect();
    eventually(&format!("alerts {query} {expected:?}"), 60, || async {
        let found = alerts(addr, query).await;
        let states: BTreeMap<String, String> = found
            .iter()
            .map(|a| (a["kind"].as_str().unwrap().to_string(), a["state"].as_str().unwrap().to_string()))
            .collect();
        (states == expected && found.len() == expected.len()).then_some(found)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_crossing_raises_and_resolves_once_through_two_replicas_a_stop_and_a_restart() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(2).await;
    config.leases.ttl_ms = 1_000;
    let (first, second) = (serve(&config).await, serve(&config).await);
    let kafka = producer();
    let topic = config.kafka.topics.movements.clone();
    let query = "location=store-1";

    produce(&kafka, &topic, &[movement_json("al-1", SKU, "store-1", MovementKind::Receipt, 10, 0)]).await;
    produce(&kafka, &topic, &[movement_json("al-2", SKU, "store-1", MovementKind::Sale, 6, 1)]).await;
    let raised = alerts_are(first.local_addr, query, &[("low_stock", "open")]).await;
    let low = &raised[0];
    assert_eq!(low["subject"], format!("{SKU}@store-1"));
    assert_eq!(low["details"]["level"]["available"], 4);
    assert_eq!(low["details"]["reorder_point"], 5);

    // Another sale within the band raises nothing more; one replica stops.
    produce(&kafka, &topic, &[movement_json("al-3", SKU, "store-1", MovementKind::Sale, 1, 2)]).await;
    on_hand_is(&second, SKU, "store-1", 3).await;
    first.stop().await.unwrap();
    produce(&kafka, &topic, &[movement_json("al-4", SKU, "store-1", MovementKind::Sale, 3, 3)]).await;
    produce(&kafka, &topic, &[movement_json("al-5", SKU, "store-1", MovementKind::Sale, 2, 4)]).await;
    let sold_out =
        alerts_are(second.local_addr, query, &[("low_stock", "open"), ("out_of_stock", "open"), ("oversold", "open")])
            .await;
    let oversold = sold_out.iter().find(|a| a["kind"] == "oversold").unwrap();
    assert_eq!(oversold["details"]["level"]["on_hand"], -2);
    let named: Vec<&str> =
        oversold["details"]["movements"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert!(named.contains(&"al-5"), "{oversold:#}");
    assert!(oversold["details"]["compensation"]["action"].is_string(), "{oversold:#}");

    // A restarted replica reads the stock topic again from its saved offsets: nothing twice.
    second.stop().await.unwrap();
    let third = serve(&config).await;
    produce(&kafka, &topic, &[movement_json("al-6", SKU, "store-1", MovementKind::Receipt, 20, 5)]).await;
    alerts_are(
        third.local_addr,
        query,
        &[("low_stock", "resolved"), ("out_of_stock", "resolved"), ("oversold", "resolved")],
    )
    .await;

    // Each change went out on the alerts topic: three raised, three resolved.
    let events: BTreeSet<String> = consume_all(&config.kafka.topics.alerts, 6)
        .iter()
        .map(|m| {
            let event: Value = serde_json::from_slice(rdkafka::Message::payload(m).unwrap()).unwrap();
            assert_eq!(rdkafka::Message::key(m), Some(format!("{SKU}@store-1").as_bytes()));
            event["event_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(events.len(), 6, "{events:?}");
    third.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_source_is_told_once_and_forgotten_when_heard_from() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(1).await;
    config.alerts.silent_after_s_by_source.insert("pos:store-9".into(), 2);
    let app = serve(&config).await;
    let kafka = producer();
    let topic = config.kafka.topics.movements.clone();
    produce(&kafka, &topic, &[till_movement("si-1", "store-9", MovementKind::Receipt, 50)]).await;
    let silent = eventually("source_silent raised", 60, || async {
        let found = alerts(app.local_addr, "kind=source_silent&state=open").await;
        found.into_iter().find(|a| a["subject"] == "pos:store-9")
    })
    .await;
    assert_eq!(silent["details"]["silent_after_s"], 2);
    // A store's tills are its own: the store sees that alert too.
    assert_eq!(silent["location"], "store-9");

    produce(&kafka, &topic, &[till_movement("si-2", "store-9", MovementKind::Sale, 1)]).await;
    eventually("source_silent resolved", 60, || async {
        let found = alerts(app.local_addr, "kind=source_silent").await;
        found.into_iter().find(|a| a["subject"] == "pos:store-9" && a["state"] == "resolved")
    })
    .await;
    app.stop().await.unwrap();
}

async fn subscribe(addr: SocketAddr, body: Value) -> (u16, Value) {
    http_post(addr, "/v1/subscriptions", "application/json", body.to_string()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_are_signed_retried_dead_lettered_and_logged() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(1).await;
    config.alerts.webhook_attempts_max = 3;
    let app = serve(&config).await;
    let addr = app.local_addr;
    let (flaky_url, flaky) = receiver(2).await;
    let (dead_url, dead) = receiver(usize::MAX).await;
    let (other_url, other) = receiver(0).await;

    let secret = "a-secret-of-the-store-chain";
    let (status, created) =
        subscribe(addr, json!({"url": flaky_url, "locations": ["store-1"], "kinds": ["low_stock"], "secret": secret}))
            .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["secret"], secret);
    let flaky_id = created["id"].as_str().unwrap().to_string();
    let (status, dead_sub) = subscribe(addr, json!({"url": dead_url, "kinds": ["low_stock", "oversold"]})).await;
    assert_eq!(status, 201, "{dead_sub}");
    assert!(dead_sub["secret"].as_str().unwrap().starts_with("whsec_"));
    let (status, _) = subscribe(addr, json!({"url": other_url, "locations": ["store-2"]})).await;
    assert_eq!(status, 201);
    for bad in [json!({"url": "ftp://x"}), json!({"url": "https://x.example", "kinds": ["nope"]}), json!({})] {
        let (status, body) = subscribe(addr, bad).await;
        assert_eq!((status, body["error"]["code"].as_str()), (422, Some("invalid_subscription")), "{body}");
    }
    let (status, listed) = http_get(addr, "/v1/subscriptions").await;
    assert_eq!(status, 200);
    assert_eq!(listed["subscriptions"].as_array().unwrap().len(), 3);
    assert!(listed.to_string().find("secret").is_none(), "secrets are never listed: {listed}");

    let kafka = producer();
    let topic = config.kafka.topics.movements.clone();
    produce(&kafka, &topic, &[movement_json("wh-1", SKU, "store-1", MovementKind::Receipt, 3, 0)]).await;
    let alert = alerts_are(addr, "location=store-1", &[("low_stock", "open")]).await.remove(0);

    // Two 500s, then delivered: three tries of one event, each signed.
    let log = eventually("the delivery delivered", 60, || async {
        let (_, log) = http_get(addr, &format!("/v1/subscriptions/{flaky_id}/deliveries")).await;
        (log["deliveries"][0]["state"] == "delivered").then_some(log)
    })
    .await;
    assert_eq!(log["deliveries"][0]["attempts"], 3, "{log:#}");
    assert_eq!(log["deliveries"][0]["event_id"], format!("{}:open", alert["id"].as_str().unwrap()));
    {
        let seen = flaky.lock().unwrap();
        assert_eq!(seen.requests.len(), 3);
        for (headers, body) in &seen.requests {
            assert!(signed_by(secret, headers, body));
            assert!(!signed_by("another secret", headers, body));
            let event: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(event["id"], alert["id"]);
            assert_eq!(headers["onhand-event-id"], event["event_id"].as_str().unwrap());
        }
    }

    // Always 500: dead after three tries, with the last answer in its log.
    let dead_id = dead_sub["id"].as_str().unwrap();
    let log = eventually("the delivery dead", 60, || async {
        let (_, log) = http_get(addr, &format!("/v1/subscriptions/{dead_id}/deliveries")).await;
        let first = log["deliveries"].as_array()?.iter().find(|d| d["state"] == "dead")?.clone();
        Some(first)
    })
    .await;
    assert_eq!((log["attempts"].as_i64(), log["last_status"].as_i64()), (Some(3), Some(500)), "{log:#}");
    assert_eq!(dead.lock().unwrap().requests.len(), 3);
    // Another store's subscription heard nothing.
    assert!(other.lock().unwrap().requests.is_empty());
    assert_eq!(metric(&app, "onhand_alerts_raised_total{kind=\"low_stock\"}"), 1.0);
    assert_eq!(metric(&app, "onhand_alert_deliveries_total{outcome=\"dead\"}"), 1.0);
    assert_eq!(metric(&app, "onhand_alert_deliveries_total{outcome=\"delivered\"}"), 1.0);

    // Acknowledged once, the same answer twice; unknown ids are 404.
    let id = alert["id"].as_str().unwrap();
    let ack = format!("/v1/alerts/{id}/ack");
    let (status, first_ack) = http_post(addr, &ack, "application/json", "").await;
    assert_eq!((status, first_ack["state"].as_str()), (200, Some("acknowledged")), "{first_ack}");
    let (status, again) = http_post(addr, &ack, "application/json", "").await;
    assert_eq!((status, &again), (200, &first_ack));
    let (status, body) = http_post(addr, "/v1/alerts/alr_000000000000000000000000/ack", "application/json", "").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("alert_not_found")));
    let (status, body) = http_get(addr, &format!("/v1/alerts/{id}")).await;
    assert_eq!((status, body["acknowledged_by"].is_string()), (200, true), "{body}");

    // A resolved alert needs no acknowledgement.
    produce(&kafka, &topic, &[movement_json("wh-2", SKU, "store-1", MovementKind::Receipt, 30, 1)]).await;
    alerts_are(addr, "location=store-1", &[("low_stock", "resolved")]).await;
    let (status, body) = http_post(addr, &ack, "application/json", "").await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("alert_resolved")), "{body}");

    let (status, body) = http_get(addr, "/v1/alerts?kind=bogus").await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("invalid_parameter")), "{body}");
    let unsubscribe = |id: String| async move {
        reqwest::Client::new()
            .delete(format!("http://{addr}/v1/subscriptions/{id}"))
            .bearer_auth(onhand_core::testing::TEST_API_KEY)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(unsubscribe(flaky_id.clone()).await, 204);
    assert_eq!(unsubscribe(flaky_id.clone()).await, 404);
    let (status, _) = http_get(addr, &format!("/v1/subscriptions/{flaky_id}/deliveries")).await;
    assert_eq!(status, 404);
    app.stop().await.unwrap();
}
