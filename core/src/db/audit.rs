//! The [`Audit`] role on both databases: one snapshot of every level and every movement,
//! streamed to an [`AuditReader`] (the movements are never all in memory), and the write
//! of recomputed levels in the transaction that read them, while every other writer of
//! `stock_levels` waits ([`Dialect::PAUSE_WRITERS`]).

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use futures::TryStreamExt;

use super::{
    batch::owed_keys,
    corrupt,
    dialect::{level_key, stock_level, stored_level, Dialect},
    driver::{query, Cells, Time},
    Audit, AuditFacts, AuditReader, AuditedLevel, DbError, LevelKey, LevelRewrite, Rebuilding, SavedOffset, SqlDb,
};
use crate::event::{EventId, Movement, StockLevel};

/// The movements that may change a level: reservation events change none (the ledger
/// records them only), as `kind` says.
const LEVEL_MOVEMENTS: &str = "FROM movements WHERE kind NOT IN ('reserve', 'release', 'commit')";

#[async_trait]
impl<D: Dialect> Audit for SqlDb<D> {
    async fn audit(&self, reader: &mut dyn AuditReader) -> Result<AuditFacts, DbError> {
        let mut tx = self.pool.begin_with(D::BEGIN_SNAPSHOT).await?;
        read_levels_and_movements::<D, _>(&mut *tx, reader).await?;
        let facts = facts::<D>(&mut *tx).await?;
        tx.commit().await?;
        Ok(facts)
    }

    async fn rebuild(&self, reader: &mut dyn Rebuilding) -> Result<Vec<StockLevel>, DbError> {
        let mut tx = self.pool.begin_with(D::BEGIN_REBUILD).await?;
        for statement in D::PAUSE_WRITERS {
            query::<D>(statement).execute(&mut *tx).await?;
        }
        read_levels_and_movements::<D, _>(&mut *tx, reader).await?;
        let updated_at = Time(Utc::now().trunc_subsecs(6));
        let mut written = Vec::new();
        for rewrite in reader.rewrites() {
            let row = rewrite_level::<D>(&mut *tx, &rewrite, updated_at).await?;
            // Nobody else writes a level while the lock is held: a row that is not the one
            // read means the lock did not hold, and nothing is written.
            let Some(row) = row else {
                let (sku, location) = &rewrite.key;
                return Err(DbError::Raced(format!("{sku}@{location}")));
            };
            written.push(stock_level(&row)?);
        }
        tx.commit().await?;
        Ok(written)
    }
}

/// Hands `reader` the counts, every level, then every movement that may change one, in
/// the order [`AuditReader`] promises.
async fn read_levels_and_movements<D: Dialect, R: AuditReader + ?Sized>(
    conn: &mut D::Connection,
    reader: &mut R,
) -> Result<(), DbError> {
    let counts = query::<D>(&format!(
        "SELECT (SELECT count(*) FROM stock_levels) AS levels, (SELECT count(*) {LEVEL_MOVEMENTS}) AS movements"
    ))
    .fetch_one(&mut *conn)
    .await?;
    let count = |column: &str| counts.cell::<i64>(column).map(|n| n.max(0) as u64);
    reader.counted(count("levels")?, count("movements")?);

    let sql = concat!(
        "SELECT ",
        stock_level_columns!(),
        ", last_count_event_id, published_version FROM stock_levels ORDER BY sku, location"
    );
    let mut levels = query::<D>(sql).fetch(&mut *conn);
    while let Some(row) = levels.try_next().await? {
        let (_, stored) = stored_level(&row)?;
        let level = stock_level(&row)?;
        reader.level(AuditedLevel {
            level,
            last_count: stored.state.last_count,
            published_version: row.cell("published_version")?,
        });
    }
    drop(levels);

    // Within a level, the ledger order: the transactions that recorded the movements
    // (`applied_at`, the time each began), and within one, the order of Kafka, which is
    // the order a batch applies them in (a SKU's movements share a partition).
    let sql = format!(
        "SELECT CAST(event AS TEXT) AS event {LEVEL_MOVEMENTS}
         ORDER BY sku, location, applied_at, kafka_partition, kafka_offset, event_id"
    );
    let mut movements = query::<D>(&sql).fetch(&mut *conn);
    while let Some(row) = movements.try_next().await? {
        let event: String = row.cell("event")?;
        let movement =
            Movement::from_json(event.as_bytes()).map_err(|e| corrupt(format!("a recorded movement: {e}")))?;
        reader.movement(movement);
    }
    Ok(())
}

