//! The ledger consumer: reads movements from Kafka in batches, applies each batch exactly
//! once in one database transaction (offsets included), then publishes the new levels.
//!
//! - `rules`: how a movement changes a level (pure functions).
//! - `apply`: one batch: its dead letters, then its transaction, setting aside what the
//!   database refuses for good.
//! - `group`: the rebalance callback and the watchdog that rejoins the consumer group when
//!   the ledger holds no partition while movements wait.
//! - this module: the consumer loop, which runs on a thread of its own because librdkafka
//!   calls the rebalance callback from `poll`, and the callback must read the partition
//!   offsets from the database before the partitions are assigned.
//!
//! Exactly-once lives in the database: the consumer's Kafka commits are only a courtesy to
//! Kafka tooling (lag dashboards); on every assignment it seeks to the offsets saved with
//! the effects.

mod apply;
mod group;
pub mod rules;

pub use self::apply::DATABASE_REFUSED;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use futures::future::join_all;
use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer},
    error::KafkaError,
    message::{BorrowedMessage, Headers as _},
    producer::Producer as _,
    Message, Offset, TopicPartitionList,
};
use tokio::{runtime::Handle, sync::mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use self::{
    apply::{Applier, DeadLetters, Rejected},
    group::{LedgerContext, Watchdog},
};
use crate::{
    config::{KafkaConfig, LedgerConfig},
    db::{Applied, Batch, DbError, Envelope, LedgerWrites, PartitionOffset, Published, Unpublished},
    event::{InvalidMovement, Movement, RejectCode, StockLevel},
    health::{Component, State},
    kafka,
    publish::{self, Acknowledged},
    telemetry::{self, Metrics},
};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger: kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("ledger: {0}")]
    Db(#[from] DbError),
    #[error("ledger: stopped on purpose after {0} committed batches (fault injection)")]
    InjectedCrash(u64),
    #[error("ledger: the consumer thread panicked")]
    Panicked,
}

/// Test hooks that make the ledger fail at chosen points.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultInjection {
    /// Stop right after the Nth database commit, before publishing levels or committing
    /// offsets to Kafka, as a process killed at that instant would.
    pub crash_after_commits: Option<u64>,
}

/// What a ledger runs with, besides its configuration.
#[derive(Debug, Clone)]
pub struct LedgerParts {
    pub db: Arc<dyn LedgerWrites>,
    pub metrics: Metrics,
    /// Where the ledger reports what it does (`/readyz`): running, blocked and why, failed.
    pub component: Component,
    pub shutdown: CancellationToken,
    pub faults: FaultInjection,
}

/// A running ledger consumer.
#[derive(Debug)]
pub struct LedgerHandle {
    thread: thread::JoinHandle<Result<(), LedgerError>>,
    assignment: Arc<Mutex<BTreeSet<i32>>>,
}

impl LedgerHandle {
    /// The partitions this consumer owns now.
    pub fn assignment(&self) -> BTreeSet<i32> {
        self.assignment.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the consumer to stop (after the shutdown token fired, or on a fatal error).
    pub async fn join(self) -> Result<(), LedgerError> {
        tokio::task::spawn_blocking(move || self.thread.join().unwrap_or(Err(LedgerError::Panicked)))
            .await
            .unwrap_or(Err(LedgerError::Panicked))
    }
}

/// Starts the ledger consumer on a thread of its own; answers once it subscribed.
pub async fn spawn(
    kafka_config: &KafkaConfig,
    config: &LedgerConfig,
    parts: LedgerParts,
) -> Result<LedgerHandle, LedgerError> {
    let assignment = Arc::new(Mutex::new(BTreeSet::new()));
    let (kafka_config, config, owned_assignment) = (kafka_config.clone(), config.clone(), Arc::clone(&assignment));
    let runtime = Handle::current();
    let component = parts.component.clone();
    // The consumer lives and dies on the ledger thread: closing it may run the rebalance
    // callback, which must never run on a runtime worker. The start is awaited, not
    // waited for on a runtime worker.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let thread = thread::Builder::new()
        .name("ledger".into())
        .spawn(move || {
            let result = match Ledger::new(&kafka_config, &config, parts, runtime, owned_assignment) {
                Ok(ledger) => {
                    let _ = started_tx.send(Ok(()));
                    ledger.run()
                }
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return Ok(());
                }
            };
            match &result {
                Ok(()) => component.set(State::Done),
                Err(e) => {
                    error!(error = %e, "ledger stopped on an error");
                    component.set(State::Failed(e.to_string()));
                }
            }
            result
        })
        .map_err(|_| LedgerError::Panicked)?;
    started_rx.await.map_err(|_| LedgerError::Panicked)??;
    Ok(LedgerHandle { thread, assignment })
}

