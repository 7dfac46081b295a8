//! What the benchmarks share: the test servers they run against (`scripts/services run`
//! sets both), a configuration with a database, topics and a consumer group of their own
//! there, and an HTTP client with an API key.

use std::net::SocketAddr;

use onhand_core::{config::Config, db::Db, ledger::LedgerHandle, telemetry::Metrics, testing};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};

#[derive(Debug, clap::Args)]
pub struct Servers {
    #[arg(long, env = "ONHAND_TEST_KAFKA_BROKERS")]
    pub brokers: String,
    /// A PostgreSQL server URL; the benchmark creates a database of its own there.
    #[arg(long, env = "ONHAND_TEST_DATABASE_URL")]
    pub database_url: String,
}

impl Servers {
    /// A configuration whose database, topics and group are named after `prefix`, with the
    /// HTTP API on a free port.
    pub async fn config(&self, prefix: &str) -> anyhow::Result<Config> {
        let mut config = Config::default();
        config.database.url = testing::create_database(&self.database_url, prefix).await?;
        config.kafka.brokers = self.brokers.clone();
        config.kafka.topics.movements = format!("{prefix}.movements");
        config.kafka.topics.stock = format!("{prefix}.stock");
        config.kafka.topics.dlq = format!("{prefix}.dlq");
        config.kafka.topics.alerts = format!("{prefix}.alerts");
        config.kafka.topics.orders = format!("{prefix}.orders");
        config.ledger.group_id = format!("{prefix}.ledger");
        config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        // The benchmarks measure the service, not the limiter's refusals: the per-key limit
        // is far above what they send, and every request still goes through it.
        config.http.rate_limit_per_s = 1_000_000;
        config.http.rate_limit_burst = 1_000_000;
        Ok(config)
    }
}

/// `builder` made into a client that sends a new admin key of `db` with every request.
pub async fn client_with_key(db: &dyn Db, builder: reqwest::ClientBuilder) -> anyhow::Result<reqwest::Client> {
    let created = onhand::keys::create(db, "benchmark", "admin", None).await?;
    let mut value = HeaderValue::from_str(&format!("Bearer {}", created.plaintext))?;
    value.set_sensitive(true);
    Ok(builder.default_headers(HeaderMap::from_iter([(AUTHORIZATION, value)])).build()?)
}

/// Waits until `db` has recorded `movements`, checking that the ledger (whose `metrics`
/// these are) is still running. The ledger's counters are watched; the table is counted
/// only once they reach the figure: a `count(*)` of a growing table every 100 ms took a
/// third of the database's time beside the ledger's (`pg_stat_statements`).
pub async fn until_recorded(
    db: &dyn Db,
    ledger: &LedgerHandle,
    metrics: &Metrics,
    movements: u64,
) -> anyhow::Result<()> {
    let expected = i64::try_from(movements)?;
    loop {
        let counted = metrics.ledger_movements_applied_total.get() + metrics.ledger_movements_superseded_total.get();
        if counted >= movements {
            let recorded = db.movement_count().await?;
            if recorded >= expected {
                return Ok(());
            }
        }
        anyhow::ensure!(!ledger.is_finished(), "the ledger stopped after {counted} movements");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Drops a database a benchmark created on `server_url` (whatever connections are left).
pub async fn drop_database(server_url: &str, database_url: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let name = database_url.rsplit('/').next().unwrap_or_default();
    anyhow::ensure!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "a database name: {name:?}");
    let mut conn = sqlx::PgConnection::connect(server_url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await?;
    Ok(())
}

/// Where a database's time went, from `pg_stat_statements` (loaded by `scripts/services`):
/// what [`Statements::reset`] started counting, per statement.
#[derive(Debug)]
pub struct Statements {
    conn: sqlx::PgConnection,
}

impl Statements {
    /// Starts counting afresh in the database at `database_url`; `None` where the
    /// extension is not loaded.
    pub async fn reset(database_url: &str) -> Option<Statements> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(database_url).await.ok()?;
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").execute(&mut conn).await.ok()?;
        sqlx::query("SELECT pg_stat_statements_reset()").execute(&mut conn).await.ok()?;
        Some(Statements { conn })
    }

    /// The statements of this database since the reset, the costliest first: each one's
    /// calls, total and mean milliseconds and rows, its text cut to 100 characters.
    pub async fn top(&mut self, limit: i64) -> anyhow::Result<serde_json::Value> {
        use sqlx::Row;
        let rows = sqlx::query(
            "SELECT regexp_replace(query, '\\s+', ' ', 'g') AS query, calls, total_exec_time, rows
             FROM pg_stat_statements
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND query NOT LIKE '%pg_stat_statements%'
             ORDER BY total_exec_time DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&mut self.conn)
        .await?;
        let mut top = Vec::with_capacity(rows.len());
        for row in rows {
            let query: String = row.try_get("query")?;
            let (calls, total_ms): (i64, f64) = (row.try_get("calls")?, row.try_get("total_exec_time")?);
            top.push(serde_json::json!({
                "statement": query.chars().take(100).collect::<String>(),
                "calls": calls,
                "total_ms": total_ms.round(),
                "mean_ms": (total_ms / calls.max(1) as f64 * 100.0).round() / 100.0,
                "rows": row.try_get::<i64, _>("rows")?,
            }));
        }
        Ok(serde_json::Value::Array(top))
    }
}
