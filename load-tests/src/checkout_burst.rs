//! Checkout burst: Black Friday at the web store. Starts `onhand serve` in process (ledger
//! and order worker included) on a new PostgreSQL database whose levels are written
//! straight in: a long tail of SKUs with plenty, and a few hot SKUs with little, at a DC
//! and four stores. Then posts orders at 5x the normal rate for a while (open loop: the
//! schedule does not wait for answers), most of their lines on the hot SKUs, so that buyers
//! race for the last units. Once the queue is empty it reads every order back and prints
//! one JSON object: orders decided per second, the p50/p99 from `POST` to decision (the
//! order's `received_at` to its `decided_at`, both written by the server), the outcomes,
//! and the proof that no unit was sold twice: per SKU and location, the units of the
//! scheduled orders never exceed the stock, and once the ledger applied their sales each
//! level is exactly what it held less what was sold.
//!
//! ```text
//! scripts/services run cargo run --release -p onhand-load-tests --bin checkout-burst
//! ```

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Parser;
use hdrhistogram::Histogram;
use onhand::app::{App, StartOptions};
use onhand_core::{
    config::{CalendarConfig, ChannelConfig},
    testing::unique_name,
};
use onhand_load_tests::{client_with_key, Servers};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde_json::{json, Value};
use sqlx::{Connection, Row};
use tokio::{sync::Mutex, time::MissedTickBehavior};

const LOCATIONS: [&str; 5] = ["dc-01", "store-001", "store-002", "store-003", "store-004"];

#[derive(Debug, Parser)]
struct Args {
    /// Orders per second on a normal day's peak hour; the burst is `--burst` times it.
    #[arg(long, default_value_t = 20)]
    rate: u64,
    #[arg(long, default_value_t = 5)]
    burst: u64,
    /// Seconds of the burst.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// The hot SKUs everybody wants, and the units each has at every location.
    #[arg(long, default_value_t = 10)]
    hot_skus: u64,
    #[arg(long, default_value_t = 20)]
    hot_units: i64,
    /// The share of lines on a hot SKU; the others come from the long tail.
    #[arg(long, default_value_t = 0.7)]
    hot_share: f64,
    /// The long tail, with plenty at every location.
    #[arg(long, default_value_t = 5_000)]
    tail_skus: u64,
    #[command(flatten)]
    servers: Servers,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let args = Args::parse();
    anyhow::ensure!((0.0..=1.0).contains(&args.hot_share), "--hot-share is a share, 0 to 1");
    let prefix = unique_name("bench");
    let mut config = args.servers.config(&prefix).await?;
    config.orders.group_id = format!("{prefix}.orders");
    // Above the burst's whole length: the figures show the wait, not refusals.
    config.orders.queue_age_max_s = 600;
    config.channels.insert(
        "web".into(),
        ChannelConfig { locations: LOCATIONS.map(String::from).to_vec(), ..ChannelConfig::default() },
    );
    let calendar = CalendarConfig {
        days: ["mon", "tue", "wed", "thu", "fri", "sat", "sun"].map(String::from).into(),
        slots: vec!["08-12".into(), "12-18".into()],
        capacity: [("standard".to_string(), 100_000)].into(),
        lead_days: BTreeMap::new(),
    };
    for location in LOCATIONS {
        config.orders.calendars.insert(location.into(), calendar.clone());
    }
    config.orders.regions.insert("0".into(), vec!["dc-01".into()]);
    // Opening the database runs the migrations.
    onhand_core::db::open(&config.database.url, 2).await?;
    let stock = load_levels(&config.database.url, &args).await?;
    let database_url = config.database.url.clone();
    let app = App::serve(config, StartOptions::default()).await?;
    let client = client_with_key(&*app.db, reqwest::Client::builder().pool_max_idle_per_host(256)).await?;

    // One order decided first: the worker has joined its group, as a running service has.
    warm_up(&client, &app).await?;
    let rate = args.rate * args.burst;
    let posted = post_orders(&client, &app, &args, rate).await;
    let drained = drain(&app, Duration::from_secs(600)).await?;
    let orders = read_orders(&database_url).await?;
    let proof = prove(&stock, &orders, &database_url).await?;
    app.stop().await?;

