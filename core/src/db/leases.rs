//! The [`Leases`] role on both databases: one row per lease, taken or renewed by one
//! conditional upsert, so that two replicas asking at once cannot both hold it. Times come
//! from the database's clock (`Dialect::NOW`), never from the replica's.

use std::time::Duration;

use async_trait::async_trait;

use super::{
    dialect::Dialect,
    driver::{query, Cells},
    DbError, Lease, Leases, SqlDb,
};

#[async_trait]
impl<D: Dialect> Leases for SqlDb<D> {
    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<Lease>, DbError> {
        // Taken when free (no row), expired, or the holder's own. A renewal (the holder's
        // own, not expired) keeps when it was taken and from whom; a takeover remembers
        // the holder it replaced; the holder's own expired lease is taken afresh. Every
        // expression reads the row as it was before the update.
        let sql = format!(
            "INSERT INTO leases (name, holder, acquired_at, expires_at, taken_from)
             VALUES ($1, $2, {now}, {expires}, NULL)
             ON CONFLICT (name) DO UPDATE SET
                 holder = excluded.holder,
                 expires_at = excluded.expires_at,
                 acquired_at = CASE WHEN {renewal} THEN leases.acquired_at ELSE excluded.acquired_at END,
                 taken_from = CASE WHEN {renewal} THEN leases.taken_from
                                   WHEN leases.holder = excluded.holder THEN NULL
                                   ELSE leases.holder END
             WHERE leases.holder = excluded.holder OR leases.expires_at <= excluded.acquired_at
             RETURNING name, holder, acquired_at, expires_at, taken_from",
            renewal = "leases.holder = excluded.holder AND leases.expires_at > excluded.acquired_at",
            now = D::NOW,
            expires = D::NOW_PLUS_MS_3,
        );
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 1_000_000);
        let row = query::<D>(&sql).bind(name).bind(holder).bind(ttl_ms).fetch_optional(self.conn().await?).await?;
        row.as_ref().map(lease).transpose()
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, DbError> {
        let deleted = query::<D>("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(self.conn().await?)
            .await?;
        Ok(deleted > 0)
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>, DbError> {
        let row = query::<D>("SELECT name, holder, acquired_at, expires_at, taken_from FROM leases WHERE name = $1")
            .bind(name)
            .fetch_optional(self.conn().await?)
            .await?;
        row.as_ref().map(lease).transpose()
    }
}

fn lease(row: &impl Cells) -> Result<Lease, DbError> {
    Ok(Lease {
        name: row.cell("name")?,
        holder: row.cell("holder")?,
        acquired_at: row.time("acquired_at")?,
        expires_at: row.time("expires_at")?,
        taken_from: row.cell("taken_from")?,
    })
}
