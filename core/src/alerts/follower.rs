//! The alerts component's reader of the stock topic. It reads every partition from the
//! offsets saved in the database under its own group id (apart from the ledger's, so it
//! falls behind or fails without holding the ledger back), and decides each level version
//! in one transaction with the offset after it (`Alerts::decide_level`): read again after
//! a restart or by a second replica, a version changes nothing, so each crossing raises
//! and resolves its alert once.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::Utc;
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    Message, Offset, TopicPartitionList,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{condition, decide, raise, resolved, Change, Condition, Evidence, Thresholds};
use crate::{
    backoff::Backoff,
    config::{AlertsConfig, ChannelConfig, KafkaConfig},
    db::{Alerts, DbError, History, LedgerWrites, MovementQuery, PartitionOffset, Progress, StockReads},
    event::{
        alert::{Alert, AlertKind},
        StockLevel,
    },
    kafka,
    telemetry::Metrics,
};

/// How many of a level's newest movements an `oversold` alert looks through for those
/// that took it below zero.
const RECENT_MOVEMENTS_MAX: i64 = 50;

/// What the follower reads and writes.
#[derive(Debug, Clone)]
pub struct Follower {
    pub alerts: Arc<dyn Alerts>,
    pub history: Arc<dyn History>,
    pub stock: Arc<dyn StockReads>,
    pub offsets: Arc<dyn LedgerWrites>,
    pub kafka: KafkaConfig,
    pub config: AlertsConfig,
    pub channels: BTreeMap<String, ChannelConfig>,
    pub metrics: Metrics,
}

impl Follower {
    /// Follows the stock topic until `stop`, starting over after any failure.
    pub async fn run(&self, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        while !stop.is_cancelled() {
            let failed = match self.assign().await {
                Ok(consumer) => {
                    info!(topic = %self.kafka.topics.stock, group = %self.config.group_id, "alerts follow the stock topic");
                    match self.follow(&consumer, &stop).await {
                        Ok(()) => return,
                        Err(e) => e.to_string(),
                    }
                }
                Err(e) => e,
            };
            warn!(error = %failed, "the alerts' reader of the stock topic stopped; starting again");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff.fail()) => {}
            }
        }
    }

    /// A consumer of every partition of the stock topic, each at its saved offset.
    async fn assign(&self) -> Result<StreamConsumer, String> {
        let topic = self.kafka.topics.stock.clone();
        let saved = self.offsets.consumer_offsets(&self.config.group_id, &topic).await.map_err(|e| e.to_string())?;
        let consumer: StreamConsumer = kafka::client_config(&self.kafka)
            .set("group.id", &self.config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", kafka::FETCH_WAIT_MAX_MS)
            .create()
            .map_err(|e| e.to_string())?;
        let probe = kafka::client_config(&self.kafka);
        let named = topic.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            let client: rdkafka::consumer::BaseConsumer = probe.create()?;
            client.fetch_metadata(Some(&named), Duration::from_secs(10))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let mut partitions = TopicPartitionList::new();
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let offset = saved
                .iter()
                .find(|o| o.partition == partition.id())
                .map_or(Offset::Beginning, |o| Offset::Offset(o.next_offset));
            partitions.add_partition_offset(&topic, partition.id(), offset).map_err(|e| e.to_string())?;
        }
        if partitions.count() == 0 {
            return Err(format!("the topic {topic} has no partitions"));
        }
        consumer.assign(&partitions).map_err(|e| e.to_string())?;
        Ok(consumer)
    }

    async fn follow(&self, consumer: &StreamConsumer, stop: &CancellationToken) -> Result<(), DbError> {
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                message = consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    warn!(error = %e, "stock topic read failed");
                    continue;
                }
            };
            let progress = Progress {
                group_id: &self.config.group_id,
                topic: &self.kafka.topics.stock,
                offset: PartitionOffset { partition: message.partition(), next_offset: message.offset() + 1 },
            };
            match message.payload().map(serde_json::from_slice::<StockLevel>) {
                Some(Ok(level)) => self.decide(&level, &progress).await?,
                Some(Err(e)) => {
                    warn!(error = %e, offset = message.offset(), "unreadable stock level skipped by the alerts");
                    self.alerts.skip_alert_message(&progress).await?;
                }
                None => self.alerts.skip_alert_message(&progress).await?,
            }
        }
    }

    /// Decides one level version: gathers what its alerts would name (only for the kinds
    /// whose condition holds), then raises and resolves in one transaction.
    async fn decide(&self, level: &StockLevel, progress: &Progress<'_>) -> Result<(), DbError> {
        let thresholds = Thresholds {
            reorder_point: level.reorder_point.unwrap_or(self.config.reorder_point_default),
            hysteresis: self.config.hysteresis,
        };
        let evidence = self.evidence(level, thresholds).await?;
        let now = Utc::now();
        let channels = &self.channels;
        let decide_with = |unresolved: &[Alert]| -> Vec<Alert> {
            let kinds: Vec<AlertKind> = unresolved.iter().map(|a| a.kind).collect();
            decide(level, &kinds, thresholds)
                .into_iter()
                .filter_map(|change| match change {
                    Change::Raise(kind) => Some(raise(kind, level, thresholds, &evidence, channels, now)),
                    Change::Resolve(kind) => {
                        unresolved.iter().find(|a| a.kind == kind).map(|a| resolved(a.clone(), now))
                    }
                })
                .collect()
        };
        let key = (level.sku.clone(), level.location.clone());
        if let Some(changes) = self.alerts.decide_level(progress, &key, level.version, &decide_with).await? {
            for alert in changes {
                info!(alert = %alert.id, kind = %alert.kind, subject = %alert.subject, state = alert.state.as_str(), "alert");
                self.metrics.count_alert(&alert);
            }
        }
        Ok(())
    }

    async fn evidence(&self, level: &StockLevel, thresholds: Thresholds) -> Result<Evidence, DbError> {
        let mut evidence = Evidence::default();
        let key = (level.sku.clone(), level.location.clone());
        if condition(AlertKind::Oversold, level, thresholds) == Condition::Holds {
            let query = MovementQuery {
                sku: Some(level.sku.clone()),
                location: Some(level.location.clone()),
                source: None,
                since: None,
                until: None,
                after: None,
                limit: RECENT_MOVEMENTS_MAX,
            };
            evidence.recent = (self.history.movements(&query).await?)
                .into_iter()
                .map(|m| (m.movement.event_id, m.delta, m.movement.source.system))
                .collect();
            evidence.levels_of_sku = self.stock.stock_by_sku(&level.sku).await?;
        }
        if condition(AlertKind::ReservationExceedsStock, level, thresholds) == Condition::Holds {
            evidence.reservations = self.alerts.reservations_at(&key).await?;
        }
        Ok(evidence)
    }
}
