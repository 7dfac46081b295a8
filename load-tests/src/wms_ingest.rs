//! WMS ingest: a 1,000,000-line movements file dropped into the `wms` connector's inbox,
//! timed from the drop to the archive (every line checked, produced and acknowledged),
//! against a bare rdkafka producer sending the same records, with the same settings, to
//! another topic in the same run; the connector's peak resident memory; then the time the
//! ledger, started afterwards on an empty database, takes to apply them all. Prints one
//! JSON object. Run it against the test servers with:
//!
//! ```text
//! cargo build --release -p onhand-load-tests --bin wms-ingest
//! ONHAND_TEST_KAFKA_BROKERS=127.0.0.1:9092 ONHAND_TEST_DATABASE_URL=postgres://... \
//!   target/release/wms-ingest
//! ```

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::{TimeZone, Utc};
use clap::Parser;
use futures::{stream, StreamExt};
use onhand_connectors::{
    wms::{mapping, Wms, WmsConfig},
    Connector, ConnectorContext,
};
use onhand_core::{
    config::{Config, KafkaConfig},
    db,
    health::Component,
    kafka,
    ledger::{self, LedgerParts},
    telemetry::Metrics,
    testing::unique_name,
};
use onhand_load_tests::{until_recorded, Servers};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    producer::{FutureProducer, FutureRecord},
};
use serde_json::json;
use sha2::Digest;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
struct Args {
    /// Lines of the file.
    #[arg(long, default_value_t = 1_000_000)]
    lines: u64,
    /// Distinct SKUs, drawn with a Zipf distribution.
    #[arg(long, default_value_t = 50_000)]
    skus: u64,
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// The producers' linger, the same for both; 5 ms is what `onhand serve` gives them.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Records unacknowledged at most, the same for both (the connector's default).
    #[arg(long, default_value_t = 10_000)]
    in_flight_max: usize,
    #[command(flatten)]
    servers: Servers,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let args = Args::parse();
    let prefix = unique_name("bench_wms");
    let mut config = args.servers.config(&prefix).await?;
    config.kafka.partitions = args.partitions;
    kafka::ensure_topics(&config.kafka).await?;
    let bare_topic = format!("{prefix}.bare");
    create_topic(&config.kafka, &bare_topic).await?;

    let inbox = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&inbox)?;
    let hidden = inbox.join(".movements.csv");
    write_file(&hidden, &args)?;
    let file_bytes = std::fs::metadata(&hidden)?.len();
    let rss_before_kib = status_kib("VmRSS")?;

    let (connector_seconds, db) = ingest(&config, &args, &inbox, &hidden).await?;
    let peak_rss_kib = status_kib("VmHWM")?;

    let records = records_of(&inbox.join("archive/movements.csv"))?;
    let bare_seconds = bare(&config.kafka, &args, &bare_topic, &records).await?;
    drop(records);
    std::fs::remove_dir_all(&inbox)?;

    let ledger_seconds = apply(&config, Arc::clone(&db), args.lines).await?;
    let connector_rate = args.lines as f64 / connector_seconds;
    let bare_rate = args.lines as f64 / bare_seconds;
    let report = json!({
        "benchmark": "wms_ingest",
        "lines": args.lines,
        "file_mib": round(file_bytes as f64 / 1_048_576.0),
        "skus": args.skus,
        "partitions": args.partitions,
        "linger_ms": args.linger_ms,
        "in_flight_max": args.in_flight_max,
        "connector_seconds": round(connector_seconds),
        "connector_lines_per_s": round(connector_rate),
        "bare_producer_seconds": round(bare_seconds),
        "bare_producer_lines_per_s": round(bare_rate),
        "connector_vs_bare": round(connector_rate / bare_rate),
        "target_connector_vs_bare": 0.8,
        "rss_before_mib": round(rss_before_kib as f64 / 1024.0),
        "connector_peak_rss_mib": round(peak_rss_kib as f64 / 1024.0),
        "target_peak_rss_mib": 100,
        "ledger_seconds": round(ledger_seconds),
        "ledger_movements_per_s": round(args.lines as f64 / ledger_seconds),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A field of `/proc/self/status`, in KiB: `VmHWM` is the peak resident memory so far.
fn status_kib(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with(field)).context("no such field in /proc/self/status")?;
    Ok(line.split_whitespace().nth(1).context("a value")?.parse()?)
}

async fn create_topic(config: &KafkaConfig, name: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka::client_config(config).create()?;
    let topic = NewTopic::new(name, config.partitions, TopicReplication::Fixed(config.replication_factor));
    for result in admin.create_topics(&[topic], &AdminOptions::new()).await? {
        result.map_err(|(topic, code)| anyhow::anyhow!("create {topic}: {code}"))?;
    }
    Ok(())
}

/// Mostly receipts and transfers out, as a distribution centre's day is.
fn kind_of(roll: u32) -> (&'static str, i64) {
    match roll {
        0..=39 => ("receipt", 48),
        40..=79 => ("transfer_out", 6),
        80..=84 => ("transfer_in", 6),
        85..=89 => ("sale", 1),
        90..=92 => ("return", 1),
        93..=94 => ("damage", 1),
        95..=96 => ("adjustment", -2),
        _ => ("count", 120),
    }
}

/// The movements file, written as a stream.
fn write_file(path: &Path, args: &Args) -> anyhow::Result<()> {
    let zipf = Zipf::new(args.skus as f64, 1.03)?;
    let mut rng = StdRng::seed_from_u64(42);
    let start = Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 0).single().context("a date")?;
    let mut out = BufWriter::new(File::create(path)?);
    writeln!(out, "sku,location,kind,quantity,occurred_at,reference")?;
    for i in 0..args.lines {
        let sku = zipf.sample(&mut rng) as u64;
        let (kind, quantity) = kind_of(rng.random_range(0..100));
        let at = (start + chrono::Duration::milliseconds(i as i64 * 10)).format("%Y-%m-%dT%H:%M:%S%.3f-03:00");
        writeln!(out, "{sku:013},dc-sp,{kind},{quantity},{at},DOC-{:07}/{}", i / 20, i % 20 + 1)?;
    }
    out.flush()?;
    Ok(())
}

