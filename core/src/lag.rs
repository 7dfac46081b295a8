//! How far behind the ledger is, per partition of the movements topic, and the levels it
//! left for a person's look: the task that keeps `onhand_ledger_behind_movements`,
//! `onhand_ledger_behind_seconds` and the level-anomaly gauges current.
//!
//! The ledger's position is the offset saved with its effects in the database, never
//! Kafka's committed offsets (which it only commits as a courtesy). A partition is behind
//! by its high watermark less that offset; its time behind is the age of the oldest record
//! not applied yet, read at that offset (its timestamp is when it was produced), or, when
//! that record cannot be read, since when the partition has been behind.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    Message, Offset, TopicPartitionList,
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{
    config::KafkaConfig,
    db::{LedgerWrites, Signals},
    kafka,
    telemetry::Metrics,
};

/// How often the gauges are refreshed.
pub const LAG_INTERVAL: Duration = Duration::from_secs(5);
/// How long one call to the brokers may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the oldest unapplied record of a partition.
const RECORD_WAIT: Duration = Duration::from_secs(2);

/// One partition of the movements topic, against the ledger's saved offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: i32,
    /// Records after the saved offset.
    pub behind_movements: i64,
    /// When the oldest of them was produced, if it could be read.
    pub oldest_at: Option<DateTime<Utc>>,
}

/// What the task reads from: the movements topic, the ledger's group and saved offsets,
/// and the database's signals.
#[derive(Debug, Clone)]
pub struct LagWatch {
    pub kafka: KafkaConfig,
    /// The ledger's consumer group, under which its offsets are saved.
    pub group_id: String,
    pub ledger: Arc<dyn LedgerWrites>,
    pub signals: Arc<dyn Signals>,
    pub metrics: Metrics,
}

