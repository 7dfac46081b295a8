//! The reservation steps in PostgreSQL. Every statement runs at READ COMMITTED: a
//! conditional update that waited for another writer's row lock checks its condition again
//! on the row as that writer left it, which is what makes the last unit go to one request.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, Row, Transaction};

use super::stock_level;
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

pub(super) struct PgReservationTx {
    pub tx: Transaction<'static, Postgres>,
}

#[async_trait]
impl ReservationTx for PgReservationTx {
    async fn claim_key(
        &mut self,
        owner: &str,
        key: &str,
        request: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(String, Option<SavedDecision>)>, DbError> {
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (owner, key, request, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (owner, key) DO NOTHING",
        )
        .bind(owner)
        .bind(key)
        .bind(request)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        if claimed.rows_affected() == 1 {
            return Ok(None);
        }
        let row = sqlx::query("SELECT request, status, body FROM idempotency_keys WHERE owner = $1 AND key = $2")
            .bind(owner)
            .bind(key)
            .fetch_one(&mut *self.tx)
            .await?;
        let saved = match (row.try_get::<Option<i32>, _>("status")?, row.try_get::<Option<String>, _>("body")?) {
            (Some(status), Some(body)) => Some(SavedDecision { status: i64::from(status), body }),
            _ => None,
        };
        Ok(Some((row.try_get("request")?, saved)))
    }

    async fn save_decision(&mut self, owner: &str, key: &str, decision: &SavedDecision) -> Result<(), DbError> {
        sqlx::query("UPDATE idempotency_keys SET status = $3, body = $4 WHERE owner = $1 AND key = $2")
            .bind(owner)
            .bind(key)
            .bind(i32::try_from(decision.status).map_err(corrupt)?)
            .bind(&decision.body)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn levels_of(&mut self, skus: &[&Sku]) -> Result<Vec<StockLevel>, DbError> {
        let skus: Vec<&str> = skus.iter().map(|s| s.as_str()).collect();
        let rows = sqlx::query(concat!(
            "SELECT ",
            stock_level_columns!(),
            " FROM stock_levels WHERE sku = ANY($1::text[]) ORDER BY sku, location"
        ))
        .bind(&skus)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(stock_level).collect()
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
            "UPDATE stock_levels SET reserved = reserved + $3, version = version + 1, updated_at = $4
             WHERE sku = $1 AND location = $2 AND ($3 < 0 OR on_hand - reserved - safety_stock >= $3)
             RETURNING ",
            stock_level_columns!()
        ))
        .bind(sku)
        .bind(location)
        .bind(delta)
        .bind(now)
        .fetch_optional(&mut *self.tx)
        .await?;
        row.as_ref().map(stock_level).transpose()
    }

    async fn insert_reservation(&mut self, r: &Reservation) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO reservations (id, channel, status, created_at, expires_at, owner) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&r.id)
        .bind(&r.channel)
        .bind(r.status.as_str())
        .bind(r.created_at)
        .bind(r.expires_at)
        .bind(&r.owner)
        .execute(&mut *self.tx)
        .await?;
        let lines: Vec<i32> = r.lines.iter().map(|l| l.line).collect();
        let skus: Vec<&str> = r.lines.iter().map(|l| l.sku.as_str()).collect();
        let locations: Vec<&str> = r.lines.iter().map(|l| l.location.as_str()).collect();
        let quantities: Vec<i64> = r.lines.iter().map(|l| l.quantity).collect();
        sqlx::query(
            "INSERT INTO reservation_lines (reservation_id, line, sku, location, quantity)
             SELECT $1, * FROM UNNEST($2::int4[], $3::text[], $4::text[], $5::int8[])",
        )
        .bind(&r.id)
        .bind(&lines)
        .bind(&skus)
        .bind(&locations)
        .bind(&quantities)
        .execute(&mut *self.tx)
        .await?;
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
            "UPDATE reservations SET status = $2, closed_at = $3
             WHERE id = $1 AND status = 'held' AND (NOT $4 OR expires_at > $3)",
        )
        .bind(id)
        .bind(to.as_str())
        .bind(now)
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
        let Some(product) = sqlx::query("SELECT category, attributes::text AS attributes FROM products WHERE sku = $1")
            .bind(sku.as_str())
            .fetch_optional(&mut *self.tx)
            .await?
        else {
            return Ok(None);
        };
        let category: Option<String> = product.try_get("category")?;
        let attributes: String = product.try_get("attributes")?;
        let rows = sqlx::query(
            "SELECT p.sku, p.name, p.category, p.attributes::text AS attributes,
                    MAX(s.on_hand - s.reserved - s.safety_stock)::int8 AS available
             FROM products p JOIN stock_levels s ON s.sku = p.sku
             WHERE p.sku <> $1
               AND (p.category = $2 OR EXISTS (
                     SELECT 1 FROM jsonb_each_text(p.attributes) a
                     JOIN jsonb_each_text($3::jsonb) b ON a.key = b.key AND a.value = b.value))
               AND ($4 OR s.location = ANY($5::text[]))
             GROUP BY p.sku
             HAVING MAX(s.on_hand - s.reserved - s.safety_stock) >= $6
             ORDER BY (p.category IS NOT DISTINCT FROM $2) DESC, available DESC
             LIMIT 50",
        )
        .bind(sku.as_str())
        .bind(&category)
        .bind(&attributes)
        .bind(serving.all_locations)
        .bind(&serving.locations)
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

pub(super) async fn load_reservation(conn: &mut PgConnection, id: &str) -> Result<Option<Reservation>, DbError> {
    let rows = sqlx::query(
        "SELECT r.id, r.channel, r.status, r.created_at, r.expires_at, r.closed_at, r.owner,
                l.line, l.sku, l.location, l.quantity
         FROM reservations r JOIN reservation_lines l ON l.reservation_id = r.id
         WHERE r.id = $1 ORDER BY l.line",
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
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                closed_at: row.try_get("closed_at")?,
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
    conn: &mut sqlx::PgConnection,
    movements: &[Movement],
    now: DateTime<Utc>,
) -> Result<Vec<OutboxRecord>, DbError> {
    let keys: Vec<&str> = movements.iter().map(Movement::kafka_key).collect();
    let event_ids: Vec<&str> = movements.iter().map(|m| m.event_id.as_str()).collect();
    let payloads: Vec<String> =
        movements.iter().map(|m| String::from_utf8(m.to_json()).expect("JSON is UTF-8")).collect();
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO outbox (kafka_key, payload, event_id, created_at)
         SELECT k, p, e, $4 FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS t(k, p, e, n) ORDER BY n
         RETURNING id",
    )
    .bind(&keys)
    .bind(&payloads)
    .bind(&event_ids)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    Ok(ids
        .into_iter()
        .zip(keys.into_iter().zip(payloads))
        .map(|(id, (key, payload))| OutboxRecord { id, key: key.to_string(), payload })
        .collect())
}
