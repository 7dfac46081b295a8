//! Propagation: the time from the 202 of `POST /v1/movements` to the new level showing in
//! `GET /v1/stock/{sku}`, through Kafka, the ledger, the database, the stock topic and the
//! cache. Posts N movements at a fixed rate over a set of SKUs already cached, and polls
//! each one's SKU every 10 ms until it shows. Prints p50/p99/max as JSON.
//!
//! ```text
//! scripts/services run cargo run --release -p onhand-load-tests --bin propagation
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
use serde_json::{json, Value};
use tokio::{sync::Mutex, time::MissedTickBehavior};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    movements: u64,
    /// Movements per second.
    #[arg(long, default_value_t = 150)]
    rate: u64,
    /// SKUs the movements go round.
    #[arg(long, default_value_t = 1_000)]
    skus: u64,
    #[command(flatten)]
    servers: Servers,
}

fn receipt(id: &str, sku: &str) -> Value {
    json!([{
        "event_id": id,
        "source": { "system": "api", "instance": "bench", "ref": id },
        "sku": sku, "location": "store-001", "kind": "receipt", "quantity": 1,
        "occurred_at": chrono::Utc::now(),
    }])
}

async fn post(client: &reqwest::Client, addr: SocketAddr, body: &Value) -> anyhow::Result<()> {
    let response = client.post(format!("http://{addr}/v1/movements")).json(body).send().await?;
    anyhow::ensure!(response.status() == 202, "post answered {}", response.status());
    Ok(())
}

async fn on_hand(client: &reqwest::Client, addr: SocketAddr, sku: &str) -> Option<i64> {
    let response = client.get(format!("http://{addr}/v1/stock/{sku}")).send().await.ok()?;
    let body: Value = response.json().await.ok()?;
    body["on_hand"].as_i64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let args = Args::parse();
    let prefix = unique_name("bench");

    let config = args.servers.config(&prefix).await?;
    let app = App::serve(config, StartOptions::default()).await?;
    let addr = app.local_addr;
    let client = client_with_key(&*app.db, reqwest::Client::builder()).await?;

    // Every SKU gets a first unit and is read once, so that it is cached, as a selling SKU is.
    let skus: Vec<String> = (0..args.skus).map(|i| format!("PROP-{i:05}")).collect();
    for sku in &skus {
        post(&client, addr, &receipt(&format!("{prefix}-seed-{sku}"), sku)).await?;
    }
    for sku in &skus {
        let started = Instant::now();
        while on_hand(&client, addr, sku).await != Some(1) {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "{sku} was never applied");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut waits = Vec::new();
    for i in 0..args.movements {
        ticks.tick().await;
        let sku = skus[(i % args.skus) as usize].clone();
        let expected = 2 + (i / args.skus) as i64;
        let (client, histogram, body) =
            (client.clone(), Arc::clone(&histogram), receipt(&format!("{prefix}-{i}"), &sku));
        waits.push(tokio::spawn(async move {
            post(&client, addr, &body).await?;
            let accepted = Instant::now();
            while on_hand(&client, addr, &sku).await.is_none_or(|n| n < expected) {
                anyhow::ensure!(accepted.elapsed() < Duration::from_secs(60), "{sku} did not reach {expected}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            histogram.lock().await.record(accepted.elapsed().as_micros() as u64)?;
            anyhow::Ok(())
        }));
    }
    for wait in waits {
        wait.await??;
    }
    app.stop().await?;

    let histogram = histogram.lock().await;
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1_000.0;
    let report = json!({
        "benchmark": "propagation",
        "movements": args.movements,
        "rate_per_s": args.rate,
        "skus": args.skus,
        "p50_ms": ms(0.50),
        "p99_ms": ms(0.99),
        "max_ms": histogram.max() as f64 / 1_000.0,
        "poll_interval_ms": 10,
        "target_p99_ms": 1_000,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
