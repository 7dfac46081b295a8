//! The [`History`] role on both databases: the audit trail's reads of `movements`. Each
//! filter of [`MovementQuery`] adds its condition to one statement, so that the planner
//! sees only the columns asked for and picks the index made for them (migrations
//! `*_history.sql`); the order is the index's, newest recorded first.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    corrupt,
    dialect::Dialect,
    driver::{query, Cells, Time},
    DbError, History, MovementQuery, RecordedMovement, SqlDb,
};
use crate::{
    event::{EventId, Movement},
    history::{Change, LevelMovement, Start},
    ledger::rules::{CountMark, Effect, LevelKey},
};

#[async_trait]
impl<D: Dialect> History for SqlDb<D> {
    async fn movements(&self, q: &MovementQuery) -> Result<Vec<RecordedMovement>, DbError> {
        let sql = movements_sql::<D>(q);
        let mut statement = query::<D>(&sql);
        if let Some(sku) = &q.sku {
            statement = statement.bind(sku.as_str());
        }
        if let Some(location) = &q.location {
            statement = statement.bind(location.as_str());
        }
        if let Some((system, instance)) = &q.source {
            statement = statement.bind(system.as_str()).bind(instance.as_str());
        }
        if let Some(since) = q.since {
            statement = statement.bind(Time(since));
        }
        if let Some(until) = q.until {
            statement = statement.bind(Time(until));
        }
        if let Some(after) = &q.after {
            statement = statement.bind(Time(after.recorded_at)).bind(after.event_id.as_str());
        }
        let rows = statement.bind(q.limit).fetch_all(self.conn().await?).await?;
        rows.iter().map(recorded_movement).collect()
    }

    async fn level_start(&self, (sku, location): &LevelKey, before: DateTime<Utc>) -> Result<Start, DbError> {
        // The partial index `movements_level_counts` answers this at once, however many
        // movements the level has: `kind = 'count'` is written as its predicate is.
        let count = query::<D>(
            "SELECT event_id, quantity, occurred_at FROM movements
             WHERE sku = $1 AND location = $2 AND kind = 'count' AND occurred_at < $3
             ORDER BY occurred_at DESC, event_id DESC LIMIT 1",
        )
        .bind(sku.as_str())
        .bind(location.as_str())
        .bind(Time(before))
        .fetch_optional(self.conn().await?)
        .await?;
        let count = count
            .map(|row| {
                let mark = CountMark { at: row.time("occurred_at")?, event_id: event_id(row.cell("event_id")?)? };
                Ok::<_, DbError>((mark, row.cell::<i64>("quantity")?))
            })
            .transpose()?;
        // What it costs: the level's movements between that count (its beginning, when
        // never counted) and `before`, over `movements_level_time`.
        let sum = "SELECT CAST(COALESCE(SUM(delta), 0) AS BIGINT) AS deltas FROM movements
                   WHERE sku = $1 AND location = $2 AND occurred_at < $3";
        let after_count = format!("{sum} AND occurred_at > $4");
        let statement = match &count {
            Some((mark, _)) => query::<D>(&after_count)
                .bind(sku.as_str())
                .bind(location.as_str())
                .bind(Time(before))
                .bind(Time(mark.at)),
            None => query::<D>(sum).bind(sku.as_str()).bind(location.as_str()).bind(Time(before)),
        };
        let deltas: i64 = statement.fetch_one(self.conn().await?).await?.cell("deltas")?;
        Ok(Start { count, deltas: i128::from(deltas) })
    }

    async fn level_movements(
        &self,
        (sku, location): &LevelKey,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<LevelMovement>, DbError> {
        let rows = query::<D>(
            "SELECT event_id, quantity, delta, occurred_at FROM movements
             WHERE sku = $1 AND location = $2 AND occurred_at >= $3 AND occurred_at < $4
             ORDER BY occurred_at, event_id LIMIT $5",
        )
        .bind(sku.as_str())
        .bind(location.as_str())
        .bind(Time(since))
        .bind(Time(until))
        .bind(limit)
        .fetch_all(self.conn().await?)
        .await?;
        rows.iter()
            .map(|row| {
                let change = match row.cell::<Option<i64>>("delta")? {
                    Some(delta) => Change::Delta(delta),
                    None => Change::Count(row.cell("quantity")?),
                };
                Ok(LevelMovement {
                    occurred_at: row.time("occurred_at")?,
                    event_id: event_id(row.cell("event_id")?)?,
                    change,
                })
            })
            .collect()
    }
}

/// The statement of `q`: one condition per filter given, numbered in the order
/// [`History::movements`] binds them.
fn movements_sql<D: Dialect>(q: &MovementQuery) -> String {
    let mut n = 0;
    let mut arg = || {
        n += 1;
        format!("${n}")
    };
    let mut conditions = Vec::new();
    if q.sku.is_some() {
        conditions.push(format!("sku = {}", arg()));
    }
    if q.location.is_some() {
        conditions.push(format!("location = {}", arg()));
    }
    if q.source.is_some() {
        conditions.push(format!("{} = {}", D::SOURCE_SYSTEM, arg()));
        conditions.push(format!("{} = {}", D::SOURCE_INSTANCE, arg()));
    }
    if q.since.is_some() {
        conditions.push(format!("recorded_at >= {}", arg()));
    }
    if q.until.is_some() {
        conditions.push(format!("recorded_at < {}", arg()));
    }
    if q.after.is_some() {
        let (at, id) = (arg(), arg());
        conditions.push(format!("(recorded_at, event_id) < ({at}, {id})"));
    }
    let filter = if conditions.is_empty() { String::new() } else { format!(" WHERE {}", conditions.join(" AND ")) };
    format!(
        "SELECT CAST(event AS TEXT) AS event, delta, effect, applied_at FROM movements{filter}
         ORDER BY recorded_at DESC, event_id DESC LIMIT {}",
        arg()
    )
}

fn event_id(text: String) -> Result<EventId, DbError> {
    EventId::parse(text).map_err(|e| corrupt(e.message))
}

fn recorded_movement(row: &impl Cells) -> Result<RecordedMovement, DbError> {
    let event: String = row.cell("event")?;
    let movement = Movement::from_json(event.as_bytes()).map_err(|e| corrupt(format!("a recorded movement: {e}")))?;
    let effect = match row.cell::<String>("effect")?.as_str() {
        "applied" => Effect::Applied,
        "superseded" => Effect::Superseded,
        other => return Err(corrupt(format!("movement {} has the effect {other:?}", movement.event_id))),
    };
    Ok(RecordedMovement { movement, delta: row.cell("delta")?, effect, applied_at: row.time("applied_at")? })
}