/// (a) The connector: drops the file and times it until it is archived.
async fn ingest(config: &Config, args: &Args, inbox: &Path, hidden: &Path) -> anyhow::Result<(f64, Arc<dyn db::Db>)> {
    let db = db::open(&config.database.url, 8).await?;
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let producer = kafka::Producer::new(&config.kafka, Duration::from_millis(args.linger_ms))?;
    let context = ConnectorContext::standalone(config, Arc::clone(&db), producer, metrics.clone(), shutdown.clone());
    let wms = WmsConfig {
        inbox: inbox.to_path_buf(),
        in_flight_max: args.in_flight_max,
        scan_interval_ms: 100,
        source_instance: "wms-dc-sp".into(),
        ..WmsConfig::default()
    };
    let connector = Arc::new(Wms::new(wms, metrics.registry())?);
    let running = tokio::spawn(connector.run(context));
    tokio::time::sleep(Duration::from_millis(500)).await; // watching
    let archived = inbox.join("archive/movements.csv");
    let started = Instant::now();
    std::fs::rename(hidden, inbox.join("movements.csv"))?;
    while !archived.exists() {
        anyhow::ensure!(!running.is_finished(), "the connector stopped");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    shutdown.cancel();
    running.await??;
    Ok((seconds, db))
}

/// The records the connector produced, byte for byte, read back from the archived file
/// (not timed).
fn records_of(path: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let sha256 = hex::encode(sha2::Sha256::digest(std::fs::read(path)?));
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_path(path)?;
    let format = mapping::read_header(reader.headers()?.iter(), false).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let name = path.file_name().and_then(|n| n.to_str()).context("a file name")?;
    let context = mapping::FileContext::new(&sha256, name, "wms-dc-sp", None, Utc::now());
    let mut records = Vec::new();
    for record in reader.records() {
        let record = record?;
        let line = record.position().map_or(0, |p| p.line());
        let fields: Vec<&str> = record.iter().collect();
        let mapped = mapping::to_movement(&format, &context, line, &fields).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        records.push((mapped.movement.kafka_key().to_string(), mapped.payload));
    }
    Ok(records)
}

/// (b) A bare producer, configured as the connector's, sending the same records with the
/// same window of unacknowledged records.
async fn bare(config: &KafkaConfig, args: &Args, topic: &str, records: &[(String, Vec<u8>)]) -> anyhow::Result<f64> {
    let producer: FutureProducer = kafka::future_producer(config, Duration::from_millis(args.linger_ms))?;
    let started = Instant::now();
    let mut sends =
        stream::iter(
            records.iter().map(|(key, payload)| {
                let producer = &producer;
                async move {
                    producer.send(FutureRecord::to(topic).key(key).payload(payload), Duration::from_secs(60)).await
                }
            }),
        )
        .buffer_unordered(args.in_flight_max);
    while let Some(result) = sends.next().await {
        result.map_err(|(e, _)| e).context("produce a record")?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// (d) The ledger on the empty database, until every line is recorded.
async fn apply(config: &Config, db: Arc<dyn db::Db>, lines: u64) -> anyhow::Result<f64> {
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let metrics = Metrics::new();
    let parts = LedgerParts {
        db: db.clone(),
        metrics: metrics.clone(),
        component: Component::detached("ledger"),
        shutdown: shutdown.clone(),
        faults: Default::default(),
    };
    let handle = ledger::spawn(&config.kafka, &config.ledger, parts).await?;
    until_recorded(&*db, &handle, &metrics, lines).await?;
    let seconds = started.elapsed().as_secs_f64();
    shutdown.cancel();
    handle.join().await?;
    Ok(seconds)
}
