//! Stream fan-out: N clients of `GET /v1/stream` (Server-Sent Events over HTTP/1.1, one
//! connection each) connected to one `onhand serve`, while the live stream's hub publishes
//! level changes at a fixed rate. Each level carries the time it was published (its
//! on_hand is the microseconds since the start), so that each client measures the delay
//! from the publication to the moment it has read the event. Prints p50/p99/max of those
//! delays, what every client received, and the process's resident memory, as JSON.
//!
//! The hub is driven directly (`App::stream`), as the stock topic's follower drives it:
//! what is measured is the fan-out and the HTTP layer, not Kafka. The clients run in the
//! same process, on the same cores, as the server.
//!
//! ```text
//! scripts/services run cargo run --release -p onhand-load-tests --bin stream-fanout
//! ```

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use chrono::Utc;
use clap::Parser;
use hdrhistogram::Histogram;
use onhand::app::{App, StartOptions};
use onhand_core::{
    event::{LocationId, Sku, StockLevel},
    testing::unique_name,
};
use onhand_load_tests::{client_with_key, Servers};
use serde_json::json;
use tokio::time::MissedTickBehavior;

#[derive(Debug, Parser)]
struct Args {
    /// Connected SSE clients.
    #[arg(long, default_value_t = 1_000)]
    clients: usize,
    /// Level changes published per second.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// How long the hub publishes, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[command(flatten)]
    servers: Servers,
}

/// The process's resident set, in MiB, from `/proc/self/status`.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// What one client saw.
struct Received {
    delays_us: Histogram<u64>,
    events: u64,
    slow_consumer: bool,
}

/// Reads one client's stream until it ends (the server stops, or tells it it is slow),
/// timing each level from the microseconds its on_hand carries.
async fn read(mut response: reqwest::Response, start: Instant) -> anyhow::Result<Received> {
    let mut received = Received { delays_us: Histogram::new(3)?, events: 0, slow_consumer: false };
    let mut pending = String::new();
    while let Some(chunk) = response.chunk().await.ok().flatten() {
        let now_us = start.elapsed().as_micros() as u64;
        pending.push_str(std::str::from_utf8(&chunk)?);
        while let Some(end) = pending.find("\n\n") {
            let block = &pending[..end];
            if block.contains("event: slow_consumer") {
                received.slow_consumer = true;
            }
            if let Some(at) = block.find("\"on_hand\":") {
                let digits: String = block[at + 10..].chars().take_while(char::is_ascii_digit).collect();
                if let Ok(published_us) = digits.parse::<u64>() {
                    received.delays_us.record(now_us.saturating_sub(published_us).max(1))?;
                    received.events += 1;
                }
            }
            pending.drain(..end + 2);
        }
    }
    Ok(received)
}

fn level(sku: &Sku, location: &LocationId, on_hand: i64, version: i64) -> StockLevel {
    let base = onhand_core::testing::stock_level(location.as_str(), on_hand, version);
    StockLevel { sku: sku.clone(), updated_at: Utc::now(), ..base }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let args = Args::parse();
    let prefix = unique_name("bench");
    let mut config = args.servers.config(&prefix).await?;
    config.stream.clients_max = args.clients + 10;
    let app = App::serve(config, StartOptions::default()).await?;
    let addr = app.local_addr;
    let client = client_with_key(&*app.db, reqwest::Client::builder().pool_max_idle_per_host(0)).await?;
    let rss_before_mib = rss_mib();

    let start = Instant::now();
    let mut readers = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let response = client.get(format!("http://{addr}/v1/stream?kind=level")).send().await?;
        anyhow::ensure!(response.status() == 200, "the stream answered {}", response.status());
        readers.push(tokio::spawn(read(response, start)));
    }
    anyhow::ensure!(app.stream.clients() == args.clients, "{} clients connected", app.stream.clients());
    let rss_connected_mib = rss_mib();

    // The levels go round 1,000 SKUs at 10 locations; a tick every 10 ms publishes its
    // share, as the stock topic's follower does with what a fetch brought.
    let skus: Vec<Sku> = (0..1_000).map(|i| Sku::parse(format!("FAN-{i:04}")).expect("a valid sku")).collect();
    let locations: Vec<LocationId> =
        (0..10).map(|i| LocationId::parse(format!("store-{i:02}")).expect("a valid location")).collect();
    let total = args.rate * args.seconds;
    let per_tick = (args.rate / 100).max(1);
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let published = Arc::new(AtomicU64::new(0));
    let mut rss_peak_mib = rss_connected_mib;
    while published.load(Ordering::Relaxed) < total {
        ticks.tick().await;
        for _ in 0..per_tick {
            let n = published.fetch_add(1, Ordering::Relaxed);
            let at_us = start.elapsed().as_micros() as i64;
            let (sku, location) = (&skus[n as usize % skus.len()], &locations[n as usize % locations.len()]);
            app.stream.publish_level(&level(sku, location, at_us, n as i64 + 1));
        }
        if published.load(Ordering::Relaxed) % args.rate == 0 {
            rss_peak_mib = rss_peak_mib.max(rss_mib());
        }
    }
    // The last events reach the clients, then the stop ends every stream.
    tokio::time::sleep(Duration::from_secs(2)).await;
    rss_peak_mib = rss_peak_mib.max(rss_mib());
    app.stop().await?;

    let mut delays = Histogram::<u64>::new(3)?;
    let (mut complete, mut slow, mut fewest) = (0usize, 0usize, u64::MAX);
    for reader in readers {
        let received = reader.await??;
        delays.add(&received.delays_us)?;
        complete += usize::from(received.events == total);
        slow += usize::from(received.slow_consumer);
        fewest = fewest.min(received.events);
    }
    let ms = |q: f64| delays.value_at_quantile(q) as f64 / 1_000.0;
    let report = json!({
        "benchmark": "stream-fanout",
        "clients": args.clients,
        "rate_per_s": args.rate,
        "seconds": args.seconds,
        "levels_published": total,
        "events_delivered": delays.len(),
        "clients_with_every_event": complete,
        "fewest_events_a_client_got": fewest,
        "slow_consumer_disconnects": slow,
        "p50_ms": ms(0.50),
        "p99_ms": ms(0.99),
        "max_ms": delays.max() as f64 / 1_000.0,
        "rss_before_clients_mib": (rss_before_mib * 10.0).round() / 10.0,
        "rss_connected_mib": (rss_connected_mib * 10.0).round() / 10.0,
        "rss_peak_mib": (rss_peak_mib * 10.0).round() / 10.0,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
