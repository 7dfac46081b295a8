//! Kafka plumbing: client settings, the idempotent producer, topic creation, and the
//! in-process mock cluster of `onhand dev`. Only standard Kafka client behaviour is used:
//! no transactions, no broker-specific features.

pub mod follow;
pub mod journal;

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{mpsc, Arc, PoisonError, RwLock},
    thread,
    time::Duration,
};

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::{Header, Headers, OwnedHeaders, OwnedMessage, ToBytes},
    mocking::MockCluster,
    producer::{future_producer::Delivery, FutureProducer, FutureRecord, Producer as _},
    types::RDKafkaErrorCode,
    ClientConfig,
};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{backoff::Backoff, config::KafkaConfig, event::RejectCode, health::Component, telemetry::Metrics};
use journal::JournalRecord;

/// A record that cannot become a movement, on its way to the dead-letter topic.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    /// Where it came from: a topic, or a connector's name.
    pub source: &'a str,
    /// The Kafka coordinates it was read from (topic, partition, offset), when it was read
    /// from Kafka.
    pub read_from: Option<(&'a str, i32, i64)>,
    pub key: Option<&'a [u8]>,
    /// The original bytes, as received.
    pub payload: &'a [u8],
    /// A stable code (`docs/events.md` lists them).
    pub reason_code: &'a str,
    pub reason: &'a str,
}

/// The largest original a dead letter carries whole. Above, it carries the first
/// [`DEAD_LETTER_TRUNCATED_BYTES`] bytes, with the original's size and SHA-256 in headers:
/// a record near the broker's size limit (1 MB by default) plus the reason's headers would
/// be refused for ever, and the component behind it with it.
pub const DEAD_LETTER_PAYLOAD_BYTES_MAX: usize = 512 * 1024;
/// What is kept of an original too large to carry whole.
pub const DEAD_LETTER_TRUNCATED_BYTES: usize = 16 * 1024;

/// The reason codes a dead letter may carry besides the movement gate's own
/// ([`RejectCode`]): the ledger's and the connectors' (`docs/events.md`, section 6). The
/// dead-letter metric's label takes these values and `other`, so that it stays bounded.
pub const DEAD_LETTER_REASON_CODES: &[&str] = &[
    "level_out_of_range",
    "database_refused",
    "shopify_unmapped_sku",
    "shopify_unmapped_location",
    "shopify_invalid_payload",
    "shopify_lines_truncated",
    "pos_unreadable_line",
    "erp_unknown_movement_type",
    "erp_unknown_warehouse",
    "erp_journal_row_changed",
    "erp_invalid_change_event",
    "erp_fractional_quantity",
    "erp_fractional_id",
    "erp_decimal_without_schema",
];

/// `code` as the dead-letter metric labels it: itself when it is a known code, else `other`.
pub fn reason_label(code: &str) -> &str {
    let known = RejectCode::ALL.iter().any(|c| c.as_str() == code) || DEAD_LETTER_REASON_CODES.contains(&code);
    if known {
        code
    } else {
        "other"
    }
}

/// Whether Kafka refused a record for good: what a person must fix (authorization, a
/// missing topic, a record the broker will never take). Everything else may pass.
pub fn is_permanent(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    let code = match error {
        KafkaError::MessageProduction(code) => *code,
        _ => return false,
    };
    matches!(
        code,
        MessageSizeTooLarge
            | InvalidMessageSize
            | InvalidMessage
            | InvalidRecord
            | UnknownTopic
            | UnknownTopicOrPartition
            | TopicAuthorizationFailed
            | ClusterAuthorizationFailed
            | TransactionalIdAuthorizationFailed
            | InvalidRequiredAcks
            | InvalidTopic
            | Fatal
    )
}

fn is_too_large(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
    )
}

