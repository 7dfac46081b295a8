//! Ledger throughput: first the floor, the bare cost of the ledger's work in the same
//! PostgreSQL server (the same movement rows COPYed into the real `movements` table in the
//! ledger's batch size, one set-based upsert of the levels each batch touches and an offset
//! row, each batch one durable transaction, on a database of its own), then the ledger
//! itself: N movements produced to the broker, the ledger started on an empty database and
//! timed until it applied them all. Prints one JSON object with both and their ratio. Run
//! it against the test servers with:
//!
//! ```text
//! scripts/services run cargo run --release -p onhand-load-tests --bin ledger-throughput
//! ```

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Parser;
use futures::{stream, StreamExt};
use onhand_core::{
    config::{Config, KafkaConfig},
    db,
    event::{Movement, MovementKind},
    health::Component,
    kafka,
    ledger::{self, LedgerParts},
    telemetry::Metrics,
    testing::{self, unique_name},
};
use onhand_load_tests::{drop_database, until_recorded, Servers, Statements};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
struct Args {
    /// Movements to produce and apply.
    #[arg(long, default_value_t = 200_000)]
    movements: u64,
    /// Distinct SKUs, drawn with a Zipf distribution (a few best sellers, a long tail).
    #[arg(long, default_value_t = 50_000)]
    skus: u64,
    /// Locations: 20 stores, the distribution centre and the web store.
    #[arg(long, default_value_t = 22)]
    locations: u64,
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// The ledger's batch while it keeps up, and the floor's batch.
    #[arg(long, default_value_t = 2_000)]
    batch_size_max: usize,
    /// The ledger's largest batch while behind (`ledger.backlog_batch_size_max`): the
    /// benchmark starts it on a backlog. Give `--batch-size-max`'s value to keep batches
    /// the floor's size.
    #[arg(long, default_value_t = 16_000)]
    backlog_batch_size_max: usize,
    /// Leave out the floor: the catch-up benchmark (`--movements 1000000 --no-floor`), the
    /// ledger started on a backlog of two hours of Black Friday at 5x.
    #[arg(long)]
    no_floor: bool,
    #[command(flatten)]
    servers: Servers,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let args = Args::parse();
    let prefix = unique_name("bench");
    let Config { database, kafka: mut kafka_config, ledger: mut ledger_config, .. } =
        args.servers.config(&prefix).await?;
    kafka_config.partitions = args.partitions;
    ledger_config.batch_size_max = args.batch_size_max;
    ledger_config.backlog_batch_size_max = args.backlog_batch_size_max;
    kafka::ensure_topics(&kafka_config).await?;

    let movements = movements(&args)?;
    let floor_url = testing::create_database(&args.servers.database_url, &format!("{prefix}_floor")).await?;
    let (floor_seconds, floor_top) = if args.no_floor {
        (None, json!(null))
    } else {
        db::open(&floor_url, 1).await?; // the migrations: the real tables and indexes
        let mut floor_statements = Statements::reset(&floor_url).await;
        let seconds = floor(&floor_url, &movements, args.batch_size_max, args.partitions).await?;
        let top = match floor_statements.as_mut() {
            Some(s) => s.top(8).await?,
            None => json!(null),
        };
        (Some(seconds), top)
    };

    let produce_started = Instant::now();
    produce(&kafka_config, &movements).await?;
    let produce_seconds = produce_started.elapsed().as_secs_f64();
    // The process's peak memory from here on is the ledger's (and the benchmark's wait).
    drop(movements);
    let memory = PeakMemory::reset();

    let db = db::open(&database.url, 8).await?;
    let mut ledger_statements = Statements::reset(&database.url).await;
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new();
    let apply_started = Instant::now();
    let parts = LedgerParts {
        db: db.clone(),
        metrics: metrics.clone(),
        component: Component::detached("ledger"),
        shutdown: shutdown.clone(),
        faults: Default::default(),
    };
    let handle = ledger::spawn(&kafka_config, &ledger_config, parts).await?;
    until_recorded(&*db, &handle, &metrics, args.movements).await?;
    let apply_seconds = apply_started.elapsed().as_secs_f64();
    shutdown.cancel();
    handle.join().await?;
    let ledger_top = match ledger_statements.as_mut() {
        Some(s) => s.top(16).await?,
        None => json!(null),
    };
    drop((db, ledger_statements));
    for url in [&floor_url, &database.url] {
        drop_database(&args.servers.database_url, url).await?;
    }

