//! The embedded database of `onhand dev`: one SQLite file in WAL mode. SQLite has one writer
//! at a time (`BEGIN IMMEDIATE`), so its statements go row by row, which is fast in process.
//! Reservations are in `sqlite/reservations.rs`.

mod reservations;

use std::{
    collections::{HashMap, HashSet},
    str::FromStr,
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous},
    Row, Sqlite, SqlitePool, Transaction,
};

use self::reservations::{load_reservation, SqliteReservationTx};
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
pub struct SqliteDb {
    pool: SqlitePool,
}

impl SqliteDb {
    /// Opens (creating when missing) the database file of `url` and runs the migrations
    /// under `migrations/sqlite`.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn time(micros: i64) -> Result<DateTime<Utc>, DbError> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| corrupt(format!("time {micros} is out of range")))
}

fn time_at(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>, DbError> {
    time(row.try_get(column)?)
}

fn optional_time_at(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>, DbError> {
    row.try_get::<Option<i64>, _>(column)?.map(time).transpose()
}

fn key_at(row: &SqliteRow) -> Result<LevelKey, DbError> {
    Ok((
        Sku::parse(row.try_get::<String, _>("sku")?).map_err(corrupt)?,
        LocationId::parse(row.try_get::<String, _>("location")?).map_err(corrupt)?,
    ))
}

#[async_trait]
impl Db for SqliteDb {
    async fn apply_batch(&self, batch: &Batch) -> Result<Applied, DbError> {
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        apply_batch(Box::new(SqliteLedgerTx { tx }), batch).await
    }

    async fn consumer_offsets(&self, group_id: &str, topic: &str) -> Result<Vec<PartitionOffset>, DbError> {
        let rows = sqlx::query(
            "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = ? AND topic = ? ORDER BY partition",
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
        sqlx::query("DELETE FROM consumer_offsets WHERE group_id = ? AND topic = ?")
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
            " FROM stock_levels WHERE published_version < version AND updated_at < ? ORDER BY updated_at LIMIT ?"
        ))
        .bind(micros(written_before))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stock_level).collect()
    }

    async fn stock_page(&self, after: Option<&Sku>, levels_max: i64) -> Result<Vec<StockLevel>, DbError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            stock_level_columns!(),
            " FROM stock_levels WHERE sku > ? ORDER BY sku, location LIMIT ?"
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
            " FROM stock_levels WHERE sku = ? ORDER BY location"
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
            " FROM stock_levels WHERE sku IN (SELECT value FROM json_each(?1)) ORDER BY sku, location"
        ))
        .bind(serde_json::to_string(&skus).expect("strings serialize"))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stock_level).collect()
    }

    async fn set_policy(&self, (sku, location): &LevelKey, policy: StockPolicy) -> Result<StockLevel, DbError> {
        let row = sqlx::query(concat!(
            "INSERT INTO stock_levels (sku, location, on_hand, version, safety_stock, reorder_point, updated_at)
             VALUES (?1, ?2, 0, 1, ?3, ?4, ?5)
             ON CONFLICT (sku, location) DO UPDATE
             SET safety_stock = excluded.safety_stock, reorder_point = excluded.reorder_point,
                 version = version + 1, updated_at = excluded.updated_at
             RETURNING ",
            stock_level_columns!()
        ))
        .bind(sku.as_str())
        .bind(location.as_str())
        .bind(policy.safety_stock)
        .bind(policy.reorder_point)
        .bind(micros(Utc::now()))
        .fetch_one(&self.pool)
        .await?;
        stock_level(&row)
    }

    async fn put_products(&self, products: &[Product]) -> Result<u64, DbError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut inserted = 0;
        let now = micros(Utc::now());
        for p in products {
            let existed: Option<i64> = sqlx::query_scalar("SELECT 1 FROM products WHERE sku = ?")
                .bind(p.sku.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO products (sku, name, category, attributes, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (sku) DO UPDATE
                 SET name = excluded.name, category = excluded.category, attributes = excluded.attributes,
                     updated_at = excluded.updated_at",
            )
            .bind(p.sku.as_str())
            .bind(&p.name)
            .bind(p.category.as_deref())
            .bind(serde_json::to_string(&p.attributes).expect("attributes serialize"))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            inserted += u64::from(existed.is_none());
        }
        tx.commit().await?;
        Ok(inserted)
    }

    async fn product(&self, sku: &Sku) -> Result<Option<StoredProduct>, DbError> {
        let row = sqlx::query("SELECT sku, name, category, attributes, updated_at FROM products WHERE sku = ?")
            .bind(sku.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            let attributes: String = row.try_get("attributes")?;
            let product =
                product_from(row.try_get("sku")?, row.try_get("name")?, row.try_get("category")?, &attributes)?;
            Ok(StoredProduct { product, updated_at: time_at(&row, "updated_at")? })
        })
        .transpose()
    }

    async fn products_by_attribute(&self, name: &str, values: &[String]) -> Result<Vec<Product>, DbError> {
        if name.contains(['"', '\\']) || values.is_empty() {
            return Ok(Vec::new());
        }
        // No index: a development catalog is small enough to scan.
        let rows = sqlx::query(
            "SELECT sku, name, category, attributes FROM products
             WHERE json_extract(attributes, ?1) IN (SELECT value FROM json_each(?2))
             ORDER BY sku",
        )
        .bind(format!("$.\"{name}\""))
        .bind(serde_json::to_string(values).expect("strings serialize"))
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
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(key.scopes.to_string())
        .bind(hex::encode(key.secret_sha256))
        .bind(micros(key.created_at))
        .bind(key.revoked_at.map(micros))
        .bind(key.bound_to.as_ref().map(ToString::to_string))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn api_key(&self, id: &str) -> Result<Option<ApiKey>, DbError> {
        let row = sqlx::query(concat!("SELECT ", api_key_columns!(), " FROM api_keys WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(api_key).transpose()
    }

    async fn api_keys(&self, limit: i64) -> Result<Vec<ApiKey>, DbError> {
        let rows =
            sqlx::query(concat!("SELECT ", api_key_columns!(), " FROM api_keys ORDER BY created_at, id LIMIT ?"))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(api_key).collect()
    }

    async fn revoke_api_key(&self, id: &str) -> Result<bool, DbError> {
        let done = sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
            .bind(micros(Utc::now()))
            .bind(id)
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let stored: Option<String> = sqlx::query_scalar("SELECT state FROM sources WHERE source = ?1")
            .bind(source)
            .fetch_optional(&mut *tx)
            .await?;
        let state = next_source_state(source, stored, update, now)?;
        sqlx::query(
            "INSERT INTO sources (source, state, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (source) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
        )
        .bind(source)
        .bind(serde_json::to_string(&state).expect("a source state serializes"))
        .bind(micros(now))
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut created = 0;
        for (id, name) in names {
            let done = sqlx::query(
                "INSERT INTO locations (id, name, updated_at) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO NOTHING",
            )
            .bind(id.as_str())
            .bind(name)
            .bind(micros(Utc::now()))
            .execute(&mut *tx)
            .await?;
            created += done.rows_affected();
        }
        tx.commit().await?;
        Ok(created)
    }

    async fn connector_state(&self, connector: &str, key: &str) -> Result<Option<String>, DbError> {
        Ok(sqlx::query_scalar("SELECT value FROM connector_state WHERE connector = ?1 AND key = ?2")
            .bind(connector)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn set_connector_state(&self, connector: &str, key: &str, value: &str) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO connector_state (connector, key, value, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (connector, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(connector)
        .bind(key)
        .bind(value)
        .bind(micros(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn reserve(&self, new: &NewReservation<'_>) -> Result<Reserved, DbError> {
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        super::reservations::reserve(Box::new(SqliteReservationTx { tx }), new).await
    }

    async fn reservation(&self, id: &str) -> Result<Option<Reservation>, DbError> {
        let mut conn = self.pool.acquire().await?;
        load_reservation(&mut conn, id).await
    }

    async fn close_reservation(&self, id: &str, to: Status, now: DateTime<Utc>) -> Result<Closed, DbError> {
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        super::reservations::close(Box::new(SqliteReservationTx { tx }), id, to, now).await
    }

    async fn due_reservations(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<String>, DbError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM reservations WHERE status = 'held' AND expires_at <= ?1 ORDER BY expires_at LIMIT ?2",
        )
        .bind(micros(now))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn forget_idempotency_keys(&self, created_before: DateTime<Utc>) -> Result<u64, DbError> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?1")
            .bind(micros(created_before))
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
            "SELECT id, kafka_key, payload FROM outbox WHERE created_at < ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )
        .bind(micros(created_before))
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let records = reservations::enqueue(&mut tx, movements, now).await?;
        tx.commit().await?;
        Ok(records)
    }

    async fn delete_recorded_outbox(&self) -> Result<Vec<i64>, DbError> {
        Ok(sqlx::query_scalar(
            "DELETE FROM outbox WHERE EXISTS (SELECT 1 FROM movements m WHERE m.event_id = outbox.event_id) RETURNING id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn delete_outbox(&self, ids: &[i64]) -> Result<(), DbError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for id in ids {
            sqlx::query("DELETE FROM outbox WHERE id = ?1").bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn api_key(row: &SqliteRow) -> Result<ApiKey, DbError> {
    let (scopes, secret_hash): (String, String) = (row.try_get("scopes")?, row.try_get("secret_hash")?);
    api_key_from(
        row.try_get("id")?,
        row.try_get("name")?,
        &scopes,
        &secret_hash,
        time_at(row, "created_at")?,
        optional_time_at(row, "revoked_at")?,
        row.try_get("bound_to")?,
    )
}

fn stock_level(row: &SqliteRow) -> Result<StockLevel, DbError> {
    let (sku, location) = key_at(row)?;
    Ok(StockLevel {
        sku,
        location,
        on_hand: row.try_get("on_hand")?,
        reserved: row.try_get("reserved")?,
        safety_stock: row.try_get("safety_stock")?,
        reorder_point: row.try_get("reorder_point")?,
        version: row.try_get("version")?,
        last_movement_at: optional_time_at(row, "last_movement_at")?,
        last_event_id: optional_event_id(row.try_get("last_event_id")?)?,
        last_count_at: optional_time_at(row, "last_count_at")?,
        updated_at: time_at(row, "updated_at")?,
    })
}

struct SqliteLedgerTx {
    tx: Transaction<'static, Sqlite>,
}

#[async_trait]
impl LedgerTx for SqliteLedgerTx {
    async fn insert_movements(&mut self, movements: &[&Envelope]) -> Result<HashSet<EventId>, DbError> {
        let now = micros(Utc::now());
        let mut inserted = HashSet::with_capacity(movements.len());
        for e in movements {
            let m = &e.movement;
            let done = sqlx::query(
                "INSERT INTO movements (event_id, sku, location, kind, quantity, delta, occurred_at, recorded_at,
                                        applied_at, kafka_partition, kafka_offset, event)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(m.event_id.as_str())
            .bind(m.sku.as_str())
            .bind(m.location.as_str())
            .bind(m.kind.as_str())
            .bind(m.quantity)
            .bind(m.delta())
            .bind(micros(m.occurred_at))
            .bind(micros(m.recorded_at))
            .bind(now)
            .bind(e.partition)
            .bind(e.offset)
            .bind(serde_json::to_string(m).expect("a movement always serializes"))
            .execute(&mut *self.tx)
            .await?;
            if done.rows_affected() == 1 {
                inserted.insert(m.event_id.clone());
            }
        }
        Ok(inserted)
    }

    async fn load_levels(&mut self, keys: &[&LevelKey]) -> Result<HashMap<LevelKey, StoredLevel>, DbError> {
        let mut levels = HashMap::with_capacity(keys.len());
        for (sku, location) in keys {
            let row = sqlx::query(
                "SELECT sku, location, on_hand, reserved, safety_stock, reorder_point, version, last_movement_at,
                        last_event_id, last_count_at, last_count_event_id
                 FROM stock_levels WHERE sku = ? AND location = ?",
            )
            .bind(sku.as_str())
            .bind(location.as_str())
            .fetch_optional(&mut *self.tx)
            .await?;
            let Some(row) = row else { continue };
            let last_count = match (
                row.try_get::<Option<i64>, _>("last_count_at")?,
                row.try_get::<Option<String>, _>("last_count_event_id")?,
            ) {
                (Some(at), Some(id)) => {
                    Some(CountMark { at: time(at)?, event_id: EventId::parse(id).map_err(corrupt)? })
                }
                _ => None,
            };
            let state = LevelState {
                on_hand: row.try_get("on_hand")?,
                last_movement_at: optional_time_at(&row, "last_movement_at")?,
                last_event_id: optional_event_id(row.try_get("last_event_id")?)?,
                last_count,
            };
            let allocation = Allocation {
                reserved: row.try_get("reserved")?,
                safety_stock: row.try_get("safety_stock")?,
                reorder_point: row.try_get("reorder_point")?,
            };
            levels.insert(key_at(&row)?, StoredLevel { state, allocation, version: row.try_get("version")? });
        }
        Ok(levels)
    }

    async fn recorded_later(
        &mut self,
        counts: &[&Movement],
        batch_ids: &[&EventId],
    ) -> Result<HashMap<EventId, i128>, DbError> {
        let batch: HashSet<&str> = batch_ids.iter().map(|id| id.as_str()).collect();
        let mut sums = HashMap::with_capacity(counts.len());
        for count in counts {
            let rows = sqlx::query(
                "SELECT event_id, delta FROM movements
                 WHERE sku = ? AND location = ? AND occurred_at > ? AND delta IS NOT NULL",
            )
            .bind(count.sku.as_str())
            .bind(count.location.as_str())
            .bind(micros(count.occurred_at))
            .fetch_all(&mut *self.tx)
            .await?;
            let mut sum = 0i128;
            for row in rows {
                if !batch.contains(row.try_get::<&str, _>("event_id")?) {
                    sum += i128::from(row.try_get::<i64, _>("delta")?);
                }
            }
            sums.insert(count.event_id.clone(), sum);
        }
        Ok(sums)
    }

    async fn write_levels(
        &mut self,
        writes: &[LevelWrite],
        updated_at: DateTime<Utc>,
    ) -> Result<HashSet<LevelKey>, DbError> {
        let mut written = HashSet::with_capacity(writes.len());
        for w in writes {
            let sql = match w.expected_version {
                Some(_) => {
                    "UPDATE stock_levels
                     SET on_hand = ?3, version = version + 1, last_movement_at = ?4, last_event_id = ?5,
                         last_count_at = ?6, last_count_event_id = ?7, updated_at = ?8, reserved = reserved - ?10
                     WHERE sku = ?1 AND location = ?2 AND version = ?9"
                }
                None => {
                    "INSERT INTO stock_levels (sku, location, on_hand, version, last_movement_at, last_event_id,
                                               last_count_at, last_count_event_id, updated_at)
                     VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (sku, location) DO NOTHING"
                }
            };
            let done = sqlx::query(sql)
                .bind(w.key.0.as_str())
                .bind(w.key.1.as_str())
                .bind(w.state.on_hand)
                .bind(w.state.last_movement_at.map(micros))
                .bind(w.state.last_event_id.as_ref().map(EventId::as_str))
                .bind(w.state.last_count.as_ref().map(|c| micros(c.at)))
                .bind(w.state.last_count.as_ref().map(|c| c.event_id.as_str()))
                .bind(micros(updated_at))
                .bind(w.expected_version)
                .bind(w.release)
                .execute(&mut *self.tx)
                .await?;
            if done.rows_affected() == 1 {
                written.insert(w.key.clone());
            }
        }
        Ok(written)
    }

    async fn settle_reservation_lines(
        &mut self,
        sales: &[(&str, i32, &Movement)],
        now: DateTime<Utc>,
    ) -> Result<HashMap<LevelKey, i64>, DbError> {
        let mut released = HashMap::new();
        for (id, line, m) in sales {
            // As in PostgreSQL: only a matching line of a committed reservation, once.
            let settled = sqlx::query(
                "UPDATE reservation_lines SET settled_at = ?6
                 WHERE reservation_id = ?1 AND line = ?2 AND sku = ?3 AND location = ?4 AND quantity = ?5
                   AND settled_at IS NULL
                   AND EXISTS (SELECT 1 FROM reservations r WHERE r.id = ?1 AND r.status = 'committed')",
            )
            .bind(id)
            .bind(line)
            .bind(m.sku.as_str())
            .bind(m.location.as_str())
            .bind(m.quantity)
            .bind(micros(now))
            .execute(&mut *self.tx)
            .await?;
            if settled.rows_affected() == 1 {
                *released.entry((m.sku.clone(), m.location.clone())).or_default() += m.quantity;
            }
        }
        Ok(released)
    }

    async fn mark_effect(&mut self, event_ids: &[EventId], effect: &str) -> Result<(), DbError> {
        for id in event_ids {
            sqlx::query("UPDATE movements SET effect = ?2 WHERE event_id = ?1")
                .bind(id.as_str())
                .bind(effect)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    async fn mark_published(&mut self, published: &[Published]) -> Result<(), DbError> {
        for p in published {
            sqlx::query(
                "UPDATE stock_levels SET published_version = ?3
                 WHERE sku = ?1 AND location = ?2 AND published_version < ?3",
            )
            .bind(p.sku.as_str())
            .bind(p.location.as_str())
            .bind(p.version)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    async fn save_offsets(&mut self, group_id: &str, topic: &str, offsets: &[PartitionOffset]) -> Result<(), DbError> {
        for o in offsets {
            sqlx::query(
                "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset, updated_at)
                 VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (group_id, topic, partition) DO UPDATE
                 SET next_offset = max(next_offset, excluded.next_offset), updated_at = excluded.updated_at",
            )
            .bind(group_id)
            .bind(topic)
            .bind(o.partition)
            .bind(o.next_offset)
            .bind(micros(Utc::now()))
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), DbError> {
        self.tx.commit().await?;
        Ok(())
    }
}