/// Sends a record to the dead-letter topic `dlq` with the reason in headers
/// (`onhand.dlq.*`, `docs/events.md`), and waits for Kafka's acknowledgement. An original
/// too large for the broker goes truncated, saying so in headers.
pub async fn dead_letter(
    producer: &Producer,
    dlq: &str,
    letter: DeadLetter<'_>,
    timeout: Duration,
    metrics: &Metrics,
) -> Result<(), KafkaError> {
    let whole = letter.payload.len() <= DEAD_LETTER_PAYLOAD_BYTES_MAX;
    let keep = if whole { usize::MAX } else { DEAD_LETTER_TRUNCATED_BYTES };
    let truncated = match send_dead_letter(producer, dlq, &letter, keep, timeout).await {
        // The broker's limit is below ours: what is kept must fit any broker.
        Err(e) if is_too_large(&e) && whole => {
            send_dead_letter(producer, dlq, &letter, DEAD_LETTER_TRUNCATED_BYTES, timeout).await?;
            true
        }
        sent => sent.map(|()| !whole)?,
    };
    if truncated {
        metrics.dlq_truncated_total.inc();
    }
    metrics.dead_letters_total.with_label_values(&[reason_label(letter.reason_code)]).inc();
    Ok(())
}

async fn send_dead_letter(
    producer: &Producer,
    dlq: &str,
    letter: &DeadLetter<'_>,
    keep: usize,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let failed_at = chrono::Utc::now().to_rfc3339();
    let mut headers = OwnedHeaders::new()
        .insert(Header { key: "onhand.dlq.reason_code", value: Some(letter.reason_code) })
        .insert(Header { key: "onhand.dlq.reason", value: Some(letter.reason) })
        .insert(Header { key: "onhand.dlq.source", value: Some(letter.source) })
        .insert(Header { key: "onhand.dlq.failed_at", value: Some(failed_at.as_str()) });
    if let Some((topic, partition, offset)) = letter.read_from {
        headers = headers
            .insert(Header { key: "onhand.dlq.topic", value: Some(topic) })
            .insert(Header { key: "onhand.dlq.partition", value: Some(&partition.to_string()) })
            .insert(Header { key: "onhand.dlq.offset", value: Some(&offset.to_string()) });
    }
    let payload = if letter.payload.len() > keep {
        let digest = hex::encode(Sha256::digest(letter.payload));
        headers = headers
            .insert(Header { key: "onhand.dlq.truncated", value: Some("true") })
            .insert(Header { key: "onhand.dlq.original_bytes", value: Some(&letter.payload.len().to_string()) })
            .insert(Header { key: "onhand.dlq.original_sha256", value: Some(digest.as_str()) });
        &letter.payload[..keep]
    } else {
        letter.payload
    };
    let journal_headers = producer.config.dead_letter_journal.as_ref().map(|_| header_texts(&headers));
    let mut record = FutureRecord::to(dlq).payload(payload).headers(headers);
    if let Some(key) = letter.key {
        record = record.key(key);
    }
    let Delivery { partition, offset, .. } = producer.send(record, timeout).await.map_err(|(e, _)| e)?;
    if let (Some(path), Some(headers)) = (&producer.config.dead_letter_journal, journal_headers) {
        let record = JournalRecord::new(partition, offset, letter.key, payload, headers);
        let path = path.clone();
        let appended = tokio::task::spawn_blocking(move || journal::append(&path, &record)).await;
        if let Err(e) = appended.map_err(std::io::Error::other).and_then(|r| r) {
            warn!(error = %e, "a dead letter is on the topic but not in the dev journal: lost at the next start");
        }
    }
    Ok(())
}

fn header_texts(headers: &OwnedHeaders) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| (h.key.to_string(), h.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default()))
        .collect()
}

/// Produces the dead letters of `onhand dev`'s journal again into the fresh embedded
/// topic `dlq`, each to its partition, in order, so that they keep their offsets; answers
/// how many. The journal is written again whole, without any line a crash cut.
pub async fn restore_dead_letters(
    producer: &Producer,
    dlq: &str,
    journal_path: &Path,
) -> Result<usize, KafkaSetupError> {
    let path = journal_path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || {
        let records = journal::read(&path)?;
        journal::rewrite(&path, &records)?;
        Ok::<_, std::io::Error>(records)
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r)
    .map_err(|e| KafkaSetupError::DeadLetterJournal(format!("{}: {e}", journal_path.display())))?;
    let timeout = Duration::from_secs(10);
    for record in &read {
        let (key, payload) = (record.key_bytes(), record.payload_bytes());
        let headers = record.headers.iter().fold(OwnedHeaders::new(), |headers, (name, value)| {
            headers.insert(Header { key: name, value: Some(value.as_str()) })
        });
        let mut message = FutureRecord::to(dlq).partition(record.partition).payload(&payload).headers(headers);
        if let Some(key) = &key {
            message = message.key(key);
        }
        producer.send(message, timeout).await.map_err(|(e, _)| KafkaSetupError::Client(e))?;
    }
    Ok(read.len())
}

