//! `onhand replay connector erp --since T`: the poller's cursor moved back, so that it
//! reads the journal's rows changed at or after `T` again. Their movements keep their
//! event ids (the ERP's row ids), so the ledger skips those it recorded; a row that was
//! dead-lettered (a code missing from `[connectors.erp.kinds]`) is mapped again with
//! today's configuration.
//!
//! The poller reads its cursor when it starts and writes it after each batch of rows, so
//! this is done while the connector is stopped, and takes effect when it starts. The
//! cursor only moves back: a time after it would skip rows.

use chrono::{DateTime, Utc};
use onhand_core::{db::ConnectorState, ops::Progress};
use serde::Serialize;
use sqlx::{postgres::PgPoolOptions, Row};

use super::{
    config::{ErpConfig, Mode},
    source::{Cursor, SOURCE},
};

/// Why the cursor could not be read, counted from, or moved.
#[derive(Debug, thiserror::Error)]
pub enum ErpReplayError {
    #[error("the saved erp cursor: {0}")]
    Db(#[from] onhand_core::db::DbError),
    #[error("the saved erp cursor is not readable: {0}")]
    Cursor(String),
    #[error("the erp database (to count the rows): {0}")]
    Journal(#[from] sqlx::Error),
}

/// What moving the cursor back would do.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub since: DateTime<Utc>,
    /// The saved cursor: the last row whose movement Kafka acknowledged (`None`: the poller
    /// has read nothing yet, and starts from the journal's beginning).
    pub cursor: Option<Cursor>,
    /// The cursor written: just before the first row changed at `since`.
    pub to: Cursor,
    /// Journal rows between the two, which the poller reads again.
    pub rows: u64,
    /// Why the cursor must not move, if it must not: `no_cursor`, `forward` or `debezium`.
    pub refused: Option<Refusal>,
}

/// Why a move of the cursor is refused, with a stable code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub code: &'static str,
    pub reason: String,
}

/// The cursor at which the rows changed at or after `since` come next: the poller reads
/// after `(changed_at, id)`, and no row id is below `i64::MIN`.
pub fn cursor_before(since: DateTime<Utc>) -> Cursor {
    Cursor { changed_at: since, id: i64::MIN }
}

/// Reads the saved cursor, counts the journal rows from `since` up to it, and says whether
/// the move is refused.
pub async fn plan(
    config: &ErpConfig,
    state: &dyn ConnectorState,
    since: DateTime<Utc>,
    progress: &dyn Progress,
) -> Result<Plan, ErpReplayError> {
    let to = cursor_before(since);
    let mut plan = Plan { since, cursor: None, to, rows: 0, refused: None };
    if config.mode == Mode::Debezium {
        plan.refused = Some(Refusal {
            code: "debezium",
            reason: format!(
                "[connectors.erp] mode = \"debezium\": the journal comes from the topic {:?}; move its consumer group \
                 back instead: onhand replay group {} --topic {} --to-time {}",
                config.debezium.topic,
                config.debezium.group_id,
                config.debezium.topic,
                since.to_rfc3339()
            ),
        });
        return Ok(plan);
    }
    plan.cursor = match state.connector_state(SOURCE, "cursor").await? {
        Some(text) => Some(serde_json::from_str(&text).map_err(|e| ErpReplayError::Cursor(e.to_string()))?),
        None => None,
    };
    let Some(cursor) = plan.cursor else {
        plan.refused = Some(Refusal {
            code: "no_cursor",
            reason: "the erp connector has no cursor yet: it reads the journal from its beginning when it starts"
                .into(),
        });
        return Ok(plan);
    };
    if (to.changed_at, to.id) >= (cursor.changed_at, cursor.id) {
        plan.refused = Some(Refusal {
            code: "forward",
            reason: format!(
                "the cursor is at {} (row {}), before {}: the poller has not read that far yet, and a replay never \
                 skips a row (it only moves back)",
                cursor.changed_at.to_rfc3339(),
                cursor.id,
                since.to_rfc3339()
            ),
        });
        return Ok(plan);
    }
    plan.rows = count_rows(config, to, cursor, progress).await?;
    Ok(plan)
}

/// Counts the journal's rows after `from` up to `until` (included), through the
/// connector's own query, a page of `batch_rows_max` at a time.
async fn count_rows(
    config: &ErpConfig,
    from: Cursor,
    until: Cursor,
    progress: &dyn Progress,
) -> Result<u64, sqlx::Error> {
    let journal = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(&config.source_url)
        .await?;
    progress.start("counting rows", None);
    let (mut after, mut rows) = (from, 0u64);
    loop {
        let page = sqlx::query(&config.query)
            .bind(after.changed_at)
            .bind(after.id)
            .bind(0f64)
            .bind(config.batch_rows_max)
            .fetch_all(&journal)
            .await?;
        let full = page.len() as i64 >= config.batch_rows_max;
        let mut last = None;
        for row in &page {
            let at = Cursor { changed_at: row.try_get("changed_at")?, id: row.try_get("id")? };
            if (at.changed_at, at.id) > (until.changed_at, until.id) {
                progress.finish();
                return Ok(rows);
            }
            rows += 1;
            last = Some(at);
        }
        progress.advance(page.len() as u64);
        match last {
            Some(last) if full => after = last,
            _ => break,
        }
    }
    progress.finish();
    Ok(rows)
}

/// Writes the plan's cursor. The connector, started next, reads the rows after it again.
pub async fn apply(state: &dyn ConnectorState, plan: &Plan) -> Result<(), ErpReplayError> {
    let text = serde_json::to_string(&plan.to).map_err(|e| ErpReplayError::Cursor(e.to_string()))?;
    state.set_connector_state(SOURCE, "cursor", &text).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_before_a_time_comes_before_every_row_changed_then() {
        let since = DateTime::parse_from_rfc3339("2026-11-20T18:00:00Z").unwrap().with_timezone(&Utc);
        let to = cursor_before(since);
        for id in [i64::MIN + 1, 0, 1, i64::MAX] {
            assert!((since, id) > (to.changed_at, to.id), "row {id} changed at `since` is read again");
        }
        let earlier = since - chrono::Duration::microseconds(1);
        assert!((earlier, i64::MAX) < (to.changed_at, to.id), "a row changed before is not");
        let text = serde_json::to_string(&to).unwrap();
        assert_eq!(serde_json::from_str::<Cursor>(&text).unwrap(), to, "the poller reads it back");
    }
}
