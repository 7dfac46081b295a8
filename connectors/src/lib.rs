//! Connectors turn what each outside system says into movements on Kafka.
//!
//! - [`Connector`]: what every connector implements: a long-running task, and optionally
//!   HTTP routes (webhooks, store feeds) served by the API.
//! - [`ConnectorContext`]: what a connector gets: the Kafka producer and topics, the database
//!   (its catalog, its saved cursors), the stock cache, the configuration, the shutdown
//!   signal and the metrics.
//! - [`registry`]: the explicit list of connectors, built from the configuration.
//! - [`shopify`]: the Shopify web store: orders, refunds and manual changes in (webhooks
//!   and a reconciliation), the web channel's availability out (a sink).
//!
//! Each connector lives in a folder of its own with the same files: `config.rs` (typed,
//! `deny_unknown_fields`), `source.rs` (the task or routes reading the outside system),
//! `mapping.rs` (pure functions from the outside format to movements) and `tests.rs`:
//!
//! - [`pos`]: store tills' feeds and stock reports, and the offline-safe store agent.
//! - [`erp`]: the ERP's stock journal, captured by polling with a persisted cursor.
//! - [`wms`]: the distribution centre's CSV files, dropped into an inbox.

pub mod erp;
pub mod pos;
pub mod wms;

pub mod shopify;

use std::sync::Arc;

use async_trait::async_trait;
pub use onhand_core::api::ScopedRoutes;
use onhand_core::{
    cache::StockCache,
    clock::Clock,
    config::{Config, Topics},
    db::Db,
    health::{Component, Failure},
    ingest::{Durability, Ingest},
    kafka::Producer,
    relay::{Forget, Relay},
    telemetry::Metrics,
};
use tokio_util::sync::CancellationToken;

/// A connector failed. `retryable` says whether running it again may succeed (the outside
/// system or Kafka was unreachable) or a person must act (bad configuration).
#[derive(Debug, thiserror::Error)]
#[error("connector {connector}: {message}")]
pub struct ConnectorError {
    pub connector: &'static str,
    pub message: String,
    pub retryable: bool,
}

impl From<ConnectorError> for Failure {
    fn from(e: ConnectorError) -> Failure {
        Failure { message: e.to_string(), retryable: e.retryable }
    }
}

/// What a connector gets from the process that runs it.
#[derive(Clone)]
pub struct ConnectorContext {
    /// Idempotent, `acks=all`, renewed when it fails fatally: for dead letters, and for
    /// movements of a connector that makes them safe itself (a cursor moved only after
    /// Kafka acknowledged). Routes that answer a client accept movements through `ingest`.
    pub producer: Producer,
    /// Makes a movement safe before the answer says so (Kafka, or `onhand dev`'s outbox).
    pub ingest: Ingest,
    /// Where the connector reports that it is blocked (`/readyz`); its supervisor reports
    /// restarts and failures.
    pub component: Component,
    pub topics: Topics,
    /// The catalog and the connectors' saved state. A connector never writes stock levels:
    /// it produces movements.
    pub db: Arc<dyn Db>,
    /// The stock levels as the API answers them.
    pub cache: StockCache,
    /// The whole configuration: a connector reads its own section, and the Kafka settings
    /// when it consumes a topic.
    pub config: Arc<Config>,
    pub shutdown: CancellationToken,
    pub metrics: Metrics,
}

impl ConnectorContext {
    /// The context of a connector running on its own, without the API (`onhand connector
    /// NAME`, benchmarks): against a Kafka cluster, so movements are safe once acknowledged.
    pub fn standalone(
        config: &Config,
        db: Arc<dyn Db>,
        producer: Producer,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> ConnectorContext {
        let cache = StockCache::new(Arc::clone(&db), &config.query, metrics.clone());
        let produce_timeout = std::time::Duration::from_millis(config.kafka.produce_timeout_ms);
        let relay = Relay {
            db: Arc::clone(&db),
            producer: producer.clone(),
            topics: config.kafka.topics.clone(),
            produce_timeout,
            cache: cache.clone(),
            clock: Clock::default(),
            forget: Forget::WhenAcknowledged,
            acknowledged: Arc::default(),
        };
        let ingest = Ingest {
            durability: Durability::Kafka,
            producer: producer.clone(),
            movements_topic: config.kafka.topics.movements.clone(),
            produce_timeout,
            db: Arc::clone(&db),
            relay,
        };
        ConnectorContext {
            producer,
            ingest,
            component: Component::detached("connector"),
            topics: config.kafka.topics.clone(),
            db,
            cache,
            config: Arc::new(config.clone()),
            shutdown,
            metrics,
        }
    }
}

impl std::fmt::Debug for ConnectorContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorContext").field("topics", &self.topics).finish_non_exhaustive()
    }
}

