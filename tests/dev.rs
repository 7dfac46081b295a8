//! `onhand dev` keeps production's promise: a movement it answered as accepted survives a
//! stop and a kill, though its Kafka is in memory (C3).

mod common;

use std::{net::SocketAddr, path::Path, time::Duration};

use common::{process::Process, *};
use onhand_connectors::pos::agent::{Agent, AgentConfig};
use onhand_core::event::LocationId;
use serde_json::{json, Value};

/// Starts `onhand dev` on `data_dir` and waits until it answers; its admin key.
async fn start_dev(addr: SocketAddr, data_dir: &Path, name: &str) -> (Process, String) {
    let process = Process::dev(addr, data_dir, data_dir, name);
    eventually(&format!("onhand dev ({name}) answers"), 120, || async {
        let response = reqwest::get(format!("http://{addr}/healthz")).await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    let key = std::fs::read_to_string(data_dir.join("dev-api-key")).expect("dev writes its key").trim().to_string();
    (process, key)
}

async fn post_movement(addr: SocketAddr, key: &str, id: &str, kind: &str, quantity: i64) {
    let movement = json!({
        "event_id": id, "source": { "system": "api", "instance": "test", "ref": id },
        "sku": "SKU-DEV", "location": "store-001", "kind": kind, "quantity": quantity,
        "occurred_at": "2026-11-20T10:00:00Z"
    });
    let (status, answer) =
        http_post_as(addr, "/v1/movements", "application/json", movement.to_string(), Some(key)).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["results"][0]["status"], "accepted");
}

async fn on_hand(addr: SocketAddr, key: &str) -> Option<i64> {
    let (status, level) = http_get_as(addr, "/v1/stock/SKU-DEV/store-001", Some(key)).await;
    (status == 200).then(|| level["on_hand"].as_i64()).flatten()
}

/// A receipt answered 202, then the process stopped at once: gracefully, or killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_accepted_movement_survives_a_stop_and_a_kill_of_onhand_dev() {
    let dir = tempfile::tempdir().unwrap();
    let addr = process::free_addr();
    let (dev, key) = start_dev(addr, dir.path(), "dev-0").await;
    post_movement(addr, &key, "dev-receipt-1", "receipt", 10).await;
    dev.kill();
    let (dev, key) = start_dev(addr, dir.path(), "dev-1").await;
    eventually("the receipt applied after the kill", 60, || async {
        (on_hand(addr, &key).await == Some(10)).then_some(())
    })
    .await;
    post_movement(addr, &key, "dev-receipt-2", "receipt", 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(dev.terminate(), "onhand dev stops cleanly on SIGTERM");
    let (dev, key) = start_dev(addr, dir.path(), "dev-2").await;
    eventually("both receipts applied after the stop", 60, || async {
        (on_hand(addr, &key).await == Some(15)).then_some(())
    })
    .await;
    assert!(dev.terminate());
}

/// The alerts component runs in `onhand dev` too, on SQLite: a crossing raises its alert
/// once, and a kill and a restart (the embedded Kafka starts empty) raise nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn onhand_dev_raises_an_alert_once_through_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let addr = process::free_addr();
    let (dev, key) = start_dev(addr, dir.path(), "dev-alerts-0").await;
    post_movement(addr, &key, "dev-alert-receipt", "receipt", 10).await;
    post_movement(addr, &key, "dev-alert-sale", "sale", 8).await;
    let low_stock = |key: String| async move {
        let (status, body) = http_get_as(addr, "/v1/alerts?location=store-001&kind=low_stock", Some(&key)).await;
        assert_eq!(status, 200, "{body}");
        body["alerts"].as_array().unwrap().clone()
    };
    let raised = eventually("low_stock raised in onhand dev", 60, || async {
        let found = low_stock(key.clone()).await;
        (found.len() == 1).then(|| found[0].clone())
    })
    .await;
    assert_eq!(raised["state"], "open");
    dev.kill();
    let (dev, key) = start_dev(addr, dir.path(), "dev-alerts-1").await;
    post_movement(addr, &key, "dev-alert-sale-2", "sale", 1).await;
    eventually("the sale applied after the kill", 60, || async {
        (on_hand(addr, &key).await == Some(1)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(low_stock(key.clone()).await, vec![raised]);
    assert!(dev.terminate());
}

/// A store agent deletes what the central service answered 202 for: the central `onhand
/// dev` must keep it through a kill, or the store's sales vanish.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sales_through_a_store_agent_survive_a_kill_of_onhand_dev() {
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let addr = process::free_addr();
    let (dev, key) = start_dev(addr, dir.path(), "dev-0").await;
    post_movement(addr, &key, "dev-receipt", "receipt", 500).await;
    let mut config = AgentConfig::new(
        LocationId::parse("store-001").unwrap(),
        format!("http://{addr}"),
        key.clone(),
        agent_dir.path().to_path_buf(),
    );
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.heartbeat_interval = Duration::from_millis(200);
    config.retry_max = Duration::from_millis(500);
    config.forward_batch_max = 20;
    let agent = Agent::start(config).await.unwrap();
    let client = reqwest::Client::new();
    let sell = |from: u32| {
        let feed: String = (from..from + 25)
            .map(|n| {
                json!({"transaction_id": format!("D{n}"), "line": 1, "kind": "sale", "sku": "SKU-DEV",
                       "quantity": 1, "occurred_at": "2026-11-22T11:31:07-03:00"})
                .to_string()
                    + "\n"
            })
            .collect();
        client
            .post(format!("http://{}/connectors/pos/store-001/sales", agent.local_addr))
            .header("content-type", "application/x-ndjson")
            .body(feed)
            .send()
    };
    for batch in 0..5 {
        let answer: Value = sell(batch * 25).await.unwrap().json().await.unwrap();
        assert_eq!(answer["accepted"], 25, "{answer}");
    }
    // Killed while the agent forwards: what it answered 202 for must come back.
    dev.kill();
    for batch in 5..10 {
        let answer: Value = sell(batch * 25).await.unwrap().json().await.unwrap();
        assert_eq!(answer["accepted"], 25, "the agent takes sales while the central service is down: {answer}");
    }
    let (dev, key) = start_dev(addr, dir.path(), "dev-1").await;
    eventually("500 received, 250 sold", 120, || async { (on_hand(addr, &key).await == Some(250)).then_some(()) })
        .await;
    agent.stop().await;
    assert!(dev.terminate());
}

/// An order in `onhand dev`, with the channels and calendars of a file: received, decided
/// by the workers through the embedded Kafka, its unit sold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn onhand_dev_takes_an_order_with_the_calendars_of_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("business.toml");
    std::fs::write(
        &file,
        "[channels.web]\nlocations = [\"store-001\"]\n\n[orders.calendars.store-001]\n\
         days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\nslots = [\"am\"]\ncapacity = { standard = 5 }\n",
    )
    .unwrap();
    let addr = common::process::free_addr();
    let data = dir.path().join("data");
    let file = file.display().to_string();
    let process = Process::dev_with(addr, &data, &["--config", &file], dir.path(), "dev");
    eventually("onhand dev answers", 120, || async {
        let response = reqwest::get(format!("http://{addr}/healthz")).await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    let key = std::fs::read_to_string(data.join("dev-api-key")).unwrap().trim().to_string();
    post_movement(addr, &key, "dev-order-stock", "receipt", 2).await;
    eventually("the receipt applied", 60, || async { (on_hand(addr, &key).await == Some(2)).then_some(()) }).await;
    let order = json!({
        "channel": "web", "customer": "c-1", "lines": [{"sku": "SKU-DEV", "quantity": 1}],
        "payment": {"method": "card", "token": "tok_dev_0001"},
        "delivery": {"method": "standard", "address": {"line1": "Rua A, 1", "city": "São Paulo", "postal_code": "01310-100", "country": "BR"}}
    });
    let placed = reqwest::Client::new()
        .post(format!("http://{addr}/v1/orders"))
        .bearer_auth(&key)
        .header("idempotency-key", "dev-1")
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), 202);
    let id = placed.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let decided = eventually("the order decided", 60, || async {
        let (status, body) = http_get_as(addr, &format!("/v1/orders/{id}"), Some(&key)).await;
        (status == 200 && body["status"] != "received").then_some(body)
    })
    .await;
    assert_eq!(decided["status"], "scheduled", "{decided}\n{}", process.log_tail());
    eventually("the sale applied", 60, || async { (on_hand(addr, &key).await == Some(1)).then_some(()) }).await;
    assert!(process.terminate());
}
