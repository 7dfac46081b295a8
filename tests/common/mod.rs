//! What the end-to-end tests share: configurations on their own topics and database,
//! a raw Kafka producer and consumer, HTTP helpers and a patient `eventually`. Every
//! server accepts the admin key `TEST_API_KEY`, which the HTTP helpers send unless told
//! otherwise (the `_as` variants).

#![allow(dead_code)] // each test binary uses its own part of this module

use std::{collections::HashMap, future::Future, net::SocketAddr, time::Duration};

use onhand::app::{App, StartOptions};
pub use onhand_core::testing::TEST_API_KEY;
use onhand_core::{
    config::Config,
    event::{MovementKind, Sku},
    testing::{at, fresh_postgres_url, insert_test_api_key, kafka_brokers, movement, unique_name},
};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    producer::{FutureProducer, FutureRecord},
    ClientConfig,
};
use serde_json::Value;

pub mod ops;
pub mod process;
pub mod shopify;
pub mod stream;
pub mod webhooks;

/// A configuration for one test: the suite's broker, a fresh database, topics and a
/// consumer group no other test uses, the HTTP API on a free port.
pub async fn test_config(partitions: i32) -> Config {
    let mut config = Config::default();
    config.database.url = fresh_postgres_url().await;
    config.database.connections_max = 8;
    config.kafka.brokers = kafka_brokers();
    config.kafka.partitions = partitions;
    let prefix = unique_name("t");
    config.kafka.topics.movements = format!("{prefix}.movements");
    config.kafka.topics.stock = format!("{prefix}.stock");
    config.kafka.topics.dlq = format!("{prefix}.dlq");
    config.kafka.topics.alerts = format!("{prefix}.alerts");
    config.kafka.topics.orders = format!("{prefix}.orders");
    config.ledger.group_id = format!("{prefix}.ledger");
    config.alerts.group_id = format!("{prefix}.alerts");
    config.orders.group_id = format!("{prefix}.orders");
    config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config
}

pub async fn serve(config: &Config) -> App {
    serve_with(config, StartOptions::default()).await
}

pub async fn serve_with(config: &Config, options: StartOptions) -> App {
    // Logs go to the test's captured output (shown when it fails); RUST_LOG filters them.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    let app = App::serve(config.clone(), options).await.expect("onhand serve starts");
    insert_test_api_key(&*app.db).await.expect("the test api key is stored");
    app
}

pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("linger.ms", "20")
        .set("partitioner", "murmur2_random")
        .create()
        .expect("a test producer")
}

/// Produces raw records and waits for every acknowledgement.
pub async fn produce(producer: &FutureProducer, topic: &str, records: &[(String, Vec<u8>)]) {
    let sends = records.iter().map(|(key, payload)| {
        producer.send(FutureRecord::to(topic).key(key).payload(payload), Duration::from_secs(30))
    });
    for result in futures::future::join_all(sends).await {
        result.expect("the test broker acknowledges");
    }
}

/// A JSON movement as a connector would produce it, recorded now.
pub fn movement_json(
    id: &str,
    sku: &str,
    location: &str,
    kind: MovementKind,
    quantity: i64,
    second: i64,
) -> (String, Vec<u8>) {
    let m = movement(id, sku, location, kind, quantity, at(second));
    (sku.to_string(), m.to_json())
}

/// Reads every record of `topic` from the beginning until `count` arrived.
pub fn consume_all(topic: &str, count: usize) -> Vec<rdkafka::message::OwnedMessage> {
    consume_all_from(&kafka_brokers(), topic, count)
}

/// As [`consume_all`], from another broker.
pub fn consume_all_from(brokers: &str, topic: &str, count: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique_name("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a test consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while out.len() < count && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            out.push(message.detach());
        }
    }
    assert_eq!(out.len(), count, "records read from {topic}");
    out
}

