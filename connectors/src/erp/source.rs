//! The poller: reads the journal after its cursor, produces a movement per row (a dead
//! letter when a row cannot be mapped), and moves the cursor only after Kafka acknowledged
//! every row up to it. While Kafka or the ERP database cannot be reached it backs off,
//! keeps its cursor and reports itself unhealthy (`GET /v1/sources`, source `erp`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use onhand_core::event::Movement;
use onhand_core::kafka::{dead_letter, DeadLetter, Producer};
use rdkafka::{error::KafkaError, producer::FutureRecord};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};
use tracing::warn;

use super::{
    config::ErpConfig,
    mapping::{self, Codes, JournalRow, Unmapped},
    metrics::ErpMetrics,
};
use crate::contract::ConnectorContext;

/// How long the producer gathers a batch's records into one request.
pub(super) const PRODUCER_LINGER: Duration = Duration::from_millis(5);

/// The source name of the ERP in `GET /v1/sources` and `connector_state`.
pub const SOURCE: &str = "erp";

/// A journal change that cannot become a movement: why, and the record as received
/// (key, bytes), counted under `outcome`.
pub(super) type Undeliverable<'a> = (Unmapped, Option<&'a [u8]>, &'a [u8], &'static str);

/// Sends a journal change's movement, or its dead letter, and counts it in
/// `onhand_erp_rows_total` once Kafka acknowledged it: the one way rows leave both the
/// poller and the Debezium follower.
pub(super) async fn deliver(
    context: &ConnectorContext,
    metrics: &ErpMetrics,
    producer: &Producer,
    mapped: Result<Movement, Undeliverable<'_>>,
) -> Result<(), KafkaError> {
    let timeout = Duration::from_millis(context.config.kafka.produce_timeout_ms);
    let outcome = match mapped {
        Ok(m) => {
            let payload = m.to_json();
            let record = FutureRecord::to(&context.topics.movements).key(m.kafka_key()).payload(&payload);
            producer.send(record, timeout).await.map_err(|(e, _)| e)?;
            "produced"
        }
        Err((unmapped, key, payload, outcome)) => {
            let letter = DeadLetter {
                source: SOURCE,
                read_from: None,
                key,
                payload,
                reason_code: unmapped.code,
                reason: &unmapped.message,
            };
            dead_letter(producer, &context.topics.dlq, letter, timeout, &context.metrics).await?;
            outcome
        }
    };
    metrics.rows_total.with_label_values(&[outcome]).inc();
    Ok(())
}

/// Where the poller is: the last row whose movement Kafka acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub changed_at: DateTime<Utc>,
    pub id: i64,
}

impl Default for Cursor {
    fn default() -> Self {
        Cursor { changed_at: DateTime::UNIX_EPOCH, id: 0 }
    }
}

pub(super) struct Poller {
    pub context: ConnectorContext,
    pub metrics: ErpMetrics,
    pub config: ErpConfig,
    pub codes: Codes,
    pub journal: PgPool,
    /// The poller's own producer, made again after Kafka failed a batch: an idempotent
    /// producer whose messages timed out must bump its epoch, which some brokers refuse
    /// (tansu), and a fresh producer starts clean. Event ids make the resends harmless.
    pub producer: Producer,
}

/// What the look-back re-scan knows of the rows this poller produced.
#[derive(Debug)]
struct LookBack {
    /// The cursor when this poller started: rows at or before it were produced, or not,
    /// by an earlier run, which nothing here can tell.
    started_at: Cursor,
    /// The ids produced by this run, with their change time, within the window.
    produced: std::collections::HashMap<i64, DateTime<Utc>>,
    scanned_at: tokio::time::Instant,
}

