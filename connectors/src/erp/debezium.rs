//! Debezium mode: the journal's change events, as Debezium's Oracle (or any) connector
//! writes them to Kafka, instead of polling. An insert (`op` `c`, or `r` in a snapshot)
//! is a journal row and becomes its movement, with the same event id as the poller gives
//! it (`erp:journal:{id}`), so switching modes counts nothing twice. A journal row is never
//! changed by the ERP: an update or a delete is reported (dead letter
//! `erp_journal_row_changed`, and `onhand_erp_rows_total{outcome="changed"}`), not applied.

use std::time::Duration;

use chrono::Utc;
use onhand_core::kafka::{self, Producer};
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    Message,
};
use serde_json::Value;
use tracing::warn;

use super::{
    config::{DebeziumColumns, ErpConfig},
    encodings,
    mapping::{self, Codes, JournalRow},
    metrics::ErpMetrics,
    source::{deliver, PRODUCER_LINGER, SOURCE},
};
use crate::contract::ConnectorContext;

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

/// Reads one change event (with or without the JSON converter's `schema`/`payload`
/// wrapper). With the wrapper, the schema of `after` says how each number and time column
/// is encoded; without it, the values' JSON types do (see `encodings`).
pub fn read_change(value: &[u8], columns: &DebeziumColumns) -> Result<Change, mapping::Unmapped> {
    if value.is_empty() {
        return Ok(Change::Nothing);
    }
    let mut event: Value = serde_json::from_slice(value).map_err(|e| invalid(e.to_string()))?;
    let mut schema = Value::Null;
    if event.get("payload").is_some() && event.get("schema").is_some() {
        schema = event["schema"].take();
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
    read_row(&event["after"], &schema, columns).map(Change::Row)
}

/// The journal row in an insert's `after`.
fn read_row(after: &Value, schema: &Value, columns: &DebeziumColumns) -> Result<JournalRow, mapping::Unmapped> {
    let column = |name: &str| (&after[name], encodings::field_schema(schema, name));
    let number = |name: &str, fractional_code: &'static str| {
        let (value, field) = column(name);
        encodings::whole_number(value, field).map_err(|e| refused(name, e, fractional_code))
    };
    let text =
        |name: &str| after[name].as_str().map(str::to_string).ok_or_else(|| invalid(format!("{name} is not text")));
    let (changed_at, field) = column(&columns.changed_at);
    Ok(JournalRow {
        id: number(&columns.id, "erp_fractional_id")?,
        changed_at: encodings::timestamp(changed_at, field)
            .map_err(|e| refused(&columns.changed_at, e, "erp_invalid_change_event"))?,
        item: text(&columns.item)?,
        warehouse: text(&columns.warehouse)?,
        movement_type: text(&columns.movement_type)?,
        quantity: number(&columns.quantity, "erp_fractional_quantity")?,
        reference: after[&columns.reference].as_str().map(str::to_string),
    })
}

fn invalid(message: String) -> mapping::Unmapped {
    mapping::Unmapped { code: "erp_invalid_change_event", message }
}

/// The dead-letter reason of a column's value. A fractional number has a code of its own
/// (the ERP keeps a quantity in a unit onhand cannot count whole), and so does a decimal
/// that needs the schema (Debezium's configuration must change, not the row).
fn refused(column: &str, error: encodings::ValueError, fractional_code: &'static str) -> mapping::Unmapped {
    let code = match error {
        encodings::ValueError::Fractional(_) => fractional_code,
        encodings::ValueError::ScaleUnknown => "erp_decimal_without_schema",
        _ => "erp_invalid_change_event",
    };
    mapping::Unmapped { code, message: format!("{column} {error}") }
}

/// How long a change may take to be delivered before the connector says it is blocked.
const BLOCKED_AFTER: Duration = Duration::from_secs(3);

pub(super) struct Follower {
    pub context: ConnectorContext,
    pub metrics: ErpMetrics,
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
                    self.context.health.error(SOURCE, format!("the debezium topic cannot be read: {e}")).await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut backoff = self.config.retry_backoff();
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
                self.context.health.error(SOURCE, format!("an erp change is not delivered: {e}")).await;
                component.blocked(format!("an erp change is not delivered: {e}"));
                blocked = true;
                producer.renew();
                tokio::select! {
                    _ = self.context.shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff.fail()) => {}
                }
            }
            if blocked {
                component.running();
            }
            self.context.health.ok(SOURCE).await;
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
        deliver(&self.context, &self.metrics, producer, mapped).await.map_err(|e| e.to_string())
    }
}