/// What the snapshot holds beside levels and movements.
async fn facts<D: Dialect>(conn: &mut D::Connection) -> Result<AuditFacts, DbError> {
    let held = query::<D>(
        "SELECT l.sku, l.location, CAST(SUM(l.quantity) AS BIGINT) AS held
         FROM reservation_lines l JOIN reservations r ON r.id = l.reservation_id
         WHERE r.status = 'held' OR (r.status = 'committed' AND l.settled_at IS NULL)
         GROUP BY l.sku, l.location ORDER BY l.sku, l.location",
    )
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|row| Ok((level_key(row)?, row.cell::<i64>("held")?)))
    .collect::<Result<Vec<_>, DbError>>()?;
    let outbox =
        query::<D>("SELECT count(*) AS n, MIN(created_at) AS oldest FROM outbox").fetch_one(&mut *conn).await?;
    let offsets = query::<D>(
        "SELECT group_id, topic, partition, next_offset, updated_at FROM consumer_offsets
         ORDER BY group_id, topic, partition",
    )
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|row| {
        Ok(SavedOffset {
            group_id: row.cell("group_id")?,
            topic: row.cell("topic")?,
            partition: row.cell("partition")?,
            next_offset: row.cell("next_offset")?,
            updated_at: row.time("updated_at")?,
        })
    })
    .collect::<Result<Vec<_>, DbError>>()?;
    let mut owed: BTreeMap<LevelKey, DateTime<Utc>> = BTreeMap::new();
    for row in
        query::<D>("SELECT written_at, levels FROM ledger_publications ORDER BY id").fetch_all(&mut *conn).await?
    {
        let written_at = row.time("written_at")?;
        for key in owed_keys(&row.cell::<String>("levels")?)? {
            owed.entry(key).or_insert(written_at);
        }
    }
    Ok(AuditFacts {
        held,
        outbox_records: outbox.cell("n")?,
        outbox_oldest: outbox.optional_time("oldest")?,
        owed: owed.into_iter().collect(),
        offsets,
    })
}

/// Writes a level's ledger columns back, bumping its version; its reserved units and
/// policy are not touched. Answers the row as written, or `None` when it was not the
/// version read (or, to insert, already there).
async fn rewrite_level<D: Dialect>(
    conn: &mut D::Connection,
    rewrite: &LevelRewrite,
    updated_at: Time,
) -> Result<Option<D::Row>, DbError> {
    let (sku, location) = &rewrite.key;
    let state = &rewrite.state;
    let count_id = state.last_count.as_ref().map(|c| c.event_id.as_str());
    // Both statements take the level's columns as $1 to $8; the update compares $9.
    let sql = match rewrite.version {
        Some(_) => concat!(
            "UPDATE stock_levels
             SET on_hand = $3, last_movement_at = $4, last_event_id = $5, last_count_at = $6,
                 last_count_event_id = $7, updated_at = $8, version = version + 1
             WHERE sku = $1 AND location = $2 AND version = $9
             RETURNING ",
            stock_level_columns!()
        ),
        None => concat!(
            "INSERT INTO stock_levels (sku, location, on_hand, version, last_movement_at, last_event_id,
                                       last_count_at, last_count_event_id, updated_at)
             VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $8)
             ON CONFLICT (sku, location) DO NOTHING
             RETURNING ",
            stock_level_columns!()
        ),
    };
    let statement = query::<D>(sql)
        .bind(sku.as_str())
        .bind(location.as_str())
        .bind(state.on_hand)
        .bind(state.last_movement_at.map(Time))
        .bind(state.last_event_id.as_ref().map(EventId::as_str))
        .bind(state.last_count.as_ref().map(|c| Time(c.at)))
        .bind(count_id)
        .bind(updated_at);
    let statement = match rewrite.version {
        Some(version) => statement.bind(version),
        None => statement,
    };
    statement.fetch_optional(&mut *conn).await
}
