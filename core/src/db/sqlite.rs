//! SQLite, the embedded database of `onhand dev`: its [`Dialect`] for [`SqlDb`]. One file
//! in WAL mode; times are microseconds since the Unix epoch ([`Time`]). SQLite has one
//! writer at a time: every transaction that writes begins with `BEGIN IMMEDIATE`, so it is
//! the only writer until it ends and its reads cannot go stale, and writes of many rows go
//! row by row, which is fast in process.

use std::{
    collections::{HashMap, HashSet},
    str::FromStr,
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    Sqlite, SqliteConnection,
};

// The domain types too come from `db`, whose contract is written in them.
use super::{
    batch::{Closing, LedgerTx, LevelWrite, Recording, StoredLevel},
    dialect::{stored_level, Dialect},
    driver::Time,
    DbError, Envelope, EventId, LevelKey, LocationId, Movement, OutboxRecord, PartitionOffset, Product, Published,
    Reservation, SqlDb, SqliteDb,
};

/// The migrations under `migrations/sqlite`, embedded in the binary.
pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

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
        MIGRATOR.run(&pool).await?;
        Ok(SqlDb::migrated(pool))
    }
}

#[async_trait]
impl Dialect for Sqlite {
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    const STOCK_BY_SKUS: &'static str = concat!(
        "SELECT ",
        stock_level_columns!(),
        " FROM stock_levels WHERE sku IN (SELECT value FROM json_each($1)) ORDER BY sku, location"
    );
    // The transaction is the only writer already.
    const SOURCE_FOR_UPDATE: &'static str = "SELECT state FROM sources WHERE source = $1";
    // No index: a development catalog is small enough to scan.
    const PRODUCTS_BY_ATTRIBUTE: &'static str = "
        SELECT sku, name, category, attributes FROM products
        WHERE json_extract(attributes, '$.\"' || $1 || '\"') IN (SELECT value FROM json_each($2))
        ORDER BY sku";
    const SIMILAR_IN_STOCK: &'static str = "
        SELECT p.sku, p.name, p.category, p.attributes,
               MAX(s.on_hand - s.reserved - s.safety_stock) AS available
        FROM products p JOIN stock_levels s ON s.sku = p.sku
        WHERE p.sku <> $1
          AND (p.category = $2 OR EXISTS (
                SELECT 1 FROM json_each(p.attributes) a
                JOIN json_each($3) b ON a.key = b.key AND a.value = b.value))
          AND ($4 OR s.location IN (SELECT value FROM json_each($5)))
        GROUP BY p.sku
        HAVING MAX(s.on_hand - s.reserved - s.safety_stock) >= $6
        ORDER BY (p.category IS $2) DESC, available DESC
        LIMIT 50";
    const DELETE_OUTBOX: &'static str = "DELETE FROM outbox WHERE id IN (SELECT value FROM json_each($1))";
    const SOURCE_SYSTEM: &'static str = "json_extract(event, '$.source.system')";
    const SOURCE_INSTANCE: &'static str = "json_extract(event, '$.source.instance')";
    // In WAL mode, a read transaction sees the snapshot of its first read until it ends.
    const BEGIN_SNAPSHOT: &'static str = "BEGIN";
    // The one write lock, held to the end: no other writer, the ledger first, can begin.
    const BEGIN_REBUILD: &'static str = "BEGIN IMMEDIATE";
    const PAUSE_WRITERS: &'static [&'static str] = &[];
    // Microseconds since the Unix epoch, as `Time` stores them; julianday keeps milliseconds.
    const NOW: &'static str = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) * 1000 AS INTEGER)";
    const NOW_PLUS_MS_3: &'static str =
        "(CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) * 1000 AS INTEGER) + $3 * 1000)";

    fn ledger(tx: &mut SqliteConnection, _: Recording) -> Box<dyn LedgerTx + '_> {
        Box::new(SqliteLedgerTx { tx })
    }

    async fn put_products(conn: &mut SqliteConnection, products: &[Product]) -> Result<u64, DbError> {
        let mut inserted = 0;
        let now = Time(Utc::now());
        for p in products {
            let existed: Option<i64> = sqlx::query_scalar("SELECT 1 FROM products WHERE sku = ?")
                .bind(p.sku.as_str())
                .fetch_optional(&mut *conn)
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
            .execute(&mut *conn)
            .await?;
            inserted += u64::from(existed.is_none());
        }
        Ok(inserted)
    }

    async fn name_locations(conn: &mut SqliteConnection, names: &[(LocationId, String)]) -> Result<u64, DbError> {
        let mut created = 0;
        for (id, name) in names {
            let done = sqlx::query(
                "INSERT INTO locations (id, name, updated_at) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO NOTHING",
            )
            .bind(id.as_str())
            .bind(name)
            .bind(Time(Utc::now()))
            .execute(&mut *conn)
            .await?;
            created += done.rows_affected();
        }
        Ok(created)
    }

    async fn insert_reservation_lines(conn: &mut SqliteConnection, r: &Reservation) -> Result<(), DbError> {
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
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn enqueue(
        conn: &mut SqliteConnection,
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
            .bind(Time(now))
            .fetch_one(&mut *conn)
            .await?;
            records.push(OutboxRecord { id, key: m.kafka_key().to_string(), payload });
        }
        Ok(records)
    }
}

