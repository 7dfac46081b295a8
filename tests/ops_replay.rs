//! `onhand replay` run as the operator runs it (the built binary), against the real broker
//! and PostgreSQL of `scripts/test`: a group of the stock topic moved back by time re-reads
//! exactly the records after that time; the ledger's group rewound in the database reads
//! duplicates that change no level; a move asks for `--yes` and never goes forward; a
//! database restored from an older backup resumes by itself from the offsets saved in it;
//! the ERP cursor moved back reads the journal again (a row a fixed mapping now takes is
//! counted, the others are duplicates); an archived WMS file taken again counts once.

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{ops::*, *};
use onhand_core::{
    db::PartitionOffset,
    event::MovementKind::{Receipt, Sale},
    testing::{create_database, kafka_brokers, postgres_admin_url, unique_name},
};
use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer},
    message::Message,
    producer::FutureRecord,
    ClientConfig,
};
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};

/// `onhand replay ARGS --config FILE`, the built binary with only the environment a test
/// sets, on the tokio blocking pool.
async fn replay(config_file: &Path, args: &[&str]) -> Run {
    let mut all: Vec<String> = vec!["replay".into()];
    all.extend(args.iter().map(|a| a.to_string()));
    all.extend(["--config".to_string(), config_file.display().to_string()]);
    onhand_async(&all.iter().map(String::as_str).collect::<Vec<_>>()).await
}

/// With a broker that cannot describe groups (tansu), a move is refused unless the
/// operator says the members are stopped; with one that can, the group is seen empty.
/// Either way, the answer says which.
fn members_are_unknown_or_stopped(run: &Run) {
    let report = run.json();
    match report["members"]["status"].as_str() {
        Some("unknown") => {
            assert_eq!(run.code, 1, "refused");
            assert_eq!(report["refused"][0]["code"], "members_unknown", "{report}");
            assert_eq!(report["moved"], false);
        }
        Some("stopped") => assert_eq!(run.code, 3, "{report}"),
        other => panic!("members {other:?}: {report}"),
    }
}

/// A consumer in `group`, subscribed to `topic`, reading from the earliest record when the
/// group has committed nothing.
fn group_consumer(group: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("a test consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// Reads `count` records in `group` (failing after a minute), then makes sure no other
/// comes for `quiet`, commits what was read and leaves the group. The payloads, sorted.
fn read_in_group(group: &str, topic: &str, count: usize, quiet: Duration) -> Vec<String> {
    let consumer = group_consumer(group, topic);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut read = Vec::new();
    while read.len() < count && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            read.push(String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned());
        }
    }
    let calm = std::time::Instant::now() + quiet;
    while std::time::Instant::now() < calm {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            read.push(String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned());
        }
    }
    if !read.is_empty() {
        consumer.commit_consumer_state(CommitMode::Sync).expect("the group's offsets are committed");
    }
    consumer.unsubscribe();
    read.sort();
    read
}

async fn produce_levels(topic: &str, names: &[&str]) {
    let producer = producer();
    for name in names {
        let record = FutureRecord::to(topic).key(*name).payload(*name);
        producer.send(record, Duration::from_secs(30)).await.expect("the test broker acknowledges");
    }
}

/// The Done-when of issue 11: a group (here, a sink's on the stock topic, its offsets in
/// Kafka) moved back by time reads again exactly the records after that time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_moved_back_by_time_reads_again_exactly_the_records_after_that_time() {
    onhand_core::skip_without_servers!();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(2).await;
    onhand_core::kafka::ensure_topics(&config.kafka).await.unwrap();
    let file = config_file(&config, dir.path());
    let (topic, group) = (config.kafka.topics.stock.clone(), unique_name("sink"));
    let before = ["a@1", "b@1", "c@1"];
    let after = ["d@1", "e@1", "f@1", "g@1"];
    produce_levels(&topic, &before).await;
    // Kafka's timestamps are in milliseconds: the time falls strictly between the two.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let time = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    produce_levels(&topic, &after).await;
    let (g, t) = (group.clone(), topic.clone());
    let first = tokio::task::spawn_blocking(move || read_in_group(&g, &t, 7, Duration::from_secs(1))).await.unwrap();
    assert_eq!(first.len(), 7, "{first:?}");

    let at = time.to_rfc3339();
    let asked = replay(&file, &["group", &group, "--topic", "stock", "--to-time", &at, "--json"]).await;
    members_are_unknown_or_stopped(&asked);
    let args = ["group", &group, "--topic", "stock", "--to-time", &at, "--members-stopped"];
    let shown = replay(&file, &args).await;
    assert_eq!(shown.code, 3, "without --yes nothing moves");
    assert!(shown.stdout.contains("4 record(s) read again in all"), "{}", shown.stdout);
    assert!(shown.stdout.contains("its offsets are committed in Kafka"), "{}", shown.stdout);
    assert!(shown.stdout.contains("nothing moved: run again with --yes"), "{}", shown.stdout);
    assert!(shown.stdout.contains("replaying is harmless"), "{}", shown.stdout);
    let unmoved = tokio::task::spawn_blocking({
        let (g, t) = (group.clone(), topic.clone());
        move || read_in_group(&g, &t, 0, Duration::from_secs(3))
    })
    .await
    .unwrap();
    assert!(unmoved.is_empty(), "nothing moved without --yes: {unmoved:?}");

    let moved = replay(&file, &[&args[..], &["--yes", "--json"]].concat()).await;
    assert_eq!(moved.code, 0, "{}", moved.stderr);
    let report = moved.json();
    assert_eq!((report["moved"].as_bool(), report["rereads"].as_i64()), (Some(true), Some(4)), "{report}");
    let again =
        tokio::task::spawn_blocking(move || read_in_group(&group, &topic, 4, Duration::from_secs(3))).await.unwrap();
    assert_eq!(again, after, "exactly the records after the time, once each");
}

