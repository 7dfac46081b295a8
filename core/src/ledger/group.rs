//! The ledger's place in its consumer group: the rebalance callback, which seeks every
//! assigned partition to the offset saved in the database, and the watchdog, which
//! notices a consumer that holds no partition while movements wait and nobody applies
//! them, and rejoins the group.
//!
//! Why a watchdog: a ledger killed with SIGKILL leaves its member in the group until the
//! session times out. A ledger started again at once joins beside that ghost. With the
//! tansu broker (`tests/restarts.rs`), the join completed when the ghost's session timed
//! out, about 9 s later, with an empty assignment for the live member, and no rebalance
//! ever followed: the ledger sat idle with every movement waiting. Apache Kafka's
//! coordinator rebalances again once the dead member is gone; a ledger must not depend on
//! its broker doing so. A consumer can always see its own assignment and the lag, and
//! leave and join again, which makes any broker rebalance.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread,
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    statistics::Statistics,
    types::RDKafkaRespErr,
    ClientContext, Offset, TopicPartitionList,
};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{db::LedgerWrites, health::Component, telemetry::Metrics};

/// The consumer's context: seeks assigned partitions to the offsets saved in the
/// database, and counts rebalances so that the loop can drop a batch that straddles one.
pub(super) struct LedgerContext {
    pub db: Arc<dyn LedgerWrites>,
    pub runtime: Handle,
    pub group_id: String,
    pub topic: String,
    pub generation: AtomicU64,
    pub assignment: Arc<Mutex<BTreeSet<i32>>>,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    pub component: Component,
    /// Assigned partitions whose saved offset is beyond their end (the topic was recreated).
    pub beyond_end: Mutex<BTreeSet<i32>>,
}

impl ClientContext for LedgerContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else { return };
        let assigned = self.assignment.lock().unwrap_or_else(PoisonError::into_inner).clone();
        for (partition, stats) in topic.partitions.iter().filter(|(p, _)| assigned.contains(*p)) {
            // Until a first commit, librdkafka knows no lag: everything retained is due.
            let lag = match (stats.consumer_lag, stats.hi_offset) {
                (lag, _) if lag >= 0 => lag,
                (_, high) if high >= 0 => high.saturating_sub(stats.lo_offset.max(0)),
                _ => continue,
            };
            self.metrics.ledger_consumer_lag_messages.with_label_values(&[&partition.to_string()]).set(lag);
        }
    }
}

impl ConsumerContext for LedgerContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.assignment.lock().unwrap_or_else(PoisonError::into_inner).clear();
        self.metrics.ledger_assigned_partitions.set(0);
        if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                error!(?err, "rebalance failed; dropping the assignment");
            }
            if let Err(e) = consumer.unassign() {
                error!(error = %e, "unassign failed");
            }
            return;
        }
        let saved = self.saved_offsets();
        let mut assignment = self.assignment.lock().unwrap_or_else(PoisonError::into_inner);
        let partitions: Vec<(String, i32)> =
            tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        let mut beyond_end = BTreeSet::new();
        for (topic, partition) in partitions {
            let offset = saved.get(&partition).map_or(Offset::Beginning, |o| Offset::Offset(*o));
            if let Some(&next) = saved.get(&partition) {
                if self.check_watermarks(consumer, &topic, partition, next) {
                    beyond_end.insert(partition);
                }
            }
            assignment.insert(partition);
            if let Err(e) = tpl.set_partition_offset(&topic, partition, offset) {
                error!(error = %e, partition, "cannot set the start offset");
            }
        }
        info!(partitions = ?assignment, "partitions assigned, resuming from the offsets saved in the database");
        self.metrics.ledger_assigned_partitions.set(assignment.len() as i64);
        drop(assignment);
        self.report_beyond_end(beyond_end);
        if let Err(e) = consumer.assign(tpl) {
            error!(error = %e, "assign failed");
        }
    }
}

