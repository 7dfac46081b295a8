//! The dead-letter topic, for `onhand dlq list|show|redrive`: read from its start to its
//! current end (every partition assigned, no consumer group joined, nothing committed),
//! filtered by the `onhand.dlq.*` headers (`docs/events.md`, section 6), and records sent
//! back to the movements topic once what refused them is fixed.
//!
//! A record goes back unchanged, its event id kept, so sending it twice is harmless: the
//! ledger skips an event id it recorded. A connector's original record (a Shopify order, an
//! ERP row) is not a movement; the [`Remap`] the command line passes maps it again
//! through its connector, or says what re-reads it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    str::FromStr,
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::{Headers, Message},
    producer::FutureRecord,
    Offset, TopicPartitionList,
};
use serde::Serialize;

use super::Progress;
use crate::{
    config::KafkaConfig,
    db::{DbError, MovementLookups},
    event::{EventId, Movement},
    kafka::{self, Producer},
};

/// Why the dead-letter topic could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("no kafka brokers are configured (for onhand dev: is it running?)")]
    NoBrokers,
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the dead-letter topic {0} does not exist")]
    NoTopic(String),
    #[error("kafka: the dead-letter topic was not read to its end within {0} s")]
    ReadTimeout(u64),
    #[error("{0:?} is not a record's position: write PARTITION:OFFSET, e.g. 3:1042")]
    BadPosition(String),
    #[error("no record at {0} in the dead-letter topic")]
    NotFound(Position),
    #[error("{matched} records match, more than the {max} one redrive sends: narrow it (--since, --until)")]
    TooMany { matched: usize, max: usize },
    #[error("database: {0}")]
    Db(#[from] DbError),
}

/// Where a record is in the dead-letter topic: `PARTITION:OFFSET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

impl FromStr for Position {
    type Err = DlqError;

    fn from_str(s: &str) -> Result<Self, DlqError> {
        let bad = || DlqError::BadPosition(s.chars().take(64).collect());
        let (partition, offset) = s.trim().split_once(':').ok_or_else(bad)?;
        let partition: i32 = partition.parse().map_err(|_| bad())?;
        let offset: i64 = offset.parse().map_err(|_| bad())?;
        if partition < 0 || offset < 0 {
            return Err(bad());
        }
        Ok(Position { partition, offset })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

impl Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One record of the dead-letter topic, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    pub position: Position,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// The headers in order; onhand's values are UTF-8 text (others are read lossily).
    pub headers: Vec<(String, String)>,
}

/// What a dead letter's payload says of the movement it is, when it is one: read loosely,
/// since the record may have been refused for any of these fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MovementRef {
    pub event_id: String,
    pub sku: Option<String>,
    pub location: Option<String>,
}

impl Letter {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn reason_code(&self) -> &str {
        self.header("onhand.dlq.reason_code").unwrap_or("")
    }

    pub fn reason(&self) -> &str {
        self.header("onhand.dlq.reason").unwrap_or("")
    }

    pub fn source(&self) -> &str {
        self.header("onhand.dlq.source").unwrap_or("")
    }

    pub fn failed_at(&self) -> Option<DateTime<Utc>> {
        let text = self.header("onhand.dlq.failed_at")?;
        DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
    }

    pub fn truncated(&self) -> bool {
        self.header("onhand.dlq.truncated") == Some("true")
    }

    /// Whether the ledger dead-lettered it from `movements_topic`: its payload is what was
    /// on that topic (or the movement as read, encoded again).
    pub fn from_topic(&self, movements_topic: &str) -> bool {
        self.header("onhand.dlq.topic") == Some(movements_topic)
    }

    /// The movement the payload is, when it is a JSON object with a text `event_id`.
    pub fn movement(&self) -> Option<MovementRef> {
        let value: serde_json::Value = serde_json::from_slice(&self.payload).ok()?;
        let text = |field: &str| value.get(field).and_then(|v| v.as_str()).map(str::to_string);
        Some(MovementRef { event_id: text("event_id")?, sku: text("sku"), location: text("location") })
    }

