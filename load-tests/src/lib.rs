//! What the benchmarks share: the test servers they run against (`scripts/services run`
//! sets both), a configuration with a database, topics and a consumer group of their own
//! there, and an HTTP client with an API key.

use std::net::SocketAddr;

use onhand_core::{config::Config, db::Db, ledger::LedgerHandle, testing};
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

/// Waits until `db` has recorded `movements`, checking that the ledger is still running.
pub async fn until_recorded(db: &dyn Db, ledger: &LedgerHandle, movements: u64) -> anyhow::Result<()> {
    let expected = i64::try_from(movements)?;
    loop {
        let recorded = db.movement_count().await?;
        if recorded >= expected {
            return Ok(());
        }
        anyhow::ensure!(!ledger.is_finished(), "the ledger stopped after {recorded} movements");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
