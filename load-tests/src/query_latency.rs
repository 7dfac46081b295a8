//! Query latency: loads 50,000 SKUs x 22 locations into an empty PostgreSQL database,
//! starts `onhand serve` in process, and measures `GET /v1/stock/{sku}` with SKUs drawn
//! from a Zipf distribution: p50/p99 latency at a fixed 2,000 requests/s (open loop, so a
//! slow answer cannot slow the schedule down), then the maximum requests/s of the same
//! route and of `/healthz`, side by side in the same run. Prints one JSON object.
//!
//! ```text
//! scripts/services run cargo run --release -p onhand-load-tests --bin query-latency
//! ```

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Parser;
use hdrhistogram::Histogram;
use onhand::app::{App, StartOptions};
use onhand_core::testing::unique_name;
use onhand_load_tests::{client_with_key, Servers};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde_json::json;
use sqlx::Connection;
use tokio::{sync::Mutex, time::MissedTickBehavior};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 50_000)]
    skus: u64,
    #[arg(long, default_value_t = 22)]
    locations: u64,
    /// Requests per second of the fixed-rate phase.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// Seconds of each measured phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Connections of the maximum-throughput phases.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[command(flatten)]
    servers: Servers,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let args = Args::parse();
    let prefix = unique_name("bench");
    let mut config = args.servers.config(&prefix).await?;
    // Opening the database runs the migrations.
    onhand_core::db::open(&config.database.url, 2).await?;
    load_levels(&config.database.url, args.skus, args.locations).await?;
    // Only the read path is measured.
    config.ledger.enabled = false;
    let app = App::serve(config, StartOptions::default()).await?;
    let addr = app.local_addr;
    let client =
        client_with_key(&*app.db, reqwest::Client::builder().pool_max_idle_per_host(args.concurrency * 2)).await?;
    // Measure once the cache has loaded every SKU, as a running service has.
    let preload_started = Instant::now();
    while app.metrics.query_cache_preloaded_skus.get() == 0 {
        anyhow::ensure!(preload_started.elapsed() < Duration::from_secs(120), "the cache preload did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let preload_seconds = preload_started.elapsed().as_secs_f64();
    let zipf = Zipf::new(args.skus as f64, 1.03)?;
    let stock_path = move |rng: &mut StdRng| format!("/v1/stock/SKU-{:06}", zipf.sample(rng) as u64);

    // Warm-up: the best sellers land in the cache, as they would in production.
    closed_loop(&client, addr, args.concurrency, Duration::from_secs(5), stock_path).await;
    let fixed = open_loop(&client, addr, args.rate, Duration::from_secs(args.seconds), stock_path).await;
    let (stock_rps, _) =
        closed_loop(&client, addr, args.concurrency, Duration::from_secs(args.seconds), stock_path).await;
    let (health_rps, _) =
        closed_loop(&client, addr, args.concurrency, Duration::from_secs(args.seconds), |_| "/healthz".to_string())
            .await;
    let reads = |source: &str| app.metrics.query_reads_total.with_label_values(&[source]).get();
    let (from_cache, from_database) = (reads("cache"), reads("database"));
    app.stop().await?;

    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
    let report = json!({
        "benchmark": "query_latency",
        "skus": args.skus,
        "locations": args.locations,
        "fixed_rate_requests_per_s": args.rate,
        "fixed_rate_requests": fixed.histogram.len(),
        "fixed_rate_errors": fixed.errors,
        "p50_ms": ms(&fixed.histogram, 0.50),
        "p99_ms": ms(&fixed.histogram, 0.99),
        "max_ms": fixed.histogram.max() as f64 / 1_000.0,
        "stock_max_requests_per_s": stock_rps.round(),
        "healthz_max_requests_per_s": health_rps.round(),
        "stock_vs_healthz": (stock_rps / health_rps * 100.0).round() / 100.0,
        "cache_preload_seconds": (preload_seconds * 100.0).round() / 100.0,
        "cache_hit_ratio": (from_cache as f64 / (from_cache + from_database).max(1) as f64 * 1000.0).round() / 1000.0,
        "targets": { "p99_ms": 10, "stock_vs_healthz": 0.7 },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Writes the levels directly: the benchmark measures reads, not the ledger.
async fn load_levels(database_url: &str, skus: u64, locations: u64) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(database_url).await?;
    sqlx::query(
        "INSERT INTO stock_levels (sku, location, on_hand, version, published_version, last_movement_at,
                                   last_event_id, updated_at)
         SELECT 'SKU-' || lpad(s::text, 6, '0'), 'loc-' || lpad(l::text, 2, '0'), (s * 7 + l) % 100, 1, 1,
                now(), 'seed', now()
         FROM generate_series(1, $1) AS s, generate_series(0, $2 - 1) AS l",
    )
    .bind(i64::try_from(skus)?)
    .bind(i64::try_from(locations)?)
    .execute(&mut conn)
    .await?;
    sqlx::query("ANALYZE stock_levels").execute(&mut conn).await?;
    Ok(())
}

struct FixedRate {
    histogram: Histogram<u64>,
    errors: u64,
}

/// Sends `rate` requests a second for `duration`, each timed from when it was due.
async fn open_loop(
    client: &reqwest::Client,
    addr: SocketAddr,
    rate: u64,
    duration: Duration,
    path: impl Fn(&mut StdRng) -> String,
) -> FixedRate {
    let results = Arc::new(Mutex::new(FixedRate { histogram: Histogram::new(3).expect("a histogram"), errors: 0 }));
    let mut rng = StdRng::seed_from_u64(7);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut requests = Vec::new();
    while started.elapsed() < duration {
        let due = ticks.tick().await;
        let (client, results, url) = (client.clone(), Arc::clone(&results), format!("http://{addr}{}", path(&mut rng)));
        requests.push(tokio::spawn(async move {
            let ok = matches!(client.get(url).send().await, Ok(r) if r.status().is_success());
            let mut results = results.lock().await;
            if ok {
                let _ = results.histogram.record(due.elapsed().as_micros() as u64);
            } else {
                results.errors += 1;
            }
        }));
    }
    for request in requests {
        let _ = request.await;
    }
    Arc::try_unwrap(results).ok().expect("every request finished").into_inner()
}

/// Keeps `concurrency` requests in flight for `duration`; answers requests/s and errors.
async fn closed_loop(
    client: &reqwest::Client,
    addr: SocketAddr,
    concurrency: usize,
    duration: Duration,
    path: impl Fn(&mut StdRng) -> String + Copy + Send + 'static,
) -> (f64, u64) {
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(worker as u64);
                let (mut done, mut errors) = (0u64, 0u64);
                while started.elapsed() < duration {
                    let url = format!("http://{addr}{}", path(&mut rng));
                    match client.get(url).send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            done += 1;
                        }
                        _ => errors += 1,
                    }
                }
                (done, errors)
            })
        })
        .collect();
    let (mut done, mut errors) = (0, 0);
    for worker in workers {
        let (d, e) = worker.await.unwrap_or((0, 0));
        done += d;
        errors += e;
    }
    (done as f64 / started.elapsed().as_secs_f64(), errors)
}