/// The ledger's group is moved in the database, only backwards: the movements read again
/// are duplicates, which change no level and record nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledgers_group_rewound_reads_duplicates_that_change_nothing_and_never_goes_forward() {
    onhand_core::skip_without_servers!();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(1).await;
    let file = config_file(&config, dir.path());
    let movements = &config.kafka.topics.movements;
    let app = serve(&config).await;
    let first: Vec<(String, Vec<u8>)> =
        (0..5).map(|i| movement_json(&format!("r-{i}"), "SKU-R", "s1", Receipt, 10, i)).collect();
    produce(&producer(), movements, &first).await;
    until_recorded(&app, 5, 60).await;
    let level = app.db.stock_by_sku(&onhand_core::event::Sku::parse("SKU-R").unwrap()).await.unwrap()[0].clone();
    assert_eq!(level.on_hand, 50);
    app.stop().await.unwrap();
    // Two more while the ledger is stopped: saved 5, the partition's end 7.
    let later = [movement_json("s-0", "SKU-S", "s1", Receipt, 3, 10), movement_json("s-1", "SKU-S", "s1", Sale, 1, 11)];
    produce(&producer(), movements, &later).await;
    let ledger = config.ledger.group_id.as_str();

    let forward = replay(
        &file,
        &["group", ledger, "--topic", "movements", "--to-offset", "0:6", "--members-stopped", "--yes", "--json"],
    )
    .await;
    assert_eq!(forward.code, 1, "refused");
    let report = forward.json();
    assert_eq!((report["refused"][0]["code"].as_str(), report["moved"].as_bool()), (Some("forward"), Some(false)));
    let outside =
        replay(&file, &["group", ledger, "--topic", "movements", "--to-offset", "0:99", "--members-stopped"]).await;
    assert_eq!(outside.code, 1);
    assert!(outside.stdout.contains("refused (out_of_range)"), "{}", outside.stdout);
    assert!(!outside.stdout.contains("refused (forward)"), "one reason is enough: {}", outside.stdout);

    let asked = replay(&file, &["group", ledger, "--topic", "movements", "--to-earliest", "--json"]).await;
    members_are_unknown_or_stopped(&asked);
    let earliest = ["group", ledger, "--topic", "movements", "--to-earliest", "--members-stopped"];
    let shown = replay(&file, &earliest).await;
    assert_eq!(shown.code, 3);
    assert!(shown.stdout.contains("the ledger's group: its offsets are kept in the database"), "{}", shown.stdout);
    assert!(shown.stdout.contains("partition 0            5 -> 0          re-reads 5"), "{}", shown.stdout);
    assert!(shown.stdout.contains("5 record(s) read again in all"), "{}", shown.stdout);
    let db = onhand_core::db::open(&config.database.url, 2).await.unwrap();
    let saved = |next_offset| vec![PartitionOffset { partition: 0, next_offset }];
    assert_eq!(db.consumer_offsets(ledger, movements).await.unwrap(), saved(5), "nothing moved without --yes");

    let moved = replay(&file, &[&earliest[..], &["--yes"]].concat()).await;
    assert_eq!(moved.code, 0, "{}", moved.stderr);
    assert!(moved.stdout.contains("moved: 5 record(s) will be read again"), "{}", moved.stdout);
    assert_eq!(db.consumer_offsets(ledger, movements).await.unwrap(), saved(0));

    let app = serve(&config).await;
    until_recorded(&app, 7, 60).await;
    on_hand_is(&app, "SKU-S", "s1", 2).await;
    eventually("the five read again skipped as duplicates", 60, || async {
        (metric(&app, "onhand_ledger_duplicates_skipped_total") == 5.0).then_some(())
    })
    .await;
    let again = app.db.stock_by_sku(&onhand_core::event::Sku::parse("SKU-R").unwrap()).await.unwrap()[0].clone();
    assert_eq!((again.on_hand, again.version), (level.on_hand, level.version), "unchanged, not even rewritten");
    assert_eq!(app.db.movement_count().await.unwrap(), 7, "each recorded once");
    eventually("the saved offset at the end again", 30, || async {
        (app.db.consumer_offsets(ledger, movements).await.ok()? == saved(7)).then_some(())
    })
    .await;
    app.stop().await.unwrap();
}

