//! How writes made outside the ledger reach Kafka.
//!
//! - Levels the API writes (stock policies, reservations) are applied to this instance's
//!   cache and published on the stock topic; an acknowledged publication is recorded, and
//!   one that fails is left to the ledger's sweep of unpublished levels.
//! - Movements the API writes to the outbox table, in the transaction of the change they
//!   describe (or that an edge accepted into it, see `ingest`), are sent to the movements
//!   topic right after the commit and deleted once acknowledged. [`Relay::run`] sends what
//!   a crash or an outage left behind. A record may reach Kafka twice (two replicas, a
//!   crash before the delete); the ledger skips the second by its event id.
//! - With `onhand dev`'s embedded broker, which keeps nothing across a restart, a record
//!   is deleted only once the ledger recorded its movement ([`Forget::WhenRecorded`]), and
//!   every record still there at a start is sent again.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::future::join_all;
use rdkafka::producer::FutureRecord;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    cache::StockCache,
    clock::Clock,
    config::Topics,
    db::{Outbox, OutboxRecord},
    event::StockLevel,
    kafka::{self, Producer},
    publish,
};

/// How long an outbox record is left to the instance that wrote it before any instance
/// sends it again.
const OUTBOX_GRACE: chrono::Duration = chrono::Duration::seconds(5);
/// How often the outbox is swept.
const OUTBOX_SWEEP_INTERVAL: Duration = Duration::from_secs(2);
/// The most outbox records sent at once.
const OUTBOX_BATCH_MAX: i64 = 1_000;

/// When an outbox record is done with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forget {
    /// Once Kafka acknowledged it: Kafka keeps it from then on.
    WhenAcknowledged,
    /// Once the ledger recorded its movement: for a broker that may lose what it
    /// acknowledged (the embedded one of `onhand dev`).
    WhenRecorded,
}

#[derive(Clone)]
pub struct Relay {
    pub db: Arc<dyn Outbox>,
    pub producer: Producer,
    pub topics: Topics,
    pub produce_timeout: Duration,
    pub cache: StockCache,
    pub clock: Clock,
    pub forget: Forget,
    /// With [`Forget::WhenRecorded`]: the records acknowledged in this process's life, which
    /// need not be sent again while they wait for the ledger.
    pub acknowledged: Arc<Mutex<HashSet<i64>>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("topics", &self.topics).finish_non_exhaustive()
    }
}

impl Relay {
    /// Makes levels the API wrote visible: in this instance's cache now, in every other
    /// instance's through the stock topic. A failure is logged, not returned: the level
    /// stays unpublished in the database and the ledger's sweep publishes it.
    pub async fn publish_levels(&self, levels: &[StockLevel]) {
        for level in levels {
            self.cache.apply(level.clone()).await;
        }
        let sent = publish::enqueue(&self.producer, &self.topics.stock, levels).await;
        let published = sent.acknowledged().await.published;
        if published.is_empty() {
            return;
        }
        if let Err(e) = self.db.record_published(published).await {
            warn!(error = %e, "publication not recorded; the level may be published again");
        }
    }

    /// Sends outbox records to the movements topic and forgets the acknowledged ones (see
    /// [`Forget`]). Answers whether every record was sent.
    pub async fn send_outbox(&self, records: &[OutboxRecord]) -> bool {
        let sends = records.iter().map(|r| async move {
            let mut record = FutureRecord::to(&self.topics.movements).key(&r.key).payload(&r.payload);
            if let Some(headers) = kafka::request_headers() {
                record = record.headers(headers);
            }
            match self.producer.send(record, self.produce_timeout).await {
                Ok(_) => Some(r.id),
                Err((e, _)) => {
                    warn!(error = %e, "outbox record not sent; the relay will retry");
                    None
                }
            }
        });
        let sent: Vec<i64> = join_all(sends).await.into_iter().flatten().collect();
        let all = sent.len() == records.len();
        match self.forget {
            Forget::WhenAcknowledged => {
                if let Err(e) = self.db.delete_outbox(&sent).await {
                    warn!(error = %e, "sent outbox records not deleted; they will be sent again");
                    return false;
                }
            }
            Forget::WhenRecorded => self.acknowledged.lock().unwrap_or_else(PoisonError::into_inner).extend(sent),
        }
        all
    }

    /// Sends what the outbox still holds, every few seconds, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(OUTBOX_SWEEP_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // At a start, nothing is waiting for an acknowledgement of this process: the
        // first sweep takes every record at once.
        let mut grace = chrono::Duration::zero();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            if let Err(e) = self.sweep(self.clock.now() - grace).await {
                warn!(error = %e, "outbox not swept; trying again");
            }
            grace = OUTBOX_GRACE;
        }
    }

    /// Forgets what the ledger recorded (when that is the rule), then sends the records
    /// written before `before` that this process has not had acknowledged.
    async fn sweep(&self, before: chrono::DateTime<chrono::Utc>) -> Result<(), crate::db::DbError> {
        if self.forget == Forget::WhenRecorded {
            let recorded = self.db.delete_recorded_outbox().await?;
            let mut acknowledged = self.acknowledged.lock().unwrap_or_else(PoisonError::into_inner);
            for id in recorded {
                acknowledged.remove(&id);
            }
        }
        let mut after_id = 0;
        loop {
            let page = self.db.outbox(before, after_id, OUTBOX_BATCH_MAX).await?;
            let Some(last) = page.last() else { return Ok(()) };
            after_id = last.id;
            let full = page.len() as i64 == OUTBOX_BATCH_MAX;
            let due: Vec<OutboxRecord> = {
                let acknowledged = self.acknowledged.lock().unwrap_or_else(PoisonError::into_inner);
                page.into_iter().filter(|r| !acknowledged.contains(&r.id)).collect()
            };
            if !due.is_empty() {
                info!(records = due.len(), "sending outbox records left behind");
                self.send_outbox(&due).await;
                // One page at a time: the next sweep goes on, so a backlog never floods Kafka.
                return Ok(());
            }
            if !full {
                return Ok(());
            }
        }
    }
}
