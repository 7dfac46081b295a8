//! The WMS file drops end to end: `onhand serve` with `[connectors.wms]` on a temporary
//! inbox, the real broker and PostgreSQL. A good file reaches the ledger and is archived; a
//! bad one is rejected whole with its errors; a file dropped twice counts once; a file is
//! taken only when complete; a stop mid-file loses and doubles nothing; a million lines
//! go through in bounded memory; and `onhand connector wms` runs it on its own.

mod common;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::*;
use onhand::app::App;
use onhand_core::{config::Config, testing::kafka_brokers};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    ClientConfig,
};
use serde_json::{json, Value};
use sha2::Digest;

async fn wms_config(inbox: &Path, section: Value) -> Config {
    let mut config = test_config(3).await;
    let mut wms = json!({ "inbox": inbox, "scan_interval_ms": 200, "source_instance": "wms-dc-sp" });
    wms.as_object_mut().unwrap().extend(section.as_object().unwrap().clone());
    config.connectors.insert("wms".into(), wms);
    config
}

/// Writes a file under a temporary name and renames it, as the drop convention asks.
fn drop_file(inbox: &Path, name: &str, text: &str) {
    let temporary = inbox.join(format!("{name}.tmp"));
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(temporary, inbox.join(name)).unwrap();
}

async fn until_exists(path: PathBuf, seconds: u64) {
    eventually(&format!("{} to exist", path.display()), seconds, || {
        let exists = path.exists();
        async move { exists.then_some(()) }
    })
    .await;
}

async fn on_hand_is(app: &App, sku: &str, location: &str, on_hand: i64) {
    eventually(&format!("{sku}@{location} at {on_hand}"), 60, || async {
        (levels(app, sku).await.get(location) == Some(&on_hand)).then_some(())
    })
    .await;
}

/// Records on `topic`, from the brokers' watermarks.
fn records_on(topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().expect("a test consumer");
    (0..partitions)
        .map(|p| {
            let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
            high - low
        })
        .sum()
}

const MOVEMENTS: &str = "\
sku,location,kind,quantity,occurred_at,reference
7891000100103,dc-sp,receipt,480,2026-11-20T09:10:00-03:00,ASN-2026-0042/1
7891000100257,dc-sp,receipt,120,2026-11-20T09:10:00-03:00,ASN-2026-0042/2
7891000100103,dc-sp,transfer_out,24,2026-11-20T11:00:00-03:00,TR-2026-004512/1
7891000100103,dc-sp,damage,2,2026-11-20T11:30:00-03:00,
";