/// `pg_dump` or `pg_restore`: on the PATH, or in PostgreSQL's own directory.
fn pg_tool(name: &str) -> PathBuf {
    let on_path = Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success());
    if on_path {
        return PathBuf::from(name);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.filter_map(|d| Some(d.ok()?.path().join("bin").join(name))).filter(|p| p.exists()).collect())
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| panic!("{name} is not installed (apt-get install postgresql-client)"))
}

fn run_tool(name: &str, args: &[&str]) {
    let output = Command::new(pg_tool(name)).args(args).output().unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(output.status.success(), "{name} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

async fn on_hand_by_sku(app: &onhand::app::App, skus: &[&str]) -> HashMap<String, HashMap<String, i64>> {
    let mut all = HashMap::new();
    for sku in skus {
        all.insert(sku.to_string(), levels(app, sku).await);
    }
    all
}

/// The first answer to "the database was lost": restore the last backup. It holds the
/// movements and the offsets past them, saved together, so the ledger resumes by itself
/// from there and the levels end exact, with nothing read twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_restored_from_an_older_backup_resumes_from_its_saved_offsets_and_ends_exact() {
    onhand_core::skip_without_servers!();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(2).await;
    let movements = &config.kafka.topics.movements;
    let app = serve(&config).await;
    let skus = ["SKU-B1", "SKU-B2", "SKU-B3"];
    let batch = |round: i64| -> Vec<(String, Vec<u8>)> {
        skus.iter()
            .enumerate()
            .map(|(i, sku)| {
                let (kind, quantity) = if round == 0 { (Receipt, 100) } else { (Sale, 7 * round + i as i64) };
                movement_json(&format!("{sku}-{round}"), sku, "dc", kind, quantity, round * 10 + i as i64)
            })
            .collect()
    };
    produce(&producer(), movements, &batch(0)).await;
    until_recorded(&app, 3, 60).await;
    // The backup, taken while onhand runs.
    let dump = dir.path().join("onhand.dump");
    run_tool("pg_dump", &["-Fc", "-f", &dump.display().to_string(), &config.database.url]);
    for round in 1..=2 {
        produce(&producer(), movements, &batch(round)).await;
    }
    until_recorded(&app, 9, 60).await;
    let exact = on_hand_by_sku(&app, &skus).await;
    assert_eq!(exact["SKU-B1"]["dc"], 100 - 7 - 14);
    app.stop().await.unwrap();

    // The database is lost; the backup goes into a new one.
    let restored_url = create_database(&postgres_admin_url(), &unique_name("onhand_restored")).await.unwrap();
    run_tool("pg_restore", &["--no-owner", "-d", &restored_url, &dump.display().to_string()]);
    let restored = onhand_core::db::open(&restored_url, 2).await.unwrap();
    assert_eq!(restored.movement_count().await.unwrap(), 3, "the backup is older");
    let saved: i64 = restored
        .consumer_offsets(&config.ledger.group_id, movements)
        .await
        .unwrap()
        .iter()
        .map(|o| o.next_offset)
        .sum();
    assert_eq!(saved, 3, "with the offsets past its three movements");

    let mut config = config.clone();
    config.database.url = restored_url;
    let app = serve(&config).await;
    until_recorded(&app, 9, 60).await;
    eventually("the levels exact again", 60, || async { (on_hand_by_sku(&app, &skus).await == exact).then_some(()) })
        .await;
    assert_eq!(metric(&app, "onhand_ledger_duplicates_skipped_total"), 0.0, "it resumed where the backup was");
    app.stop().await.unwrap();
}

async fn erp_database() -> (String, PgConnection) {
    let url = onhand_core::testing::fresh_postgres_url().await;
    let mut erp = PgConnection::connect(&url).await.unwrap();
    erp.execute(include_str!("fixtures/erp/schema.sql")).await.unwrap();
    erp.execute(include_str!("fixtures/erp/seed.sql")).await.unwrap();
    (url, erp)
}

/// The ERP row whose code was not mapped is dead-lettered; once the mapping is fixed, the
/// cursor moved back reads the journal again: that row is counted, the others are
/// duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_erp_cursor_moved_back_reads_the_journal_again_and_a_fixed_mapping_counts_its_row() {
    onhand_core::skip_without_servers!();
    let dir = tempfile::tempdir().unwrap();
    let (erp_url, _erp) = erp_database().await;
    let mut config = test_config(2).await;
    let mut section = json!({
        "source_url": erp_url, "poll_interval_ms": 100, "safety_delay_ms": 0,
        "kinds": { "ENT": "receipt", "SAI": "sale" }, "locations": { "CD01": "dc-sp" },
    });
    config.connectors.insert("erp".into(), section.clone());
    let app = serve(&config).await;
    until_recorded(&app, 2, 60).await;
    on_hand_is(&app, "SKU-E", "dc-sp", 1990).await;
    app.stop().await.unwrap();
    // The missing code is mapped now.
    section["kinds"]["XXX"] = json!("adjustment");
    config.connectors.insert("erp".into(), section);
    let file = config_file(&config, dir.path());

    let ahead = replay(&file, &["connector", "erp", "--since", "2999-01-01T00:00:00Z", "--yes"]).await;
    assert_eq!(ahead.code, 1);
    assert!(ahead.stdout.contains("refused (forward)"), "{}", ahead.stdout);
    let since = "2000-01-01T00:00:00Z";
    let shown = replay(&file, &["connector", "erp", "--since", since]).await;
    assert_eq!(shown.code, 3);
    assert!(shown.stdout.contains("3 journal row(s) read again"), "{}", shown.stdout);
    let moved = replay(&file, &["connector", "erp", "--since", since, "--yes", "--json"]).await;
    assert_eq!((moved.code, moved.json()["moved"].as_bool()), (0, Some(true)), "{}", moved.stderr);

    let app = serve(&config).await;
    until_recorded(&app, 3, 60).await;
    on_hand_is(&app, "SKU-E", "dc-sp", 1995).await;
    eventually("the two rows read again skipped", 60, || async {
        (metric(&app, "onhand_ledger_duplicates_skipped_total") == 2.0).then_some(())
    })
    .await;
    app.stop().await.unwrap();
}

