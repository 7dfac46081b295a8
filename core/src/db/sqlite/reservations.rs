//! The reservation steps in SQLite. A reservation transaction starts with `BEGIN
//! IMMEDIATE`, so it is the only writer until it ends and its reads cannot go stale.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Row, Sqlite, SqliteConnection, Transaction};

use super::{micros, optional_time_at, stock_level, time_at};
use crate::{
    config::ChannelConfig,
    db::{
        corrupt,
        reservations::{
            key_parts, reservation_from_rows, text_attributes, ReservationRow, ReservationTx, SavedDecision,
            SimilarProducts,
        },
        DbError, OutboxRecord,
    },
    event::{Movement, Sku, StockLevel},
    ledger::rules::LevelKey,
    reservation::{Reservation, Status, Suggestion},
};

pub(super) struct SqliteReservationTx {
    pub tx: Transaction<'static, Sqlite>,
}

#[async_trait]
impl ReservationTx for SqliteReservationTx {
    async fn claim_key(
        &mut self,
        owner: &str,
        key: &str,
        request: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(String, Option<SavedDecision>)>, DbError> {
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (owner, key, request, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (owner, key) DO NOTHING",
        )
        .bind(owner)
        .bind(key)
        .bind(request)
        .bind(micros(now))
        .execute(&mut *self.tx)
        .await?;
        if claimed.rows_affected() == 1 {
            return Ok(None);
        }
        let row = sqlx::query("SELECT request, status, body FROM idempotency_keys WHERE owner = ?1 AND key = ?2")
            .bind(owner)
            .bind(key)
            .fetch_one(&mut *self.tx)
            .await?;
        let saved = match (row.try_get::<Option<i64>, _>("status")?, row.try_get::<Option<String>, _>("body")?) {
            (Some(status), Some(body)) => Some(SavedDecision { status, body }),
            _ => None,
        };
        Ok(Some((row.try_get("request")?, saved)))
    }

    async fn save_decision(&mut self, owner: &str, key: &str, decision: &SavedDecision) -> Result<(), DbError> {
        sqlx::query("UPDATE idempotency_keys SET status = ?3, body = ?4 WHERE owner = ?1 AND key = ?2")
            .bind(owner)
            .bind(key)
            .bind(decision.status)
            .bind(&decision.body)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn levels_of(&mut self, skus: &[&Sku]) -> Result<Vec<StockLevel>, DbError> {
        let mut levels = Vec::new();
        for sku in skus {
            let rows = sqlx::query(concat!(
                "SELECT ",
                stock_level_columns!(),
                " FROM stock_levels WHERE sku = ?1 ORDER BY location"
            ))
            .bind(sku.as_str())
            .fetch_all(&mut *self.tx)
            .await?;
            for row in &rows {
                levels.push(stock_level(row)?);
            }
        }
        Ok(levels)
    }

    async fn savepoint(&mut self) -> Result<(), DbError> {
        sqlx::query("SAVEPOINT hold").execute(&mut *self.tx).await?;
        Ok(())
    }

    async fn rollback_to_savepoint(&mut self) -> Result<(), DbError> {
        sqlx::query("ROLLBACK TO SAVEPOINT hold").execute(&mut *self.tx).await?;
        Ok(())
    }

    async fn change_reserved(
        &mut self,
        key: &LevelKey,
        delta: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<StockLevel>, DbError> {
        let (sku, location) = key_parts(key);
        let row = sqlx::query(concat!(
            "UPDATE stock_levels SET reserved = reserved + ?3, version = version + 1, updated_at = ?4
             WHERE sku = ?1 AND location = ?2 AND (?3 < 0 OR on_hand - reserved - safety_stock >= ?3)
             RETURNING ",
            stock_level_columns!()
        ))
        .bind(sku)
        .bind(location)
        .bind(delta)
        .bind(micros(now))
        .fetch_optional(&mut *self.tx)
        .await?;
        row.as_ref().map(stock_level).transpose()
    }

    async fn insert_reservation(&mut self, r: &Reservation) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO reservations (id, channel, status, created_at, expires_at, owner) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(&r.id)
        .bind(&r.channel)
        .bind(r.status.as_str())
        .bind(micros(r.created_at))
        .bind(micros(r.expires_at))
        .bind(&r.owner)
        .execute(&mut *self.tx)
        .await?;
        for l in &r.lines {
            sqlx::query(
                "INSERT INTO reservation_lines (reservation_id, line, sku, location, quantity)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .bind(&r.id)
            .bind(l.line)
            .bind(l.sku.as_str())
            .bind(l.location.as_str())
            .bind(l.quantity)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    async fn close_held(
        &mut self,
        id: &str,
        to: Status,
        now: DateTime<Utc>,
        unexpired_only: bool,
    ) -> Result<bool, DbError> {
        let moved = sqlx::query(
            "UPDATE reservations SET status = ?2, closed_at = ?3
             WHERE id = ?1 AND status = 'held' AND (NOT ?4 OR expires_at > ?3)",
        )
        .bind(id)
        .bind(to.as_str())
        .bind(micros(now))
        .bind(unexpired_only)
        .execute(&mut *self.tx)
        .await?;
        Ok(moved.rows_affected() == 1)
    }

    async fn load_reservation(&mut self, id: &str) -> Result<Option<Reservation>, DbError> {
        load_reservation(&mut self.tx, id).await
    }

    async fn enqueue(&mut self, movements: &[Movement], now: DateTime<Utc>) -> Result<Vec<OutboxRecord>, DbError> {
        enqueue(&mut self.tx, movements, now).await
    }

    async fn similar_in_stock(
        &mut self,
        sku: &Sku,
        serving: &ChannelConfig,
        quantity: i64,
    ) -> Result<Option<SimilarProducts>, DbError> {
        let Some(product) = sqlx::query("SELECT category, attributes FROM products WHERE sku = ?1")
            .bind(sku.as_str())
            .fetch_optional(&mut *self.tx)
            .await?
        else {
            return Ok(None);
        };
        let category: Option<String> = product.try_get("category")?;
        let attributes: String = product.try_get("attributes")?;
        let locations = serde_json::to_string(&serving.locations).expect("locations serialize");
        let rows = sqlx::query(
            "SELECT p.sku, p.name, p.category, p.attributes,
                    MAX(s.on_hand - s.reserved - s.safety_stock) AS available
             FROM products p JOIN stock_levels s ON s.sku = p.sku
             WHERE p.sku <> ?1
               AND (p.category = ?2 OR EXISTS (
                     SELECT 1 FROM json_each(p.attributes) a
                     JOIN json_each(?3) b ON a.key = b.key AND a.value = b.value))
               AND (?4 OR s.location IN (SELECT value FROM json_each(?5)))
             GROUP BY p.sku
             HAVING MAX(s.on_hand - s.reserved - s.safety_stock) >= ?6
             ORDER BY (p.category IS ?2) DESC, available DESC
             LIMIT 50",
        )
        .bind(sku.as_str())
        .bind(&category)
        .bind(&attributes)
        .bind(serving.all_locations)
        .bind(&locations)
        .bind(quantity)
        .fetch_all(&mut *self.tx)
        .await?;
        let candidates = rows
            .iter()
            .map(|row| {
                let suggestion = Suggestion {
                    sku: Sku::parse(row.try_get::<String, _>("sku")?).map_err(corrupt)?,
                    name: row.try_get("name")?,
                    available: row.try_get("available")?,
                };
                let attributes: String = row.try_get("attributes")?;
                Ok((suggestion, row.try_get("category")?, text_attributes(&attributes)))
            })
            .collect::<Result<_, DbError>>()?;
        Ok(Some(SimilarProducts { category, attributes: text_attributes(&attributes), candidates }))
    }

    async fn commit(self: Box<Self>) -> Result<(), DbError> {
        self.tx.commit().await?;
        Ok(())
    }
}

pub(super) async fn load_reservation(conn: &mut SqliteConnection, id: &str) -> Result<Option<Reservation>, DbError> {
    let rows = sqlx::query(
        "SELECT r.id, r.channel, r.status, r.created_at, r.expires_at, r.closed_at, r.owner,
                l.line, l.sku, l.location, l.quantity
         FROM reservations r JOIN reservation_lines l ON l.reservation_id = r.id
         WHERE r.id = ?1 ORDER BY l.line",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    let rows = rows
        .iter()
        .map(|row| {
            Ok(ReservationRow {
                id: row.try_get("id")?,
                channel: row.try_get("channel")?,
                status: row.try_get("status")?,
                created_at: time_at(row, "created_at")?,
                expires_at: time_at(row, "expires_at")?,
                closed_at: optional_time_at(row, "closed_at")?,
                owner: row.try_get("owner")?,
                line: row.try_get("line")?,
                sku: row.try_get("sku")?,
                location: row.try_get("location")?,
                quantity: row.try_get("quantity")?,
            })
        })
        .collect::<Result<Vec<_>, DbError>>()?;
    reservation_from_rows(rows)
}

/// Writes movements to the outbox, in order, inside the caller's transaction.
pub(in crate::db) async fn enqueue(
    conn: &mut sqlx::SqliteConnection,
    movements: &[Movement],
    now: DateTime<Utc>,
) -> Result<Vec<OutboxRecord>, DbError> {
    let mut records = Vec::with_capacity(movements.len());
    for m in movements {
        let payload = String::from_utf8(m.to_json()).expect("JSON is UTF-8");
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO outbox (kafka_key, payload, event_id, created_at) VALUES (?1, ?2, ?3, ?4) RETURNING id",
        )
        .bind(m.kafka_key())
        .bind(&payload)
        .bind(m.event_id.as_str())
        .bind(micros(now))
        .fetch_one(&mut *conn)
        .await?;
        records.push(OutboxRecord { id, key: m.kafka_key().to_string(), payload });
    }
    Ok(records)
}