/// How long a dead letter may take before its component reports itself blocked: the
/// producer keeps trying for its whole message timeout, which is longer than a person
/// watching `/readyz` should wait to learn that nothing moves.
const DEAD_LETTER_SLOW: Duration = Duration::from_secs(3);

/// Sends a dead letter until Kafka takes it: the component behind it must not move past
/// a record that is not safe anywhere. While it cannot, `component` is blocked, with the
/// reason; it runs again once the letter went. `false` when shutdown came first.
pub async fn dead_letter_until_sent(
    producer: &Producer,
    dlq: &str,
    letter: DeadLetter<'_>,
    timeout: Duration,
    shutdown: &CancellationToken,
    component: &Component,
    metrics: &Metrics,
) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut blocked = false;
    loop {
        let send = dead_letter(producer, dlq, letter, timeout, metrics);
        tokio::pin!(send);
        let sent = tokio::select! {
            sent = &mut send => sent,
            _ = tokio::time::sleep(DEAD_LETTER_SLOW) => {
                component.blocked(format!("a dead letter to {dlq} is not acknowledged after {}s", DEAD_LETTER_SLOW.as_secs()));
                blocked = true;
                tokio::select! {
                    sent = &mut send => sent,
                    _ = shutdown.cancelled() => return false,
                }
            }
            _ = shutdown.cancelled() => return false,
        };
        match sent {
            Ok(()) => {
                if blocked {
                    component.running();
                }
                return true;
            }
            Err(e) => {
                let needs = if is_permanent(&e) { "; a person must act (topic, authorization)" } else { "" };
                warn!(error = %e, dlq, "cannot write to the dead-letter topic; retrying");
                component.blocked(format!("cannot write dead letters to {dlq}: {e}{needs}"));
                blocked = true;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(backoff.fail()) => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("kafka: {0}")]
    Client(#[from] KafkaError),
    #[error("kafka: cannot create topic {topic}: {code}")]
    CreateTopic { topic: String, code: RDKafkaErrorCode },
    #[error("kafka: the embedded cluster did not start: {0}")]
    Embedded(String),
    #[error("kafka: onhand dev's saved dead letters cannot be read: {0}")]
    DeadLetterJournal(String),
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
pub fn future_producer(config: &KafkaConfig, linger: Duration) -> Result<FutureProducer, KafkaError> {
    client_config(config)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", linger.as_millis().to_string())
        .set("message.timeout.ms", config.produce_timeout_ms.to_string())
        .create()
}

/// The producer a process shares (the API, the relay, the connectors), made again when
/// librdkafka declares it fatally failed: an idempotent producer that lost track of its
/// sequence numbers refuses every send for good, and a fresh one starts clean. Cheap to
/// clone; every clone sees the renewed producer.
#[derive(Clone)]
pub struct Producer {
    current: Arc<RwLock<Arc<FutureProducer>>>,
    config: Arc<KafkaConfig>,
    linger: Duration,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").field("linger", &self.linger).finish_non_exhaustive()
    }
}

impl Producer {
    pub fn new(config: &KafkaConfig, linger: Duration) -> Result<Producer, KafkaError> {
        let producer = Arc::new(future_producer(config, linger)?);
        Ok(Producer { current: Arc::new(RwLock::new(producer)), config: Arc::new(config.clone()), linger })
    }

    /// The producer as it is now.
    pub fn get(&self) -> Arc<FutureProducer> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Sends a record and waits for its acknowledgement, as `FutureProducer::send`; a
    /// fatal error renews the producer for the next send.
    pub async fn send<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: Duration,
    ) -> Result<Delivery, (KafkaError, OwnedMessage)>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let producer = self.get();
        let sent = producer.send(record, queue_timeout).await;
        if sent.is_err() && producer.client().fatal_error().is_some() {
            self.renew_if(&producer);
        }
        sent
    }

    /// Replaces the producer with a fresh one, unless another caller already did.
    pub fn renew_if(&self, failed: &Arc<FutureProducer>) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&current, failed) {
            return;
        }
        match future_producer(&self.config, self.linger) {
            Ok(fresh) => {
                if let Some((code, reason)) = failed.client().fatal_error() {
                    warn!(?code, reason, "the kafka producer failed fatally; made a new one");
                }
                *current = Arc::new(fresh);
            }
            Err(e) => warn!(error = %e, "a new kafka producer could not be made; keeping the old one"),
        }
    }

    /// Replaces the producer with a fresh one whatever its state (after a batch that
    /// timed out: some brokers refuse the epoch bump an idempotent producer then needs).
    pub fn renew(&self) {
        let current = self.get();
        self.renew_if(&current);
    }
}