    let report = json!({
        "benchmark": "ledger_throughput",
        "movements": args.movements,
        "skus": args.skus,
        "locations": args.locations,
        "partitions": args.partitions,
        "batch_size_max": args.batch_size_max,
        "backlog_batch_size_max": args.backlog_batch_size_max,
        "produce_seconds": round(produce_seconds),
        "produce_movements_per_s": round(args.movements as f64 / produce_seconds),
        "apply_seconds": round(apply_seconds),
        "movements_per_s": round(args.movements as f64 / apply_seconds),
        "ledger_peak_rss_mb": memory.peak_mb(),
        "rss_before_ledger_mb": memory.start_mb,
        "floor_seconds": floor_seconds.map(round),
        "floor_movements_per_s": floor_seconds.map(|f| round(args.movements as f64 / f)),
        "ledger_vs_floor": floor_seconds.map(|f| round(f / apply_seconds)),
        "target_ledger_vs_floor": 0.8,
        "ledger_statements": ledger_top,
        "floor_statements": floor_top,
        "batches": metrics.ledger_apply_duration_seconds.get_sample_count(),
        "database_seconds": round(metrics.ledger_apply_duration_seconds.get_sample_sum()),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Mostly sales, some receipts and returns, a few transfers, damages, adjustments and counts.
fn kind_of(roll: u32) -> (MovementKind, i64) {
    match roll {
        0..=64 => (MovementKind::Sale, 1),
        65..=84 => (MovementKind::Receipt, 24),
        85..=89 => (MovementKind::Return, 1),
        90..=93 => (MovementKind::TransferOut, 6),
        94..=96 => (MovementKind::TransferIn, 6),
        97 => (MovementKind::Damage, 1),
        98 => (MovementKind::Adjustment, -2),
        _ => (MovementKind::Count, 40),
    }
}

/// The benchmark's movements, the same every run.
fn movements(args: &Args) -> anyhow::Result<Vec<Movement>> {
    let zipf = Zipf::new(args.skus as f64, 1.03)?;
    let mut rng = StdRng::seed_from_u64(42);
    let started = Utc::now();
    let movements: Vec<Movement> = (0..args.movements)
        .map(|i| {
            let sku = zipf.sample(&mut rng) as u64;
            let location = rng.random_range(0..args.locations);
            let (kind, quantity) = kind_of(rng.random_range(0..100));
            let at = started + chrono::Duration::milliseconds(i as i64);
            let sku = format!("SKU-{sku:06}");
            testing::movement(&format!("bench-{i}"), &sku, &format!("loc-{location:02}"), kind, quantity, at)
        })
        .collect();
    Ok(movements)
}

async fn produce(config: &KafkaConfig, movements: &[Movement]) -> anyhow::Result<()> {
    let producer: FutureProducer = kafka::client_config(config)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .create()?;
    let topic = &config.topics.movements;
    let mut sends = stream::iter(movements.iter().map(|m| {
        let payload = m.to_json();
        let producer = &producer;
        async move {
            producer.send(FutureRecord::to(topic).key(m.kafka_key()).payload(&payload), Duration::from_secs(60)).await
        }
    }))
    .buffer_unordered(20_000);
    while let Some(result) = sends.next().await {
        result.map_err(|(e, _)| e).context("produce a movement")?;
    }
    Ok(())
}

/// The floor: `movements` written the cheapest way PostgreSQL keeps them, in batches of
/// `batch` rows, each one transaction with a durable commit: the rows COPYed into
/// `movements` (as CSV, the event JSON included), one upsert of every level the batch
/// touches (its summed delta; a count's too, which costs the same), and the offset row.
/// The batches are encoded before the clock starts: only the database's work is timed.
/// Answers the seconds it took.
async fn floor(database_url: &str, movements: &[Movement], batch: usize, partitions: i32) -> anyhow::Result<f64> {
    use sqlx::Connection;
    let batches: Vec<FloorBatch> = movements
        .chunks(batch.max(1))
        .enumerate()
        .map(|(n, chunk)| FloorBatch::of(chunk, n * batch, partitions))
        .collect::<anyhow::Result<_>>()?;
    let mut conn = sqlx::PgConnection::connect(database_url).await?;
    let started = Instant::now();
    for b in &batches {
        let mut tx = conn.begin().await?;
        let mut copy = tx
            .copy_in_raw(
                "COPY movements (event_id, sku, location, kind, quantity, delta, occurred_at, recorded_at,
                                 kafka_partition, kafka_offset, event) FROM STDIN (FORMAT csv)",
            )
            .await?;
        copy.send(b.rows.as_bytes()).await?;
        copy.finish().await?;
        sqlx::query(
            "INSERT INTO stock_levels (sku, location, on_hand, version, last_movement_at, last_event_id, updated_at)
             SELECT sku, location, delta, 1, at, id, now()
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::timestamptz[], $5::text[]) AS t(sku, location, delta, at, id)
             ON CONFLICT (sku, location) DO UPDATE
             SET on_hand = stock_levels.on_hand + excluded.on_hand, version = stock_levels.version + 1,
                 last_movement_at = excluded.last_movement_at, last_event_id = excluded.last_event_id,
                 updated_at = excluded.updated_at",
        )
        .bind(&b.skus)
        .bind(&b.locations)
        .bind(&b.deltas)
        .bind(&b.at)
        .bind(&b.ids)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset, updated_at)
             VALUES ('floor', 'floor', 0, $1, now())
             ON CONFLICT (group_id, topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
        )
        .bind(b.next_offset)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// One batch of the floor, encoded: its rows as CSV, and each level it touches with its
/// summed delta and its newest movement.
struct FloorBatch {
    rows: String,
    skus: Vec<String>,
    locations: Vec<String>,
    deltas: Vec<i64>,
    at: Vec<chrono::DateTime<Utc>>,
    ids: Vec<String>,
    next_offset: i64,
}

impl FloorBatch {
    fn of(chunk: &[Movement], first_offset: usize, partitions: i32) -> anyhow::Result<FloorBatch> {
        let quoted = |text: &str| format!("\"{}\"", text.replace('"', "\"\""));
        let mut rows = String::with_capacity(chunk.len() * 512);
        let mut levels: std::collections::BTreeMap<(&str, &str), (i64, &Movement)> = Default::default();
        for (i, m) in chunk.iter().enumerate() {
            let offset = (first_offset + i) as i64;
            let delta = m.delta().map(|d| d.to_string()).unwrap_or_default();
            rows.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{}\n",
                quoted(m.event_id.as_str()),
                quoted(m.sku.as_str()),
                quoted(m.location.as_str()),
                m.kind.as_str(),
                m.quantity,
                delta,
                m.occurred_at.to_rfc3339(),
                m.recorded_at.to_rfc3339(),
                offset % i64::from(partitions.max(1)),
                offset,
                quoted(&String::from_utf8(m.to_json())?),
            ));
            let level = levels.entry((m.sku.as_str(), m.location.as_str())).or_insert((0, m));
            *level = (level.0 + m.delta().unwrap_or(m.quantity), m);
        }
        let mut b = FloorBatch {
            rows,
            skus: Vec::new(),
            locations: Vec::new(),
            deltas: Vec::new(),
            at: Vec::new(),
            ids: Vec::new(),
            next_offset: (first_offset + chunk.len()) as i64,
        };
        for ((sku, location), (delta, last)) in levels {
            b.skus.push(sku.to_string());
            b.locations.push(location.to_string());
            b.deltas.push(delta);
            b.at.push(last.occurred_at);
            b.ids.push(last.event_id.to_string());
        }
        Ok(b)
    }
}

/// The process's peak resident memory since [`PeakMemory::reset`] (Linux: `VmHWM` of
/// `/proc/self/status`, reset by writing 5 to `/proc/self/clear_refs`). The peak starts at
/// the memory resident then, which holds what the allocator kept of the movements generated
/// and produced before (`start_mb`).
struct PeakMemory {
    reset: bool,
    start_mb: Option<f64>,
}

impl PeakMemory {
    fn reset() -> Self {
        PeakMemory { reset: std::fs::write("/proc/self/clear_refs", "5").is_ok(), start_mb: status_mb("VmRSS:") }
    }

    /// In MB; `None` where the kernel does not tell, or the peak could not be reset.
    fn peak_mb(&self) -> Option<f64> {
        self.reset.then(|| status_mb("VmHWM:")).flatten()
    }
}

/// A figure of `/proc/self/status`, in MB.
fn status_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix(field))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(round(kb / 1024.0))
}