    /// The event id the record stands for: its movement's, or the one a connector's reason
    /// names first (`shopify:order:555:line:1: ... is not in the catalog`).
    pub fn event_id(&self) -> Option<String> {
        if let Some(m) = self.movement() {
            return Some(m.event_id);
        }
        let (first, _) = self.reason().split_once(": ")?;
        EventId::parse(first).ok().map(|id| id.to_string())
    }
}

/// Which dead letters a command is about. Times compare with `onhand.dlq.failed_at`:
/// `since` included, `until` excluded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Filter {
    pub reason_code: Option<String>,
    pub source: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    pub fn matches(&self, letter: &Letter) -> bool {
        let failed_at = letter.failed_at();
        self.reason_code.as_deref().is_none_or(|code| letter.reason_code() == code)
            && self.source.as_deref().is_none_or(|source| letter.source() == source)
            && self.since.is_none_or(|since| failed_at.is_some_and(|t| t >= since))
            && self.until.is_none_or(|until| failed_at.is_some_and(|t| t < until))
    }
}

/// Where each partition's reading starts.
#[derive(Debug, Clone)]
pub enum Starts {
    /// From the oldest record the topic keeps.
    Beginning,
    /// From these offsets (a partition not named: its beginning).
    At(BTreeMap<i32, i64>),
}

/// How long the topic may go without a record while records are still expected.
const READ_STALL: Duration = Duration::from_secs(30);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

fn reader(config: &KafkaConfig) -> Result<BaseConsumer, DlqError> {
    if config.brokers.trim().is_empty() {
        return Err(DlqError::NoBrokers);
    }
    // A group id librdkafka insists on; it is never joined (partitions are assigned)
    // and nothing is committed under it.
    let group = format!("onhand-dlq-reader-{}", std::process::id());
    Ok(kafka::client_config(config)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", kafka::FETCH_WAIT_MAX_MS)
        .create()?)
}

/// The next offset of every partition of `topic`: where records written from now on go.
pub async fn ends(config: &KafkaConfig, topic: &str) -> Result<BTreeMap<i32, i64>, DlqError> {
    Ok(marks(config, topic).await?.into_iter().map(|(p, (_, high))| (p, high)).collect())
}

/// The first and the next offset of every partition of `topic` (its low and high
/// watermarks), of any topic: `onhand verify` measures the ledger's lag with them.
pub async fn marks(config: &KafkaConfig, topic: &str) -> Result<BTreeMap<i32, (i64, i64)>, DlqError> {
    let (config, topic) = (config.clone(), topic.to_string());
    blocking(move || watermarks(&reader(&config)?, &topic)).await
}

fn watermarks(consumer: &BaseConsumer, topic: &str) -> Result<kafka::Watermarks, DlqError> {
    kafka::watermarks(consumer, topic, METADATA_TIMEOUT)?.ok_or_else(|| DlqError::NoTopic(topic.to_string()))
}

/// Reads `topic` from `starts` to the end it has now, giving each record to `visit`;
/// answers the end offsets it read to. `progress` counts records.
pub async fn scan(
    config: &KafkaConfig,
    topic: &str,
    starts: &Starts,
    progress: &dyn Progress,
    mut visit: impl FnMut(Letter) + Send,
) -> Result<BTreeMap<i32, i64>, DlqError> {
    let (config, topic) = (config.clone(), topic.to_string());
    let (consumer, marks, topic) = blocking(move || {
        let consumer = reader(&config)?;
        let marks = watermarks(&consumer, &topic)?;
        Ok((consumer, marks, topic))
    })
    .await?;
    let ends: BTreeMap<i32, i64> = marks.iter().map(|(p, (_, high))| (*p, *high)).collect();
    // What is left to read of each partition: [from, high).
    let mut left = BTreeMap::new();
    for (&partition, &(low, high)) in &marks {
        let from = match starts {
            Starts::Beginning => low,
            Starts::At(at) => at.get(&partition).copied().unwrap_or(low).clamp(low, high),
        };
        if from < high {
            left.insert(partition, (from, high));
        }
    }
    let total: i64 = left.values().map(|(from, high)| high - from).sum();
    progress.start("reading", Some(total.unsigned_abs()));
    if left.is_empty() {
        progress.finish();
        return Ok(ends);
    }
    // The blocking poll runs on a thread of its own and hands records over through a
    // bounded channel, so that `visit` runs here.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Letter>(1024);
    let reading = tokio::task::spawn_blocking(move || read_to_end(&consumer, &topic, left, &tx));
    while let Some(letter) = rx.recv().await {
        progress.advance(1);
        visit(letter);
    }
    progress.finish();
    reading.await.map_err(joined)??;
    Ok(ends)
}

