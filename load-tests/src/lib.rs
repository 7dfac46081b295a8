//! What the benchmarks share: the test servers they run against (`scripts/services run`
//! sets both), and a configuration with a database, topics and a consumer group of their
//! own there.

use std::net::SocketAddr;

use onhand_core::{config::Config, testing};

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
        config.ledger.group_id = format!("{prefix}.ledger");
        config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        Ok(config)
    }
}