impl Poller {
    pub(super) async fn run(self) {
        let mut cursor = self.load_cursor().await;
        let mut look_back =
            LookBack { started_at: cursor, produced: Default::default(), scanned_at: tokio::time::Instant::now() };
        let mut backoff = self.config.retry_backoff();
        loop {
            if let Err(reason) = self.look_back(cursor, &mut look_back).await {
                warn!(reason, "erp look-back re-scan failed; the next one tries again");
            }
            // A stop (the shutdown, or the lease lost to another replica) may cut a batch
            // anywhere: its cursor is saved only after Kafka acknowledged it, so the next
            // run, here or on the replica that holds the lease now, reads it again.
            let polled = tokio::select! {
                _ = self.context.shutdown.cancelled() => return,
                polled = self.poll_once(cursor) => polled,
            };
            let wait = match polled {
                Ok(Some((next, ids))) => {
                    look_back.produced.extend(ids);
                    cursor = next;
                    backoff.reset();
                    self.context.health.ok(SOURCE).await;
                    Duration::ZERO
                }
                Ok(None) => {
                    backoff.reset();
                    self.context.health.ok(SOURCE).await;
                    Duration::from_millis(self.config.poll_interval_ms)
                }
                Err(reason) => {
                    self.producer.renew();
                    let pause = backoff.fail();
                    warn!(reason, retry_in_ms = pause.as_millis() as u64, "erp poll failed; the cursor stays");
                    self.context.health.error(SOURCE, &reason).await;
                    pause
                }
            };
            let lag = (Utc::now() - cursor.changed_at).num_seconds().max(0);
            self.metrics.cursor_lag_seconds.set(lag);
            tokio::select! {
                _ = self.context.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Reads and produces one batch; the new cursor and the rows produced, or `None` when
    /// the journal is caught up.
    async fn poll_once(&self, cursor: Cursor) -> Result<Option<(Cursor, Vec<(i64, DateTime<Utc>)>)>, String> {
        let rows = self.read(cursor).await.map_err(|e| format!("the erp database: {e}"))?;
        let Some(last) = rows.last() else { return Ok(None) };
        let next = Cursor { changed_at: last.changed_at, id: last.id };
        self.produce(&rows).await?;
        let ids = rows.iter().map(|r| (r.id, r.changed_at)).collect();
        let text = serde_json::to_string(&next).expect("a cursor serializes");
        self.context
            .cursors
            .set_connector_state(SOURCE, "cursor", &text)
            .await
            .map_err(|e| format!("the cursor was not saved: {e}"))?;
        Ok(Some((next, ids)))
    }

    /// Every `lookback_interval_s`, reads the journal again over the last
    /// `lookback_window_s` behind the cursor: a row whose transaction committed later than
    /// `safety_delay_ms` after its change time appeared there after the cursor passed it.
    /// The rows this run did not produce are produced (from before its start, a row may
    /// have been produced by an earlier run: its id repeats, and the ledger skips it); the
    /// ones after where it started are late, and are counted in
    /// `onhand_erp_late_rows_total`.
    async fn look_back(&self, cursor: Cursor, state: &mut LookBack) -> Result<(), String> {
        let interval = Duration::from_secs(self.config.lookback_interval_s);
        if interval.is_zero() || state.scanned_at.elapsed() < interval {
            return Ok(());
        }
        state.scanned_at = tokio::time::Instant::now();
        let window = chrono::Duration::seconds(i64::try_from(self.config.lookback_window_s).unwrap_or(i64::MAX / 2));
        let from = cursor.changed_at.checked_sub_signed(window).unwrap_or(DateTime::UNIX_EPOCH);
        state.produced.retain(|_, changed_at| *changed_at >= from);
        let mut scan = Cursor { changed_at: from, id: 0 };
        loop {
            let rows = self.read(scan).await.map_err(|e| format!("the erp database: {e}"))?;
            let full = rows.len() as i64 >= self.config.batch_rows_max;
            let behind: Vec<JournalRow> =
                rows.into_iter().filter(|r| (r.changed_at, r.id) <= (cursor.changed_at, cursor.id)).collect();
            let Some(last) = behind.last() else { return Ok(()) };
            scan = Cursor { changed_at: last.changed_at, id: last.id };
            let unknown: Vec<JournalRow> = behind.into_iter().filter(|r| !state.produced.contains_key(&r.id)).collect();
            let started = (state.started_at.changed_at, state.started_at.id);
            let late = unknown.iter().filter(|r| (r.changed_at, r.id) > started).count();
            if !unknown.is_empty() {
                self.produce(&unknown).await?;
            }
            if late > 0 {
                warn!(
                    rows = late,
                    "erp rows appeared behind the cursor (a transaction longer than safety_delay_ms); produced now"
                );
                self.metrics.late_rows_total.inc_by(late as u64);
            }
            state.produced.extend(unknown.iter().map(|r| (r.id, r.changed_at)));
            if !full {
                return Ok(());
            }
        }
    }

    async fn read(&self, cursor: Cursor) -> Result<Vec<JournalRow>, sqlx::Error> {
        let rows = sqlx::query(&self.config.query)
            .bind(cursor.changed_at)
            .bind(cursor.id)
            .bind(self.config.safety_delay_ms as f64 / 1000.0)
            .bind(self.config.batch_rows_max)
            .fetch_all(&self.journal)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(JournalRow {
                    id: r.try_get("id")?,
                    changed_at: r.try_get("changed_at")?,
                    item: r.try_get("item")?,
                    warehouse: r.try_get("warehouse")?,
                    movement_type: r.try_get("movement_type")?,
                    quantity: r.try_get("quantity")?,
                    reference: r.try_get("reference")?,
                })
            })
            .collect()
    }

    /// Produces every row's movement or dead letter and waits for all acknowledgements.
    async fn produce(&self, rows: &[JournalRow]) -> Result<(), String> {
        let now = Utc::now();
        let sends = rows.iter().map(|row| async move {
            let payload;
            let mapped = match mapping::to_movement(row, &self.codes, now) {
                Ok(m) => Ok(m),
                Err(unmapped) => {
                    payload = serde_json::to_vec(row).expect("a row serializes");
                    Err((unmapped, Some(row.item.as_bytes()), payload.as_slice(), "dead_lettered"))
                }
            };
            deliver(&self.context, &self.metrics, &self.producer, mapped).await
        });
        let failed = join_all(sends).await.into_iter().filter_map(Result::err).last();
        match failed {
            Some(e) => Err(format!("kafka did not acknowledge every row: {e}")),
            None => Ok(()),
        }
    }

    async fn load_cursor(&self) -> Cursor {
        loop {
            match self.context.cursors.connector_state(SOURCE, "cursor").await {
                Ok(Some(text)) => match serde_json::from_str(&text) {
                    Ok(cursor) => return cursor,
                    Err(e) => warn!(error = %e, "the saved erp cursor is not readable; starting from the beginning"),
                },
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "the erp cursor cannot be read yet; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            return Cursor::default();
        }
    }
}