/// Reads one record of the movements topic into a movement, or the reason it is refused.
/// Each record's ids are logged at debug level: its event and correlation ids, and the id
/// of the HTTP request that produced it (its `onhand-request-id` header), which join the
/// API's log lines to the ledger's.
fn read(message: &BorrowedMessage<'_>) -> Result<Envelope, Rejected> {
    let (partition, offset) = (message.partition(), message.offset());
    let request_id = message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key == telemetry::REQUEST_ID_KAFKA_HEADER)
            .and_then(|h| h.value)
            .map(String::from_utf8_lossy)
    });
    let movement = match message.payload() {
        Some(bytes) => Movement::from_json(bytes).map_err(|reason| (reason, bytes.to_vec())),
        None => Err((
            InvalidMovement { code: RejectCode::SchemaViolation, message: "the record has no value".into() },
            Vec::new(),
        )),
    };
    match &movement {
        Ok(m) => debug!(
            partition,
            offset,
            event_id = %m.event_id,
            correlation_id = m.correlation_id.as_deref(),
            request_id = request_id.as_deref(),
            "movement read"
        ),
        Err((reason, _)) => {
            debug!(
                partition,
                offset,
                code = reason.code.as_str(),
                request_id = request_id.as_deref(),
                "record unreadable"
            )
        }
    }
    movement.map(|movement| Envelope { movement, partition, offset }).map_err(|(reason, payload)| {
        Rejected::unreadable(partition, offset, message.key().map(<[u8]>::to_vec), payload, reason)
    })
}

struct Ledger {
    consumer: BaseConsumer<LedgerContext>,
    producer: kafka::Producer,
    db: Arc<dyn LedgerWrites>,
    metrics: Metrics,
    component: Component,
    shutdown: CancellationToken,
    faults: FaultInjection,
    runtime: Handle,
    group_id: String,
    topics: crate::config::Topics,
    batch_size_max: usize,
    backlog_batch_size_max: usize,
    /// The most movements the next batch takes: `batch_size_max` while the ledger keeps
    /// up, doubling after each full batch up to `backlog_batch_size_max`.
    batch_limit: usize,
    linger: Duration,
    commits: u64,
    acknowledged_tx: mpsc::Sender<Settled>,
    acknowledged_rx: mpsc::Receiver<Settled>,
    /// The tasks collecting acknowledgements of publications.
    acknowledging: Vec<tokio::task::JoinHandle<()>>,
    swept_at: Instant,
    watchdog: Watchdog,
}

/// Publications acknowledged on the stock topic, for the next batch to record.
#[derive(Debug, Default)]
struct Settled {
    /// Versions of levels found unpublished, now on the topic.
    published: Vec<Published>,
    /// Owed publications (`Applied::owed`) whose every level is on the topic.
    owed: Vec<i64>,
}

impl Settled {
    fn is_empty(&self) -> bool {
        self.published.is_empty() && self.owed.is_empty()
    }

