//! Kafka plumbing: client settings, the idempotent producer, topic creation, and the
//! in-process mock cluster of `onhand dev`. Only standard Kafka client behaviour is used:
//! no transactions, no broker-specific features.

use std::{sync::mpsc, thread, time::Duration};

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::KafkaError,
    message::{Header, OwnedHeaders},
    mocking::MockCluster,
    producer::{FutureProducer, FutureRecord},
    types::RDKafkaErrorCode,
    ClientConfig,
};

use crate::config::KafkaConfig;

/// A record that cannot become a movement, on its way to the dead-letter topic.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    /// Where it came from: a topic, or a connector's name.
    pub source: &'a str,
    pub key: Option<&'a str>,
    /// The original bytes, as received.
    pub payload: &'a [u8],
    /// A stable code (`docs/events.md` lists them).
    pub reason_code: &'a str,
    pub reason: &'a str,
}

/// Sends a record to the dead-letter topic `dlq` with the reason in headers, as the ledger
/// does (`onhand.dlq.*`), and waits for Kafka's acknowledgement.
pub async fn dead_letter(
    producer: &FutureProducer,
    dlq: &str,
    letter: DeadLetter<'_>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let failed_at = chrono::Utc::now().to_rfc3339();
    let headers = OwnedHeaders::new()
        .insert(Header { key: "onhand.dlq.reason_code", value: Some(letter.reason_code) })
        .insert(Header { key: "onhand.dlq.reason", value: Some(letter.reason) })
        .insert(Header { key: "onhand.dlq.source", value: Some(letter.source) })
        .insert(Header { key: "onhand.dlq.failed_at", value: Some(failed_at.as_str()) });
    let mut record = FutureRecord::to(dlq).payload(letter.payload).headers(headers);
    if let Some(key) = letter.key {
        record = record.key(key);
    }
    producer.send(record, timeout).await.map(|_| ()).map_err(|(e, _)| e)
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("kafka: {0}")]
    Client(#[from] KafkaError),
    #[error("kafka: cannot create topic {topic}: {code}")]
    CreateTopic { topic: String, code: RDKafkaErrorCode },
    #[error("kafka: the embedded cluster did not start: {0}")]
    Embedded(String),
}

/// The settings every client shares: the brokers and the configured extra properties.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.brokers);
    for (key, value) in &config.client {
        client.set(key, value);
    }
    client
}

/// An idempotent producer that waits for every in-sync replica (`acks=all`), and that
/// partitions by key like the Java client, so that any producer of a SKU hits the same
/// partition. `linger` trades latency for fewer, larger produce requests.
pub fn producer(config: &KafkaConfig, linger: Duration) -> Result<FutureProducer, KafkaError> {
    client_config(config)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", linger.as_millis().to_string())
        .set("message.timeout.ms", config.produce_timeout_ms.to_string())
        .create()
}

/// How long a consumer's fetch may wait at the broker for new records. Kafka answers as
/// soon as records arrive; a broker that does not (tansu waits out the whole time) would
/// otherwise add this much to every change's way to the readers.
pub const FETCH_WAIT_MAX_MS: &str = "50";

/// Creates the movement, stock and dead-letter topics when they are missing. The stock
/// topic is compacted: only the newest level of each `sku@location` matters.
pub async fn ensure_topics(config: &KafkaConfig) -> Result<(), KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config).create()?;
    let new_topic = |name| NewTopic::new(name, config.partitions, TopicReplication::Fixed(config.replication_factor));
    let topics = [
        new_topic(&config.topics.movements),
        new_topic(&config.topics.stock).set("cleanup.policy", "compact"),
        new_topic(&config.topics.dlq),
    ];
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaSetupError::CreateTopic { topic, code }),
        }
    }
    Ok(())
}

/// librdkafka's mock cluster, running in a thread of its own (it is not `Send`) until
/// this handle is dropped. Topics are created on it directly.
#[derive(Debug)]
pub struct EmbeddedKafka {
    brokers: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl EmbeddedKafka {
    pub fn start(topics: &[&str], partitions: i32) -> Result<Self, KafkaSetupError> {
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(cluster) => cluster,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                for topic in &topics {
                    if let Err(e) = cluster.create_topic(topic, partitions, 1) {
                        let _ = ready_tx.send(Err(format!("create topic {topic}: {e}")));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Blocks until the handle is dropped; the cluster goes with this frame.
                let _ = stop_rx.recv();
            })
            .map_err(|e| KafkaSetupError::Embedded(e.to_string()))?;
        let brokers = ready_rx
            .recv()
            .map_err(|e| KafkaSetupError::Embedded(e.to_string()))?
            .map_err(KafkaSetupError::Embedded)?;
        Ok(Self { brokers, stop: Some(stop_tx), thread: Some(thread) })
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
