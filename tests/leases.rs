//! Scale-out without duplicate work: two `onhand serve` replicas on one database and one
//! set of topics, with the same connector sections. One replica holds each poller's or
//! inbox's lease and does its work; the other stands by, ready, serving HTTP. The holder
//! is killed (its `App` dropped: its tasks end where they are, its lease is not released)
//! in the middle of ERP polling, and in the middle of a WMS file; the other takes over
//! within the lease's ttl, and every journal row and every line arrives exactly once.
//!
//! The killed replica runs no ledger: a dropped `App` aborts its tasks, but the ledger's
//! thread would stay in the consumer group. The survivor's ledger applies everything.

mod common;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use common::*;
use onhand::app::App;
use onhand_core::{
    config::Config,
    testing::{fresh_postgres_url, postgres_admin_url},
};
use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection};

/// Short, for a quick takeover, yet long enough that a loaded test machine renews within
/// its third.
const TTL_MS: u64 = 3_000;

/// The replicas' configuration: one database and one set of topics, a short ttl.
async fn replicas_config(connector: &str, section: Value) -> Config {
    let mut config = test_config(3).await;
    config.leases.ttl_ms = TTL_MS;
    config.connectors.insert(connector.into(), section);
    config
}

/// The replica that will be killed: the same configuration without a ledger.
async fn doomed(config: &Config) -> App {
    let mut without_ledger = config.clone();
    without_ledger.ledger.enabled = false;
    serve(&without_ledger).await
}

fn held(app: &App, lease: &str) -> f64 {
    metric(app, &format!("onhand_lease_held{{name=\"{lease}\"}}"))
}

async fn until_held(app: &App, lease: &str, seconds: u64) {
    eventually(&format!("the lease {lease} held"), seconds, || async { (held(app, lease) == 1.0).then_some(()) }).await;
}

/// Waits until the replica's port accepts connections, then answers its `/readyz`.
async fn readiness(addr: SocketAddr) -> (u16, Value) {
    eventually(&format!("{addr} to accept connections"), 30, || async {
        tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
    })
    .await;
    http_get(addr, "/readyz").await
}

/// The standing-by replica is ready, and says that another holds the lease.
async fn stands_by(app: &App, lease: &str) {
    readiness(app.local_addr).await;
    let component = format!("lease:{lease}");
    let (status, ready) = eventually(&format!("{component} standing by"), 30, || async {
        let (status, ready) = http_get(app.local_addr, "/readyz").await;
        (ready["components"][&component]["state"] == "standby").then_some((status, ready))
    })
    .await;
    assert_eq!(status, 200, "a replica standing by serves and is ready: {ready}");
    let component = &ready["components"][&component];
    assert!(component["detail"].as_str().unwrap_or_default().contains("holds the lease"), "{ready}");
    assert_eq!(held(app, lease), 0.0);
}

/// Drops a test database, with whatever connections were left to it by a killed replica.
async fn drop_database(url: &str) {
    let name = url.rsplit('/').next().expect("a database name");
    let mut admin = PgConnection::connect(&postgres_admin_url()).await.expect("the test server");
    admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await.expect("dropped");
}