    let burst: Vec<&Order> = orders.iter().filter(|o| !o.warm_up).collect();
    let decided: Vec<&Order> = burst.iter().copied().filter(|o| o.decided_ms.is_some()).collect();
    let mut decision = Histogram::<u64>::new(3)?;
    for order in &decided {
        decision.record(order.decided_ms.unwrap_or(0).max(0) as u64)?;
    }
    let first_received = burst.iter().map(|o| o.received_at_ms).min().unwrap_or(0);
    let last_decided = burst.iter().filter_map(|o| o.decided_at_ms).max().unwrap_or(first_received);
    let span_s = ((last_decided - first_received) as f64 / 1_000.0).max(0.001);
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for order in &burst {
        *outcomes.entry(order.outcome.clone()).or_default() += 1;
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q);
    let report = json!({
        "benchmark": "checkout_burst",
        "orders_per_s_normal": args.rate,
        "orders_per_s_burst": rate,
        "burst_seconds": args.seconds,
        "hot_skus": args.hot_skus,
        "hot_units_per_location": args.hot_units,
        "locations": LOCATIONS.len(),
        "posted": posted.accepted,
        "post_errors": posted.errors,
        "post_p50_ms": ms(&posted.latency, 0.50) as f64 / 1_000.0,
        "post_p99_ms": ms(&posted.latency, 0.99) as f64 / 1_000.0,
        "decided": decided.len(),
        "decided_per_s": (decided.len() as f64 / span_s).round(),
        "queue_drained_after_burst_s": (drained.as_secs_f64() * 10.0).round() / 10.0,
        "post_to_decision_p50_ms": ms(&decision, 0.50),
        "post_to_decision_p99_ms": ms(&decision, 0.99),
        "post_to_decision_max_ms": decision.max(),
        "outcomes": outcomes,
        "no_unit_sold_twice": proof.never_above_stock,
        "levels_exact_after_the_sales": proof.levels_exact,
        "units_sold": proof.units_sold,
        "hot_units": args.hot_skus as i64 * args.hot_units * LOCATIONS.len() as i64,
        "targets": { "post_to_decision_p99_ms": 1_000, "no_unit_sold_twice": true },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    anyhow::ensure!(proof.never_above_stock && proof.levels_exact, "a unit was sold twice: {report}");
    Ok(())
}

/// The SKUs' levels written straight in, every location alike; answers the stock of each
/// `(sku, location)`.
async fn load_levels(database_url: &str, args: &Args) -> anyhow::Result<BTreeMap<(String, String), i64>> {
    let mut conn = sqlx::PgConnection::connect(database_url).await?;
    let mut stock = BTreeMap::new();
    for (sku, on_hand) in (1..=args.hot_skus)
        .map(|i| (hot_sku(i), args.hot_units))
        .chain((1..=args.tail_skus).map(|i| (tail_sku(i), 1_000)))
    {
        for location in LOCATIONS {
            stock.insert((sku.clone(), location.to_string()), on_hand);
        }
    }
    let (mut skus, mut locations, mut units) = (Vec::new(), Vec::new(), Vec::new());
    for ((sku, location), on_hand) in &stock {
        skus.push(sku.as_str());
        locations.push(location.as_str());
        units.push(*on_hand);
    }
    sqlx::query(
        "INSERT INTO stock_levels (sku, location, on_hand, version, published_version, last_movement_at,
                                   last_event_id, updated_at)
         SELECT sku, location, on_hand, 1, 1, now(), 'seed', now()
         FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS t (sku, location, on_hand)",
    )
    .bind(&skus)
    .bind(&locations)
    .bind(&units)
    .execute(&mut conn)
    .await?;
    sqlx::query("ANALYZE stock_levels").execute(&mut conn).await?;
    Ok(stock)
}

fn hot_sku(i: u64) -> String {
    format!("HOT-{i:04}")
}

fn tail_sku(i: u64) -> String {
    format!("SKU-{i:06}")
}

struct Posted {
    accepted: u64,
    errors: BTreeMap<u16, u64>,
    latency: Histogram<u64>,
}

/// Posts `rate` orders a second for `args.seconds`, each timed from when it was due.
async fn post_orders(client: &reqwest::Client, app: &App, args: &Args, rate: u64) -> Posted {
    let results = Arc::new(Mutex::new(Posted {
        accepted: 0,
        errors: BTreeMap::new(),
        latency: Histogram::new(3).expect("a histogram"),
    }));
    let zipf = Zipf::new(args.tail_skus as f64, 1.03).expect("a Zipf distribution");
    let mut rng = StdRng::seed_from_u64(11);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let url = format!("http://{}/v1/orders", app.local_addr);
    let mut requests = Vec::new();
    for i in 0..rate * args.seconds {
        let due = ticks.tick().await;
        let mut lines: BTreeMap<String, i64> = BTreeMap::new();
        for _ in 0..rng.random_range(1..=3) {
            let sku = if rng.random_bool(args.hot_share) {
                hot_sku(rng.random_range(1..=args.hot_skus))
            } else {
                tail_sku(zipf.sample(&mut rng) as u64)
            };
            lines.insert(sku, rng.random_range(1..=2));
        }
        let lines: Vec<Value> =
            lines.into_iter().map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity})).collect();
        let body = order_body(&format!("buyer-{i:06}"), lines);
        let (client, results, url) = (client.clone(), Arc::clone(&results), url.clone());
        requests.push(tokio::spawn(async move {
            let sent = client.post(url).header("idempotency-key", format!("checkout-{i}")).json(&body).send().await;
            let status = sent.map_or(0, |r| r.status().as_u16());
            let mut results = results.lock().await;
            if status == 202 {
                results.accepted += 1;
                let _ = results.latency.record(due.elapsed().as_micros() as u64);
            } else {
                *results.errors.entry(status).or_default() += 1;
            }
        }));
    }
    futures::future::join_all(requests).await;
    Arc::try_unwrap(results).map(Mutex::into_inner).unwrap_or_else(|_| unreachable!("every request ended"))
}

