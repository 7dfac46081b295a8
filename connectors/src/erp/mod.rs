//! The ERP's stock journal: captured by polling (a PostgreSQL journal, or a replica of the
//! Java + Oracle ERP's), or read from Debezium's change events (Oracle itself).
//!
//! - `mod.rs`: [`KIND`], the connector in the registry, and [`Erp`], the built connector.
//! - `config`: its name and `[connectors.erp]`, the journal query and the code maps.
//! - `metrics`: `onhand_erp_*`.
//! - `mapping`: pure functions from a journal row to a movement.
//! - `source`: the poller with its persisted cursor on (change time, row id).
//! - `debezium`: the other way in, Debezium's change events of the journal table.
//! - `encodings`: pure functions reading Debezium's encodings of numbers and times.
//! - `replay`: `onhand replay connector erp`, the cursor moved back.

mod config;
pub mod debezium;
mod encodings;
pub mod mapping;
mod metrics;
pub mod replay;
mod source;

use std::sync::Arc;

use async_trait::async_trait;
use prometheus::Registry;
use sqlx::postgres::PgPoolOptions;

use self::metrics::ErpMetrics;
pub use self::{
    config::{DebeziumColumns, ErpConfig, Mode, NAME},
    source::Cursor,
};
use crate::contract::{section, Connector, ConnectorContext, ConnectorError, ConnectorKind};

/// The ERP connector, as the registry lists it.
pub const KIND: ConnectorKind = ConnectorKind {
    name: NAME,
    build: |value, _config, metrics| Ok(Arc::new(Erp::new(section(NAME, value)?, metrics)?)),
};

#[derive(Debug)]
pub struct Erp {
    config: ErpConfig,
    codes: mapping::Codes,
    metrics: ErpMetrics,
}

impl Erp {
    /// Checks the code maps (a wrong one refuses the start), then registers the metrics.
    pub fn new(config: ErpConfig, metrics: &Registry) -> Result<Erp, ConnectorError> {
        let refuse = |message: String| ConnectorError { connector: NAME, message, retryable: false };
        match config.mode {
            Mode::Poll if config.source_url.is_empty() => {
                return Err(refuse("[connectors.erp] source_url is not set (mode = \"poll\")".into()))
            }
            Mode::Debezium if config.debezium.topic.is_empty() => {
                return Err(refuse("[connectors.erp.debezium] topic is not set (mode = \"debezium\")".into()))
            }
            _ => {}
        }
        let codes = mapping::Codes::new(&config.kinds, &config.locations, &config.source_instance)
            .map_err(|e| refuse(format!("[connectors.erp] {e}")))?;
        Ok(Erp { config, codes, metrics: ErpMetrics::register(metrics)? })
    }
}

#[async_trait]
impl Connector for Erp {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Polls, or follows Debezium, only while this replica holds the lease `erp`: the
    /// journal is read by one replica at a time, from the cursor the last holder saved.
    async fn run(self: Arc<Self>, context: ConnectorContext) -> Result<(), ConnectorError> {
        context.leased(LEASE, |context| Arc::clone(&self).capture(context)).await
    }
}

/// The lease under which one replica at a time captures the journal, in either mode (a
/// switch of modes never runs both).
const LEASE: &str = "erp";

impl Erp {
    async fn capture(self: Arc<Self>, context: ConnectorContext) -> Result<(), ConnectorError> {
        if self.config.mode == Mode::Debezium {
            let follower = debezium::Follower {
                context,
                metrics: self.metrics.clone(),
                config: self.config.clone(),
                codes: self.codes.clone(),
            };
            return follower.run().await.map_err(|message| ConnectorError {
                connector: NAME,
                message,
                retryable: true,
            });
        }
        // Lazy: an ERP database that is down at start is retried like one that goes down later.
        let journal = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_lazy(&self.config.source_url)
            .map_err(|e| ConnectorError { connector: NAME, message: e.to_string(), retryable: false })?;
        let producer = onhand_core::kafka::Producer::new(&context.config.kafka, source::PRODUCER_LINGER)
            .map_err(|e| ConnectorError { connector: NAME, message: e.to_string(), retryable: true })?;
        let poller = source::Poller {
            context,
            metrics: self.metrics.clone(),
            config: self.config.clone(),
            codes: self.codes.clone(),
            journal,
            producer,
        };
        poller.run().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