fn read_to_end(
    consumer: &BaseConsumer,
    topic: &str,
    mut left: BTreeMap<i32, (i64, i64)>,
    tx: &tokio::sync::mpsc::Sender<Letter>,
) -> Result<(), DlqError> {
    let mut assignment = TopicPartitionList::new();
    for (&partition, &(from, _)) in &left {
        assignment.add_partition_offset(topic, partition, Offset::Offset(from))?;
    }
    consumer.assign(&assignment)?;
    let mut heard = std::time::Instant::now();
    while !left.is_empty() {
        let Some(polled) = consumer.poll(Duration::from_millis(200)) else {
            if heard.elapsed() > READ_STALL {
                return Err(DlqError::ReadTimeout(READ_STALL.as_secs()));
            }
            continue;
        };
        let message = polled?;
        heard = std::time::Instant::now();
        let position = Position { partition: message.partition(), offset: message.offset() };
        let Some(&(_, high)) = left.get(&position.partition) else { continue };
        if position.offset + 1 >= high {
            left.remove(&position.partition);
        }
        if position.offset >= high {
            continue;
        }
        if tx.blocking_send(letter(position, &message)).is_err() {
            break;
        }
    }
    Ok(())
}

fn letter(position: Position, message: &rdkafka::message::BorrowedMessage<'_>) -> Letter {
    let text = |v: Option<&[u8]>| v.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
    let headers =
        message.headers().map(|hs| hs.iter().map(|h| (h.key.to_string(), text(h.value))).collect()).unwrap_or_default();
    Letter {
        position,
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers,
    }
}

/// A reading thread that panicked: logged, and answered as a read cut short.
fn joined(e: tokio::task::JoinError) -> DlqError {
    tracing::error!(error = %e, "the dead-letter reader stopped");
    DlqError::Kafka(KafkaError::Canceled)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, DlqError> + Send + 'static) -> Result<T, DlqError> {
    tokio::task::spawn_blocking(f).await.map_err(joined)?
}

/// One line of `onhand dlq list`.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub position: Position,
    pub failed_at: Option<String>,
    pub reason_code: String,
    pub source: String,
    pub event_id: Option<String>,
    /// `sku@location`, when the payload is a movement that names both.
    pub level: Option<String>,
    pub reason: String,
}

impl Line {
    fn of(letter: &Letter) -> Line {
        let movement = letter.movement();
        let level = movement.as_ref().and_then(|m| Some(format!("{}@{}", m.sku.as_ref()?, m.location.as_ref()?)));
        Line {
            position: letter.position,
            failed_at: letter.header("onhand.dlq.failed_at").map(str::to_string),
            reason_code: letter.reason_code().to_string(),
            source: letter.source().to_string(),
            event_id: letter.event_id(),
            level,
            reason: letter.reason().to_string(),
        }
    }
}

/// What `onhand dlq list` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Listing {
    pub topic: String,
    pub filter: Filter,
    /// Records of the topic read.
    pub read: u64,
    /// Records the filter kept, of which `records` shows the first `limit`.
    pub matched: u64,
    pub records: Vec<Line>,
    /// The records the filter kept, by reason code and by source.
    pub by_reason: BTreeMap<String, u64>,
    pub by_source: BTreeMap<String, u64>,
}