const WMS_FILE: &str = "\
sku,location,kind,quantity,occurred_at,reference
7891000100103,dc-sp,receipt,480,2026-11-20T09:10:00-03:00,ASN-2026-0042/1
7891000100257,dc-sp,receipt,120,2026-11-20T09:10:00-03:00,ASN-2026-0042/2
7891000100103,dc-sp,damage,2,2026-11-20T11:30:00-03:00,
";

/// An archived WMS file taken again goes through the inbox like a new one, and counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_archived_wms_file_taken_again_counts_once() {
    onhand_core::skip_without_servers!();
    let dir = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let mut config = test_config(2).await;
    config.connectors.insert("wms".into(), json!({ "inbox": inbox.path(), "scan_interval_ms": 200 }));
    let file = config_file(&config, dir.path());
    let app = serve(&config).await;
    let temporary = inbox.path().join(".day.csv.tmp");
    std::fs::write(&temporary, WMS_FILE).unwrap();
    std::fs::rename(&temporary, inbox.path().join("day.csv")).unwrap();
    until_recorded(&app, 3, 60).await;
    on_hand_is(&app, "7891000100103", "dc-sp", 478).await;
    let archived = inbox.path().join("archive/day.csv");
    eventually("the file archived", 60, || async { archived.exists().then_some(()) }).await;

    let shown = replay(&file, &["connector", "wms", "day.csv"]).await;
    assert_eq!(shown.code, 3);
    assert!(shown.stdout.contains("3 line(s) read again"), "{}", shown.stdout);
    assert!(!inbox.path().join("day.csv").exists(), "nothing copied without --yes");
    let outside = replay(&file, &["connector", "wms", &dir.path().join("onhand.toml").display().to_string()]).await;
    assert_eq!(outside.code, 2, "only an archived file: {}", outside.stderr);
    let copied = replay(&file, &["connector", "wms", &archived.display().to_string(), "--yes"]).await;
    assert_eq!(copied.code, 0, "{}", copied.stderr);
    let again = inbox.path().join("archive/day.1.csv");
    eventually("the copy taken and archived beside the first", 60, || async { again.exists().then_some(()) }).await;
    eventually("its three lines skipped as duplicates", 60, || async {
        (metric(&app, "onhand_ledger_duplicates_skipped_total") == 3.0).then_some(())
    })
    .await;
    assert_eq!(app.db.movement_count().await.unwrap(), 3);
    on_hand_is(&app, "7891000100103", "dc-sp", 478).await;
    app.stop().await.unwrap();
}
