//! Ledger throughput: produces N movements to the broker, then starts the ledger on an
//! empty PostgreSQL database and times how long it takes to apply them all. Prints one
//! JSON object. Run it against the test servers with:
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
use onhand_load_tests::{until_recorded, Servers};
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
    #[arg(long, default_value_t = 2_000)]
    batch_size_max: usize,
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
    kafka::ensure_topics(&kafka_config).await?;

    let produce_started = Instant::now();
    produce(&kafka_config, &args).await?;
    let produce_seconds = produce_started.elapsed().as_secs_f64();

    let db = db::open(&database.url, 8).await?;
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
    until_recorded(&*db, &handle, args.movements).await?;
    let apply_seconds = apply_started.elapsed().as_secs_f64();
    shutdown.cancel();
    handle.join().await?;

    let report = json!({
        "benchmark": "ledger_throughput",
        "movements": args.movements,
        "skus": args.skus,
        "locations": args.locations,
        "partitions": args.partitions,
        "batch_size_max": args.batch_size_max,
        "produce_seconds": round(produce_seconds),
        "produce_movements_per_s": round(args.movements as f64 / produce_seconds),
        "apply_seconds": round(apply_seconds),
        "movements_per_s": round(args.movements as f64 / apply_seconds),
        "target_movements_per_s": 20_000,
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

async fn produce(config: &KafkaConfig, args: &Args) -> anyhow::Result<()> {
    let producer: FutureProducer = kafka::client_config(config)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .create()?;
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