/// Lists the dead letters `filter` keeps, the first `limit` of them line by line, all of
/// them in the summary.
pub async fn list(
    config: &KafkaConfig,
    filter: Filter,
    limit: usize,
    progress: &dyn Progress,
) -> Result<Listing, DlqError> {
    let topic = config.topics.dlq.clone();
    let mut listing = Listing { topic: topic.clone(), filter: filter.clone(), ..Listing::default() };
    let into = &mut listing;
    scan(config, &topic, &Starts::Beginning, progress, |letter| {
        into.read += 1;
        if !filter.matches(&letter) {
            return;
        }
        into.matched += 1;
        *into.by_reason.entry(letter.reason_code().to_string()).or_default() += 1;
        *into.by_source.entry(letter.source().to_string()).or_default() += 1;
        if into.records.len() < limit {
            into.records.push(Line::of(&letter));
        }
    })
    .await?;
    Ok(listing)
}

/// The most records one redrive sends: each is held in memory and followed by its event id.
pub const REDRIVE_RECORDS_MAX: usize = 100_000;

/// Every dead letter `filter` keeps, whole, for a redrive; more than
/// [`REDRIVE_RECORDS_MAX`] is [`DlqError::TooMany`].
pub async fn select(config: &KafkaConfig, filter: &Filter, progress: &dyn Progress) -> Result<Vec<Letter>, DlqError> {
    let (mut chosen, mut matched) = (Vec::new(), 0usize);
    let (into, count) = (&mut chosen, &mut matched);
    scan(config, &config.topics.dlq, &Starts::Beginning, progress, |letter| {
        if filter.matches(&letter) {
            *count += 1;
            if into.len() < REDRIVE_RECORDS_MAX {
                into.push(letter);
            }
        }
    })
    .await?;
    if matched > REDRIVE_RECORDS_MAX {
        return Err(DlqError::TooMany { matched, max: REDRIVE_RECORDS_MAX });
    }
    Ok(chosen)
}

/// One record whole, for `onhand dlq show`.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    pub position: Position,
    /// The headers, in order.
    pub headers: Vec<(String, String)>,
    /// The key as text when it is UTF-8, else in base64 (`key_base64`).
    pub key: Option<String>,
    pub key_base64: bool,
    /// The payload as JSON when it is JSON, else as text (base64 when not UTF-8).
    pub payload: serde_json::Value,
    pub payload_format: &'static str,
    pub payload_bytes: usize,
    /// Only the first bytes of a larger original: says how large it was and its SHA-256.
    pub truncated: Option<String>,
    pub event_id: Option<String>,
}

impl Shown {
    pub fn of(letter: &Letter) -> Shown {
        use base64::{engine::general_purpose::STANDARD, Engine as _};
        let (key, key_base64) = match letter.key.as_deref().map(std::str::from_utf8) {
            None => (None, false),
            Some(Ok(text)) => (Some(text.to_string()), false),
            Some(Err(_)) => (letter.key.as_deref().map(|k| STANDARD.encode(k)), true),
        };
        let (payload, payload_format) = match serde_json::from_slice::<serde_json::Value>(&letter.payload) {
            Ok(json) => (json, "json"),
            Err(_) => match std::str::from_utf8(&letter.payload) {
                Ok(text) => (serde_json::Value::String(text.to_string()), "text"),
                Err(_) => (serde_json::Value::String(STANDARD.encode(&letter.payload)), "base64"),
            },
        };
        let truncated = letter.truncated().then(|| {
            format!(
                "only the first {} bytes of the original are here: it had {} bytes, SHA-256 {}",
                letter.payload.len(),
                letter.header("onhand.dlq.original_bytes").unwrap_or("?"),
                letter.header("onhand.dlq.original_sha256").unwrap_or("?"),
            )
        });
        Shown {
            position: letter.position,
            headers: letter.headers.clone(),
            key,
            key_base64,
            payload,
            payload_format,
            payload_bytes: letter.payload.len(),
            truncated,
            event_id: letter.event_id(),
        }
    }
}

