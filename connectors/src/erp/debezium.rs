//! Debezium mode: the journal's change events, as Debezium's Oracle (or any) connector
//! writes them to Kafka, instead of polling. An insert (`op` `c`, or `r` in a snapshot)
//! is a journal row and becomes its movement, with the same event id as the poller gives
//! it (`erp:journal:{id}`), so switching modes counts nothing twice. A journal row is never
//! changed by the ERP: an update or a delete is reported (dead letter
//! `erp_journal_row_changed`, and `onhand_erp_rows_total{outcome="changed"}`), not applied.

use std::time::Duration;

use chrono::{DateTime, Utc};
use onhand_core::kafka::{self, Producer};
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    Message,
};
use serde_json::Value;
use tracing::warn;

use super::{
    config::{DebeziumColumns, ErpConfig},
    mapping::{self, Codes, JournalRow},
    source::{deliver, PRODUCER_LINGER},
};
use crate::ConnectorContext;

/// What a change event says about the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new row (an insert, or a row read by Debezium's snapshot).
    Row(JournalRow),
    /// An update or delete of a row: reported, never applied.
    Changed { op: String, reason: String },
    /// A tombstone or a heartbeat: nothing to do.
    Nothing,
}

/// Reads one change event (with or without Debezium's `schema`/`payload` wrapper).
pub fn read_change(value: &[u8], columns: &DebeziumColumns) -> Result<Change, mapping::Unmapped> {
    let invalid = |message: String| mapping::Unmapped { code: "erp_invalid_change_event", message };
    if value.is_empty() {
        return Ok(Change::Nothing);
    }
    let mut event: Value = serde_json::from_slice(value).map_err(|e| invalid(e.to_string()))?;
    if event.get("payload").is_some() && event.get("schema").is_some() {
        event = event["payload"].take();
    }
    let op = event["op"].as_str().unwrap_or_default().to_string();
    match op.as_str() {
        "c" | "r" => {}
        "u" | "d" => {
            let scn = event["source"]["scn"].as_str().or(event["source"]["commit_scn"].as_str()).unwrap_or("?");
            let reason = format!("a journal row was {} at scn {scn}", if op == "u" { "updated" } else { "deleted" });
            return Ok(Change::Changed { op, reason });
        }
        "" if event.is_null() => return Ok(Change::Nothing),
        other => return Err(invalid(format!("unknown op {other:?}"))),
    }
    let after = &event["after"];
    let field = |name: &str| &after[name];
    let text =
        |name: &str| field(name).as_str().map(str::to_string).ok_or_else(|| invalid(format!("{name} is not text")));
    Ok(Change::Row(JournalRow {
        id: integer(field(&columns.id)).ok_or_else(|| invalid(format!("{} is not an integer", columns.id)))?,
        changed_at: timestamp(field(&columns.changed_at))
            .ok_or_else(|| invalid(format!("{} is not a timestamp", columns.changed_at)))?,
        item: text(&columns.item)?,
        warehouse: text(&columns.warehouse)?,
        movement_type: text(&columns.movement_type)?,
        quantity: integer(field(&columns.quantity))
            .ok_or_else(|| invalid(format!("{} is not an integer", columns.quantity)))?,
        reference: field(&columns.reference).as_str().map(str::to_string),
    }))
}

/// An integer column: a JSON number, or a decimal string (Oracle NUMBER as Debezium's
/// `decimal.handling.mode=string`).
fn integer(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| value.as_str()?.parse().ok())
}

/// A timestamp column: an RFC 3339 string (`ZonedTimestamp`), or a number of epoch
/// milliseconds (`Timestamp`) or microseconds (`MicroTimestamp`), told apart by size: a
/// millisecond count above 1e14 would be in the year 5138.
fn timestamp(value: &Value) -> Option<DateTime<Utc>> {
    if let Some(text) = value.as_str() {
        return DateTime::parse_from_rfc3339(text).ok().map(Into::into);
    }
    let n = value.as_i64()?;
    if n.abs() > 100_000_000_000_000 {
        DateTime::from_timestamp_micros(n)
    } else {
        DateTime::from_timestamp_millis(n)
    }
}

/// How long a change may take to be delivered before the connector says it is blocked.
const BLOCKED_AFTER: Duration = Duration::from_secs(3);

pub(super) struct Follower {
    pub context: ConnectorContext,
    pub config: ErpConfig,
    pub codes: Codes,
}

impl Follower {
    /// Consumes the change topic; commits a record's offset only after its movement (or
    /// dead letter) was acknowledged, so a crash re-reads it and its event id makes that
    /// harmless.
    pub(super) async fn run(self) -> Result<(), String> {
        let kafka = &self.context.config.kafka;
        let consumer: StreamConsumer = kafka::client_config(kafka)
            .set("group.id", &self.config.debezium.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", kafka::FETCH_WAIT_MAX_MS)
            .create()
            .map_err(|e| e.to_string())?;
        consumer.subscribe(&[self.config.debezium.topic.as_str()]).map_err(|e| e.to_string())?;
        let producer = Producer::new(kafka, PRODUCER_LINGER).map_err(|e| e.to_string())?;
        let component = &self.context.component;
        loop {
            let message = tokio::select! {
                _ = self.context.shutdown.cancelled() => return Ok(()),
                message = consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    warn!(error = %e, "debezium topic read failed; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut backoff = Duration::from_millis(200);
            let mut blocked = false;
            loop {
                // A change that cannot be delivered holds every later one back (its offset
                // is not committed past it): say so within seconds, not at the producer's
                // timeout, and keep trying.
                let handled = self.handle(&producer, message.payload().unwrap_or_default());
                tokio::pin!(handled);
                let outcome = tokio::select! {
                    outcome = &mut handled => outcome,
                    _ = tokio::time::sleep(BLOCKED_AFTER) => {
                        component.blocked("an erp change (or its dead letter) is not acknowledged by kafka");
                        blocked = true;
                        handled.await
                    }
                };
                let Err(e) = outcome else { break };
                warn!(error = %e, "erp change not delivered; trying again");
                component.blocked(format!("an erp change is not delivered: {e}"));
                blocked = true;
                producer.renew();
                tokio::select! {
                    _ = self.context.shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_millis(self.config.retry_max_ms));
            }
            if blocked {
                component.running();
            }
            if let Err(e) = consumer.commit_message(&message, CommitMode::Async) {
                warn!(error = %e, "debezium offset not committed; the change may be read again");
            }
        }
    }

    /// Produces the movement of one change event, or its dead letter.
    async fn handle(&self, producer: &Producer, value: &[u8]) -> Result<(), String> {
        let mapped = match read_change(value, &self.config.debezium.columns) {
            Ok(Change::Nothing) => return Ok(()),
            Ok(Change::Row(row)) => {
                mapping::to_movement(&row, &self.codes, Utc::now()).map_err(|u| (u, None, value, "dead_lettered"))
            }
            Ok(Change::Changed { reason, .. }) => {
                Err((mapping::Unmapped { code: "erp_journal_row_changed", message: reason }, None, value, "changed"))
            }
            Err(unmapped) => Err((unmapped, None, value, "dead_lettered")),
        };
        deliver(&self.context, producer, mapped).await.map_err(|e| e.to_string())
    }
}
