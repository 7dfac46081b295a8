//! onhand as an operator runs it: separate processes killed with SIGKILL and started again
//! at once (what systemd's `Restart=always` and Kubernetes do), and stopped with SIGTERM.
//! Whatever was answered as accepted counts exactly once. A process that cannot go on
//! exits with the reason, for its service manager to start it again.

mod common;

use std::{collections::HashMap, time::Duration};

use common::{process::Process, *};
use onhand_core::{db, event::MovementKind::*};
use serde_json::json;

/// on_hand per (sku, location).
type Levels = HashMap<(String, String), i64>;

/// Movements over 50 SKUs x 4 locations, and the on_hand each level must end with.
fn workload(count: usize) -> (Vec<(String, Vec<u8>)>, Levels) {
    let mut records = Vec::with_capacity(count);
    let mut expected = Levels::new();
    for i in 0..count {
        let (sku, location) = (format!("SKU-{}", i % 50), format!("store-{}", (i / 50) % 4));
        let (kind, quantity, delta) = if i % 4 == 0 { (Sale, 1, -1) } else { (Receipt, 3, 3) };
        records.push(movement_json(&format!("kill-{i}"), &sku, &location, kind, quantity, (i % 3_000) as i64));
        *expected.entry((sku, location)).or_default() += delta;
    }
    (records, expected)
}

/// C2: a ledger killed mid-apply and started again within a second, three times in a row,
/// ends with every level and the movement count exact. A new member that joins beside the
/// dead one (whose session has not timed out yet) must not sit without partitions for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ledger_killed_mid_apply_and_restarted_at_once_ends_exact() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(3).await;
    config.ledger.batch_size_max = 200;
    onhand_core::kafka::ensure_topics(&config.kafka).await.unwrap();
    const MOVEMENTS: usize = 12_000;
    let (records, expected) = workload(MOVEMENTS);
    produce(&producer(), &config.kafka.topics.movements, &records).await;
    let db = db::open(&config.database.url, 2).await.unwrap();
    let logs = tempfile::tempdir().unwrap();

    let mut process = Process::serve(&config, logs.path(), "serve-0");
    let mut recorded = 0;
    for kill in 1..=3 {
        // Mid-apply: some more movements recorded since the last start, not all.
        let before = recorded;
        recorded = eventually(&format!("progress before kill {kill}"), 120, || async {
            let count = db.movement_count().await.ok()?;
            (count >= before + 500).then_some(count)
        })
        .await;
        assert!(recorded < MOVEMENTS as i64, "the kill must come mid-apply ({recorded} recorded)");
        process.kill();
        process = Process::serve(&config, logs.path(), &format!("serve-{kill}"));
    }
    let done = tokio::time::timeout(Duration::from_secs(180), async {
        loop {
            if db.movement_count().await.unwrap_or(0) == MOVEMENTS as i64 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(done.is_ok(), "the restarted ledger did not finish; its log:\n{}", process.log_tail());
    for ((sku, location), on_hand) in &expected {
        let levels = db.stock_by_sku(&onhand_core::event::Sku::parse(sku).unwrap()).await.unwrap();
        let level = levels.iter().find(|l| l.location.as_str() == location).expect("a level");
        assert_eq!(level.on_hand, *on_hand, "{sku}@{location}");
    }
    assert_eq!(db.movement_count().await.unwrap(), MOVEMENTS as i64);
    let (status, ready) = eventually("the restarted process ready", 60, || async {
        let answer = http_get(process.addr, "/readyz").await;
        (answer.0 == 200).then_some(answer)
    })
    .await;
    assert_eq!((status, &ready["components"]["ledger"]["state"]), (200, &json!("running")), "{ready}");
    assert!(process.terminate(), "a stop with SIGTERM ends cleanly");
}

/// A task that fails for good (here a connector whose journal URL cannot work) ends the
/// process with a failure status and the reason, instead of leaving it up and unready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_that_fails_for_good_ends_the_process_with_the_reason() {
    onhand_core::skip_without_servers!();
    let config = test_config(1).await;
    let logs = tempfile::tempdir().unwrap();
    let erp = [("ONHAND_CONNECTORS__ERP__SOURCE_URL", "not a database url")];
    let mut process = Process::serve_with(&config, &erp, logs.path(), "serve");
    let status = tokio::task::block_in_place(|| process.exited(120));
    let log = process.log_tail();
    assert!(status.is_some_and(|status| !status.success()), "onhand serve must exit with a failure: {log}");
    assert!(log.contains("onhand: connector:erp failed: connector erp: "), "{log}");
}