/// The dead letters at `positions`, read from the topic; a position the topic does not
/// hold is [`DlqError::NotFound`].
pub async fn fetch(
    config: &KafkaConfig,
    positions: &[Position],
    progress: &dyn Progress,
) -> Result<Vec<Letter>, DlqError> {
    let topic = config.topics.dlq.clone();
    let wanted: BTreeSet<Position> = positions.iter().copied().collect();
    // Each partition is read from the smallest offset asked of it.
    let mut starts = BTreeMap::new();
    for p in &wanted {
        let from = starts.entry(p.partition).or_insert(p.offset);
        *from = (*from).min(p.offset);
    }
    let partitions: BTreeSet<i32> = starts.keys().copied().collect();
    let ends = ends(config, &topic).await?;
    // A partition nobody asked about is read from its end: nothing.
    for (p, end) in &ends {
        if !partitions.contains(p) {
            starts.insert(*p, *end);
        }
    }
    let mut found = BTreeMap::new();
    let into = &mut found;
    scan(config, &topic, &Starts::At(starts), progress, |letter| {
        if wanted.contains(&letter.position) {
            into.insert(letter.position, letter);
        }
    })
    .await?;
    positions.iter().map(|p| found.get(p).cloned().ok_or(DlqError::NotFound(*p))).collect()
}

/// What a connector makes of one of its dead letters, for a redrive: the movements its
/// record maps to now (after the catalog or the mapping was fixed), or why it cannot.
#[async_trait]
pub trait Remap: Send + Sync {
    /// `None`: no connector of this deployment claims the letter's source.
    async fn remap(&self, letter: &Letter) -> Option<Result<Vec<Movement>, String>>;
}

/// No connector remaps anything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRemap;

#[async_trait]
impl Remap for NoRemap {
    async fn remap(&self, _letter: &Letter) -> Option<Result<Vec<Movement>, String>> {
        None
    }
}

/// A record a redrive will send to the movements topic.
#[derive(Debug, Clone, Serialize)]
pub struct Outgoing {
    /// The dead letter it comes from.
    pub from: Position,
    pub event_id: String,
    pub key: Option<String>,
    #[serde(skip)]
    pub payload: Vec<u8>,
}

/// A record a redrive will not send, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub from: Position,
    pub reason_code: String,
    pub source: String,
    pub why: String,
}

/// What a redrive would do.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub movements_topic: String,
    pub sends: Vec<Outgoing>,
    pub refused: Vec<Refusal>,
}

/// Decides, for each chosen dead letter, what goes back to the movements topic: a
/// movement the ledger dead-lettered goes unchanged (keyed by its SKU, as the API and the
/// connectors key movements); a connector's record goes as what `remap` maps it to.
pub async fn plan(config: &KafkaConfig, letters: &[Letter], remap: &dyn Remap) -> Plan {
    let movements_topic = config.topics.movements.clone();
    let mut plan = Plan { movements_topic: movements_topic.clone(), ..Plan::default() };
    for letter in letters {
        let refuse = |why: String| Refusal {
            from: letter.position,
            reason_code: letter.reason_code().to_string(),
            source: letter.source().to_string(),
            why,
        };
        if letter.truncated() {
            plan.refused.push(refuse(
                "only the first 16 KiB of the original were kept: it is not here to send; the source must send it again"
                    .into(),
            ));
            continue;
        }
        if letter.from_topic(&movements_topic) || letter.source() == movements_topic {
            match letter.movement() {
                Some(m) => plan.sends.push(Outgoing {
                    from: letter.position,
                    event_id: m.event_id,
                    key: m.sku.or_else(|| letter.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned())),
                    payload: letter.payload.clone(),
                }),
                None => plan.refused.push(refuse(
                    "not a movement with an event id (not JSON, or no text event_id): fix the value and produce it \
                     keyed by its SKU (docs/events.md, section 6)"
                        .into(),
                )),
            }
            continue;
        }
        match remap.remap(letter).await {
            Some(Ok(movements)) => plan.sends.extend(movements.into_iter().map(|m| Outgoing {
                from: letter.position,
                event_id: m.event_id.to_string(),
                key: Some(m.kafka_key().to_string()),
                payload: m.to_json(),
            })),
            Some(Err(why)) => plan.refused.push(refuse(why)),
            None => plan.refused.push(refuse(format!(
                "an original record of {:?}, not a movement, and no connector of this configuration maps it: \
                 the source must send it again",
                letter.source()
            ))),
        }
    }
    plan
}