#[async_trait]
pub trait Connector: Send + Sync + std::fmt::Debug {
    /// A short, stable name: `shopify`, `pos`, `erp`, `wms`.
    fn name(&self) -> &'static str;

    /// Routes served by the HTTP API for this connector, if it receives pushes, each group
    /// with the API-key scope it needs.
    fn routes(&self, _context: &ConnectorContext) -> Vec<ScopedRoutes> {
        Vec::new()
    }

    /// Runs until `context.shutdown` fires.
    async fn run(self: Arc<Self>, context: ConnectorContext) -> Result<(), ConnectorError>;
}

/// Every connector this build knows, each configured from its `[connectors.NAME]`
/// section: the one place a new connector is added. A connector without a section does not
/// run; a section it cannot read refuses the start.
pub fn registry(config: &Config) -> Result<Vec<Arc<dyn Connector>>, ConnectorError> {
    let mut connectors: Vec<Arc<dyn Connector>> = Vec::new();
    for (name, value) in &config.connectors {
        match name.as_str() {
            "pos" => connectors.push(Arc::new(pos::Pos::new(section("pos", value)?))),
            "erp" => connectors.push(Arc::new(erp::Erp::new(section("erp", value)?)?)),
            shopify::NAME => connectors.push(Arc::new(shopify::Shopify::from_section(config, value)?)),
            "wms" => connectors.push(Arc::new(wms::Wms::new(section("wms", value)?)?)),
            other => {
                return Err(ConnectorError {
                    connector: "registry",
                    message: format!(
                        "[connectors.{other}]: no connector is named {other:?} (known: erp, pos, shopify, wms)"
                    ),
                    retryable: false,
                })
            }
        }
    }
    Ok(connectors)
}

/// Reads a connector's section into its typed configuration, naming the connector and
/// the field in the error.
pub fn section<T: serde::de::DeserializeOwned>(
    connector: &'static str,
    value: &serde_json::Value,
) -> Result<T, ConnectorError> {
    serde_json::from_value(value.clone()).map_err(|e| ConnectorError {
        connector,
        message: format!("[connectors.{connector}] is not valid: {e}"),
        retryable: false,
    })
}

#[cfg(test)]
mod tests {
    use onhand_core::config::{ChannelConfig, Config};
    use serde_json::json;

    use super::registry;

    fn shopify_section() -> serde_json::Value {
        json!({
            "shop": "casa-onhand.myshopify.com", "access_token": "shpat_x", "webhook_secret": "s",
            "default_location": "dc-sp", "sink": { "channel": "web", "location_id": 1 }
        })
    }

    #[test]
    fn the_registry_builds_known_connectors_and_refuses_unknown_names() {
        let mut config = Config::default();
        config.channels.insert("web".into(), ChannelConfig { all_locations: true, locations: Vec::new() });
        assert!(registry(&config).unwrap().is_empty(), "no section, no connector");
        config.connectors.insert("shopify".into(), shopify_section());
        let connectors = registry(&config).unwrap();
        assert_eq!(connectors.iter().map(|c| c.name()).collect::<Vec<_>>(), ["shopify"]);

        config.connectors.insert("sap".into(), json!({}));
        let refused = registry(&config).unwrap_err();
        assert!(refused.message.contains("no connector is named \"sap\""), "{}", refused.message);
        assert!(!refused.retryable);
        config.connectors.remove("sap");
        config.connectors.insert("pos".into(), json!({}));
        let names: Vec<&str> = registry(&config).unwrap().iter().map(|c| c.name()).collect();
        assert_eq!(names, ["pos", "shopify"]);
        config.connectors.remove("pos");

        config.connectors.remove("sap");
        config.channels.remove("web");
        let refused = registry(&config).unwrap_err();
        assert!(refused.message.contains("sink.channel \"web\" is not a channel"), "{}", refused.message);
    }
}