/// How long a consumer's fetch may wait at the broker for new records. Kafka answers as
/// soon as records arrive; a broker that does not (tansu waits out the whole time) would
/// otherwise add this much to every change's way to the readers.
pub const FETCH_WAIT_MAX_MS: &str = "50";

/// Each partition's low and high watermark: the oldest offset kept, and the next one to be
/// written.
pub type Watermarks = BTreeMap<i32, (i64, i64)>;

/// The [`Watermarks`] of every partition of `topic`, asked with `consumer`; `None` when the brokers know no
/// such topic, or it has no partition. Blocks for up to `timeout` per request.
pub fn watermarks(consumer: &BaseConsumer, topic: &str, timeout: Duration) -> Result<Option<Watermarks>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none()) else {
        return Ok(None);
    };
    if found.partitions().is_empty() {
        return Ok(None);
    }
    let mut marks = BTreeMap::new();
    for partition in found.partitions() {
        marks.insert(partition.id(), consumer.fetch_watermarks(topic, partition.id(), timeout)?);
    }
    Ok(Some(marks))
}

/// How many records of a partition with the watermarks `(low, high)` a reader whose next
/// offset is `next` has still to read; without one it starts at the oldest kept.
pub fn unread((low, high): (i64, i64), next: Option<i64>) -> i64 {
    high.saturating_sub(next.unwrap_or(low).max(low)).max(0)
}

/// The headers of a movement produced while an HTTP request is served: the request's id,
/// which the ledger logs beside the movement's.
pub fn request_headers() -> Option<OwnedHeaders> {
    let id = crate::telemetry::request_id()?;
    Some(
        OwnedHeaders::new()
            .insert(Header { key: crate::telemetry::REQUEST_ID_KAFKA_HEADER, value: Some(id.as_bytes()) }),
    )
}

/// Creates the movement, stock, dead-letter, alert and order topics when they are missing, with
/// the configured replication, `min.insync.replicas` and retention. The stock topic is
/// compacted: only the newest level of each `sku@location` matters. A topic that exists is
/// left as it is (`onhand doctor` says when its settings fall short).
pub async fn ensure_topics(config: &KafkaConfig) -> Result<(), KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config).create()?;
    let (insync, retention) = (config.min_insync_replicas.to_string(), &config.retention_ms);
    let [movements, dlq, alerts, orders] =
        [retention.movements, retention.dlq, retention.alerts, retention.orders].map(|ms| ms.to_string());
    let new_topic = |name| {
        NewTopic::new(name, config.partitions, TopicReplication::Fixed(config.replication_factor))
            .set("min.insync.replicas", &insync)
    };
    let topics = [
        new_topic(&config.topics.movements).set("retention.ms", &movements),
        new_topic(&config.topics.stock).set("cleanup.policy", "compact"),
        new_topic(&config.topics.dlq).set("retention.ms", &dlq),
        new_topic(&config.topics.alerts).set("retention.ms", &alerts),
        new_topic(&config.topics.orders).set("retention.ms", &orders),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// L6: a producer that failed is replaced once, for every holder of the handle; a
    /// caller that saw the old one fail later does not replace the new one again.
    #[test]
    fn a_failed_producer_is_renewed_once() {
        let config = KafkaConfig { brokers: "127.0.0.1:1".into(), ..KafkaConfig::default() };
        let producer = Producer::new(&config, Duration::from_millis(5)).unwrap();
        let (first, holder) = (producer.get(), producer.clone());
        producer.renew_if(&first);
        let second = holder.get();
        assert!(!Arc::ptr_eq(&first, &second), "renewed, and every clone sees it");
        holder.renew_if(&first);
        assert!(Arc::ptr_eq(&second, &producer.get()), "a second report of the same failure changes nothing");
    }
}