/// Sends the plan's records to the movements topic and waits for Kafka's acknowledgements.
pub async fn send(
    producer: &Producer,
    plan: &Plan,
    timeout: Duration,
    progress: &dyn Progress,
) -> Result<(), DlqError> {
    progress.start("sending", Some(plan.sends.len() as u64));
    for out in &plan.sends {
        let mut record = FutureRecord::to(&plan.movements_topic).payload(&out.payload);
        if let Some(key) = &out.key {
            record = record.key(key.as_str());
        }
        producer.send(record, timeout).await.map_err(|(e, _)| e)?;
        progress.advance(1);
    }
    progress.finish();
    Ok(())
}

/// What became of a record a redrive sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Its event id is in `movements`: applied now, or before (a record sent twice).
    Recorded,
    /// Dead-lettered again, at `at`, for this reason.
    FailedAgain { at: Position, reason_code: String, reason: String },
    /// Neither yet.
    Pending,
}

/// The outcome of one record sent.
#[derive(Debug, Clone, Serialize)]
pub struct Followed {
    pub from: Position,
    pub event_id: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Follows what the sent records became, for up to `wait`: each event id recorded in the
/// database, or dead-lettered again (a dead letter with that event id after `dlq_starts`,
/// the dead-letter topic's ends before the records were sent), or still pending.
pub async fn follow(
    config: &KafkaConfig,
    db: &dyn MovementLookups,
    plan: &Plan,
    dlq_starts: BTreeMap<i32, i64>,
    wait: Duration,
    progress: &dyn Progress,
) -> Result<Vec<Followed>, DlqError> {
    let mut outcomes: BTreeMap<String, Outcome> =
        plan.sends.iter().map(|o| (o.event_id.clone(), Outcome::Pending)).collect();
    let deadline = tokio::time::Instant::now() + wait;
    let mut starts = dlq_starts;
    progress.start("waiting", Some(outcomes.len() as u64));
    loop {
        let pending: Vec<EventId> = outcomes
            .iter()
            .filter(|(_, o)| **o == Outcome::Pending)
            .filter_map(|(id, _)| EventId::parse(id.as_str()).ok())
            .collect();
        for id in db.recorded_event_ids(&pending).await? {
            outcomes.insert(id.to_string(), Outcome::Recorded);
            progress.advance(1);
        }
        let again = &mut outcomes;
        starts = scan(config, &config.topics.dlq, &Starts::At(starts), &super::Silent, |letter| {
            let Some(id) = letter.event_id() else { return };
            if let Some(outcome @ Outcome::Pending) = again.get_mut(&id) {
                let (reason_code, reason) = (letter.reason_code().to_string(), letter.reason().to_string());
                *outcome = Outcome::FailedAgain { at: letter.position, reason_code, reason };
            }
        })
        .await?;
        let left = outcomes.values().filter(|o| **o == Outcome::Pending).count();
        if left == 0 || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    progress.finish();
    Ok(plan
        .sends
        .iter()
        .map(|o| Followed {
            from: o.from,
            event_id: o.event_id.clone(),
            outcome: outcomes.get(&o.event_id).cloned().unwrap_or(Outcome::Pending),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(headers: &[(&str, &str)], payload: &str) -> Letter {
        Letter {
            position: Position { partition: 1, offset: 7 },
            key: None,
            payload: payload.as_bytes().to_vec(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn positions_are_read_and_hostile_ones_refused() {
        assert_eq!("3:1042".parse::<Position>().unwrap(), Position { partition: 3, offset: 1042 });
        assert_eq!(Position { partition: 3, offset: 1042 }.to_string(), "3:1042");
        for bad in ["", "3", "3:", ":4", "a:b", "-1:0", "0:-5", "99999999999:0", "0:99999999999999999999", "1:2:3"] {
            assert!(matches!(bad.parse::<Position>(), Err(DlqError::BadPosition(_))), "{bad:?}");
        }
        let long = "9".repeat(10_000);
        let Err(DlqError::BadPosition(shown)) = long.parse::<Position>() else { panic!("refused") };
        assert!(shown.len() <= 64, "the message does not repeat a huge argument");
    }

    #[test]
    fn the_filter_keeps_what_its_headers_say() {
        let l = letter(
            &[
                ("onhand.dlq.reason_code", "invalid_quantity"),
                ("onhand.dlq.source", "onhand.movements.v1"),
                ("onhand.dlq.failed_at", "2026-11-20T18:40:02.511093127+00:00"),
            ],
            "{}",
        );
        let at = |s: &str| Some(DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc));
        assert!(Filter::default().matches(&l));
        assert!(Filter { reason_code: Some("invalid_quantity".into()), ..Filter::default() }.matches(&l));
        assert!(!Filter { reason_code: Some("not_json".into()), ..Filter::default() }.matches(&l));
        assert!(!Filter { source: Some("erp".into()), ..Filter::default() }.matches(&l));
        assert!(Filter { since: at("2026-11-20T18:40:02Z"), until: at("2026-11-20T18:41:00Z"), ..Filter::default() }
            .matches(&l));
        assert!(!Filter { until: at("2026-11-20T18:40:02Z"), ..Filter::default() }.matches(&l), "until is excluded");
        let undated = letter(&[], "{}");
        assert!(!Filter { since: at("2000-01-01T00:00:00Z"), ..Filter::default() }.matches(&undated));
    }

    #[test]
    fn event_ids_come_from_the_movement_or_the_connectors_reason() {
        let m = letter(&[], r#"{"event_id":"pos:1:T9:1","sku":"SKU-1","location":"store-1","quantity":0}"#);
        assert_eq!(m.event_id().as_deref(), Some("pos:1:T9:1"));
        assert_eq!(Line::of(&m).level.as_deref(), Some("SKU-1@store-1"));
        let shopify = letter(
            &[("onhand.dlq.reason", "shopify:order:555:line:14: variant 1 (sku none) is not in the catalog")],
            r#"{"id":555}"#,
        );
        assert_eq!(shopify.event_id().as_deref(), Some("shopify:order:555:line:14"));
        assert_eq!(letter(&[("onhand.dlq.reason", "expected value at line 1")], "x").event_id(), None);
    }

    #[tokio::test]
    async fn movements_go_back_unchanged_and_the_rest_is_refused_with_the_reason() {
        let config = KafkaConfig::default();
        let topic = config.topics.movements.clone();
        let from_ledger =
            |payload: &str| letter(&[("onhand.dlq.topic", &topic), ("onhand.dlq.source", &topic)], payload);
        let movement = r#"{"event_id":"e1","sku":"SKU-1","location":"s1"}"#;
        let mut truncated = from_ledger(movement);
        truncated.headers.push(("onhand.dlq.truncated".into(), "true".into()));
        let letters =
            [from_ledger(movement), from_ledger("not json"), truncated, letter(&[("onhand.dlq.source", "erp")], "{}")];
        let plan = plan(&config, &letters, &NoRemap).await;
        assert_eq!(plan.sends.len(), 1);
        assert_eq!(
            (plan.sends[0].key.as_deref(), plan.sends[0].payload.as_slice()),
            (Some("SKU-1"), movement.as_bytes())
        );
        let whys: Vec<&str> = plan.refused.iter().map(|r| r.why.as_str()).collect();
        assert!(whys[0].contains("not a movement"), "{whys:?}");
        assert!(whys[1].contains("16 KiB"), "{whys:?}");
        assert!(whys[2].contains("\"erp\""), "{whys:?}");
    }
}