/// M5: a file that can never be taken (here, larger than the limit) is moved aside with
/// its reason, and the files after it are taken all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_that_cannot_be_taken_is_moved_aside_and_the_others_go_on() {
    onhand_core::skip_without_servers!();
    let inbox = tempfile::tempdir().unwrap();
    let app = serve(&wms_config(inbox.path(), json!({ "file_bytes_max": 1_000 })).await).await;
    let huge = format!("{MOVEMENTS}{}", "7891000100103,dc-sp,receipt,1,2026-11-20T09:10:00-03:00,X\n".repeat(40));
    drop_file(inbox.path(), "a-first-and-too-large.csv", &huge);
    std::thread::sleep(Duration::from_millis(20));
    drop_file(inbox.path(), "b-second.csv", MOVEMENTS);
    until_exists(inbox.path().join("archive/b-second.csv"), 60).await;
    on_hand_is(&app, "7891000100257", "dc-sp", 120).await;
    until_exists(inbox.path().join("rejected/a-first-and-too-large.csv"), 60).await;
    let errors: Value = serde_json::from_str(
        &std::fs::read_to_string(inbox.path().join("rejected/a-first-and-too-large.errors.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(errors["errors"][0]["code"], "wms_file_too_large", "{errors}");
    assert!(!inbox.path().join("a-first-and-too-large.csv").exists());
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_good_file_reaches_the_ledger_and_is_archived() {
    onhand_core::skip_without_servers!();
    let inbox = tempfile::tempdir().unwrap();
    let app = serve(&wms_config(inbox.path(), json!({})).await).await;
    drop_file(inbox.path(), "movements-20261120.csv", MOVEMENTS);
    until_exists(inbox.path().join("archive/movements-20261120.csv"), 60).await;
    assert!(!inbox.path().join("movements-20261120.csv").exists());
    until_recorded(&app, 4, 60).await;
    on_hand_is(&app, "7891000100103", "dc-sp", 454).await;
    on_hand_is(&app, "7891000100257", "dc-sp", 120).await;

    // The snapshot counts the centre afterwards: each row sets its level.
    let snapshot = "sku,location,quantity,counted_at\n7891000100103,dc-sp,450,2026-11-20T18:00:00-03:00\n\
                    7891000100257,dc-sp,0,2026-11-20T18:00:00-03:00\n";
    drop_file(inbox.path(), "snapshot-20261120.csv", snapshot);
    until_exists(inbox.path().join("archive/snapshot-20261120.csv"), 60).await;
    on_hand_is(&app, "7891000100103", "dc-sp", 450).await;
    on_hand_is(&app, "7891000100257", "dc-sp", 0).await;
    assert_eq!(metric(&app, "onhand_wms_files_total{outcome=\"archived\"}"), 2.0);
    assert_eq!(metric(&app, "onhand_wms_lines_total"), 6.0);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_with_bad_lines_is_rejected_whole_with_every_bad_line_listed() {
    onhand_core::skip_without_servers!();
    let inbox = tempfile::tempdir().unwrap();
    let config = wms_config(inbox.path(), json!({})).await;
    let app = serve(&config).await;
    let bad = "\
sku,location,kind,quantity,occurred_at,reference
7891000100103,dc-sp,receipt,480,2026-11-20T09:10:00-03:00,ASN-1
7891000100103,dc-sp,receipt,0,2026-11-20T09:10:00-03:00,ASN-2
7891000100103,dc-sp,reserve,1,2026-11-20T09:10:00-03:00,ASN-3
7891000100103,dc-sp,receipt,5,2026-11-20T09:10:00-03:00
7891000100/103,dc-sp,receipt,5,yesterday,ASN-5
7891000100103,dc-sp,receipt,5,2026-11-20T09:10:00-03:00,ASN-6
";
    drop_file(inbox.path(), "bad.csv", bad);
    let errors_path = inbox.path().join("rejected/bad.errors.json");
    until_exists(errors_path.clone(), 60).await;
    assert!(inbox.path().join("rejected/bad.csv").exists() && !inbox.path().join("bad.csv").exists());
    let errors: Value = serde_json::from_str(&std::fs::read_to_string(&errors_path).unwrap()).unwrap();
    let listed: Vec<(i64, &str)> = errors["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_i64().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        [(3, "invalid_quantity"), (4, "kind_not_accepted"), (5, "wms_unreadable_line"), (6, "schema_violation")]
    );
    assert_eq!((errors["lines"].as_i64(), errors["bad_lines"].as_i64()), (Some(6), Some(4)), "{errors}");

    drop_file(inbox.path(), "header.csv", "id_produto,quantidade\n01,10\n");
    until_exists(inbox.path().join("rejected/header.errors.json"), 60).await;
    // A good file after them is produced alone: nothing of the rejected ones went out.
    drop_file(inbox.path(), "good.csv", MOVEMENTS);
    until_exists(inbox.path().join("archive/good.csv"), 60).await;
    until_recorded(&app, 4, 60).await;
    assert_eq!(records_on(&config.kafka.topics.movements, 3), 4);
    assert_eq!(metric(&app, "onhand_wms_files_total{outcome=\"rejected\"}"), 2.0);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_file_dropped_twice_counts_once() {
    onhand_core::skip_without_servers!();
    let inbox = tempfile::tempdir().unwrap();
    let config = wms_config(inbox.path(), json!({})).await;
    let app = serve(&config).await;
    drop_file(inbox.path(), "movements.csv", MOVEMENTS);
    until_exists(inbox.path().join("archive/movements.csv"), 60).await;
    drop_file(inbox.path(), "movements.csv", MOVEMENTS);
    until_exists(inbox.path().join("archive/movements.1.csv"), 60).await;
    assert_eq!(records_on(&config.kafka.topics.movements, 3), 8, "produced twice, with the same event ids");
    until_recorded(&app, 4, 60).await;
    on_hand_is(&app, "7891000100103", "dc-sp", 454).await;
    eventually("the second copy skipped by the ledger", 60, || async {
        (metric(&app, "onhand_ledger_duplicates_skipped_total") == 4.0).then_some(())
    })
    .await;
    assert_eq!(app.db.movement_count().await.unwrap(), 4);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_is_taken_only_once_complete() {
    onhand_core::skip_without_servers!();
    let inbox = tempfile::tempdir().unwrap();
    let config = wms_config(inbox.path(), json!({})).await;
    let app = serve(&config).await;
    let half = &MOVEMENTS[..MOVEMENTS.len() / 2];
    std::fs::write(inbox.path().join("movements.csv.tmp"), half).unwrap();
    std::fs::write(inbox.path().join(".movements2.csv"), half).unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await; // five scans
    assert_eq!(records_on(&config.kafka.topics.movements, 3), 0, "a temporary name is not taken");
    assert!(inbox.path().join("movements.csv.tmp").exists());
    std::fs::write(inbox.path().join("movements.csv.tmp"), MOVEMENTS).unwrap();
    std::fs::rename(inbox.path().join("movements.csv.tmp"), inbox.path().join("movements.csv")).unwrap();
    until_exists(inbox.path().join("archive/movements.csv"), 60).await;
    until_recorded(&app, 4, 60).await;
    assert!(inbox.path().join(".movements2.csv").exists(), "a dot-file is never taken");
    app.stop().await.unwrap();

    // With markers required, a file waits for its NAME.csv.done.
    let inbox = tempfile::tempdir().unwrap();
    let app = serve(&wms_config(inbox.path(), json!({ "done_marker_required": true })).await).await;
    std::fs::write(inbox.path().join("movements.csv"), half).unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(inbox.path().join("movements.csv").exists(), "no marker yet: not taken");
    std::fs::write(inbox.path().join("movements.csv"), MOVEMENTS).unwrap();
    std::fs::write(inbox.path().join("movements.csv.done"), "").unwrap();
    until_exists(inbox.path().join("archive/movements.csv"), 60).await;
    assert!(!inbox.path().join("movements.csv.done").exists(), "the marker goes with its file");
    until_recorded(&app, 4, 60).await;
    app.stop().await.unwrap();
}

/// `lines` movements over `skus` SKUs at dc-sp: receipts of 3 units, written as a stream.
fn write_receipts(path: &Path, lines: u64, skus: u64) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(out, "sku,location,kind,quantity,occurred_at,reference").unwrap();
    for i in 0..lines {
        writeln!(out, "SKU-{:06},dc-sp,receipt,3,2026-11-20T09:10:00-03:00,ASN-{i}", i % skus).unwrap();
    }
    out.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stop_mid_file_produces_it_again_harmlessly() {
    onhand_core::skip_without_servers!();
    let inbox = tempfile::tempdir().unwrap();
    // A small window makes the file take a few seconds, long enough to stop in the middle.
    let config = wms_config(inbox.path(), json!({ "batch_lines_max": 100, "in_flight_max": 20 })).await;
    let app = serve(&config).await;
    let lines = 10_000;
    write_receipts(&inbox.path().join("receipts.csv.tmp"), lines, 100);
    std::fs::rename(inbox.path().join("receipts.csv.tmp"), inbox.path().join("receipts.csv")).unwrap();
    eventually("part of the file acknowledged", 60, || async {
        (metric(&app, "onhand_wms_lines_total") >= 2_000.0).then_some(())
    })
    .await;
    app.stop().await.unwrap();
    let produced = records_on(&config.kafka.topics.movements, 3);
    assert!(inbox.path().join("receipts.csv").exists(), "a file stopped mid-way stays in the inbox");
    assert!(produced < lines as i64, "stopped mid-file: {produced} records");

    let app = serve(&config).await;
    until_exists(inbox.path().join("archive/receipts.csv"), 180).await;
    assert!(records_on(&config.kafka.topics.movements, 3) >= lines as i64 + 2_000, "produced again from the start");
    until_recorded(&app, lines as i64, 120).await;
    for sku in ["SKU-000000", "SKU-000099"] {
        on_hand_is(&app, sku, "dc-sp", 3 * lines as i64 / 100).await;
    }
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_million_line_file_goes_through() {
    onhand_core::skip_without_servers!();
    let inbox = tempfile::tempdir().unwrap();
    let mut config = wms_config(inbox.path(), json!({})).await;
    // Only the connector is measured here: the ledger's side is in load-tests/.
    config.ledger.enabled = false;
    let app = serve(&config).await;
    let lines = 1_000_000;
    write_receipts(&inbox.path().join("million.csv.tmp"), lines, 50_000);
    std::fs::rename(inbox.path().join("million.csv.tmp"), inbox.path().join("million.csv")).unwrap();
    let started = std::time::Instant::now();
    until_exists(inbox.path().join("archive/million.csv"), 600).await;
    eprintln!("a million lines archived in {:?} (debug build)", started.elapsed());
    assert_eq!(records_on(&config.kafka.topics.movements, 3), lines as i64);
    assert_eq!(metric(&app, "onhand_wms_lines_total"), lines as f64);
    app.stop().await.unwrap();
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onhand_connector_wms_runs_the_connector_on_its_own() {
    onhand_core::skip_without_servers!();
    let inbox = tempfile::tempdir().unwrap();
    let config = test_config(3).await;
    let listen = common::process::free_addr();
    let child = Command::new(env!("CARGO_BIN_EXE_onhand"))
        .args(["connector", "wms", "--inbox"])
        .arg(inbox.path())
        .args(["--listen", &listen.to_string()])
        .env("DATABASE_URL", &config.database.url)
        .env("ONHAND_KAFKA__BROKERS", &config.kafka.brokers)
        .env("ONHAND_KAFKA__PARTITIONS", "3")
        .env("ONHAND_KAFKA__TOPICS__MOVEMENTS", &config.kafka.topics.movements)
        .env("ONHAND_CONNECTORS__WMS__SCAN_INTERVAL_MS", "200")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _running = Running(child);
    drop_file(inbox.path(), "movements.csv", MOVEMENTS);
    until_exists(inbox.path().join("archive/movements.csv"), 60).await;
    assert_eq!(records_on(&config.kafka.topics.movements, 3), 4);
    let read = consume_all(&config.kafka.topics.movements, 4);
    let mut ids: Vec<String> = read
        .iter()
        .map(|m| {
            let value: Value = serde_json::from_slice(rdkafka::Message::payload(m).unwrap()).unwrap();
            value["event_id"].as_str().unwrap().to_string()
        })
        .collect();
    ids.sort();
    let sha256 = hex::encode(sha2::Sha256::digest(MOVEMENTS));
    assert_eq!(ids, (2..=5).map(|line| format!("wms:{sha256}:{line}")).collect::<Vec<_>>());

    // Its probes and Prometheus read it at --listen.
    let (status, ready) = eventually("the connector ready", 30, || async {
        let answer = http_get(listen, "/readyz").await;
        (answer.0 == 200).then_some(answer)
    })
    .await;
    assert_eq!((status, &ready["components"]["connector:wms"]["state"]), (200, &json!("running")), "{ready}");
    assert_eq!(http_get(listen, "/healthz").await.0, 200);
    let metrics = reqwest::get(format!("http://{listen}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("onhand_wms_lines_total 4"), "{metrics}");
}