/// Polls `check` until it returns `Some`, or fails the test after `seconds`.
pub async fn eventually<T, F, Fut>(what: &str, seconds: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {seconds}s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the store holds `count` movements.
pub async fn until_recorded(app: &App, count: i64, seconds: u64) {
    eventually(&format!("{count} movements recorded"), seconds, || async {
        (app.db.movement_count().await.ok()? == count).then_some(())
    })
    .await;
}

/// on_hand per location of a SKU, as the store has it.
pub async fn levels(app: &App, sku: &str) -> HashMap<String, i64> {
    app.db
        .stock_by_sku(&Sku::parse(sku).expect("a valid sku"))
        .await
        .expect("stock read")
        .into_iter()
        .map(|l| (l.location.to_string(), l.on_hand))
        .collect()
}

/// Waits (up to a minute) until `sku@location` holds `expected` on hand.
pub async fn on_hand_is(app: &App, sku: &str, location: &str, expected: i64) {
    eventually(&format!("{sku}@{location} at {expected}"), 60, || async {
        (levels(app, sku).await.get(location) == Some(&expected)).then_some(())
    })
    .await;
}

/// A metric's value, read from the app's `/metrics` exposition.
pub fn metric(app: &App, name: &str) -> f64 {
    app.metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Posts with `TEST_API_KEY`.
pub async fn http_post(
    app_addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    http_post_as(app_addr, path, content_type, body, Some(TEST_API_KEY)).await
}

/// Posts with `key`, or with no `Authorization` header when `None`.
pub async fn http_post_as(
    app_addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
    key: Option<&str>,
) -> (u16, Value) {
    let request =
        reqwest::Client::new().post(format!("http://{app_addr}{path}")).header("content-type", content_type).body(body);
    answer(authorized(request, key)).await
}

/// Gets with `TEST_API_KEY`.
pub async fn http_get(app_addr: SocketAddr, path: &str) -> (u16, Value) {
    http_get_as(app_addr, path, Some(TEST_API_KEY)).await
}

/// Gets with `key`, or with no `Authorization` header when `None`.
pub async fn http_get_as(app_addr: SocketAddr, path: &str, key: Option<&str>) -> (u16, Value) {
    answer(authorized(reqwest::Client::new().get(format!("http://{app_addr}{path}")), key)).await
}

/// `request` with `Authorization: Bearer KEY` when a key is given.
pub fn authorized(request: reqwest::RequestBuilder, key: Option<&str>) -> reqwest::RequestBuilder {
    match key {
        Some(key) => request.bearer_auth(key),
        None => request,
    }
}

async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("the api answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A TCP proxy the test can cut: while cut, it closes every connection and accepts none,
/// as a dead server or a broken network would.
pub struct Proxy {
    pub addr: SocketAddr,
    open: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let open = std::sync::Arc::new(tokio::sync::watch::channel(true).0);
        let state = std::sync::Arc::clone(&open);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut open = state.subscribe();
                if !*open.borrow() {
                    continue; // dropped: the client sees its connection closed
                }
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = open.wait_for(|open| !open) => {}
                    }
                });
            }
        });
        Proxy { addr, open }
    }

    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    pub fn restore(&self) {
        self.open.send_replace(true);
    }
}

/// Sends a request with extra headers and a JSON body (or none), for routes that need
/// them; with `TEST_API_KEY` unless the headers carry an `authorization` of their own.
pub async fn http_send(
    method: reqwest::Method,
    app_addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let own_key = headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("authorization"));
    let key = if own_key { None } else { Some(TEST_API_KEY) };
    let mut request = authorized(reqwest::Client::new().request(method, format!("http://{app_addr}{path}")), key);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_string());
    }
    let response = request.send().await.expect("the api answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A broker of the test's own, reached only through a [`Proxy`]: it advertises the proxy's
/// address, so that cutting the proxy cuts every client from it, as a broken network would.
/// (The suite's shared broker advertises its own address, which clients would reconnect to.)
pub struct PrivateBroker {
    pub proxy: Proxy,
    _broker: tokio::process::Child,
    _storage: tempfile::TempDir,
}

impl PrivateBroker {
    pub async fn start() -> PrivateBroker {
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let broker_addr = free.local_addr().expect("its address");
        drop(free);
        let proxy = Proxy::start(broker_addr).await;
        let tansu = std::env::var("HOME").map(|h| format!("{h}/.cargo/bin/tansu")).unwrap_or_default();
        let tansu = if std::path::Path::new(&tansu).exists() { tansu } else { "tansu".to_string() };
        // tansu's storage URL is relative to its working directory.
        let storage = tempfile::tempdir().expect("a directory for the broker");
        let broker = tokio::process::Command::new(tansu)
            .current_dir(storage.path())
            .args(["broker", "--cluster-id", "onhand-private"])
            .arg("--listener-url")
            .arg(format!("tcp://{broker_addr}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://{}", proxy.addr))
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("tansu starts (scripts/test installs it)");
        eventually("the private broker listens", 30, || async {
            tokio::net::TcpStream::connect(broker_addr).await.ok().map(|_| ())
        })
        .await;
        PrivateBroker { proxy, _broker: broker, _storage: storage }
    }
}
