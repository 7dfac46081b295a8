//! Store feeds end to end: tills and the brief's stock report at the central service, and
//! a store agent that keeps selling through a network cut and a crash, losing nothing.

mod common;

use std::{net::SocketAddr, path::Path, time::Duration};

use common::*;
use onhand_connectors::pos::agent::{Agent, AgentConfig};
use onhand_core::{config::Config, event::LocationId};
use serde_json::{json, Value};

async fn pos_config() -> Config {
    let mut config = test_config(3).await;
    config.connectors.insert("pos".into(), json!({}));
    config
}

async fn receive(addr: SocketAddr, sku: &str, location: &str, quantity: i64) {
    receive_as(addr, &format!("receipt-{sku}-{location}"), sku, location, quantity).await;
}

async fn receive_as(addr: SocketAddr, id: &str, sku: &str, location: &str, quantity: i64) {
    let movement = json!({
        "event_id": id,
        "source": { "system": "api", "instance": "test", "ref": "r" },
        "sku": sku, "location": location, "kind": "receipt", "quantity": quantity,
        "occurred_at": "2026-11-20T10:00:00Z"
    });
    let (status, answer) = http_post(addr, "/v1/movements", "application/json", movement.to_string()).await;
    assert_eq!(status, 202, "{answer}");
}