/// The rows the ERP writes while it is polled: an insert of `rows` receipts every 50 ms,
/// over five SKUs, until `writing` is cleared; answers the rows written and the units each
/// SKU received. The test clears it only after the holder died, so rows arrive after the
/// kill however fast or slow the machine is.
async fn write_journal(mut erp: PgConnection, writing: Arc<AtomicBool>, rows: usize) -> (usize, [i64; 5]) {
    let mut units = [0; 5];
    let mut batch = 0;
    while writing.load(Ordering::Relaxed) {
        let values: Vec<String> = (0..rows)
            .map(|row| {
                let (sku, quantity) = ((batch * rows + row) % 5, (row % 7 + 1) as i64);
                units[sku] += quantity;
                format!("('SKU-L{sku}', 'CD01', 'ENT', {quantity}, 'NF-{batch}-{row}')")
            })
            .collect();
        let insert = format!(
            "INSERT INTO stock_journal (item, warehouse, movement_type, quantity, reference) VALUES {}",
            values.join(",")
        );
        erp.execute(insert.as_str()).await.expect("the erp takes the rows");
        batch += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (batch * rows, units)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_erp_poller_runs_on_one_replica_and_another_takes_over_when_it_dies() {
    onhand_core::skip_without_servers!();
    let erp_url = fresh_postgres_url().await;
    let mut erp = PgConnection::connect(&erp_url).await.unwrap();
    erp.execute(include_str!("fixtures/erp/schema.sql")).await.unwrap();
    let config = replicas_config(
        "erp",
        json!({
            "source_url": erp_url, "poll_interval_ms": 50, "safety_delay_ms": 0, "retry_max_ms": 1000,
            "batch_rows_max": 25, "kinds": { "ENT": "receipt" }, "locations": { "CD01": "dc-sp" },
        }),
    )
    .await;
    let first = doomed(&config).await;
    until_held(&first, "erp", 30).await;
    let second = serve(&config).await;
    stands_by(&second, "erp").await;

    let writing = Arc::new(AtomicBool::new(true));
    let writer = tokio::spawn(write_journal(erp, writing.clone(), 25));
    // Killed while it polls: rows keep arriving in the journal after this.
    eventually("part of the journal recorded", 60, || async {
        (second.db.movement_count().await.ok()? >= 300).then_some(())
    })
    .await;
    drop(first);
    let killed = tokio::time::Instant::now();
    until_held(&second, "erp", 10).await;
    let took_over = killed.elapsed();
    assert!(took_over < Duration::from_millis(TTL_MS * 2), "taken over within the ttl and a third: {took_over:?}");
    assert_eq!(metric(&second, "onhand_lease_takeovers_total{name=\"erp\"}"), 1.0);
    let (_, ready) = readiness(second.local_addr).await;
    assert_eq!(ready["components"]["lease:erp"]["state"], "running", "{ready}");

    // A few more batches reach the new holder before the ERP stops writing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    writing.store(false, Ordering::Relaxed);
    let (written, units) = writer.await.unwrap();
    let total = written as i64;
    until_recorded(&second, total, 120).await;
    for (sku, units) in units.iter().enumerate() {
        on_hand_is(&second, &format!("SKU-L{sku}"), "dc-sp", *units).await;
    }
    // Nothing more comes later: every row once, whatever the killed holder had sent.
    tokio::time::sleep(Duration::from_millis(TTL_MS)).await;
    assert_eq!(second.db.movement_count().await.unwrap(), total, "every row exactly once");

    second.stop().await.unwrap();
    drop_database(&config.database.url).await;
    drop_database(&erp_url).await;
}

/// `lines` receipts of 3 units over 100 SKUs at dc-sp, written under a temporary name and
/// renamed into the inbox.
fn drop_receipts(inbox: &Path, name: &str, lines: u64) {
    use std::io::Write;
    let temporary = inbox.join(format!(".{name}.tmp"));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&temporary).unwrap());
    writeln!(out, "sku,location,kind,quantity,occurred_at,reference").unwrap();
    for i in 0..lines {
        writeln!(out, "SKU-{:06},dc-sp,receipt,3,2026-11-20T09:10:00-03:00,ASN-{i}", i % 100).unwrap();
    }
    out.into_inner().unwrap().sync_all().unwrap();
    std::fs::rename(temporary, inbox.join(name)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wms_file_half_taken_by_a_replica_that_dies_is_finished_by_another() {
    onhand_core::skip_without_servers!();
    let inbox = tempfile::tempdir().unwrap();
    // A small window makes the file take a few seconds, long enough to kill in the middle.
    let section = json!({
        "inbox": inbox.path(), "scan_interval_ms": 200, "source_instance": "wms-dc-sp",
        "batch_lines_max": 100, "in_flight_max": 20,
    });
    let config = replicas_config("wms", section).await;
    let first = doomed(&config).await;
    until_held(&first, "wms", 30).await;
    let second = serve(&config).await;
    stands_by(&second, "wms").await;

    let lines = 3_000;
    drop_receipts(inbox.path(), "receipts.csv", lines);
    eventually("part of the file acknowledged", 60, || async {
        (metric(&first, "onhand_wms_lines_total") >= 600.0).then_some(())
    })
    .await;
    drop(first);
    assert!(inbox.path().join("receipts.csv").exists(), "a file its holder died in stays in the inbox");
    until_held(&second, "wms", 10).await;
    assert_eq!(metric(&second, "onhand_wms_lines_total"), 0.0, "nothing taken while standing by");
    assert_eq!(metric(&second, "onhand_lease_takeovers_total{name=\"wms\"}"), 1.0);

    let archived = inbox.path().join("archive/receipts.csv");
    eventually("the file archived by the new holder", 180, || {
        let exists = archived.exists();
        async move { exists.then_some(()) }
    })
    .await;
    assert_eq!(metric(&second, "onhand_wms_lines_total"), lines as f64, "the new holder produced it whole");
    until_recorded(&second, lines as i64, 120).await;
    for sku in ["SKU-000000", "SKU-000042", "SKU-000099"] {
        on_hand_is(&second, sku, "dc-sp", 3 * lines as i64 / 100).await;
    }
    tokio::time::sleep(Duration::from_millis(TTL_MS)).await;
    assert_eq!(second.db.movement_count().await.unwrap(), lines as i64, "every line exactly once");

    second.stop().await.unwrap();
    drop_database(&config.database.url).await;
}
