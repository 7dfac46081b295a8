//! PostgreSQL, the production database: its [`Dialect`] for [`SqlDb`]. Each write of many
//! rows is one set-based statement over `UNNEST`ed arrays, so a ledger batch costs a
//! handful of round trips whatever its size. Statements run at READ COMMITTED.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{postgres::PgPoolOptions, PgConnection, Postgres, Row};

// The domain types too come from `db`, whose contract is written in them.
use super::{
    batch::{LedgerTx, LevelWrite, StoredLevel},
    corrupt,
    dialect::{level_key, stored_level, Dialect},
    DbError, Envelope, EventId, LevelKey, LocationId, Movement, OutboxRecord, PartitionOffset, PostgresDb, Product,
    Published, Reservation, SqlDb,
};

/// The migrations under `migrations/postgres`, embedded in the binary.
pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

impl PostgresDb {
    /// Connects and runs the migrations under `migrations/postgres`.
    pub async fn connect(url: &str, connections_max: u32) -> Result<Self, DbError> {
        let pool = PgPoolOptions::new()
            .max_connections(connections_max)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqlDb::migrated(pool))
    }
}

#[async_trait]
impl Dialect for Postgres {
    const BEGIN_WRITE: &'static str = "BEGIN";
    const STOCK_BY_SKUS: &'static str =
        concat!("SELECT ", stock_level_columns!(), " FROM stock_levels WHERE sku = ANY($1) ORDER BY sku, location");
    const SOURCE_FOR_UPDATE: &'static str = "SELECT state FROM sources WHERE source = $1 FOR UPDATE";
    // One containment test per value, so that each can use the GIN index of
    // 0008_product_attributes.sql.
    const PRODUCTS_BY_ATTRIBUTE: &'static str = "
        SELECT DISTINCT p.sku, p.name, p.category, p.attributes::text AS attributes
        FROM UNNEST($2::text[]) AS v(value)
        JOIN products p ON p.attributes @> jsonb_build_object($1::text, v.value)
        ORDER BY p.sku";
    const SIMILAR_IN_STOCK: &'static str = "
        SELECT p.sku, p.name, p.category, p.attributes::text AS attributes,
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
        LIMIT 50";
    const DELETE_OUTBOX: &'static str = "DELETE FROM outbox WHERE id = ANY($1)";
    const SOURCE_SYSTEM: &'static str = "(event->'source'->>'system')";
    const SOURCE_INSTANCE: &'static str = "(event->'source'->>'instance')";
    const BEGIN_SNAPSHOT: &'static str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
    // The snapshot of REPEATABLE READ is taken by the first statement after the lock, so it
    // holds every level write committed before the rebuild, and none after.
    const BEGIN_REBUILD: &'static str = "BEGIN ISOLATION LEVEL REPEATABLE READ";
    // SHARE ROW EXCLUSIVE conflicts with the ROW EXCLUSIVE lock that every UPDATE or INSERT
    // of a level takes (the ledger's, reservations', policies'), and with itself, and not
    // with reads: the API goes on answering. The lock waits for the writer holding the
    // table, at most the lock timeout; the ledger's next write waits for the rebuild.
    const PAUSE_WRITERS: &'static [&'static str] =
        &["SET LOCAL lock_timeout = '60s'", "LOCK TABLE stock_levels IN SHARE ROW EXCLUSIVE MODE"];
    const NOW: &'static str = "now()";
    const NOW_PLUS_MS_3: &'static str = "(now() + CAST($3 AS DOUBLE PRECISION) * interval '1 millisecond')";

    fn ledger(tx: &mut PgConnection) -> Box<dyn LedgerTx + '_> {
        Box::new(PgLedgerTx { tx })
    }

    async fn put_products(conn: &mut PgConnection, products: &[Product]) -> Result<u64, DbError> {
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
        .fetch_all(conn)
        .await?;
        Ok(inserted.into_iter().filter(|new| *new).count() as u64)
    }

    async fn name_locations(conn: &mut PgConnection, names: &[(LocationId, String)]) -> Result<u64, DbError> {
        let ids: Vec<&str> = names.iter().map(|(id, _)| id.as_str()).collect();
        let texts: Vec<&str> = names.iter().map(|(_, name)| name.as_str()).collect();
        let done = sqlx::query(
            "INSERT INTO locations (id, name, updated_at)
             SELECT id, name, now() FROM UNNEST($1::text[], $2::text[]) AS t(id, name)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&texts)
        .execute(conn)
        .await?;
        Ok(done.rows_affected())
    }

    async fn insert_reservation_lines(conn: &mut PgConnection, r: &Reservation) -> Result<(), DbError> {
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
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn enqueue(
        conn: &mut PgConnection,
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
        .fetch_all(conn)
        .await?;
        Ok(ids
            .into_iter()
            .zip(keys.into_iter().zip(payloads))
            .map(|(id, (key, payload))| OutboxRecord { id, key: key.to_string(), payload })
            .collect())
    }
}

/// The steps of a ledger batch, on the connection of its transaction.
struct PgLedgerTx<'t> {
    tx: &'t mut PgConnection,
}

fn keys_as_columns<'a>(keys: impl Iterator<Item = &'a LevelKey>) -> (Vec<&'a str>, Vec<&'a str>) {
    keys.map(|(s, l)| (s.as_str(), l.as_str())).unzip()
}

#[async_trait]
impl LedgerTx for PgLedgerTx<'_> {
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
        for row in &rows {
            *released.entry(level_key(row)?).or_default() += row.try_get::<i64, _>("quantity")?;
        }
        Ok(released)
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
        rows.iter().map(stored_level).collect()
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
            for row in &rows {
                written.insert(level_key(row)?);
            }
        }
        Ok(written)
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

    async fn record_heard(
        &mut self,
        heard: &[(String, DateTime<Utc>)],
        updated_at: DateTime<Utc>,
    ) -> Result<(), DbError> {
        let (sources, times): (Vec<&str>, Vec<DateTime<Utc>>) = heard.iter().map(|(s, at)| (s.as_str(), *at)).unzip();
        // GREATEST leaves out a NULL: a source known only by its errors gets its first time.
        sqlx::query(
            "INSERT INTO source_signals (source, last_movement_at, updated_at)
             SELECT s, t, $3 FROM UNNEST($1::text[], $2::timestamptz[]) AS h(s, t)
             ON CONFLICT (source) DO UPDATE SET
                 last_movement_at = GREATEST(source_signals.last_movement_at, EXCLUDED.last_movement_at),
                 updated_at = EXCLUDED.updated_at",
        )
        .bind(&sources)
        .bind(&times)
        .bind(updated_at)
        .execute(&mut *self.tx)
        .await?;
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
