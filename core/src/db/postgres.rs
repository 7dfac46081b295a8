//! PostgreSQL, the production database: its [`Dialect`] for [`SqlDb`]. Each write of many
//! rows is one set-based statement over `UNNEST`ed arrays, so a ledger batch costs a
//! handful of round trips whatever its size. Statements run at READ COMMITTED.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::{postgres::PgPoolOptions, PgConnection, Postgres, Row};

// The domain types too come from `db`, whose contract is written in them.
use super::{
    batch::{Closing, LedgerTx, LevelWrite, Recording, StoredLevel},
    corrupt,
    dialect::{level_key, stored_level, Dialect},
    DbError, Envelope, EventId, LevelKey, LocationId, Movement, OutboxRecord, PostgresDb, Product, Reservation, SqlDb,
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

    fn ledger(tx: &mut PgConnection, recording: Recording) -> Box<dyn LedgerTx + '_> {
        Box::new(PgLedgerTx { tx, recording })
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
    recording: Recording,
}

/// The movements as `COPY ... (FORMAT csv)` reads them, in `COPY_MOVEMENTS`'s columns: a
/// NULL is an empty unquoted field, which no text column can be (ids, SKUs, locations and
/// kinds are never empty). Times to the microsecond, truncated as sqlx binds them.
fn copy_rows(movements: &[&Envelope]) -> Result<Vec<u8>, DbError> {
    let mut rows = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::with_capacity(movements.len() * 512));
    for e in movements {
        let m = &e.movement;
        let time = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
        let event = serde_json::to_vec(m).expect("a movement always serializes");
        rows.write_record([
            m.event_id.as_str().as_bytes(),
            m.sku.as_str().as_bytes(),
            m.location.as_str().as_bytes(),
            m.kind.as_str().as_bytes(),
            m.quantity.to_string().as_bytes(),
            m.delta().map(|d| d.to_string()).unwrap_or_default().as_bytes(),
            time(m.occurred_at).as_bytes(),
            time(m.recorded_at).as_bytes(),
            e.partition.to_string().as_bytes(),
            e.offset.to_string().as_bytes(),
            &event,
        ])
        .map_err(|e| DbError::Corrupt(format!("cannot encode a movement for COPY: {e}")))?;
    }
    rows.into_inner().map_err(|e| DbError::Corrupt(format!("cannot encode movements for COPY: {}", e.error())))
}

/// Movements recorded as they are, the cheapest way PostgreSQL takes rows; a known
/// event_id fails the whole statement (see [`Recording::AllNew`]).
const COPY_MOVEMENTS: &str = "COPY movements (event_id, sku, location, kind, quantity, delta, occurred_at, recorded_at,
                           kafka_partition, kafka_offset, event) FROM STDIN (FORMAT csv)";

fn keys_as_columns<'a>(keys: impl Iterator<Item = &'a LevelKey>) -> (Vec<&'a str>, Vec<&'a str>) {
    keys.map(|(s, l)| (s.as_str(), l.as_str())).unzip()
}

impl PgLedgerTx<'_> {
    /// Inserts the movements whose event_id is new, one statement, and answers those ids.
    async fn insert_new_movements(&mut self, movements: &[&Envelope]) -> Result<HashSet<EventId>, DbError> {
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
}

#[async_trait]
impl LedgerTx for PgLedgerTx<'_> {
    async fn insert_movements(&mut self, movements: &[&Envelope]) -> Result<HashSet<EventId>, DbError> {
        match self.recording {
            Recording::AllNew => {
                let rows = copy_rows(movements)?;
                let mut copy = self.tx.copy_in_raw(COPY_MOVEMENTS).await?;
                copy.send(rows).await?;
                copy.finish().await?;
                Ok(movements.iter().map(|e| e.movement.event_id.clone()).collect())
            }
            Recording::SkipRecorded => self.insert_new_movements(movements).await,
        }
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

    async fn recorded_later(&mut self, counts: &[&Movement]) -> Result<HashMap<EventId, i128>, DbError> {
        let ids: Vec<&str> = counts.iter().map(|m| m.event_id.as_str()).collect();
        let skus: Vec<&str> = counts.iter().map(|m| m.sku.as_str()).collect();
        let locations: Vec<&str> = counts.iter().map(|m| m.location.as_str()).collect();
        let times: Vec<DateTime<Utc>> = counts.iter().map(|m| m.occurred_at).collect();
        let rows = sqlx::query(
            // The sum as text: SUM of int8 is numeric, which a cast back to int8 could
            // overflow, an error that would stop the ledger on this batch for good.
            "SELECT c.id, COALESCE(SUM(m.delta), 0)::text AS later
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS c(id, sku, location, at)
             LEFT JOIN movements m
               ON m.sku = c.sku AND m.location = c.location AND m.occurred_at > c.at
              AND m.delta IS NOT NULL
             GROUP BY c.id",
        )
        .bind(&ids)
        .bind(&skus)
        .bind(&locations)
        .bind(&times)
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
        if writes.is_empty() {
            return Ok(HashSet::new());
        }
        let (skus, locations) = keys_as_columns(writes.iter().map(|w| &w.key));
        let expected: Vec<Option<i64>> = writes.iter().map(|w| w.expected_version).collect();
        let on_hand: Vec<i64> = writes.iter().map(|w| w.state.on_hand).collect();
        let last_at: Vec<Option<DateTime<Utc>>> = writes.iter().map(|w| w.state.last_movement_at).collect();
        let last_id: Vec<Option<&str>> =
            writes.iter().map(|w| w.state.last_event_id.as_ref().map(EventId::as_str)).collect();
        let count_at: Vec<Option<DateTime<Utc>>> =
            writes.iter().map(|w| w.state.last_count.as_ref().map(|c| c.at)).collect();
        let count_id: Vec<Option<&str>> =
            writes.iter().map(|w| w.state.last_count.as_ref().map(|c| c.event_id.as_str())).collect();
        let release: Vec<i64> = writes.iter().map(|w| w.release).collect();
        let rows = sqlx::query(WRITE_LEVELS)
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
        rows.iter().map(level_key).collect()
    }

    async fn close(&mut self, c: &Closing<'_>) -> Result<Option<i64>, DbError> {
        let (partitions, next): (Vec<i32>, Vec<i64>) = c.offsets.iter().map(|o| (o.partition, o.next_offset)).unzip();
        let (sources, times): (Vec<&str>, Vec<DateTime<Utc>>) = c.heard.iter().map(|(s, at)| (s.as_str(), *at)).unzip();
        let owed: Option<i64> = sqlx::query_scalar(CLOSE_BATCH)
            .bind(c.superseded.iter().map(EventId::as_str).collect::<Vec<_>>())
            .bind(c.recorded.iter().map(EventId::as_str).collect::<Vec<_>>())
            .bind(c.published.iter().map(|p| p.sku.as_str()).collect::<Vec<_>>())
            .bind(c.published.iter().map(|p| p.location.as_str()).collect::<Vec<_>>())
            .bind(c.published.iter().map(|p| p.version).collect::<Vec<_>>())
            .bind(c.settled)
            .bind(c.group_id)
            .bind(c.topic)
            .bind(&partitions)
            .bind(&next)
            .bind(&sources)
            .bind(&times)
            .bind(c.updated_at)
            .bind(c.owed.as_deref())
            .fetch_one(&mut *self.tx)
            .await?;
        Ok(owed)
    }
}