impl LedgerContext {
    /// Reports movements lost to retention: the saved offset is below the first one the
    /// broker still has (the ledger was down longer than the topic keeps records). The
    /// consumer then starts at the first one there is; the gap needs a person. Answers
    /// whether the saved offset is beyond the partition's end instead, which happens when
    /// the topic was deleted and created again: the saved offsets, which never move
    /// backwards, would skip every new record until the partition grew past them.
    fn check_watermarks(&self, consumer: &BaseConsumer<Self>, topic: &str, partition: i32, next: i64) -> bool {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(5)) {
            Ok((low, _)) if next < low => {
                error!(partition, saved = next, first_retained = low, "movements expired before the ledger read them");
                self.metrics.ledger_offset_gaps_total.inc_by(low.saturating_sub(next).unsigned_abs());
                false
            }
            Ok((_, high)) if next > high => {
                error!(
                    partition,
                    saved = next,
                    end = high,
                    "the saved offset is beyond the partition's end: was the topic recreated? new movements here \
                     are skipped until a person moves the offsets back (onhand replay group, docs/operations.md)"
                );
                self.metrics.ledger_offsets_beyond_end_total.inc();
                true
            }
            Ok(_) => false,
            Err(e) => {
                warn!(error = %e, partition, "cannot check the partition's watermarks");
                false
            }
        }
    }

    fn report_beyond_end(&self, partitions: BTreeSet<i32>) {
        let mut reported = self.beyond_end.lock().unwrap_or_else(PoisonError::into_inner);
        if !partitions.is_empty() {
            self.component.blocked(format!(
                "the saved offsets of partitions {partitions:?} are beyond their end: the topic was recreated, \
                 and new movements there are skipped"
            ));
        } else if !reported.is_empty() {
            self.component.running();
        }
        *reported = partitions;
    }

    /// Reads the saved offsets, retrying while the database is unreachable: assigning a
    /// partition anywhere else could skip or repeat movements.
    fn saved_offsets(&self) -> BTreeMap<i32, i64> {
        let mut backoff = super::apply::database_backoff();
        loop {
            match self.runtime.block_on(self.db.consumer_offsets(&self.group_id, &self.topic)) {
                Ok(offsets) => return offsets.into_iter().map(|o| (o.partition, o.next_offset)).collect(),
                Err(e) if !self.shutdown.is_cancelled() => {
                    warn!(error = %e, "cannot read the saved offsets; retrying");
                    thread::sleep(backoff.fail());
                }
                Err(_) => return BTreeMap::new(),
            }
        }
    }
}

/// The consumer's session timeout, and so how long it may hold no partition before the
/// watchdog looks at the lag: within it, a broker should have handed a dead member's
/// partitions on.
pub(super) const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the watchdog looks, once the grace is over.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Notices a consumer left without partitions while movements wait, and rejoins.
#[derive(Debug)]
pub(super) struct Watchdog {
    empty_since: Option<Instant>,
    checked_at: Option<Instant>,
    /// The saved offsets at the last look: if they moved, another ledger applies.
    last_saved: Option<BTreeMap<i32, i64>>,
    /// Whether this watchdog reported the ledger blocked.
    reported: bool,
}

impl Watchdog {
    pub fn new() -> Self {
        Watchdog { empty_since: None, checked_at: None, last_saved: None, reported: false }
    }

    /// Looks at the assignment; rejoins the group when it is empty, movements wait, and
    /// nobody applied any since the last look.
    pub fn watch(&mut self, consumer: &BaseConsumer<LedgerContext>) {
        let context = consumer.context();
        let assigned = !context.assignment.lock().unwrap_or_else(PoisonError::into_inner).is_empty();
        if assigned {
            self.empty_since = None;
            self.last_saved = None;
            if std::mem::take(&mut self.reported) {
                info!("the ledger holds partitions again");
                context.component.running();
            }
            return;
        }
        let empty_since = *self.empty_since.get_or_insert_with(Instant::now);
        if empty_since.elapsed() < SESSION_TIMEOUT || self.checked_at.is_some_and(|at| at.elapsed() < WATCH_INTERVAL) {
            return;
        }
        self.checked_at = Some(Instant::now());
        let Some((waiting, saved)) = lag(consumer) else { return };
        let progressing = self.last_saved.as_ref().is_some_and(|last| last != &saved);
        let first_look = self.last_saved.is_none();
        self.last_saved = Some(saved);
        if waiting == 0 || progressing || first_look {
            if waiting == 0 && std::mem::take(&mut self.reported) {
                context.component.running();
            }
            return;
        }
        warn!(waiting, "the ledger holds no partition while movements wait and none is applied; rejoining the group");
        context.component.blocked(format!(
            "holds no partition while {waiting} movements wait and none is applied; rejoining the consumer group"
        ));
        self.reported = true;
        context.metrics.ledger_rejoins_total.inc();
        rejoin(consumer, &context.topic);
        // Give the new membership its own grace.
        self.empty_since = Some(Instant::now());
        self.last_saved = None;
    }
}

/// Movements waiting on the topic (the end of each partition less the offset saved in
/// the database), and the saved offsets; `None` when either cannot be read now.
fn lag(consumer: &BaseConsumer<LedgerContext>) -> Option<(i64, BTreeMap<i32, i64>)> {
    let context = consumer.context();
    let timeout = Duration::from_secs(5);
    let metadata = consumer.fetch_metadata(Some(&context.topic), timeout).ok()?;
    let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    let saved: BTreeMap<i32, i64> = context
        .runtime
        .block_on(context.db.consumer_offsets(&context.group_id, &context.topic))
        .ok()?
        .into_iter()
        .map(|o| (o.partition, o.next_offset))
        .collect();
    let mut waiting = 0i64;
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(&context.topic, partition, timeout).ok()?;
        let next = saved.get(&partition).copied().unwrap_or(low).max(low);
        waiting = waiting.saturating_add(high.saturating_sub(next).max(0));
    }
    Some((waiting, saved))
}

/// Leaves the group and joins it again as a new member, which makes the broker rebalance.
fn rejoin(consumer: &BaseConsumer<LedgerContext>, topic: &str) {
    consumer.unsubscribe();
    if let Err(e) = consumer.subscribe(&[topic]) {
        error!(error = %e, "cannot subscribe to the movements topic again");
    }
}