    fn into_batch(self, group_id: String, topic: String) -> Batch {
        Batch {
            group_id,
            topic,
            movements: Vec::new(),
            offsets: Vec::new(),
            published: self.published,
            settled: self.owed,
        }
    }
}

/// What acknowledging a publication settles.
enum Owing {
    /// A batch's levels, written with their published version already theirs: the
    /// publications the batch owes.
    Batch(Vec<i64>),
    /// The sweep's levels: the versions of those found unpublished, and the owed
    /// publications it took.
    Sweep(Vec<i64>),
}

/// The most batches whose publications may be unacknowledged at once.
const PUBLICATIONS_IN_FLIGHT_MAX: usize = 4;

/// The most unacknowledged levels republished at once; a following sweep takes the rest.
const UNPUBLISHED_SWEEP_MAX: i64 = 100_000;
/// How often the ledger looks for levels whose publication failed, and how old such a level
/// must be (younger ones may still be waiting for their acknowledgement).
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

impl Ledger {
    fn new(
        kafka_config: &KafkaConfig,
        config: &LedgerConfig,
        parts: LedgerParts,
        runtime: Handle,
        assignment: Arc<Mutex<BTreeSet<i32>>>,
    ) -> Result<Self, LedgerError> {
        let LedgerParts { db, metrics, component, shutdown, faults } = parts;
        let context = LedgerContext {
            db: Arc::clone(&db),
            runtime: runtime.clone(),
            group_id: config.group_id.clone(),
            topic: kafka_config.topics.movements.clone(),
            generation: AtomicU64::new(0),
            assignment,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            component: component.clone(),
            beyond_end: Mutex::default(),
        };
        let consumer: BaseConsumer<LedgerContext> = kafka::client_config(kafka_config)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Eager rebalancing: every rebalance revokes everything, and the callback seeks
            // each newly assigned partition to the offset saved in the database.
            .set("partition.assignment.strategy", "roundrobin")
            .set("session.timeout.ms", group::SESSION_TIMEOUT.as_millis().to_string())
            .set("statistics.interval.ms", "5000")
            .set("fetch.wait.max.ms", kafka::FETCH_WAIT_MAX_MS)
            .create_with_context(context)?;
        consumer.subscribe(&[&kafka_config.topics.movements])?;
        // Bounded: when the database falls behind on recording publications, publishing waits.
        let (acknowledged_tx, acknowledged_rx) = mpsc::channel(64);
        Ok(Ledger {
            consumer,
            // Lingering makes larger produce batches, which cost the brokers less (about 10 %
            // more ledger throughput on the 2-core benchmark), for 50 ms more on the way of
            // a change to the readers, whose budget is seconds.
            producer: kafka::Producer::new(kafka_config, Duration::from_millis(50))?,
            db,
            metrics,
            component,
            shutdown,
            faults,
            runtime,
            group_id: config.group_id.clone(),
            topics: kafka_config.topics.clone(),
            batch_size_max: config.batch_size_max,
            backlog_batch_size_max: config.backlog_batch_size_max.max(config.batch_size_max),
            batch_limit: config.batch_size_max,
            linger: Duration::from_millis(config.linger_ms),
            commits: 0,
            acknowledged_tx,
            acknowledged_rx,
            acknowledging: Vec::new(),
            swept_at: Instant::now(),
            watchdog: Watchdog::new(),
        })
    }

    /// The loop is a two-stage pipeline: while the database applies one batch, the next
    /// one is polled and parsed. Applying a batch whose partitions were revoked meanwhile
    /// is harmless: movements are idempotent, the rules do not depend on arrival order, and
    /// saved offsets never move backwards.
    fn run(mut self) -> Result<(), LedgerError> {
        info!(group = %self.group_id, topic = %self.topics.movements, "ledger started");
        self.component.running();
        self.publish_unacknowledged(Utc::now());
        let mut in_flight: Option<InFlight> = None;
        while !self.shutdown.is_cancelled() {
            let records = self.next_batch();
            self.watchdog.watch(&self.consumer);
            // A batch starts only after the one before it committed: otherwise its saved
            // offsets could pass movements that were never recorded.
            if let Some(previous) = in_flight.take() {
                if !self.finish(previous)? {
                    break;
                }
            }
            self.sweep_unpublished();
            if records.is_empty() {
                self.record_acknowledged()?;
            } else {
                in_flight = Some(self.start(records));
            }
        }
        if let Some(previous) = in_flight.take() {
            self.finish(previous)?;
        }
        self.settle_publications();
        info!("ledger stopped");
        Ok(())
    }

