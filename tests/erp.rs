//! The ERP journal captured by polling, through a cut of the network between the ERP side
//! and Kafka: every row arrives exactly once.

mod common;

use common::*;
use onhand_core::testing::fresh_postgres_url;
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};

async fn erp_database() -> (String, PgConnection) {
    let url = fresh_postgres_url().await;
    let mut erp = PgConnection::connect(&url).await.unwrap();
    erp.execute(include_str!("fixtures/erp/schema.sql")).await.unwrap();
    erp.execute(include_str!("fixtures/erp/seed.sql")).await.unwrap();
    (url, erp)
}

async fn source(addr: std::net::SocketAddr, name: &str) -> serde_json::Value {
    let (_, sources) = http_get(addr, "/v1/sources").await;
    sources["sources"].as_array().and_then(|s| s.iter().find(|s| s["source"] == name).cloned()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_journal_row_arrives_once_through_a_network_cut() {
    onhand_core::skip_without_servers!();
    let broker = PrivateBroker::start().await;
    let (erp_url, mut erp) = erp_database().await;
    let mut config = test_config(3).await;
    config.kafka.brokers = broker.proxy.addr.to_string();
    config.kafka.produce_timeout_ms = 3_000;
    config.connectors.insert(
        "erp".into(),
        json!({
            "source_url": erp_url, "poll_interval_ms": 100, "safety_delay_ms": 0, "retry_max_ms": 1000,
            "kinds": { "ENT": "receipt", "SAI": "sale", "AJU": "adjustment", "INV": "count" },
            "locations": { "CD01": "dc-sp" },
        }),
    );
    let app = serve(&config).await;
    until_recorded(&app, 2, 60).await;
    assert_eq!(levels(&app, "SKU-E").await["dc-sp"], 1990);
    let dlq = consume_all_from(&config.kafka.brokers, &config.kafka.topics.dlq, 1);
    let header = |name: &str| {
        use rdkafka::message::{Headers, Message};
        let headers = dlq[0].headers().expect("dead letters carry headers");
        headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).to_string())
    };
    assert_eq!(header("onhand.dlq.reason_code").as_deref(), Some("erp_unknown_movement_type"));
    assert_eq!(header("onhand.dlq.source").as_deref(), Some("erp"));

    broker.proxy.cut();
    for _ in 0..10 {
        let rows: Vec<String> = (0..100).map(|i| format!("('SKU-E', 'CD01', 'SAI', -1, 'PV-{i}')")).collect();
        let insert = format!(
            "INSERT INTO stock_journal (item, warehouse, movement_type, quantity, reference) VALUES {}",
            rows.join(",")
        );
        erp.execute(insert.as_str()).await.unwrap();
    }
    let down = eventually("the connector reports kafka unreachable", 60, || async {
        let erp = source(app.local_addr, "erp").await;
        (erp["healthy"] == false).then_some(erp)
    })
    .await;
    assert!(down["detail"].as_str().unwrap_or_default().contains("kafka"), "{down}");

    broker.proxy.restore();
    until_recorded(&app, 1002, 120).await;
    assert_eq!(levels(&app, "SKU-E").await["dc-sp"], 990, "every row once");
    eventually("the connector is healthy again", 30, || async {
        (source(app.local_addr, "erp").await["healthy"] == true).then_some(())
    })
    .await;
    app.stop().await.unwrap();
}

/// M2: a connector that fails for good (here, a journal URL that cannot work) is not only
/// logged: `/readyz` says it failed, and why, and the process is not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connector_that_fails_for_good_makes_the_process_unready() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(1).await;
    config.connectors.insert("erp".into(), json!({ "source_url": "not a database url", "kinds": {}, "locations": {} }));
    let app = serve(&config).await;
    let ready = eventually("the erp connector reported failed", 30, || async {
        let (status, ready) = http_get(app.local_addr, "/readyz").await;
        (ready["components"]["connector:erp"]["state"] == "failed").then_some((status, ready))
    })
    .await;
    assert_eq!(ready.0, 503, "{}", ready.1);
    assert_eq!(metric(&app, "onhand_component_up{component=\"connector:erp\"}"), 0.0);
    app.stop().await.unwrap();
}

