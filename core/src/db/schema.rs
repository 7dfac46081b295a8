//! A look at a deployment's database that changes nothing, for `onhand doctor`: which of
//! this binary's migrations it has, its clock, its API keys and a consumer group's saved
//! offsets. Unlike [`open`](super::open) it never migrates and never creates a file, so
//! it can look at a database that a newer or an older onhand left.

use std::{str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqlitePoolOptions},
    Pool,
};

use super::{
    driver::{query, Cells, Driver},
    postgres, sqlite, DbError, PartitionOffset,
};

/// What the database says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The migrations of this binary that the database has applied.
    pub applied: Vec<i64>,
    /// This binary's migrations the database lacks: the next start of `onhand serve`
    /// applies them.
    pub pending: Vec<i64>,
    /// Applied migrations this binary does not know: a newer onhand migrated the database.
    pub unknown: Vec<i64>,
    /// Migrations recorded as failed halfway.
    pub failed: Vec<i64>,
    /// The database server's clock, when it has one apart from this machine's (PostgreSQL).
    pub clock: Option<DateTime<Utc>>,
    /// API keys not revoked, and how many of them hold the `admin` scope.
    pub active_keys: u64,
    pub admin_keys: u64,
    /// The saved offsets of the consumer group asked about.
    pub offsets: Vec<PartitionOffset>,
}

/// The statements whose text differs between the databases.
struct Probes {
    /// Answers whether sqlx's table of applied migrations exists.
    migrations_table: &'static str,
    /// Answers the server's time, if it has a clock of its own.
    clock: Option<&'static str>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Looks at the database of `url`, and at the offsets `group_id` saved for `topic`.
pub async fn inspect(url: &str, group_id: &str, topic: &str) -> Result<Inspection, DbError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pool = PgPoolOptions::new().max_connections(1).acquire_timeout(CONNECT_TIMEOUT).connect(url).await?;
        let probes = Probes {
            migrations_table: "SELECT to_regclass('_sqlx_migrations') IS NOT NULL AS present",
            clock: Some("SELECT now() AS now"),
        };
        let inspection = read(&pool, &postgres::MIGRATOR, &probes, group_id, topic).await;
        pool.close().await;
        inspection
    } else if url.starts_with("sqlite:") {
        // Read-only, and without `create_if_missing`: a wrong path is an error, not a new file.
        let options = SqliteConnectOptions::from_str(url)?.read_only(true);
        let pool =
            SqlitePoolOptions::new().max_connections(1).acquire_timeout(CONNECT_TIMEOUT).connect_with(options).await?;
        let probes = Probes {
            migrations_table: "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations') AS present",
            clock: None,
        };
        let inspection = read(&pool, &sqlite::MIGRATOR, &probes, group_id, topic).await;
        pool.close().await;
        inspection
    } else {
        Err(DbError::UnsupportedUrl(url.to_string()))
    }
}

async fn read<D: Driver>(
    pool: &Pool<D>,
    migrator: &sqlx::migrate::Migrator,
    probes: &Probes,
    group_id: &str,
    topic: &str,
) -> Result<Inspection, DbError> {
    let known: Vec<i64> =
        migrator.iter().filter(|m| !m.migration_type.is_down_migration()).map(|m| m.version).collect();
    let has_table: bool =
        query::<D>(probes.migrations_table).fetch_one(pool.acquire().await?).await?.cell("present")?;
    let mut done = Vec::new();
    let mut failed = Vec::new();
    if has_table {
        for row in query::<D>("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(pool.acquire().await?)
            .await?
        {
            let version: i64 = row.cell("version")?;
            if row.cell::<bool>("success")? {
                done.push(version);
            } else {
                failed.push(version);
            }
        }
    }
    let clock = match probes.clock {
        Some(sql) => Some(query::<D>(sql).fetch_one(pool.acquire().await?).await?.cell::<DateTime<Utc>>("now")?),
        None => None,
    };
    let mut inspection = Inspection {
        applied: known.iter().copied().filter(|v| done.contains(v)).collect(),
        pending: known.iter().copied().filter(|v| !done.contains(v) && !failed.contains(v)).collect(),
        unknown: done.iter().copied().filter(|v| !known.contains(v)).collect(),
        failed,
        clock,
        active_keys: 0,
        admin_keys: 0,
        offsets: Vec::new(),
    };
    // The tables below exist once the first migrations ran.
    if inspection.applied.is_empty() {
        return Ok(inspection);
    }
    for row in
        query::<D>("SELECT scopes FROM api_keys WHERE revoked_at IS NULL").fetch_all(pool.acquire().await?).await?
    {
        let scopes: String = row.cell("scopes")?;
        inspection.active_keys += 1;
        if scopes.split([' ', ',']).any(|scope| scope == "admin") {
            inspection.admin_keys += 1;
        }
    }
    inspection.offsets = query::<D>(
        "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2 ORDER BY partition",
    )
    .bind(group_id)
    .bind(topic)
    .fetch_all(pool.acquire().await?)
    .await?
    .iter()
    .map(|row| Ok(PartitionOffset { partition: row.cell("partition")?, next_offset: row.cell("next_offset")? }))
    .collect::<Result<_, DbError>>()?;
    Ok(inspection)
}
