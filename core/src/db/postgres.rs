//! The production database. Each step of a batch is one set-based statement over `UNNEST`ed
//! arrays, so a batch costs a handful of round trips whatever its size. Reservations are
//! in `postgres/reservations.rs`.

mod reservations;

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use sqlx::{postgres::PgPoolOptions, PgPool, Postgres, Row, Transaction};

use self::reservations::{load_reservation, PgReservationTx};
use super::{
    api_key_from, apply_batch, corrupt, next_source_state, optional_event_id, product_from, Allocation, Applied, Batch,
    Closed, Db, DbError, Envelope, LedgerTx, LevelWrite, NewReservation, OutboxRecord, PartitionOffset, Published,
    Reserved, StockPolicy, StoredLevel,
};
use crate::{
    auth::ApiKey,
    event::{EventId, LocationId, Movement, Sku, StockLevel},
    freshness::{SourceState, SourceUpdate},
    ledger::rules::{CountMark, LevelKey, LevelState},
    product::{Product, StoredProduct},
    reservation::{Reservation, Status},
};

#[derive(Debug, Clone)]
pub struct PostgresDb {
    pool: PgPool,
}

impl PostgresDb {
    /// Connects and runs the migrations under `migrations/postgres`.
    pub async fn connect(url: &str, connections_max: u32) -> Result<Self, DbError> {
        let pool = PgPoolOptions::new()
            .max_connections(connections_max)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(url)
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[async_trait]
impl Db for PostgresDb {
    async fn apply_batch(&self, batch: &Batch) -> Result<Applied, DbError> {
        let tx = self.pool.begin().await?;
        apply_batch(Box::new(PgLedgerTx { tx }), batch).await
    }

    async fn consumer_offsets(&self, group_id: &str, topic: &str) -> Result<Vec<PartitionOffset>, DbError> {
        let rows = sqlx::query(
            "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2 ORDER BY partition",
        )
        .bind(group_id)
        .bind(topic)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(PartitionOffset { partition: r.try_get("partition")?, next_offset: r.try_get("next_offset")? }))
            .collect()
    }

    async fn reset_consumer_offsets(&self, group_id: &str, topic: &str) -> Result<(), DbError> {
        sqlx::query("DELETE FROM consumer_offsets WHERE group_id = $1 AND topic = $2")
            .bind(group_id)
            .bind(topic)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn unpublished_levels(&self, written_before: DateTime<Utc>, limit: i64) -> Result<Vec<StockLevel>, DbError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            stock_level_columns!(),
            " FROM stock_levels WHERE published_version < version AND updated_at < $1 ORDER BY updated_at LIMIT $2"
        ))
        .bind(written_before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stock_level).collect()
    }

    async fn stock_page(&self, after: Option<&Sku>, levels_max: i64) -> Result<Vec<StockLevel>, DbError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            stock_level_columns!(),
            " FROM stock_levels WHERE sku > $1 ORDER BY sku, location LIMIT $2"
        ))
        .bind(after.map_or("", Sku::as_str))
        .bind(levels_max)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stock_level).collect()
    }

    async fn stock_by_sku(&self, sku: &Sku) -> Result<Vec<StockLevel>, DbError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            stock_level_columns!(),
            " FROM stock_levels WHERE sku = $1 ORDER BY location"
        ))
        .bind(sku.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stock_level).collect()
    }

    async fn stock_by_skus(&self, skus: &[Sku]) -> Result<Vec<StockLevel>, DbError> {
        let skus: Vec<&str> = skus.iter().map(Sku::as_str).collect();
        let rows = sqlx::query(concat!(
            "SELECT ",
            stock_level_columns!(),
            " FROM stock_levels WHERE sku = ANY($1::text[]) ORDER BY sku, location"
        ))
        .bind(&skus)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stock_level).collect()
    }

    async fn set_policy(&self, (sku, location): &LevelKey, policy: StockPolicy) -> Result<StockLevel, DbError> {
        let row = sqlx::query(concat!(
            "INSERT INTO stock_levels (sku, location, on_hand, version, safety_stock, reorder_point, updated_at)
             VALUES ($1, $2, 0, 1, $3, $4, $5)
             ON CONFLICT (sku, location) DO UPDATE
             SET safety_stock = EXCLUDED.safety_stock, reorder_point = EXCLUDED.reorder_point,
                 version = stock_levels.version + 1, updated_at = EXCLUDED.updated_at
             RETURNING ",
            stock_level_columns!()
        ))
        .bind(sku.as_str())
        .bind(location.as_str())
        .bind(policy.safety_stock)
        .bind(policy.reorder_point)
        .bind(Utc::now().trunc_subsecs(6))
        .fetch_one(&self.pool)
        .await?;
        stock_level(&row)
    }

    async fn put_products(&self, products: &[Product]) -> Result<u64, DbError> {
        let skus: Vec<&str> = products.iter().map(|p| p.sku.as_str()).collect();
        let names: Vec<&str> = products.iter().map(|p| p.name.as_str()).collect();
        let categories: Vec<Option<&str>> = products.iter().map(|p| p.category.as_deref()).collect();
        let attributes: Vec<String> =
            products.iter().map(|p| serde_json::to_string(&p.attributes).expect("attributes serialize")).collect();
        // xmax = 0 only for rows this statement inserted.
        let inserted: Vec<bool> = sqlx::query_scalar(
            "INSERT INTO products (sku, name, category, attributes, updated_at)
             SELECT sku, name, category, attributes::jsonb, now()
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS t(sku, name, category, attributes)
             ON CONFLICT (sku) DO UPDATE
             SET name = EXCLUDED.name, category = EXCLUDED.category, attributes = EXCLUDED.attributes,
                 updated_at = EXCLUDED.updated_at
             RETURNING xmax = 0",
        )
        .bind(&skus)
        .bind(&names)
        .bind(&categories)
        .bind(&attributes)
        .fetch_all(&self.pool)
        .await?;
        Ok(inserted.into_iter().filter(|new| *new).count() as u64)
    }

    async fn product(&self, sku: &Sku) -> Result<Option<StoredProduct>, DbError> {
        let row = sqlx::query(
            "SELECT sku, name, category, attributes::text AS attributes, updated_at FROM products WHERE sku = $1",
        )
        .bind(sku.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let attributes: String = row.try_get("attributes")?;
            let product =
                product_from(row.try_get("sku")?, row.try_get("name")?, row.try_get("category")?, &attributes)?;
            Ok(StoredProduct { product, updated_at: row.try_get("updated_at")? })
        })
        .transpose()
    }

    async fn products_by_attribute(&self, name: &str, values: &[String]) -> Result<Vec<Product>, DbError> {
        if name.contains(['"', '\\']) || values.is_empty() {
            return Ok(Vec::new());
        }
        // One containment test per value, so that each can use the GIN index of
        // 0007_product_attributes.sql.
        let rows = sqlx::query(
            "SELECT DISTINCT p.sku, p.name, p.category, p.attributes::text AS attributes
             FROM UNNEST($2::text[]) AS v(value)
             JOIN products p ON p.attributes @> jsonb_build_object($1::text, v.value)
             ORDER BY p.sku",
        )
        .bind(name)
        .bind(values)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let attributes: String = row.try_get("attributes")?;
                product_from(row.try_get("sku")?, row.try_get("name")?, row.try_get("category")?, &attributes)
            })
            .collect()
    }

    async fn create_api_key(&self, key: &ApiKey) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO api_keys (id, name, scopes, secret_hash, created_at, revoked_at, bound_to)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(key.scopes.to_string())
        .bind(hex::encode(key.secret_sha256))
        .bind(key.created_at)
        .bind(key.revoked_at)
        .bind(key.bound_to.as_ref().map(ToString::to_string))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn api_key(&self, id: &str) -> Result<Option<ApiKey>, DbError> {
        let row = sqlx::query(concat!("SELECT ", api_key_columns!(), " FROM api_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(api_key).transpose()
    }

    async fn api_keys(&self, limit: i64) -> Result<Vec<ApiKey>, DbError> {
        let rows =
            sqlx::query(concat!("SELECT ", api_key_columns!(), " FROM api_keys ORDER BY created_at, id LIMIT $1"))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(api_key).collect()
    }

    async fn revoke_api_key(&self, id: &str) -> Result<bool, DbError> {
        let done = sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(Utc::now().trunc_subsecs(6))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn movement_count(&self) -> Result<i64, DbError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM movements").fetch_one(&self.pool).await?)
    }

    async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn update_source(
        &self,
        source: &str,
        update: &SourceUpdate,
        now: DateTime<Utc>,
    ) -> Result<SourceState, DbError> {
        let mut tx = self.pool.begin().await?;
        // Replicas may hear from one source at once: the row lock orders them.
        let stored: Option<String> = sqlx::query_scalar("SELECT state FROM sources WHERE source = $1 FOR UPDATE")
            .bind(source)
            .fetch_optional(&mut *tx)
            .await?;
        let state = next_source_state(source, stored, update, now)?;
        sqlx::query(
            "INSERT INTO sources (source, state, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (source) DO UPDATE SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at",
        )
        .bind(source)
        .bind(serde_json::to_string(&state).expect("a source state serializes"))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(state)
    }

    async fn sources(&self) -> Result<Vec<SourceState>, DbError> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT state FROM sources ORDER BY source").fetch_all(&self.pool).await?;
        rows.iter().map(|json| serde_json::from_str(json).map_err(corrupt)).collect()
    }

    async fn name_locations(&self, names: &[(LocationId, String)]) -> Result<u64, DbError> {
        let ids: Vec<&str> = names.iter().map(|(id, _)| id.as_str()).collect();
        let texts: Vec<&str> = names.iter().map(|(_, name)| name.as_str()).collect();
        let done = sqlx::query(
            "INSERT INTO locations (id, name, updated_at)
             SELECT id, name, now() FROM UNNEST($1::text[], $2::text[]) AS t(id, name)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&texts)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn connector_state(&self, connector: &str, key: &str) -> Result<Option<String>, DbError> {
        Ok(sqlx::query_scalar("SELECT value FROM connector_state WHERE connector = $1 AND key = $2")
            .bind(connector)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn set_connector_state(&self, connector: &str, key: &str, value: &str) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO connector_state (connector, key, value, updated_at) VALUES ($1, $2, $3, now())
             ON CONFLICT (connector, key) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at",
        )
        .bind(connector)
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn reserve(&self, new: &NewReservation<'_>) -> Result<Reserved, DbError> {
        let tx = self.pool.begin().await?;
        super::reservations::reserve(Box::new(PgReservationTx { tx }), new).await
    }

    async fn reservation(&self, id: &str) -> Result<Option<Reservation>, DbError> {
        let mut conn = self.pool.acquire().await?;
        load_reservation(&mut conn, id).await
    }

    async fn close_reservation(&self, id: &str, to: Status, now: DateTime<Utc>) -> Result<Closed, DbError> {
        let tx = self.pool.begin().await?;
        super::reservations::close(Box::new(PgReservationTx { tx }), id, to, now).await
    }

    async fn due_reservations(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<String>, DbError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM reservations WHERE status = 'held' AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn forget_idempotency_keys(&self, created_before: DateTime<Utc>) -> Result<u64, DbError> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(created_before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn outbox(
        &self,
        created_before: DateTime<Utc>,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRecord>, DbError> {
        let rows = sqlx::query(
            "SELECT id, kafka_key, payload FROM outbox WHERE created_at < $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(created_before)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxRecord { id: r.try_get("id")?, key: r.try_get("kafka_key")?, payload: r.try_get("payload")? })
            })
            .collect()
    }

    async fn enqueue_outbox(&self, movements: &[Movement], now: DateTime<Utc>) -> Result<Vec<OutboxRecord>, DbError> {
        let mut tx = self.pool.begin().await?;
        let records = reservations::enqueue(&mut tx, movements, now).await?;
        tx.commit().await?;
        Ok(records)
    }

    async fn delete_recorded_outbox(&self) -> Result<Vec<i64>, DbError> {
        Ok(sqlx::query_scalar("DELETE FROM outbox o USING movements m WHERE m.event_id = o.event_id RETURNING o.id")
            .fetch_all(&self.pool)
            .await?)
    }

    async fn delete_outbox(&self, ids: &[i64]) -> Result<(), DbError> {
        if !ids.is_empty() {
            sqlx::query("DELETE FROM outbox WHERE id = ANY($1::int8[])").bind(ids).execute(&self.pool).await?;
        }
        Ok(())
    }
}

fn api_key(row: &sqlx::postgres::PgRow) -> Result<ApiKey, DbError> {
    let (scopes, secret_hash): (String, String) = (row.try_get("scopes")?, row.try_get("secret_hash")?);
    api_key_from(
        row.try_get("id")?,
        row.try_get("name")?,
        &scopes,
        &secret_hash,
        row.try_get("created_at")?,
        row.try_get("revoked_at")?,
        row.try_get("bound_to")?,
    )
}

fn stock_level(row: &sqlx::postgres::PgRow) -> Result<StockLevel, DbError> {
    Ok(StockLevel {
        sku: Sku::parse(row.try_get::<String, _>("sku")?).map_err(corrupt)?,
        location: LocationId::parse(row.try_get::<String, _>("location")?).map_err(corrupt)?,
        on_hand: row.try_get("on_hand")?,
        reserved: row.try_get("reserved")?,
        safety_stock: row.try_get("safety_stock")?,
        reorder_point: row.try_get("reorder_point")?,
        version: row.try_get("version")?,
        last_movement_at: row.try_get("last_movement_at")?,
        last_event_id: optional_event_id(row.try_get("last_event_id")?)?,
        last_count_at: row.try_get("last_count_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

struct PgLedgerTx {
    tx: Transaction<'static, Postgres>,
}

fn keys_as_columns<'a>(keys: impl Iterator<Item = &'a LevelKey>) -> (Vec<&'a str>, Vec<&'a str>) {
    keys.map(|(s, l)| (s.as_str(), l.as_str())).unzip()
}

#[async_trait]
impl LedgerTx for PgLedgerTx {
    async fn insert_movements(&mut self, movements: &[&Envelope]) -> Result<HashSet<EventId>, DbError> {
        let n = movements.len();
        let (mut ids, mut skus, mut locations, mut kinds) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut quantities, mut deltas, mut occurred, mut recorded) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut partitions, mut offsets, mut events) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for e in movements {
            let m = &e.movement;
            ids.push(m.event_id.as_str());
            skus.push(m.sku.as_str());
            locations.push(m.location.as_str());
            kinds.push(m.kind.as_str());
            quantities.push(m.quantity);
            deltas.push(m.delta());
            occurred.push(m.occurred_at);
            recorded.push(m.recorded_at);
            partitions.push(e.partition);
            offsets.push(e.offset);
            events.push(serde_json::to_string(m).expect("a movement always serializes"));
        }
        let inserted: Vec<String> = sqlx::query_scalar(
            "INSERT INTO movements (event_id, sku, location, kind, quantity, delta, occurred_at, recorded_at,
                                    kafka_partition, kafka_offset, event)
             SELECT id, sku, location, kind, quantity, delta, occurred_at, recorded_at, part, off, event::json
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[],
                         $7::timestamptz[], $8::timestamptz[], $9::int4[], $10::int8[], $11::text[])
                  AS t(id, sku, location, kind, quantity, delta, occurred_at, recorded_at, part, off, event)
             ON CONFLICT (event_id) DO NOTHING
             RETURNING event_id",
        )
        .bind(&ids)
        .bind(&skus)
        .bind(&locations)
        .bind(&kinds)
        .bind(&quantities)
        .bind(&deltas)
        .bind(&occurred)
        .bind(&recorded)
        .bind(&partitions)
        .bind(&offsets)
        .bind(&events)
        .fetch_all(&mut *self.tx)
        .await?;
        inserted.into_iter().map(|id| EventId::parse(id).map_err(corrupt)).collect()
    }

    async fn load_levels(&mut self, keys: &[&LevelKey]) -> Result<HashMap<LevelKey, StoredLevel>, DbError> {
        let (skus, locations) = keys_as_columns(keys.iter().copied());
        let rows = sqlx::query(
            "SELECT s.sku, s.location, s.on_hand, s.reserved, s.safety_stock, s.reorder_point, s.version,
                    s.last_movement_at, s.last_event_id, s.last_count_at, s.last_count_event_id
             FROM stock_levels s
             JOIN UNNEST($1::text[], $2::text[]) AS k(sku, location) USING (sku, location)",
        )
        .bind(&skus)
        .bind(&locations)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter()
            .map(|row| {
                let key = (
                    Sku::parse(row.try_get::<String, _>("sku")?).map_err(corrupt)?,
                    LocationId::parse(row.try_get::<String, _>("location")?).map_err(corrupt)?,
                );
                let count_at: Option<DateTime<Utc>> = row.try_get("last_count_at")?;
                let count_id: Option<String> = row.try_get("last_count_event_id")?;
                let last_count = match (count_at, count_id) {
                    (Some(at), Some(id)) => Some(CountMark { at, event_id: EventId::parse(id).map_err(corrupt)? }),
                    _ => None,
                };
                let state = LevelState {
                    on_hand: row.try_get("on_hand")?,
                    last_movement_at: row.try_get("last_movement_at")?,
                    last_event_id: optional_event_id(row.try_get("last_event_id")?)?,
                    last_count,
                };
                let allocation = Allocation {
                    reserved: row.try_get("reserved")?,
                    safety_stock: row.try_get("safety_stock")?,
                    reorder_point: row.try_get("reorder_point")?,
                };
                Ok((key, StoredLevel { state, allocation, version: row.try_get("version")? }))
            })
            .collect()
    }

    async fn recorded_later(
        &mut self,
        counts: &[&Movement],
        batch_ids: &[&EventId],
    ) -> Result<HashMap<EventId, i128>, DbError> {
        let ids: Vec<&str> = counts.iter().map(|m| m.event_id.as_str()).collect();
        let skus: Vec<&str> = counts.iter().map(|m| m.sku.as_str()).collect();
        let locations: Vec<&str> = counts.iter().map(|m| m.location.as_str()).collect();
        let times: Vec<DateTime<Utc>> = counts.iter().map(|m| m.occurred_at).collect();
        let exclude: Vec<&str> = batch_ids.iter().map(|id| id.as_str()).collect();
        let rows = sqlx::query(
            // The sum as text: SUM of int8 is numeric, which a cast back to int8 could
            // overflow, an error that would stop the ledger on this batch for good.
            "SELECT c.id, COALESCE(SUM(m.delta), 0)::text AS later
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS c(id, sku, location, at)
             LEFT JOIN movements m
               ON m.sku = c.sku AND m.location = c.location AND m.occurred_at > c.at
              AND m.delta IS NOT NULL AND m.event_id <> ALL($5::text[])
             GROUP BY c.id",
        )
        .bind(&ids)
        .bind(&skus)
        .bind(&locations)
        .bind(&times)
        .bind(&exclude)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter()
            .map(|row| {
                let id = EventId::parse(row.try_get::<String, _>("id")?).map_err(corrupt)?;
                let later: String = row.try_get("later")?;
                // Beyond i128 (1.7e38) cannot happen with i64 deltas; saturate rather than fail.
                let later = later.parse::<i128>().unwrap_or(if later.starts_with('-') { i128::MIN } else { i128::MAX });
                Ok((id, later))
            })
            .collect()
    }

    async fn write_levels(
        &mut self,
        writes: &[LevelWrite],
        updated_at: DateTime<Utc>,
    ) -> Result<HashSet<LevelKey>, DbError> {
        let (updates, inserts): (Vec<&LevelWrite>, Vec<&LevelWrite>) =
            writes.iter().partition(|w| w.expected_version.is_some());
        let mut written = HashSet::with_capacity(writes.len());
        for (sql, group) in [(UPDATE_LEVELS, updates), (INSERT_LEVELS, inserts)] {
            if group.is_empty() {
                continue;
            }
            let (skus, locations) = keys_as_columns(group.iter().map(|w| &w.key));
            let expected: Vec<i64> = group.iter().map(|w| w.expected_version.unwrap_or(0)).collect();
            let on_hand: Vec<i64> = group.iter().map(|w| w.state.on_hand).collect();
            let last_at: Vec<Option<DateTime<Utc>>> = group.iter().map(|w| w.state.last_movement_at).collect();
            let last_id: Vec<Option<&str>> =
                group.iter().map(|w| w.state.last_event_id.as_ref().map(EventId::as_str)).collect();
            let count_at: Vec<Option<DateTime<Utc>>> =
                group.iter().map(|w| w.state.last_count.as_ref().map(|c| c.at)).collect();
            let count_id: Vec<Option<&str>> =
                group.iter().map(|w| w.state.last_count.as_ref().map(|c| c.event_id.as_str())).collect();
            let release: Vec<i64> = group.iter().map(|w| w.release).collect();
            let rows = sqlx::query(sql)
                .bind(&skus)
                .bind(&locations)
                .bind(&expected)
                .bind(&on_hand)
                .bind(&last_at)
                .bind(&last_id)
                .bind(&count_at)
                .bind(&count_id)
                .bind(&release)
                .bind(updated_at)
                .fetch_all(&mut *self.tx)
                .await?;
            for row in rows {
                written.insert((
                    Sku::parse(row.try_get::<String, _>(0)?).map_err(corrupt)?,
                    LocationId::parse(row.try_get::<String, _>(1)?).map_err(corrupt)?,
                ));
            }
        }
        Ok(written)
    }

    async fn settle_reservation_lines(
        &mut self,
        sales: &[(&str, i32, &Movement)],
        now: DateTime<Utc>,
    ) -> Result<HashMap<LevelKey, i64>, DbError> {
        let ids: Vec<&str> = sales.iter().map(|(id, _, _)| *id).collect();
        let lines: Vec<i32> = sales.iter().map(|(_, line, _)| *line).collect();
        let skus: Vec<&str> = sales.iter().map(|(_, _, m)| m.sku.as_str()).collect();
        let locations: Vec<&str> = sales.iter().map(|(_, _, m)| m.location.as_str()).collect();
        let quantities: Vec<i64> = sales.iter().map(|(_, _, m)| m.quantity).collect();
        // Only a line of a committed reservation, matching the sale exactly, settles, and
        // only once: a sale that merely looks like one releases nothing.
        let rows = sqlx::query(
            "UPDATE reservation_lines l SET settled_at = $6
             FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::text[], $5::int8[])
                  AS u(id, line, sku, location, quantity), reservations r
             WHERE l.reservation_id = u.id AND l.line = u.line AND l.sku = u.sku AND l.location = u.location
               AND l.quantity = u.quantity AND l.settled_at IS NULL
               AND r.id = l.reservation_id AND r.status = 'committed'
             RETURNING l.sku, l.location, l.quantity",
        )
        .bind(&ids)
        .bind(&lines)
        .bind(&skus)
        .bind(&locations)
        .bind(&quantities)
        .bind(now)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut released = HashMap::new();
        for row in rows {
            let key = (
                Sku::parse(row.try_get::<String, _>(0)?).map_err(corrupt)?,
                LocationId::parse(row.try_get::<String, _>(1)?).map_err(corrupt)?,
            );
            *released.entry(key).or_default() += row.try_get::<i64, _>(2)?;
        }
        Ok(released)
    }

    async fn mark_effect(&mut self, event_ids: &[EventId], effect: &str) -> Result<(), DbError> {
        let ids: Vec<&str> = event_ids.iter().map(|id| id.as_str()).collect();
        sqlx::query("UPDATE movements SET effect = $2 WHERE event_id = ANY($1::text[])")
            .bind(&ids)
            .bind(effect)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn mark_published(&mut self, published: &[Published]) -> Result<(), DbError> {
        let skus: Vec<&str> = published.iter().map(|p| p.sku.as_str()).collect();
        let locations: Vec<&str> = published.iter().map(|p| p.location.as_str()).collect();
        let versions: Vec<i64> = published.iter().map(|p| p.version).collect();
        sqlx::query(
            "UPDATE stock_levels s SET published_version = u.version
             FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS u(sku, location, version)
             WHERE s.sku = u.sku AND s.location = u.location AND s.published_version < u.version",
        )
        .bind(&skus)
        .bind(&locations)
        .bind(&versions)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn save_offsets(&mut self, group_id: &str, topic: &str, offsets: &[PartitionOffset]) -> Result<(), DbError> {
        let partitions: Vec<i32> = offsets.iter().map(|o| o.partition).collect();
        let next: Vec<i64> = offsets.iter().map(|o| o.next_offset).collect();
        sqlx::query(
            "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)
             SELECT $1, $2, p, o FROM UNNEST($3::int4[], $4::int8[]) AS t(p, o)
             ON CONFLICT (group_id, topic, partition) DO UPDATE
             SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()",
        )
        .bind(group_id)
        .bind(topic)
        .bind(&partitions)
        .bind(&next)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), DbError> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// A row is written only if its version is still the one the batch read; the rows not
/// returned lost the race and are planned again.
const UPDATE_LEVELS: &str = "
    UPDATE stock_levels s
    SET on_hand = u.on_hand, version = s.version + 1, last_movement_at = u.last_at,
        last_event_id = u.last_id, last_count_at = u.count_at, last_count_event_id = u.count_id,
        reserved = s.reserved - u.release, updated_at = $10
    FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::timestamptz[], $6::text[],
                $7::timestamptz[], $8::text[], $9::int8[])
         AS u(sku, location, expected, on_hand, last_at, last_id, count_at, count_id, release)
    WHERE s.sku = u.sku AND s.location = u.location AND s.version = u.expected
    RETURNING s.sku, s.location";

/// A new row is written only if no other writer created it first.
const INSERT_LEVELS: &str = "
    INSERT INTO stock_levels (sku, location, on_hand, version, last_movement_at, last_event_id,
                              last_count_at, last_count_event_id, updated_at)
    SELECT sku, location, on_hand, 1, last_at, last_id, count_at, count_id, $10
    FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::timestamptz[], $6::text[],
                $7::timestamptz[], $8::text[], $9::int8[])
         AS u(sku, location, expected, on_hand, last_at, last_id, count_at, count_id, release)
    ON CONFLICT (sku, location) DO NOTHING
    RETURNING sku, location";
