//! The [`Signals`] role on both databases: what onhand heard from each source
//! (`source_signals`, migrations `*_signals.sql`; the ledger writes `last_movement_at` in
//! each batch's transaction, `batch.rs`), and the counts of levels that need a look.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    dialect::Dialect,
    driver::{query, Cells, Time},
    DbError, LevelAnomalies, Signals, SqlDb,
};
use crate::freshness::SourceSignals;

/// The longest error text kept: what a person reads, not a log.
const ERROR_CHARS_MAX: usize = 500;

#[async_trait]
impl<D: Dialect> Signals for SqlDb<D> {
    async fn record_error(&self, source: &str, error: &str, at: DateTime<Utc>) -> Result<(), DbError> {
        let error: String = error.chars().take(ERROR_CHARS_MAX).collect();
        query::<D>(
            "INSERT INTO source_signals (source, last_error, last_error_at, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (source) DO UPDATE SET
                 last_error = excluded.last_error,
                 last_error_at = excluded.last_error_at,
                 updated_at = excluded.updated_at",
        )
        .bind(source)
        .bind(error)
        .bind(Time(at))
        .bind(Time(Utc::now()))
        .execute(self.conn().await?)
        .await?;
        Ok(())
    }

    async fn source_signals(&self) -> Result<Vec<SourceSignals>, DbError> {
        let rows = query::<D>(
            "SELECT source, last_movement_at, last_error, last_error_at FROM source_signals ORDER BY source",
        )
        .fetch_all(self.conn().await?)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SourceSignals {
                    source: row.cell("source")?,
                    last_movement_at: row.optional_time("last_movement_at")?,
                    last_error: row.cell("last_error")?,
                    last_error_at: row.optional_time("last_error_at")?,
                })
            })
            .collect()
    }

    async fn level_anomalies(&self) -> Result<LevelAnomalies, DbError> {
        // Each condition is the predicate of its partial index, written alike.
        let row = query::<D>(
            "SELECT (SELECT COUNT(*) FROM stock_levels WHERE on_hand < 0) AS negative,
                    (SELECT COUNT(*) FROM stock_levels WHERE reserved > 0 AND reserved > on_hand) AS overreserved,
                    (SELECT CAST(COALESCE(SUM(reserved), 0) AS BIGINT) FROM stock_levels WHERE reserved > 0) AS reserved",
        )
        .fetch_one(self.conn().await?)
        .await?;
        Ok(LevelAnomalies {
            negative: row.cell("negative")?,
            overreserved: row.cell("overreserved")?,
            reserved: row.cell("reserved")?,
        })
    }
}