/// M6: a row whose transaction commits after the cursor passed its change time (a
/// transaction longer than safety_delay_ms) is found by the look-back re-scan, produced,
/// and counted; the rows produced before are not produced again as late.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_that_appears_behind_the_cursor_is_found_by_the_look_back() {
    onhand_core::skip_without_servers!();
    let (erp_url, mut erp) = erp_database().await;
    let mut config = test_config(3).await;
    config.connectors.insert(
        "erp".into(),
        json!({
            "source_url": erp_url, "poll_interval_ms": 100, "safety_delay_ms": 0, "retry_max_ms": 1000,
            "lookback_interval_s": 1, "lookback_window_s": 3600,
            "kinds": { "ENT": "receipt", "SAI": "sale" }, "locations": { "CD01": "dc-sp" },
        }),
    );
    let app = serve(&config).await;
    until_recorded(&app, 2, 60).await;
    erp.execute(
        "INSERT INTO stock_journal (item, warehouse, movement_type, quantity) VALUES ('SKU-L', 'CD01', 'ENT', 7)",
    )
    .await
    .unwrap();
    until_recorded(&app, 3, 60).await;
    // Committed now, stamped a minute ago: behind the cursor, which the last row moved.
    erp.execute(
        "INSERT INTO stock_journal (changed_at, item, warehouse, movement_type, quantity)
         VALUES (clock_timestamp() - interval '1 minute', 'SKU-L', 'CD01', 'ENT', 5)",
    )
    .await
    .unwrap();
    until_recorded(&app, 4, 60).await;
    assert_eq!(levels(&app, "SKU-L").await["dc-sp"], 12);
    eventually("the late row counted", 30, || async {
        (metric(&app, "onhand_erp_late_rows_total") == 1.0).then_some(())
    })
    .await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn debezium_change_events_become_movements_and_row_changes_are_reported() {
    onhand_core::skip_without_servers!();
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let mut config = test_config(3).await;
    let topic = format!("{}.erp.STOCK_JOURNAL", config.kafka.topics.movements);
    let admin: AdminClient<_> = onhand_core::kafka::client_config(&config.kafka).create().unwrap();
    admin.create_topics(&[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))], &AdminOptions::new()).await.unwrap();
    let event = |op: &str, id: i64, code: &str, quantity: i64| {
        json!({ "before": null, "op": op, "source": { "scn": format!("{}", 1000 + id) },
                "after": { "ID": id, "CHANGED_AT": 1_795_369_212_000i64, "ITEM": "SKU-D", "WAREHOUSE": "CD01",
                           "MOVEMENT_TYPE": code, "QUANTITY": quantity, "REFERENCE": null } })
        .to_string()
        .into_bytes()
    };
    let records: Vec<(String, Vec<u8>)> = vec![
        ("1".into(), event("r", 1, "ENT", 100)),
        ("2".into(), event("c", 2, "SAI", -30)),
        ("3".into(), event("c", 3, "XXX", 5)),
        ("2".into(), event("u", 2, "SAI", -31)),
        ("2".into(), Vec::new()),
    ];
    produce(&producer(), &topic, &records).await;
    config.connectors.insert(
        "erp".into(),
        json!({ "mode": "debezium", "debezium": { "topic": topic, "group_id": format!("{topic}.onhand") },
                "kinds": { "ENT": "receipt", "SAI": "sale" }, "locations": { "CD01": "dc-sp" } }),
    );
    let app = serve(&config).await;
    until_recorded(&app, 2, 60).await;
    assert_eq!(levels(&app, "SKU-D").await["dc-sp"], 70, "the update of row 2 is not applied");
    let dead = consume_all(&config.kafka.topics.dlq, 2);
    let codes: Vec<String> = dead
        .iter()
        .map(|m| {
            use rdkafka::message::{Headers, Message};
            let headers = m.headers().expect("headers");
            let code = headers.iter().find(|h| h.key == "onhand.dlq.reason_code").and_then(|h| h.value).unwrap();
            String::from_utf8_lossy(code).to_string()
        })
        .collect();
    assert!(codes.contains(&"erp_unknown_movement_type".to_string()), "{codes:?}");
    assert!(codes.contains(&"erp_journal_row_changed".to_string()), "{codes:?}");
    app.stop().await.unwrap();
}