    /// Polls until the batch is full or its linger time is over (while behind, when the
    /// last batch was full: until it is full or nothing more comes). A full batch makes the
    /// next one's limit twice as large, up to `ledger.backlog_batch_size_max`: a backlog is
    /// applied in larger transactions, which cost less per movement; a batch that does not
    /// fill brings the limit back to `ledger.batch_size_max`. A rebalance during the
    /// poll drops what was gathered: the new assignment resumes from the database.
    fn next_batch(&mut self) -> Vec<Result<Envelope, Rejected>> {
        let behind = self.batch_limit > self.batch_size_max;
        let context = self.consumer.context();
        let mut generation = context.generation.load(Ordering::SeqCst);
        let mut records = Vec::new();
        let mut first_at: Option<Instant> = None;
        while records.len() < self.batch_limit && !self.shutdown.is_cancelled() {
            let timeout = match first_at {
                None => Duration::from_millis(100),
                // Behind, the batch fills from what is fetched already, until nothing comes.
                Some(_) if behind => self.linger,
                Some(at) => match self.linger.checked_sub(at.elapsed()) {
                    Some(left) if !left.is_zero() => left,
                    _ => break,
                },
            };
            let polled = self.consumer.poll(timeout);
            let now = context.generation.load(Ordering::SeqCst);
            if now != generation {
                generation = now;
                records.clear();
                first_at = None;
            }
            match polled {
                Some(Ok(message)) => {
                    records.push(read(&message));
                    first_at.get_or_insert_with(Instant::now);
                }
                Some(Err(e)) => warn!(error = %e, "kafka consumer error"),
                // Idle: hand back, so that the loop can record acknowledged publications.
                None if first_at.is_none() || behind => break,
                None => {}
            }
        }
        self.batch_limit = if records.len() >= self.batch_limit {
            (self.batch_limit * 2).min(self.backlog_batch_size_max)
        } else {
            self.batch_size_max
        };
        if self.shutdown.is_cancelled() {
            // Nothing of this batch is applied; the next owner reads it again.
            records.clear();
        }
        records
    }

    /// Starts a task that dead-letters what cannot be applied and applies the rest.
    fn start(&mut self, records: Vec<Result<Envelope, Rejected>>) -> InFlight {
        let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
        for (partition, offset) in records.iter().map(|r| match r {
            Ok(e) => (e.partition, e.offset),
            Err(r) => (r.partition, r.offset),
        }) {
            let next = offsets.entry(partition).or_insert(0);
            *next = (*next).max(offset + 1);
        }
        let (movements, rejected): (Vec<_>, Vec<_>) = records.into_iter().partition(Result::is_ok);
        let movements: Vec<Envelope> = movements.into_iter().flatten().collect();
        let rejected: Vec<Rejected> = rejected.into_iter().filter_map(Result::err).collect();
        let settled = self.take_acknowledged();
        let batch = Batch {
            published: settled.published,
            settled: settled.owed,
            group_id: self.group_id.clone(),
            topic: self.topics.movements.clone(),
            offsets: offsets
                .iter()
                .map(|(&partition, &next_offset)| PartitionOffset { partition, next_offset })
                .collect(),
            movements,
        };
        let movements = batch.movements.len();
        // The dead letters are sent by the task, before the offsets that skip them are
        // saved, so a rejected record is never lost (a crash in between may send it twice).
        let task = self.runtime.spawn(self.applier().run(rejected, batch));
        InFlight { task, offsets, movements, started: Instant::now() }
    }

