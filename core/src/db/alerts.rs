//! The [`Alerts`] role on both databases (migrations `*_alerts.sql`). An alert is a row
//! whose `body` is the alert as answered, beside the columns it is found by. Every change
//! of an alert is written with its event (`alert_outbox`) and its webhook deliveries in
//! the same transaction, and only when the change happened: an insert that met the
//! unresolved alert of its kind and subject (the partial unique index), or an update that
//! found the alert already past that state, writes nothing more.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    corrupt,
    dialect::Dialect,
    driver::{query, Cells, Time},
    Acknowledged, AlertQuery, Alerts, Attempt, DbError, Delivery, DeliveryState, DueDelivery, OutboxRecord, Progress,
    SqlDb, Subscription,
};
use crate::{
    event::{
        alert::{Alert, AlertEvent, AlertKind, AlertState, ReservationAtRisk},
        LocationId,
    },
    ledger::rules::LevelKey,
};

/// The longest error text kept in a delivery's log.
const ERROR_CHARS_MAX: usize = 500;

/// A subscription as read back: never its secret.
const SUBSCRIPTION_COLUMNS: &str = "id, url, locations, kinds, channel, '' AS secret, created_at, created_by";

#[async_trait]
impl<D: Dialect> Alerts for SqlDb<D> {
    async fn decide_level(
        &self,
        progress: &Progress<'_>,
        key: &LevelKey,
        version: i64,
        decide: &(dyn for<'a> Fn(&'a [Alert]) -> Vec<Alert> + Send + Sync),
    ) -> Result<Option<Vec<Alert>>, DbError> {
        let mut tx = D::begin_write(&self.pool).await?;
        save_progress::<D>(&mut tx, progress).await?;
        // The compare-and-set that decides each version once: it also locks the row, so a
        // second replica deciding the same level waits here and then finds it decided.
        let newer = query::<D>(
            "INSERT INTO alert_levels (sku, location, version) VALUES ($1, $2, $3)
             ON CONFLICT (sku, location) DO UPDATE SET version = excluded.version
             WHERE alert_levels.version < excluded.version",
        )
        .bind(key.0.as_str())
        .bind(key.1.as_str())
        .bind(version)
        .execute(&mut *tx)
        .await?;
        if newer == 0 {
            tx.commit().await?;
            return Ok(None);
        }
        let subject = format!("{}@{}", key.0, key.1);
        let rows = query::<D>("SELECT body FROM alerts WHERE subject = $1 AND state <> 'resolved' ORDER BY id")
            .bind(subject.as_str())
            .fetch_all(&mut *tx)
            .await?;
        let unresolved = rows.iter().map(alert).collect::<Result<Vec<_>, _>>()?;
        let mut written = Vec::new();
        for change in decide(&unresolved) {
            if write_change::<D>(&mut tx, &change).await? {
                written.push(change);
            }
        }
        tx.commit().await?;
        Ok(Some(written))
    }

    async fn skip_alert_message(&self, progress: &Progress<'_>) -> Result<(), DbError> {
        let mut tx = D::begin_write(&self.pool).await?;
        save_progress::<D>(&mut tx, progress).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn raise_alert(&self, alert: &Alert) -> Result<bool, DbError> {
        let mut tx = D::begin_write(&self.pool).await?;
        let raised = write_change::<D>(&mut tx, alert).await?;
        tx.commit().await?;
        Ok(raised)
    }

    async fn resolve_alert(
        &self,
        kind: AlertKind,
        subject: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Alert>, DbError> {
        let mut tx = D::begin_write(&self.pool).await?;
        let row = query::<D>("SELECT body FROM alerts WHERE kind = $1 AND subject = $2 AND state <> 'resolved'")
            .bind(kind.as_str())
            .bind(subject)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(open) = row.as_ref().map(alert).transpose()? else { return Ok(None) };
        let resolved =
            crate::event::alert::Alert { state: AlertState::Resolved, resolved_at: Some(now), changed_at: now, ..open };
        let done = write_change::<D>(&mut tx, &resolved).await?;
        tx.commit().await?;
        Ok(done.then_some(resolved))
    }

    async fn acknowledge_alert(&self, id: &str, by: &str, now: DateTime<Utc>) -> Result<Acknowledged, DbError> {
        let mut tx = D::begin_write(&self.pool).await?;
        let row = query::<D>("SELECT body FROM alerts WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?;
        let Some(found) = row.as_ref().map(alert).transpose()? else { return Ok(Acknowledged::NotFound) };
        let outcome = match found.state {
            AlertState::Acknowledged => Acknowledged::Already(found),
            AlertState::Resolved => Acknowledged::Resolved(found),
            AlertState::Open => {
                let seen = Alert {
                    state: AlertState::Acknowledged,
                    acknowledged_at: Some(now),
                    acknowledged_by: Some(by.to_string()),
                    changed_at: now,
                    ..found
                };
                write_change::<D>(&mut tx, &seen).await?;
                Acknowledged::Done(seen)
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn alert(&self, id: &str) -> Result<Option<Alert>, DbError> {
        let row =
            query::<D>("SELECT body FROM alerts WHERE id = $1").bind(id).fetch_optional(self.conn().await?).await?;
        row.as_ref().map(alert).transpose()
    }

    async fn alerts(&self, q: &AlertQuery) -> Result<Vec<Alert>, DbError> {
        // Only the filters asked for are in the statement, so that each uses its index.
        let mut filters = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        if q.location.is_some() {
            filters.push(format!("location = ${}", next()));
        }
        if q.kind.is_some() {
            filters.push(format!("kind = ${}", next()));
        }
        if q.state.is_some() {
            filters.push(format!("state = ${}", next()));
        }
        if q.since.is_some() {
            filters.push(format!("changed_at >= ${}", next()));
        }
        let limit = next();
        let filter = if filters.is_empty() { String::new() } else { format!(" WHERE {}", filters.join(" AND ")) };
        let sql = format!("SELECT body FROM alerts{filter} ORDER BY changed_at, id LIMIT ${limit}");
        let mut statement = query::<D>(&sql);
        if let Some(location) = &q.location {
            statement = statement.bind(location.as_str());
        }
        if let Some(kind) = q.kind {
            statement = statement.bind(kind.as_str());
        }
        if let Some(state) = q.state {
            statement = statement.bind(state.as_str());
        }
        if let Some(since) = q.since {
            statement = statement.bind(Time(since));
        }
        let rows = statement.bind(q.limit).fetch_all(self.conn().await?).await?;
        rows.iter().map(alert).collect()
    }

    async fn reservations_at(&self, key: &LevelKey) -> Result<Vec<ReservationAtRisk>, DbError> {
        let rows = query::<D>(
            "SELECT r.id, l.quantity, r.expires_at FROM reservation_lines l
             JOIN reservations r ON r.id = l.reservation_id
             WHERE l.sku = $1 AND l.location = $2 AND r.status = 'held'
             ORDER BY r.expires_at, r.id",
        )
        .bind(key.0.as_str())
        .bind(key.1.as_str())
        .fetch_all(self.conn().await?)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ReservationAtRisk {
                    reservation_id: row.cell("id")?,
                    quantity: row.cell("quantity")?,
                    expires_at: row.time("expires_at")?,
                })
            })
            .collect()
    }

    async fn alert_outbox(&self, limit: i64) -> Result<Vec<OutboxRecord>, DbError> {
        events_waiting(self, "alert_outbox", limit).await
    }

    async fn delete_alert_outbox(&self, ids: &[i64]) -> Result<(), DbError> {
        forget_events(self, "alert_outbox", ids).await
    }

    async fn create_subscription(&self, s: &Subscription) -> Result<(), DbError> {
        query::<D>(
            "INSERT INTO alert_subscriptions (id, url, locations, kinds, channel, secret, created_at, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(s.id.as_str())
        .bind(s.url.as_str())
        .bind(s.locations.as_ref().map(json))
        .bind(s.kinds.as_ref().map(json))
        .bind(s.channel.as_deref())
        .bind(s.secret.as_str())
        .bind(Time(s.created_at))
        .bind(s.created_by.as_str())
        .execute(self.conn().await?)
        .await?;
        Ok(())
    }

    async fn subscriptions(&self) -> Result<Vec<Subscription>, DbError> {
        let sql = format!("SELECT {SUBSCRIPTION_COLUMNS} FROM alert_subscriptions ORDER BY created_at, id");
        let rows = query::<D>(&sql).fetch_all(self.conn().await?).await?;
        rows.iter().map(subscription).collect()
    }

    async fn delete_subscription(&self, id: &str) -> Result<bool, DbError> {
        let mut tx = D::begin_write(&self.pool).await?;
        query::<D>("DELETE FROM alert_deliveries WHERE subscription_id = $1").bind(id).execute(&mut *tx).await?;
        let deleted = query::<D>("DELETE FROM alert_subscriptions WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(deleted > 0)
    }

    async fn deliveries(&self, subscription_id: &str, limit: i64) -> Result<Option<Vec<Delivery>>, DbError> {
        let mut conn = self.conn().await?;
        let found = query::<D>("SELECT 1 AS found FROM alert_subscriptions WHERE id = $1")
            .bind(subscription_id)
            .fetch_optional(&mut *conn)
            .await?;
        if found.is_none() {
            return Ok(None);
        }
        let rows = query::<D>(
            "SELECT id, event_id, state, attempts, next_at, last_status, last_error, created_at, delivered_at
             FROM alert_deliveries WHERE subscription_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(subscription_id)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        let deliveries = rows
            .iter()
            .map(|row| {
                Ok(Delivery {
                    id: row.cell("id")?,
                    event_id: row.cell("event_id")?,
                    state: delivery_state(&row.cell::<String>("state")?)?,
                    attempts: row.cell("attempts")?,
                    next_at: row.time("next_at")?,
                    last_status: row.cell("last_status")?,
                    last_error: row.cell("last_error")?,
                    created_at: row.time("created_at")?,
                    delivered_at: row.optional_time("delivered_at")?,
                })
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        Ok(Some(deliveries))
    }

    async fn due_deliveries(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<DueDelivery>, DbError> {
        let rows = query::<D>(
            "SELECT d.id, s.url, s.secret, d.event_id, d.payload, d.attempts
             FROM alert_deliveries d JOIN alert_subscriptions s ON s.id = d.subscription_id
             WHERE d.state = 'pending' AND d.next_at <= $1 ORDER BY d.next_at, d.id LIMIT $2",
        )
        .bind(Time(now))
        .bind(limit)
        .fetch_all(self.conn().await?)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DueDelivery {
                    id: row.cell("id")?,
                    url: row.cell("url")?,
                    secret: row.cell("secret")?,
                    event_id: row.cell("event_id")?,
                    payload: row.cell("payload")?,
                    attempts: row.cell("attempts")?,
                })
            })
            .collect()
    }

    async fn record_attempt(&self, id: i64, attempt: &Attempt) -> Result<(), DbError> {
        let error: Option<String> = attempt.error.as_ref().map(|e| e.chars().take(ERROR_CHARS_MAX).collect());
        let delivered_at = (attempt.state == DeliveryState::Delivered).then_some(Time(attempt.at));
        query::<D>(
            "UPDATE alert_deliveries SET state = $2, attempts = attempts + 1, last_status = $3, last_error = $4,
                 next_at = $5, delivered_at = COALESCE($6, delivered_at)
             WHERE id = $1 AND state = 'pending'",
        )
        .bind(id)
        .bind(attempt.state.as_str())
        .bind(attempt.status)
        .bind(error)
        .bind(Time(attempt.next_at))
        .bind(delivered_at)
        .execute(self.conn().await?)
        .await?;
        Ok(())
    }
}

/// Writes one change of an alert, and when it happened, its event and deliveries; answers
/// whether it happened. An open alert is inserted, unless one of its kind and subject is
/// unresolved; an acknowledgement needs it open; a resolution needs it unresolved.
async fn write_change<D: Dialect>(tx: &mut sqlx::Transaction<'static, D>, alert: &Alert) -> Result<bool, DbError> {
    let body = serde_json::to_string(alert).expect("an alert always serializes");
    let changed = match alert.state {
        AlertState::Open => {
            query::<D>(
                "INSERT INTO alerts (id, kind, state, subject, location, raised_at, changed_at, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            )
            .bind(alert.id.as_str())
            .bind(alert.kind.as_str())
            .bind(alert.state.as_str())
            .bind(alert.subject.as_str())
            .bind(alert.location.as_ref().map(LocationId::as_str))
            .bind(Time(alert.raised_at))
            .bind(Time(alert.changed_at))
            .bind(body)
            .execute(&mut **tx)
            .await?
        }
        AlertState::Acknowledged | AlertState::Resolved => {
            let from = if alert.state == AlertState::Acknowledged { "state = 'open'" } else { "state <> 'resolved'" };
            query::<D>(&format!("UPDATE alerts SET state = $2, changed_at = $3, body = $4 WHERE id = $1 AND {from}"))
                .bind(alert.id.as_str())
                .bind(alert.state.as_str())
                .bind(Time(alert.changed_at))
                .bind(body)
                .execute(&mut **tx)
                .await?
        }
    };
    if changed == 0 {
        return Ok(false);
    }
    let event = AlertEvent::of(alert.clone());
    let payload = String::from_utf8(event.to_json()).expect("JSON is UTF-8");
    query::<D>("INSERT INTO alert_outbox (key, payload, created_at) VALUES ($1, $2, $3)")
        .bind(alert.subject.as_str())
        .bind(payload.as_str())
        .bind(Time(alert.changed_at))
        .execute(&mut **tx)
        .await?;
    let sql = format!("SELECT {SUBSCRIPTION_COLUMNS} FROM alert_subscriptions WHERE channel IS NULL");
    let rows = query::<D>(&sql).fetch_all(&mut **tx).await?;
    for wanting in rows.iter().map(subscription).collect::<Result<Vec<_>, _>>()? {
        if wanting.wants(alert) {
            queue_delivery::<D>(tx, &wanting.id, &event.event_id, &payload, alert.changed_at).await?;
        }
    }
    Ok(true)
}

/// A delivery of an event to a webhook subscription, due at once; an event queued for it
/// before is not queued again.
async fn queue_delivery<D: Dialect>(
    tx: &mut sqlx::Transaction<'static, D>,
    subscription_id: &str,
    event_id: &str,
    payload: &str,
    at: DateTime<Utc>,
) -> Result<(), DbError> {
    query::<D>(
        "INSERT INTO alert_deliveries (subscription_id, event_id, payload, state, attempts, next_at, created_at)
         VALUES ($1, $2, $3, 'pending', 0, $4, $4) ON CONFLICT DO NOTHING",
    )
    .bind(subscription_id)
    .bind(event_id)
    .bind(payload)
    .bind(Time(at))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The oldest events of an event outbox (`alert_outbox`, `order_outbox`: a `seq`, a `key`
/// and a `payload`), at most `limit`.
pub(super) async fn events_waiting<D: Dialect>(
    db: &SqlDb<D>,
    table: &'static str,
    limit: i64,
) -> Result<Vec<OutboxRecord>, DbError> {
    let sql = format!("SELECT seq, key, payload FROM {table} ORDER BY seq LIMIT $1");
    let rows = query::<D>(&sql).bind(limit).fetch_all(db.conn().await?).await?;
    rows.iter()
        .map(|row| Ok(OutboxRecord { id: row.cell("seq")?, key: row.cell("key")?, payload: row.cell("payload")? }))
        .collect()
}

/// Deletes events of an event outbox once they are sent.
pub(super) async fn forget_events<D: Dialect>(db: &SqlDb<D>, table: &'static str, ids: &[i64]) -> Result<(), DbError> {
    let sql = format!("DELETE FROM {table} WHERE seq = $1");
    let mut tx = D::begin_write(&db.pool).await?;
    for id in ids {
        query::<D>(&sql).bind(*id).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Saves where a reader is; an offset never moves back.
pub(super) async fn save_progress<D: Dialect>(
    tx: &mut sqlx::Transaction<'static, D>,
    p: &Progress<'_>,
) -> Result<(), DbError> {
    query::<D>(
        "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset, updated_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (group_id, topic, partition) DO UPDATE
         SET next_offset = excluded.next_offset, updated_at = excluded.updated_at
         WHERE consumer_offsets.next_offset < excluded.next_offset",
    )
    .bind(p.group_id)
    .bind(p.topic)
    .bind(p.offset.partition)
    .bind(p.offset.next_offset)
    .bind(Time(Utc::now()))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("a list always serializes")
}

fn alert(row: &impl Cells) -> Result<Alert, DbError> {
    let body: String = row.cell("body")?;
    serde_json::from_str(&body).map_err(|e| corrupt(format!("alert body: {e}")))
}

fn subscription(row: &impl Cells) -> Result<Subscription, DbError> {
    let list = |column: &str| -> Result<Option<String>, DbError> { row.cell(column) };
    let locations = list("locations")?
        .map(|text| serde_json::from_str::<Vec<LocationId>>(&text))
        .transpose()
        .map_err(|e| corrupt(format!("subscription locations: {e}")))?;
    let kinds = list("kinds")?
        .map(|text| serde_json::from_str::<Vec<AlertKind>>(&text))
        .transpose()
        .map_err(|e| corrupt(format!("subscription kinds: {e}")))?;
    Ok(Subscription {
        id: row.cell("id")?,
        url: row.cell("url")?,
        locations,
        kinds,
        channel: row.cell("channel")?,
        secret: row.cell("secret")?,
        created_at: row.time("created_at")?,
        created_by: row.cell("created_by")?,
    })
}

fn delivery_state(text: &str) -> Result<DeliveryState, DbError> {
    match text {
        "pending" => Ok(DeliveryState::Pending),
        "delivered" => Ok(DeliveryState::Delivered),
        "dead" => Ok(DeliveryState::Dead),
        other => Err(corrupt(format!("delivery state {other:?}"))),
    }
}