fn sale(transaction: &str, line: u32, sku: &str, quantity: i64) -> String {
    json!({
        "transaction_id": transaction, "line": line, "kind": "sale", "sku": sku, "quantity": quantity,
        "occurred_at": "2026-11-22T11:31:07-03:00", "till": "04"
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_briefs_stock_report_is_counted_and_answered_with_its_alert() {
    onhand_core::skip_without_servers!();
    let app = serve(&pos_config().await).await;
    let addr = app.local_addr;
    let report = json!({ "id_produto": "01", "nome_produto": "Arroz", "quantidade": 10, "id_loja": "001", "nome_loja": "Mercado Central" });
    let (status, answer) =
        http_post(addr, "/connectors/pos/stock-report", "application/json", report.to_string()).await;
    assert_eq!((status, &answer), (200, &report), "answered as it came, without an alert");
    on_hand_is(&app, "01", "store-001", 10).await;
    let (_, product) = http_get(addr, "/v1/products/01").await;
    assert_eq!(product["name"], "Arroz", "a new product is named from the report");

    let low = json!([{ "id_produto": "01", "nome_produto": "Arroz", "quantidade": 5, "id_loja": "001", "nome_loja": "Mercado Central" }]);
    let (status, answer) = http_post(addr, "/connectors/pos/stock-report", "application/json", low.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(answer[0]["alerta"], "Produto com estoque baixo");
    assert_eq!(answer[0]["quantidade"], 5);
    on_hand_is(&app, "01", "store-001", 5).await;

    let (status, refused) =
        http_post_as(addr, "/connectors/pos/stock-report", "application/json", report.to_string(), None).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (401, Some("missing_api_key")));
    let bad = json!({ "id_produto": "01" });
    let (status, _) = http_post(addr, "/connectors/pos/stock-report", "application/json", bad.to_string()).await;
    assert_eq!(status, 422);
    app.stop().await.unwrap();
}

/// H4: a stock report sent again (a client's retry after a timeout) counts once, with its
/// `Idempotency-Key` or its records' own `id_relatorio`, so the sales recorded between the
/// two sends stand; a report with a bad record records nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stock_report_sent_twice_counts_once() {
    onhand_core::skip_without_servers!();
    let app = serve(&pos_config().await).await;
    let addr = app.local_addr;
    let report = json!([
        { "id_produto": "R1", "nome_produto": "Arroz", "quantidade": 10, "id_loja": "003", "nome_loja": "Loja 3",
          "contado_em": "2026-11-22T08:00:00-03:00" },
        { "id_produto": "R2", "nome_produto": "Feijão", "quantidade": 20, "id_loja": "003", "nome_loja": "Loja 3",
          "id_relatorio": "contagem-2026-11-22-R2", "contado_em": "2026-11-22T08:00:00-03:00" }
    ])
    .to_string();
    let send = |body: String| {
        http_send_raw(addr, "/connectors/pos/stock-report", &[("idempotency-key", "report-store-003-0001")], body)
    };
    let (status, answer) = send(report.clone()).await;
    assert_eq!(status, 200, "{answer}");
    on_hand_is(&app, "R1", "store-003", 10).await;
    on_hand_is(&app, "R2", "store-003", 20).await;
    let feed = format!("{}\n{}\n", sale("S1", 1, "R1", 3), sale("S1", 2, "R2", 4));
    let (status, _) = http_post(addr, "/connectors/pos/store-003/sales", "application/x-ndjson", feed).await;
    assert_eq!(status, 202);
    on_hand_is(&app, "R1", "store-003", 7).await;
    // The retry: the same records under the same identity are duplicates, the sales stand
    // (counted before the sales, the counts would not undo them anyway; a count sent again
    // under a new id and a new time would).
    let (status, _) = send(report).await;
    assert_eq!(status, 200);
    until_recorded(&app, 4, 30).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.db.movement_count().await.unwrap(), 4, "two counts and two sales");
    on_hand_is(&app, "R1", "store-003", 7).await;
    on_hand_is(&app, "R2", "store-003", 16).await;
    // All or nothing: a bad record refuses the whole report.
    let half_bad = json!([
        { "id_produto": "R3", "nome_produto": "Sal", "quantidade": 5, "id_loja": "003", "nome_loja": "Loja 3" },
        { "id_produto": "R4", "nome_produto": "Sal", "quantidade": -1, "id_loja": "003", "nome_loja": "Loja 3" }
    ]);
    let (status, _) = http_post(addr, "/connectors/pos/stock-report", "application/json", half_bad.to_string()).await;
    assert_eq!(status, 422);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(levels(&app, "R3").await.is_empty(), "nothing of a refused report is recorded");
    app.stop().await.unwrap();
}

/// H4 through a store agent: the agent stamps a report's identity from its key when the
/// till sends it, so the till's retry, forwarded as a second line, counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stock_report_sent_twice_through_a_store_agent_counts_once() {
    onhand_core::skip_without_servers!();
    let app = serve(&pos_config().await).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(agent_config(app.local_addr, dir.path())).await.unwrap();
    let report = json!({ "id_produto": "RA", "nome_produto": "Arroz", "quantidade": 9, "id_loja": "001",
                         "nome_loja": "Loja 1", "contado_em": "2026-11-22T08:00:00-03:00" });
    for _ in 0..2 {
        let (status, answer) = http_send_raw(
            agent.local_addr,
            "/connectors/pos/stock-report",
            &[("idempotency-key", "till-4-0001")],
            report.to_string(),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    on_hand_is(&app, "RA", "store-001", 9).await;
    eventually("both lines forwarded", 30, || async {
        let (_, level) = http_get(agent.local_addr, "/v1/stock/RA").await;
        (level["pending_lines"] == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.db.movement_count().await.unwrap(), 1, "the retry is the same count");
    agent.stop().await;
    app.stop().await.unwrap();
}

/// Posts a JSON body with `TEST_API_KEY` and extra headers.
async fn http_send_raw(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: String) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .bearer_auth(TEST_API_KEY)
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the api answers");
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tills_feed_counts_each_line_once() {
    onhand_core::skip_without_servers!();
    let app = serve(&pos_config().await).await;
    let addr = app.local_addr;
    receive(addr, "SKU-T", "store-002", 10).await;
    let feed = format!("{}\n{}\n", sale("T1", 1, "SKU-T", 2), sale("T1", 2, "SKU-T", 3));
    for _ in 0..2 {
        let (status, answer) =
            http_post(addr, "/connectors/pos/store-002/sales", "application/x-ndjson", feed.clone()).await;
        assert_eq!((status, answer["accepted"].as_i64()), (202, Some(2)), "{answer}");
    }
    until_recorded(&app, 3, 60).await;
    on_hand_is(&app, "SKU-T", "store-002", 5).await;
    let bad = format!("{}\n{}\n", sale("T2", 1, "SKU-T", 0), sale("T2", 2, "SKU-T", 1));
    let (status, answer) = http_post(addr, "/connectors/pos/store-002/sales", "application/x-ndjson", bad).await;
    assert_eq!((status, answer["accepted"].as_i64(), answer["rejected"].as_i64()), (422, Some(1), Some(1)));
    assert_eq!(answer["results"][0]["error"]["code"], "invalid_quantity");
    on_hand_is(&app, "SKU-T", "store-002", 4).await;
    app.stop().await.unwrap();
}

fn agent_config(central: SocketAddr, dir: &Path) -> AgentConfig {
    let mut config = AgentConfig::new(
        LocationId::parse("store-001").unwrap(),
        format!("http://{central}"),
        TEST_API_KEY.to_string(),
        dir.to_path_buf(),
    );
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.heartbeat_interval = Duration::from_millis(200);
    config.retry_max = Duration::from_millis(500);
    config
}

/// Sells `lines` units of SKU-A at the agent, ten lines a request, from transaction `first`.
async fn sell_at_agent(agent: SocketAddr, first: u32, lines: u32) {
    let client = reqwest::Client::new();
    for t in (first..first + lines).step_by(10) {
        let feed: String = (t..t + 10).map(|n| sale(&format!("A{n}"), 1, "SKU-A", 1) + "\n").collect();
        let response = client
            .post(format!("http://{agent}/connectors/pos/store-001/sales"))
            .header("content-type", "application/x-ndjson")
            .body(feed)
            .send()
            .await
            .expect("the agent answers");
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 202, "{answer}");
    }
}

async fn source(addr: SocketAddr, name: &str) -> Value {
    let (status, sources) = http_get(addr, "/v1/sources").await;
    assert_eq!(status, 200, "{sources}");
    sources["sources"].as_array().unwrap().iter().find(|s| s["source"] == name).cloned().unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_agent_cut_off_from_the_central_service_loses_nothing() {
    onhand_core::skip_without_servers!();
    let central = serve(&pos_config().await).await;
    receive(central.local_addr, "SKU-A", "store-001", 1000).await;
    on_hand_is(&central, "SKU-A", "store-001", 1000).await;
    let network = Proxy::start(central.local_addr).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(agent_config(network.addr, dir.path())).await.unwrap();
    let (_, level) = http_get(agent.local_addr, "/v1/stock/SKU-A").await;
    assert_eq!((level["on_hand"].as_i64(), level["stale"].as_bool()), (Some(1000), Some(false)), "{level}");

    network.cut();
    sell_at_agent(agent.local_addr, 0, 500).await;
    let (_, level) = http_get(agent.local_addr, "/v1/stock/SKU-A").await;
    assert_eq!((level["on_hand"].as_i64(), level["pending_lines"].as_i64()), (Some(500), Some(500)), "{level}");
    assert_eq!(level["stale"], true, "the central level is the last one read");
    assert_eq!(levels(&central, "SKU-A").await["store-001"], 1000, "nothing arrived during the cut");

    network.restore();
    on_hand_is(&central, "SKU-A", "store-001", 500).await;
    until_recorded(&central, 501, 60).await;
    let progress = eventually("the agent caught up", 30, || async {
        let s = source(central.local_addr, "pos:store-001").await;
        (s["acked_seq"] == 500 && s["behind_movements"] == 0).then_some(s)
    })
    .await;
    assert_eq!(progress["gap_alert"], false, "{progress}");
    agent.stop().await;
    central.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_agent_killed_mid_forward_loses_nothing() {
    onhand_core::skip_without_servers!();
    let central = serve(&pos_config().await).await;
    receive(central.local_addr, "SKU-A", "store-001", 1000).await;
    let network = Proxy::start(central.local_addr).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config(network.addr, dir.path());
    config.forward_batch_max = 10;
    let agent = Agent::start(config.clone()).await.unwrap();
    network.cut();
    sell_at_agent(agent.local_addr, 0, 200).await;
    network.restore();
    eventually("part of the outbox forwarded", 30, || async {
        let s = source(central.local_addr, "pos:store-001").await;
        (s["acked_seq"].as_i64().unwrap_or(0) >= 30).then_some(())
    })
    .await;
    agent.kill();

    // The same store database, as after a restart of the store's machine.
    let agent = Agent::start(config).await.unwrap();
    sell_at_agent(agent.local_addr, 200, 20).await;
    on_hand_is(&central, "SKU-A", "store-001", 780).await;
    until_recorded(&central, 221, 60).await;
    eventually("every line arrived", 30, || async {
        let s = source(central.local_addr, "pos:store-001").await;
        (s["acked_seq"] == 220 && s["behind_movements"] == 0).then_some(())
    })
    .await;
    agent.stop().await;
    central.stop().await.unwrap();
}

async fn agent_alerts(agent: SocketAddr) -> Vec<Value> {
    let (status, body) = http_get(agent, "/alerts").await;
    assert_eq!(status, 200, "{body}");
    body["alerts"].as_array().unwrap().clone()
}

/// The store's alerts reach its agent while the link is up, answer there during a cut,
/// and the changes made during the cut arrive when the link returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_agent_receives_its_alerts_and_serves_them_through_a_cut() {
    onhand_core::skip_without_servers!();
    let central = serve(&pos_config().await).await;
    receive(central.local_addr, "SKU-B", "store-001", 10).await;
    receive(central.local_addr, "SKU-B", "store-002", 1).await;
    let network = Proxy::start(central.local_addr).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_config(network.addr, dir.path());
    config.alerts_interval = Duration::from_millis(200);
    let agent = Agent::start(config).await.unwrap();
    let (status, _) = http_send_raw(
        agent.local_addr,
        "/connectors/pos/store-001/sales",
        &[("content-type", "application/x-ndjson")],
        sale("B1", 1, "SKU-B", 7),
    )
    .await;
    assert_eq!(status, 202);
    let low = eventually("the store's low_stock at its agent", 60, || async {
        let kept = agent_alerts(agent.local_addr).await;
        kept.into_iter().find(|a| a["kind"] == "low_stock" && a["subject"] == "SKU-B@store-001")
    })
    .await;
    assert_eq!(low["state"], "open");

    network.cut();
    receive_as(central.local_addr, "receipt-again", "SKU-B", "store-001", 20).await;
    eventually("low_stock resolved at the central service", 60, || async {
        let (_, found) = http_get(central.local_addr, &format!("/v1/alerts/{}", low["id"].as_str().unwrap())).await;
        (found["state"] == "resolved").then_some(())
    })
    .await;
    let during = agent_alerts(agent.local_addr).await;
    assert!(during.iter().any(|a| a["id"] == low["id"] && a["state"] == "open"), "the last known: {during:?}");

    network.restore();
    eventually("the resolution reached the agent", 60, || async {
        let kept = agent_alerts(agent.local_addr).await;
        kept.iter().any(|a| a["id"] == low["id"] && a["state"] == "resolved").then_some(())
    })
    .await;
    let kept = agent_alerts(agent.local_addr).await;
    assert!(kept.iter().all(|a| a["location"] == "store-001"), "only the store's own: {kept:?}");
    let (status, body) = http_get(agent.local_addr, "/alerts?state=lost").await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("invalid_parameter")));
    let (status, open) = http_get(agent.local_addr, "/alerts?state=open").await;
    assert_eq!(status, 200);
    assert!(open["alerts"].as_array().unwrap().iter().all(|a| a["state"] == "open"));
    agent.stop().await;
    central.stop().await.unwrap();
}