    /// Waits for a batch being applied, then publishes its levels and commits its offsets
    /// to Kafka. `false` when shutdown came first and nothing was applied.
    fn finish(&mut self, in_flight: InFlight) -> Result<bool, LedgerError> {
        let InFlight { task, offsets, movements, started } = in_flight;
        let applied = self.runtime.block_on(task).map_err(|_| LedgerError::Panicked)??;
        let Some(applied) = applied else {
            return Ok(false);
        };
        self.record_metrics(movements, &applied, started.elapsed());
        self.commits += 1;
        if self.faults.crash_after_commits == Some(self.commits) {
            return Err(LedgerError::InjectedCrash(self.commits));
        }
        if !applied.levels.is_empty() {
            self.publish(&applied.levels, Owing::Batch(applied.owed));
        }
        self.commit_to_kafka(&offsets);
        Ok(true)
    }

    /// Publishes levels without waiting: a task collects the acknowledgements, which the
    /// next batch records in the database. A publication that failed or was never recorded
    /// stays owed there, and the sweep publishes its levels again.
    fn publish(&mut self, levels: &[StockLevel], owing: Owing) {
        self.acknowledging.retain(|task| !task.is_finished());
        // The stock topic sets the pace: with too many publications unacknowledged, these
        // wait for the oldest (at most the produce timeout) rather than piling onto a broker
        // that is behind, where they would time out and be published again. (Each task
        // sends one message to a channel of 64 that every batch drains: none blocks there.)
        while self.acknowledging.len() >= PUBLICATIONS_IN_FLIGHT_MAX {
            let oldest = self.acknowledging.remove(0);
            let _ = self.runtime.block_on(oldest);
        }
        // Waits only while the producer's queue is full, as a thread must before it adds more.
        let publications = self.runtime.block_on(publish::enqueue(&self.producer, &self.topics.stock, levels));
        let (acknowledged, metrics) = (self.acknowledged_tx.clone(), self.metrics.clone());
        self.acknowledging.push(self.runtime.spawn(async move {
            let Acknowledged { published, failed } = publications.acknowledged().await;
            metrics.ledger_stock_publish_failures_total.inc_by(failed as u64);
            // An owed publication is settled only when every one of its levels is on the topic.
            let (published, owed) = match owing {
                Owing::Batch(owed) => (Vec::new(), owed),
                Owing::Sweep(owed) => (published, owed),
            };
            let settled = Settled { published, owed: if failed == 0 { owed } else { Vec::new() } };
            if !settled.is_empty() {
                let _ = acknowledged.send(settled).await;
            }
        }));
    }

