//! `onhand doctor` run as the operator runs it (the built binary) against the real broker
//! and PostgreSQL of `scripts/test`: a running deployment passes, with its migrations,
//! topics, keys and the ledger's lag told; a database never migrated and brokers that do
//! not answer fail with what to do; a configuration that cannot be read is a finding too.

mod common;

use common::{ops::*, *};
use onhand_core::{event::MovementKind, testing::fresh_postgres_url};
use serde_json::Value;

/// The checks of a report whose `found` contains `text`.
fn checks<'a>(report: &'a Value, status: &str, text: &str) -> Vec<&'a Value> {
    report["checks"]
        .as_array()
        .expect("a list of checks")
        .iter()
        .filter(|c| c["status"] == status && c["found"].as_str().unwrap_or_default().contains(text))
        .collect()
}

async fn doctor(args: Vec<String>) -> Run {
    tokio::task::spawn_blocking(move || {
        let mut all = vec!["doctor".to_string(), "--json".to_string()];
        all.extend(args);
        onhand(&all.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_deployment_passes_and_says_what_it_looked_at() {
    onhand_core::skip_without_servers!();
    let config = test_config(2).await;
    let app = serve(&config).await;
    let receipt = movement_json("doctor-1", "7891000100103", "store-1", MovementKind::Receipt, 5, 0);
    produce(&producer(), &config.kafka.topics.movements, &[receipt]).await;
    on_hand_is(&app, "7891000100103", "store-1", 5).await;

    let dir = tempfile::tempdir().unwrap();
    let file = config_file(&config, dir.path());
    let run = doctor(vec!["--config".into(), file.display().to_string()]).await;
    let report = run.json();
    assert_eq!(run.code, 0, "{report:#}");
    assert!(checks(&report, "fail", "").is_empty(), "{report:#}");
    assert_eq!(checks(&report, "ok", "migrations applied").len(), 1, "{report:#}");
    assert_eq!(checks(&report, "ok", "API key(s)").len(), 1, "{report:#}");
    for topic in [&config.kafka.topics.movements, &config.kafka.topics.stock, &config.kafka.topics.dlq] {
        assert_eq!(checks(&report, "ok", &format!("topic {topic}: 2 partitions")).len(), 1, "{report:#}");
    }
    assert_eq!(checks(&report, "ok", "0 movements behind").len(), 1, "{report:#}");

    // Text for people: one line per check and a count.
    let text = tokio::task::spawn_blocking(move || onhand(&["doctor", "--config", &file.display().to_string()]))
        .await
        .unwrap();
    assert_eq!(text.code, 0);
    assert!(text.stdout.contains("0 failed"), "{}", text.stdout);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_database_never_migrated_and_silent_brokers_fail_with_a_fix() {
    onhand_core::skip_without_servers!();
    let url = fresh_postgres_url().await;
    // Nothing listens on port 1.
    let run = doctor(vec!["--database-url".into(), url.clone(), "--brokers".into(), "127.0.0.1:1".into()]).await;
    let report = run.json();
    assert_eq!(run.code, 1, "{report:#}");
    assert_eq!(checks(&report, "ok", "0 migrations applied").len(), 1, "{report:#}");
    let pending = checks(&report, "warn", "not applied yet");
    assert_eq!(pending.len(), 1, "{report:#}");
    assert!(pending[0]["fix"].as_str().unwrap().contains("onhand serve"));
    let silent = checks(&report, "fail", "do not answer");
    assert_eq!(silent.len(), 1, "{report:#}");
    assert_eq!(silent[0]["area"], "kafka");
    // The doctor changed nothing: the database is still empty.
    let again = doctor(vec!["--database-url".into(), url, "--brokers".into(), "127.0.0.1:1".into()]).await;
    assert_eq!(checks(&again.json(), "ok", "0 migrations applied").len(), 1);
}

#[tokio::test]
async fn a_configuration_that_cannot_be_read_is_a_finding() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("onhand.toml");
    std::fs::write(&file, "[database]\nurl = 5\n").unwrap();
    let run = doctor(vec!["--config".into(), file.display().to_string()]).await;
    let report = run.json();
    assert_eq!(run.code, 1, "{report:#}");
    let failed = checks(&report, "fail", "cannot be read");
    assert_eq!(failed.len(), 1, "{report:#}");
    assert_eq!(failed[0]["area"], "config");
}

#[tokio::test]
async fn a_sqlite_database_is_read_without_being_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here.db");
    let url = format!("sqlite://{}", missing.display());
    let run = doctor(vec!["--database-url".into(), url, "--brokers".into(), "127.0.0.1:1".into()]).await;
    let report = run.json();
    assert_eq!(run.code, 1, "{report:#}");
    assert_eq!(checks(&report, "fail", "does not answer").first().map(|c| c["area"].clone()), Some("database".into()));
    assert!(!missing.exists(), "the doctor created the file it looked for");
}

/// The broker was lost and its topics made again empty: the ledger's saved offsets are
/// past the new end, the doctor says so and how to fix it, and the ledger's group moved
/// back to the earliest records makes it pass again, with every level as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offsets_past_a_topics_end_are_found_and_moved_back() {
    onhand_core::skip_without_servers!();
    let config = test_config(1).await;
    let app = serve(&config).await;
    let receipts: Vec<_> = (0..2)
        .map(|i| movement_json(&format!("lost-{i}"), "7891000100103", "store-1", MovementKind::Receipt, 3, i))
        .collect();
    produce(&producer(), &config.kafka.topics.movements, &receipts).await;
    on_hand_is(&app, "7891000100103", "store-1", 6).await;
    app.stop().await.unwrap();
    // What a topic made again looks like to the ledger: its saved offset is beyond the end.
    let pool = sqlx::PgPool::connect(&config.database.url).await.unwrap();
    sqlx::query("UPDATE consumer_offsets SET next_offset = 1000").execute(&pool).await.unwrap();
    pool.close().await;

    let dir = tempfile::tempdir().unwrap();
    let file = config_file(&config, dir.path()).display().to_string();
    let before = doctor(vec!["--config".into(), file.clone()]).await;
    let report = before.json();
    assert_eq!(before.code, 1, "{report:#}");
    let past = checks(&report, "fail", "past the end");
    assert_eq!((past.len(), past[0]["area"].as_str()), (1, Some("ledger")), "{report:#}");
    assert!(past[0]["fix"].as_str().unwrap().contains("onhand replay group"));

    let group = config.ledger.group_id.clone();
    let replay = onhand_async(&[
        "replay",
        "group",
        &group,
        "--topic",
        "movements",
        "--to-earliest",
        "--members-stopped",
        "--yes",
        "--config",
        &file,
    ])
    .await;
    assert_eq!(replay.code, 0, "{}{}", replay.stdout, replay.stderr);
    let after = tokio::task::spawn_blocking(move || onhand(&["doctor", "--config", &file])).await.unwrap();
    assert_eq!(after.code, 0, "{}", after.stdout);
    assert!(after.stdout.contains(&format!("group {group} is 2 movements behind")), "{}", after.stdout);

    // The ledger reads both again as duplicates: the level is what it was.
    let app = serve(&config).await;
    until_recorded(&app, 2, 60).await;
    eventually("both read again", 60, || async {
        (metric(&app, "onhand_ledger_duplicates_skipped_total") >= 2.0).then_some(())
    })
    .await;
    on_hand_is(&app, "7891000100103", "store-1", 6).await;
    app.stop().await.unwrap();
}

/// onhand creates its topics with the configured retention and `min.insync.replicas`, and
/// the doctor warns when a topic holds fewer replicas, or fewer in sync, than the
/// configuration asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topics_are_created_with_the_configured_settings_and_checked_against_them() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    onhand_core::skip_without_servers!();
    let mut config = test_config(1).await;
    config.kafka.retention_ms.movements = 2 * 86_400_000;
    config.kafka.retention_ms.dlq = 3 * 86_400_000;
    onhand_core::kafka::ensure_topics(&config.kafka).await.unwrap();

    let admin: AdminClient<_> = onhand_core::kafka::client_config(&config.kafka).create().unwrap();
    let topics = &config.kafka.topics;
    let resources: Vec<_> = [&topics.movements, &topics.dlq, &topics.stock].map(|t| ResourceSpecifier::Topic(t)).into();
    let described = admin.describe_configs(&resources, &AdminOptions::new()).await.unwrap();
    let settings: Vec<_> = described
        .iter()
        .map(|resource| {
            let resource = resource.as_ref().unwrap();
            let value = |key| resource.get(key).and_then(|e| e.value.clone());
            (value("retention.ms"), value("min.insync.replicas"), value("cleanup.policy"))
        })
        .collect();
    let some = |s: &str| Some(s.to_string());
    assert_eq!((&settings[0].0, &settings[0].1), (&some("172800000"), &some("1")));
    assert_eq!((&settings[1].0, &settings[1].1), (&some("259200000"), &some("1")));
    assert_eq!(settings[2].2, some("compact"));

    // Asked of a cluster of three with two in sync, this one-broker topic falls short.
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(&config, dir.path());
    let text = std::fs::read_to_string(&file).unwrap().replacen(
        "[kafka]\n",
        "[kafka]\nreplication_factor = 3\nmin_insync_replicas = 2\n",
        1,
    );
    std::fs::write(&file, text).unwrap();
    let report = doctor(vec!["--config".into(), file.display().to_string()]).await.json();
    let movements = &topics.movements;
    let short = checks(&report, "warn", &format!("topic {movements} has 1 replica(s) per partition"));
    assert_eq!(short.len(), 1, "{report:#}");
    let insync = checks(&report, "warn", &format!("topic {movements} has min.insync.replicas=1"));
    assert_eq!(insync.len(), 1, "{report:#}");
    assert!(insync[0]["fix"].as_str().unwrap().contains("min.insync.replicas=2"), "{report:#}");
    let retention = checks(&report, "warn", &format!("topic {movements} keeps records 2.0 days"));
    assert_eq!(retention.len(), 1, "{report:#}");
}
