//! `onhand --log-format json serve`, as a log pipeline reads it: one JSON object a line,
//! and a request's id found both in the API's lines and in the ledger's line for the
//! movement the request produced.

mod common;

use common::{process::Process, *};
use onhand_core::{db, testing::TEST_API_KEY};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_answered_and_found_in_the_api_and_ledger_json_lines() {
    onhand_core::skip_without_servers!();
    let config = test_config(1).await;
    let store = db::open(&config.database.url, 2).await.unwrap();
    onhand_core::testing::insert_test_api_key(&*store).await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let env = [("ONHAND_LOG_FORMAT", "json"), ("RUST_LOG", "info,onhand_core::ledger=debug,onhand_core::api=debug")];
    let process = Process::serve_with(&config, &env, logs.path(), "serve");
    eventually("onhand serve answers", 120, || async {
        reqwest::get(format!("http://{}/readyz", process.addr)).await.ok()?.status().is_success().then_some(())
    })
    .await;

    let movement = json!({
        "event_id": "logged-1", "source": { "system": "api", "instance": "test", "ref": "logged-1" },
        "sku": "SKU-LOG", "location": "store-001", "kind": "receipt", "quantity": 2,
        "occurred_at": "2026-11-20T10:00:00Z", "correlation_id": "delivery:D-1"
    });
    let post = |request_id: &'static str| {
        reqwest::Client::new()
            .post(format!("http://{}/v1/movements", process.addr))
            .bearer_auth(TEST_API_KEY)
            .header("x-request-id", request_id)
            .json(&movement)
            .send()
    };
    let answer = post("req-logs-1").await.unwrap();
    assert_eq!(answer.status(), 202);
    assert_eq!(answer.headers()["x-request-id"], "req-logs-1", "a plausible id is kept");
    // An id that could bend a log line is replaced by one of onhand's own.
    let replaced = post("bad id\"").await.unwrap();
    let replaced = replaced.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(replaced.len(), 32, "{replaced}");

    let lines = eventually("the ledger's line for the movement", 60, || async {
        let text = std::fs::read_to_string(&process.log).ok()?;
        let lines: Vec<Value> = text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
        lines.iter().any(|l| l["message"] == "movement read" && l["request_id"] == "req-logs-1").then_some(lines)
    })
    .await;
    let text = std::fs::read_to_string(&process.log).unwrap();
    // The process's log file holds its stdout too, where `serve` says where it listens.
    let unparsed: Vec<&str> =
        text.lines().filter(|l| !l.starts_with("onhand serve:") && serde_json::from_str::<Value>(l).is_err()).collect();
    assert!(unparsed.is_empty(), "every log line is JSON: {unparsed:?}");
    let ledger = lines.iter().find(|l| l["message"] == "movement read" && l["request_id"] == "req-logs-1").unwrap();
    assert_eq!((&ledger["event_id"], &ledger["correlation_id"]), (&json!("logged-1"), &json!("delivery:D-1")));
    let in_request =
        |l: &Value| l["spans"].as_array().is_some_and(|spans| spans.iter().any(|s| s["request_id"] == "req-logs-1"));
    let api = lines.iter().find(|l| in_request(l)).unwrap_or_else(|| panic!("no API line in the request: {text}"));
    assert_eq!(api["spans"][0]["route"], "/v1/movements", "{api}");
    assert!(process.terminate(), "a stop with SIGTERM ends cleanly");
}
