//! Applying one batch, as the ledger's task on the runtime does while the next batch is
//! polled: first the dead letters of the records that could not be read, then the batch in
//! one transaction, retried while the database is unavailable.
//!
//! A batch the database refuses for good must not stop every later movement. When the
//! rules refuse one movement (its level would leave its range), that movement is set aside
//! and the rest applied. When the database refuses the data itself (a constraint, a value
//! it cannot store) without saying which row, the batch is searched by halves, each
//! applied on its own without offsets, until the refused movements are alone; those go to
//! the dead-letter topic with the database's reason, everything else is committed, and the
//! offsets are saved last. A dead letter is always acknowledged before the offset that
//! passes its record is saved, so nothing is lost, whatever crashes when.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::{
    backoff::Backoff,
    db::{Applied, Batch, DbError, Envelope, LedgerWrites},
    event::{EventId, InvalidMovement, LocationId, Sku, SourceSystem, StockLevel},
    health::Component,
    kafka::{self, DeadLetter},
    telemetry::Metrics,
};

/// The dead-letter reason of a movement the database refused.
pub const DATABASE_REFUSED: &str = "database_refused";

/// A record the ledger cannot apply, bound for the dead-letter topic with its reason.
#[derive(Debug, Clone)]
pub(super) struct Rejected {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// The record's bytes as read; for a movement the database refused, the movement as
    /// read, encoded again (valid, so that it can be sent again once the cause is fixed).
    pub payload: Vec<u8>,
    pub code: &'static str,
    pub message: String,
}

impl Rejected {
    pub fn unreadable(partition: i32, offset: i64, key: Option<Vec<u8>>, payload: Vec<u8>, e: InvalidMovement) -> Self {
        Rejected { partition, offset, key, payload, code: e.code.as_str(), message: e.message }
    }

    fn refused(envelope: &Envelope, code: &'static str, message: String) -> Self {
        let m = &envelope.movement;
        Rejected {
            partition: envelope.partition,
            offset: envelope.offset,
            key: Some(m.kafka_key().as_bytes().to_vec()),
            payload: m.to_json(),
            code,
            message,
        }
    }
}

/// Where the ledger's dead letters go.
#[derive(Clone)]
pub(super) struct DeadLetters {
    pub producer: kafka::Producer,
    pub dlq: String,
    pub movements_topic: String,
    pub metrics: Metrics,
}

/// How long a dead letter may wait in the producer's queue.
const DEAD_LETTER_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

impl DeadLetters {
    /// Sends one, until Kafka acknowledged it; `false` when shutdown came first.
    async fn send(&self, r: &Rejected, shutdown: &CancellationToken, component: &Component) -> bool {
        warn!(partition = r.partition, offset = r.offset, code = r.code, reason = %r.message, "movement rejected to the dead-letter topic");
        let letter = DeadLetter {
            source: &self.movements_topic,
            read_from: Some((&self.movements_topic, r.partition, r.offset)),
            key: r.key.as_deref(),
            payload: &r.payload,
            reason_code: r.code,
            reason: &r.message,
        };
        let timeout = DEAD_LETTER_QUEUE_TIMEOUT;
        let sent = kafka::dead_letter_until_sent(
            &self.producer,
            &self.dlq,
            letter,
            timeout,
            shutdown,
            component,
            &self.metrics,
        )
        .await;
        if sent {
            self.metrics.ledger_dlq_records_total.with_label_values(&[r.code]).inc();
        }
        sent
    }
}

/// What applying a batch needs, moved into its task.
pub(super) struct Applier {
    pub db: std::sync::Arc<dyn LedgerWrites>,
    pub dead_letters: DeadLetters,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    pub component: Component,
}