impl LagWatch {
    /// Refreshes the gauges every [`LAG_INTERVAL`] until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let probe = match self.probe() {
            Ok(probe) => Arc::new(probe),
            Err(e) => {
                warn!(error = %e, "the ledger's lag cannot be measured");
                return;
            }
        };
        let mut interval = tokio::time::interval(LAG_INTERVAL);
        let mut behind_since: BTreeMap<i32, DateTime<Utc>> = BTreeMap::new();
        let mut exported: BTreeSet<i32> = BTreeSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            match self.measure(Arc::clone(&probe)).await {
                Ok(lags) => exported = self.export(&lags, &mut behind_since, &exported),
                Err(e) => warn!(error = %e, "the ledger's lag cannot be measured now"),
            }
            match self.signals.level_anomalies().await {
                Ok(anomalies) => {
                    self.metrics.ledger_negative_levels.set(anomalies.negative);
                    self.metrics.ledger_overreserved_levels.set(anomalies.overreserved);
                    self.metrics.reservations_held_units.set(anomalies.reserved);
                }
                Err(e) => warn!(error = %e, "the levels that need a look cannot be counted now"),
            }
        }
    }

    /// A consumer of no group's work: it only assigns itself a partition to read one record.
    pub fn probe(&self) -> Result<BaseConsumer, KafkaError> {
        kafka::client_config(&self.kafka)
            .set("group.id", format!("{}-lag", self.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            // It reads one record at a time: no prefetch of a backlog it never reads.
            .set("fetch.message.max.bytes", "65536")
            .set("queued.min.messages", "1")
            .set("queued.max.messages.kbytes", "1024")
            .create()
    }

    /// Each partition of the movements topic against the ledger's saved offset, now.
    pub async fn measure(&self, probe: Arc<BaseConsumer>) -> Result<Vec<PartitionLag>, LagError> {
        let topic = self.kafka.topics.movements.clone();
        let saved: BTreeMap<i32, i64> = self
            .ledger
            .consumer_offsets(&self.group_id, &topic)
            .await?
            .into_iter()
            .map(|o| (o.partition, o.next_offset))
            .collect();
        let measured = tokio::task::spawn_blocking(move || measure_blocking(&probe, &topic, &saved))
            .await
            .map_err(|_| LagError::Panicked)??;
        Ok(measured)
    }

    /// Sets the gauges from `lags`; answers the partitions exported, so that a partition
    /// gone from the topic loses its series.
    fn export(
        &self,
        lags: &[PartitionLag],
        behind_since: &mut BTreeMap<i32, DateTime<Utc>>,
        exported: &BTreeSet<i32>,
    ) -> BTreeSet<i32> {
        let now = Utc::now();
        let current: BTreeSet<i32> = lags.iter().map(|l| l.partition).collect();
        for gone in exported.difference(&current) {
            let _ = self.metrics.ledger_behind_movements.remove_label_values(&[&gone.to_string()]);
            let _ = self.metrics.ledger_behind_seconds.remove_label_values(&[&gone.to_string()]);
        }
        for lag in lags {
            let since = if lag.behind_movements > 0 {
                Some(*behind_since.entry(lag.partition).or_insert(now))
            } else {
                behind_since.remove(&lag.partition);
                None
            };
            let partition = lag.partition.to_string();
            self.metrics.ledger_behind_movements.with_label_values(&[&partition]).set(lag.behind_movements);
            self.metrics.ledger_behind_seconds.with_label_values(&[&partition]).set(behind_seconds(lag, since, now));
        }
        current
    }
}

/// Seconds behind: the age of the oldest unapplied record, else the time since the
/// partition was first seen behind; 0 when nothing waits.
pub fn behind_seconds(lag: &PartitionLag, behind_since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> i64 {
    if lag.behind_movements == 0 {
        return 0;
    }
    lag.oldest_at.or(behind_since).map_or(0, |at| (now - at).num_seconds().max(0))
}

/// Why the lag could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum LagError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{0}")]
    Db(#[from] crate::db::DbError),
    #[error("the lag probe panicked")]
    Panicked,
}

fn measure_blocking(
    probe: &BaseConsumer,
    topic: &str,
    saved: &BTreeMap<i32, i64>,
) -> Result<Vec<PartitionLag>, KafkaError> {
    let marks = kafka::watermarks(probe, topic, BROKER_TIMEOUT)?.unwrap_or_default();
    let mut lags = Vec::with_capacity(marks.len());
    for (partition, (low, high)) in marks {
        // Without a saved offset the ledger starts at the beginning of what is retained.
        let next = saved.get(&partition).copied().unwrap_or(low).max(low);
        let behind_movements = kafka::unread((low, high), Some(next));
        let oldest_at = if behind_movements > 0 { oldest_timestamp(probe, topic, partition, next) } else { None };
        lags.push(PartitionLag { partition, behind_movements, oldest_at });
    }
    Ok(lags)
}

/// When the record at `offset` of `partition` was produced, if it can be read in time.
fn oldest_timestamp(probe: &BaseConsumer, topic: &str, partition: i32, offset: i64) -> Option<DateTime<Utc>> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset)).ok()?;
    probe.assign(&tpl).ok()?;
    let deadline = std::time::Instant::now() + RECORD_WAIT;
    let mut found = None;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match probe.poll(left) {
            Some(Ok(message)) if message.partition() == partition => {
                found = message.timestamp().to_millis().and_then(DateTime::<Utc>::from_timestamp_millis);
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    let _ = probe.unassign();
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::at;

    #[test]
    fn time_behind_is_the_oldest_records_age_or_how_long_it_has_been_behind() {
        let lag = |behind_movements, oldest_at| PartitionLag { partition: 0, behind_movements, oldest_at };
        assert_eq!(behind_seconds(&lag(0, Some(at(0))), Some(at(0)), at(100)), 0, "nothing waits");
        assert_eq!(behind_seconds(&lag(5, Some(at(10))), Some(at(50)), at(100)), 90);
        assert_eq!(behind_seconds(&lag(5, None), Some(at(50)), at(100)), 50, "the record could not be read");
        assert_eq!(behind_seconds(&lag(5, Some(at(200))), None, at(100)), 0, "a clock ahead counts as none");
    }
}