    /// Publishes levels written before `written_before` but never acknowledged on the
    /// stock topic: at start, those a previous run left; later, those whose publication
    /// failed.
    fn publish_unacknowledged(&mut self, written_before: DateTime<Utc>) {
        let unpublished = self.db.unpublished_levels(written_before, UNPUBLISHED_SWEEP_MAX);
        match self.runtime.block_on(unpublished) {
            Ok(Unpublished { levels, owed }) if !levels.is_empty() || !owed.is_empty() => {
                info!(levels = levels.len(), "publishing levels whose publication was never acknowledged");
                self.publish(&levels, Owing::Sweep(owed));
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot read unpublished levels; the next sweep tries again"),
        }
    }

    /// Every so often, republishes levels whose publication failed (the stock topic was
    /// down longer than the producer's timeout).
    fn sweep_unpublished(&mut self) {
        if self.swept_at.elapsed() < SWEEP_INTERVAL {
            return;
        }
        self.swept_at = Instant::now();
        let grace = chrono::Duration::from_std(SWEEP_INTERVAL).unwrap_or_default();
        self.publish_unacknowledged(Utc::now() - grace);
    }

    /// At shutdown: waits (a little) for the publications in flight and records them, so
    /// that a clean stop leaves nothing to republish.
    fn settle_publications(&mut self) {
        let _ = self.producer.get().flush(Duration::from_secs(5));
        let tasks = std::mem::take(&mut self.acknowledging);
        // The timer must be made inside the runtime, hence the async block.
        let _ = self.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), join_all(tasks)).await });
        let settled = self.take_acknowledged();
        if !settled.is_empty() {
            let batch = settled.into_batch(self.group_id.clone(), self.topics.movements.clone());
            // Shutdown is already cancelled, so this is one attempt: a failure only means
            // that the next start publishes these levels again.
            if let Err(e) = self.runtime.block_on(self.db.apply_batch(&batch)) {
                warn!(error = %e, "cannot record the last publications; they are published again at the next start");
            }
        }
    }

    /// While idle, records the publications acknowledged since the last batch in a batch
    /// of their own, so that a quiet ledger leaves nothing to republish.
    fn record_acknowledged(&mut self) -> Result<(), LedgerError> {
        let settled = self.take_acknowledged();
        if settled.is_empty() {
            return Ok(());
        }
        let batch = settled.into_batch(self.group_id.clone(), self.topics.movements.clone());
        self.runtime.block_on(self.applier().run(Vec::new(), batch))?;
        Ok(())
    }

    /// What a batch's task needs to apply it.
    fn applier(&self) -> Applier {
        Applier {
            db: Arc::clone(&self.db),
            dead_letters: DeadLetters {
                producer: self.producer.clone(),
                dlq: self.topics.dlq.clone(),
                movements_topic: self.topics.movements.clone(),
                metrics: self.metrics.clone(),
            },
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
            component: self.component.clone(),
        }
    }

    /// The publications acknowledged since the last batch, to record with the next one.
    fn take_acknowledged(&mut self) -> Settled {
        let mut settled = Settled::default();
        while let Ok(mut more) = self.acknowledged_rx.try_recv() {
            settled.published.append(&mut more.published);
            settled.owed.append(&mut more.owed);
        }
        settled
    }

    fn commit_to_kafka(&self, offsets: &BTreeMap<i32, i64>) {
        let mut tpl = TopicPartitionList::new();
        for (&partition, &next) in offsets {
            let _ = tpl.add_partition_offset(&self.topics.movements, partition, Offset::Offset(next));
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            debug!(error = %e, "kafka offset commit failed (the database holds the offsets)");
        }
    }

    fn record_metrics(&self, movements: usize, applied: &Applied, elapsed: Duration) {
        let m = &self.metrics;
        m.ledger_movements_applied_total.inc_by(applied.applied);
        m.ledger_movements_superseded_total.inc_by(applied.superseded);
        m.ledger_duplicates_skipped_total.inc_by(applied.duplicates);
        m.ledger_conflicts_retried_total.inc_by(applied.conflicts_retried);
        for (system, n) in &applied.duplicates_by_source {
            m.ledger_duplicates_total.with_label_values(&[system.as_str()]).inc_by(*n);
        }
        for (system, n) in &applied.conflicts_by_source {
            m.ledger_conflicts_total.with_label_values(&[system.as_str()]).inc_by(*n);
        }
        m.ledger_batch_size_movements.observe(movements as f64);
        m.ledger_apply_duration_seconds.observe(elapsed.as_secs_f64());
        debug!(
            movements,
            applied = applied.applied,
            duplicates = applied.duplicates,
            elapsed_ms = elapsed.as_millis() as u64,
            "batch applied"
        );
    }
}

/// A batch being applied in the database while the next one is read.
struct InFlight {
    task: tokio::task::JoinHandle<Result<Option<Applied>, DbError>>,
    offsets: BTreeMap<i32, i64>,
    movements: usize,
    started: Instant,
}