/// Posts one order of the long tail and waits for its decision; it is not counted.
async fn warm_up(client: &reqwest::Client, app: &App) -> anyhow::Result<()> {
    let body = order_body("warm-up", vec![json!({"sku": tail_sku(1), "quantity": 1})]);
    let url = format!("http://{}/v1/orders", app.local_addr);
    let answer: Value = client
        .post(url)
        .header("idempotency-key", "warm-up")
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = answer["id"].as_str().unwrap_or_default().to_string();
    let started = Instant::now();
    while app.db.order(&id).await?.is_some_and(|o| o.status == onhand_core::order::OrderStatus::Received) {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(120), "the warm-up order was not decided");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn order_body(customer: &str, lines: Vec<Value>) -> Value {
    json!({
        "channel": "web", "customer": customer, "lines": lines,
        "payment": {"method": "pix", "token": format!("pix_{customer}")},
        "delivery": {"method": "standard", "address": {
            "line1": "Av. Paulista, 1000", "city": "São Paulo", "postal_code": "01310-100", "country": "BR"}}
    })
}

/// Waits until no order waits for a decision; answers how long it took.
async fn drain(app: &App, timeout: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        if app.db.order_queue().await?.waiting == 0 {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(started.elapsed() < timeout, "orders still waiting after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Order {
    /// The warm-up order: in the proof, not in the figures.
    warm_up: bool,
    outcome: String,
    received_at_ms: i64,
    decided_at_ms: Option<i64>,
    decided_ms: Option<i64>,
    /// For a scheduled order: its location and lines.
    sold: Option<(String, Vec<(String, i64)>)>,
}

async fn read_orders(database_url: &str) -> anyhow::Result<Vec<Order>> {
    let mut conn = sqlx::PgConnection::connect(database_url).await?;
    let rows = sqlx::query("SELECT status, request, decision, received_at, decided_at FROM orders")
        .fetch_all(&mut conn)
        .await?;
    rows.iter()
        .map(|row| {
            let status: String = row.try_get("status")?;
            let request: Value = serde_json::from_str(&row.try_get::<String, _>("request")?)?;
            let decision: Option<Value> =
                row.try_get::<Option<String>, _>("decision")?.map(|d| serde_json::from_str(&d)).transpose()?;
            let received: chrono::DateTime<chrono::Utc> = row.try_get("received_at")?;
            let decided: Option<chrono::DateTime<chrono::Utc>> = row.try_get("decided_at")?;
            let outcome = match (&status[..], &decision) {
                ("rejected", Some(d)) => d["reason"].as_str().unwrap_or("rejected").to_string(),
                _ => status.clone(),
            };
            let sold = (status == "scheduled").then(|| {
                let location = decision.as_ref().and_then(|d| d["location"].as_str()).unwrap_or_default().to_string();
                let lines = request["lines"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|l| (l["sku"].as_str().unwrap_or_default().to_string(), l["quantity"].as_i64().unwrap_or(0)))
                    .collect();
                (location, lines)
            });
            Ok(Order {
                warm_up: request["customer"] == "warm-up",
                outcome,
                received_at_ms: received.timestamp_millis(),
                decided_at_ms: decided.map(|d| d.timestamp_millis()),
                decided_ms: decided.map(|d| (d - received).num_milliseconds()),
                sold,
            })
        })
        .collect()
}

struct Proof {
    never_above_stock: bool,
    levels_exact: bool,
    units_sold: i64,
}

/// Sums the scheduled lines per SKU and location against the stock, then waits for the
/// ledger to apply their sales and compares every level with the stock less the sales.
async fn prove(stock: &BTreeMap<(String, String), i64>, orders: &[Order], database_url: &str) -> anyhow::Result<Proof> {
    let mut sold: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (location, lines) in orders.iter().filter_map(|o| o.sold.as_ref()) {
        for (sku, quantity) in lines {
            *sold.entry((sku.clone(), location.clone())).or_default() += quantity;
        }
    }
    let never_above_stock = sold.iter().all(|(key, units)| stock.get(key).is_some_and(|s| units <= s));
    let units_sold: i64 = sold.values().sum();
    let mut conn = sqlx::PgConnection::connect(database_url).await?;
    let started = Instant::now();
    let levels_exact = loop {
        let rows =
            sqlx::query("SELECT sku, location, on_hand, reserved FROM stock_levels").fetch_all(&mut conn).await?;
        let mut exact = true;
        for row in &rows {
            let key: (String, String) = (row.try_get("sku")?, row.try_get("location")?);
            let (on_hand, reserved): (i64, i64) = (row.try_get("on_hand")?, row.try_get("reserved")?);
            let expected = stock.get(&key).copied().unwrap_or(0) - sold.get(&key).copied().unwrap_or(0);
            exact &= on_hand == expected && reserved == 0;
        }
        if exact || started.elapsed() > Duration::from_secs(120) {
            break exact;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    Ok(Proof { never_above_stock, levels_exact, units_sold })
}