/// Everything a batch writes after its levels, in one statement (each part a no-op on
/// empty arrays): movements' effects, publications recorded and settled, the offsets, the
/// sources heard (GREATEST leaves out a NULL: a source known only by its errors gets its
/// first time), and the publication the batch owes.
const CLOSE_BATCH: &str = "
    WITH superseded AS (
        UPDATE movements SET effect = 'superseded' WHERE event_id = ANY($1::text[])
    ), recorded AS (
        UPDATE movements SET effect = 'recorded' WHERE event_id = ANY($2::text[])
    ), published AS (
        UPDATE stock_levels s SET published_version = u.version
        FROM UNNEST($3::text[], $4::text[], $5::int8[]) AS u(sku, location, version)
        WHERE s.sku = u.sku AND s.location = u.location AND s.published_version < u.version
    ), settled AS (
        DELETE FROM ledger_publications WHERE id = ANY($6::int8[])
    ), offsets AS (
        INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)
        SELECT $7, $8, p, o FROM UNNEST($9::int4[], $10::int8[]) AS t(p, o)
        ON CONFLICT (group_id, topic, partition) DO UPDATE
        SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()
    ), heard AS (
        INSERT INTO source_signals (source, last_movement_at, updated_at)
        SELECT s, t, $13 FROM UNNEST($11::text[], $12::timestamptz[]) AS h(s, t)
        ON CONFLICT (source) DO UPDATE SET
            last_movement_at = GREATEST(source_signals.last_movement_at, EXCLUDED.last_movement_at),
            updated_at = EXCLUDED.updated_at
    ), owed AS (
        INSERT INTO ledger_publications (written_at, levels) SELECT $13, $14::text WHERE $14::text IS NOT NULL
        RETURNING id
    )
    SELECT (SELECT id FROM owed)";

/// Each level's compare-and-set, one statement: a row with an expected version is updated
/// only if its version is still the one the batch read, a new one is inserted only if no
/// other writer created it first; the rows not returned lost the race and are planned
/// again. The new version counts as published: the batch owes that publication through
/// `ledger_publications` (see `Closing::owed`).
const WRITE_LEVELS: &str = "
    WITH u AS (
        SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::timestamptz[], $6::text[],
                             $7::timestamptz[], $8::text[], $9::int8[])
             AS u(sku, location, expected, on_hand, last_at, last_id, count_at, count_id, release)
    ), updated AS (
        UPDATE stock_levels s
        SET on_hand = u.on_hand, version = s.version + 1, published_version = s.version + 1,
            last_movement_at = u.last_at, last_event_id = u.last_id, last_count_at = u.count_at,
            last_count_event_id = u.count_id, reserved = s.reserved - u.release, updated_at = $10
        FROM u
        WHERE u.expected IS NOT NULL AND s.sku = u.sku AND s.location = u.location AND s.version = u.expected
        RETURNING s.sku, s.location
    ), inserted AS (
        INSERT INTO stock_levels (sku, location, on_hand, version, published_version, last_movement_at,
                                  last_event_id, last_count_at, last_count_event_id, updated_at)
        SELECT sku, location, on_hand, 1, 1, last_at, last_id, count_at, count_id, $10
        FROM u WHERE u.expected IS NULL
        ON CONFLICT (sku, location) DO NOTHING
        RETURNING sku, location
    )
    SELECT sku, location FROM updated UNION ALL SELECT sku, location FROM inserted";