impl Applier {
    /// Dead-letters `rejected`, then applies `batch` (its offsets last). `None` when
    /// shutdown came first: nothing of the batch's offsets was saved.
    pub async fn run(self, rejected: Vec<Rejected>, mut batch: Batch) -> Result<Option<Applied>, DbError> {
        for r in &rejected {
            if !self.dead_letters.send(r, &self.shutdown, &self.component).await {
                return Ok(None);
            }
        }
        let mut searched = Applied::default();
        loop {
            match self.apply(&batch).await {
                Ok(Some(applied)) => return Ok(Some(merge(searched, applied))),
                Ok(None) => return Ok(None),
                Err(DbError::Refused { event_id, code, reason }) => {
                    let Some(envelope) = take(&mut batch.movements, &event_id) else {
                        return Err(DbError::Refused { event_id, code, reason });
                    };
                    if !self
                        .dead_letters
                        .send(&Rejected::refused(&envelope, code, reason), &self.shutdown, &self.component)
                        .await
                    {
                        return Ok(None);
                    }
                }
                Err(e) if e.is_refused_data() && !batch.movements.is_empty() => {
                    self.metrics.ledger_refused_batches_total.inc();
                    let movements = std::mem::take(&mut batch.movements);
                    let total = movements.len();
                    let Some((refused, applied)) = self.search(movements, &batch).await? else { return Ok(None) };
                    if refused.len() == total && total > 1 {
                        // Every movement alone is refused: the database, not the data, is at
                        // fault (a broken migration), and dead-lettering all would hide it.
                        error!(error = %e, movements = total, "the database refuses every movement of the batch");
                        return Err(e);
                    }
                    for r in &refused {
                        if !self.dead_letters.send(r, &self.shutdown, &self.component).await {
                            return Ok(None);
                        }
                    }
                    // Every other movement is committed by now; what is left is the batch's
                    // offsets and publications, saved on their own.
                    searched = merge(searched, applied);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Finds the movements the database refuses, applying halves of `movements` on their
    /// own (no offsets) until each refused one is alone. Everything else is committed on
    /// the way. `None` when shutdown came first.
    async fn search(
        &self,
        movements: Vec<Envelope>,
        template: &Batch,
    ) -> Result<Option<(Vec<Rejected>, Applied)>, DbError> {
        let mut refused = Vec::new();
        let mut applied = Applied::default();
        let mut pending = vec![movements];
        while let Some(mut part) = pending.pop() {
            let batch = Batch {
                group_id: template.group_id.clone(),
                topic: template.topic.clone(),
                movements: part.clone(),
                offsets: Vec::new(),
                published: Vec::new(),
                settled: Vec::new(),
            };
            match self.apply(&batch).await {
                Ok(Some(done)) => applied = merge(applied, done),
                Ok(None) => return Ok(None),
                Err(DbError::Refused { event_id, code, reason }) => match take(&mut part, &event_id) {
                    Some(envelope) => {
                        refused.push(Rejected::refused(&envelope, code, reason));
                        pending.push(part);
                    }
                    None => return Err(DbError::Refused { event_id, code, reason }),
                },
                Err(e) if e.is_refused_data() && part.len() == 1 => {
                    refused.push(Rejected::refused(&part[0], DATABASE_REFUSED, e.to_string()));
                }
                Err(e) if e.is_refused_data() => {
                    let second = part.split_off(part.len() / 2);
                    pending.push(second);
                    pending.push(part);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Some((refused, applied)))
    }

    /// Applies a batch, retrying with backoff while the database is unavailable or the
    /// batch lost too many races. `None` when shutdown came first: nothing was applied.
    async fn apply(&self, batch: &Batch) -> Result<Option<Applied>, DbError> {
        let mut backoff = database_backoff();
        loop {
            match self.db.apply_batch(batch).await {
                Ok(applied) => return Ok(Some(applied)),
                Err(e) if e.is_retryable() => {
                    self.metrics.ledger_batch_retries_total.inc();
                    warn!(error = %e, movements = batch.movements.len(), "batch not applied; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(backoff.fail()) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The pauses of the ledger while its database is unavailable: 100 ms, doubling, at most 5 s.
pub(super) fn database_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
}

/// Removes the movement `id` from `movements`, with every copy of it (a re-delivery in the
/// same batch).
fn take(movements: &mut Vec<Envelope>, id: &EventId) -> Option<Envelope> {
    let position = movements.iter().position(|e| &e.movement.event_id == id)?;
    let taken = movements.remove(position);
    movements.retain(|e| &e.movement.event_id != id);
    Some(taken)
}

/// Two outcomes as one: the counts add up, and of a level written twice the later
/// (higher) version is the one to publish.
fn merge(a: Applied, b: Applied) -> Applied {
    let mut newest: HashMap<(Sku, LocationId), StockLevel> = HashMap::with_capacity(a.levels.len() + b.levels.len());
    for level in a.levels.into_iter().chain(b.levels) {
        let key = (level.sku.clone(), level.location.clone());
        match newest.get(&key) {
            Some(kept) if kept.version >= level.version => {}
            _ => {
                newest.insert(key, level);
            }
        }
    }
    Applied {
        applied: a.applied + b.applied,
        superseded: a.superseded + b.superseded,
        duplicates: a.duplicates + b.duplicates,
        recorded: a.recorded + b.recorded,
        released: a.released.saturating_add(b.released),
        conflicts_retried: a.conflicts_retried + b.conflicts_retried,
        duplicates_by_source: add_up(a.duplicates_by_source, b.duplicates_by_source),
        conflicts_by_source: add_up(a.conflicts_by_source, b.conflicts_by_source),
        levels: newest.into_values().collect(),
        owed: a.owed.into_iter().chain(b.owed).collect(),
    }
}

/// Two counts by source as one.
fn add_up(mut a: BTreeMap<SourceSystem, u64>, b: BTreeMap<SourceSystem, u64>) -> BTreeMap<SourceSystem, u64> {
    for (source, n) in b {
        *a.entry(source).or_default() += n;
    }
    a
}