/// The steps of a ledger batch, on the connection of its transaction.
struct SqliteLedgerTx<'t> {
    tx: &'t mut SqliteConnection,
}

#[async_trait]
impl LedgerTx for SqliteLedgerTx<'_> {
    async fn insert_movements(&mut self, movements: &[&Envelope]) -> Result<HashSet<EventId>, DbError> {
        let now = Time(Utc::now());
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
            .bind(Time(m.occurred_at))
            .bind(Time(m.recorded_at))
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
            .bind(Time(now))
            .execute(&mut *self.tx)
            .await?;
            if settled.rows_affected() == 1 {
                *released.entry((m.sku.clone(), m.location.clone())).or_default() += m.quantity;
            }
        }
        Ok(released)
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
            if let Some(row) = row {
                let (key, level) = stored_level(&row)?;
                levels.insert(key, level);
            }
        }
        Ok(levels)
    }

    async fn recorded_later(&mut self, counts: &[&Movement]) -> Result<HashMap<EventId, i128>, DbError> {
        let mut sums = HashMap::with_capacity(counts.len());
        for count in counts {
            let deltas: Vec<i64> = sqlx::query_scalar(
                "SELECT delta FROM movements
                 WHERE sku = ? AND location = ? AND occurred_at > ? AND delta IS NOT NULL",
            )
            .bind(count.sku.as_str())
            .bind(count.location.as_str())
            .bind(Time(count.occurred_at))
            .fetch_all(&mut *self.tx)
            .await?;
            sums.insert(count.event_id.clone(), deltas.into_iter().map(i128::from).sum());
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
                         last_count_at = ?6, last_count_event_id = ?7, updated_at = ?8, reserved = reserved - ?10,
                         published_version = version + 1
                     WHERE sku = ?1 AND location = ?2 AND version = ?9"
                }
                None => {
                    "INSERT INTO stock_levels (sku, location, on_hand, version, published_version,
                                               last_movement_at, last_event_id, last_count_at,
                                               last_count_event_id, updated_at)
                     VALUES (?1, ?2, ?3, 1, 1, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (sku, location) DO NOTHING"
                }
            };
            let done = sqlx::query(sql)
                .bind(w.key.0.as_str())
                .bind(w.key.1.as_str())
                .bind(w.state.on_hand)
                .bind(w.state.last_movement_at.map(Time))
                .bind(w.state.last_event_id.as_ref().map(EventId::as_str))
                .bind(w.state.last_count.as_ref().map(|c| Time(c.at)))
                .bind(w.state.last_count.as_ref().map(|c| c.event_id.as_str()))
                .bind(Time(updated_at))
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

    async fn close(&mut self, c: &Closing<'_>) -> Result<Option<i64>, DbError> {
        self.mark_effect(c.superseded, "superseded").await?;
        self.mark_effect(c.recorded, "recorded").await?;
        self.mark_published(c.published).await?;
        for id in c.settled {
            sqlx::query("DELETE FROM ledger_publications WHERE id = ?").bind(id).execute(&mut *self.tx).await?;
        }
        self.save_offsets(c.group_id, c.topic, c.offsets).await?;
        self.record_heard(c.heard, c.updated_at).await?;
        let Some(levels) = &c.owed else {
            return Ok(None);
        };
        let id = sqlx::query_scalar("INSERT INTO ledger_publications (written_at, levels) VALUES (?, ?) RETURNING id")
            .bind(Time(c.updated_at))
            .bind(levels)
            .fetch_one(&mut *self.tx)
            .await?;
        Ok(Some(id))
    }
}

impl SqliteLedgerTx<'_> {
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
            .bind(Time(Utc::now()))
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    async fn record_heard(
        &mut self,
        heard: &[(String, DateTime<Utc>)],
        updated_at: DateTime<Utc>,
    ) -> Result<(), DbError> {
        for (source, at) in heard {
            // SQLite's max() of a NULL is NULL: the newer time wins by a CASE.
            sqlx::query(
                "INSERT INTO source_signals (source, last_movement_at, updated_at) VALUES (?, ?, ?)
                 ON CONFLICT (source) DO UPDATE SET
                     last_movement_at = CASE
                         WHEN source_signals.last_movement_at IS NULL
                           OR excluded.last_movement_at > source_signals.last_movement_at
                         THEN excluded.last_movement_at ELSE source_signals.last_movement_at END,
                     updated_at = excluded.updated_at",
            )
            .bind(source.as_str())
            .bind(Time(*at))
            .bind(Time(updated_at))
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }
}
