//! The distribution centre's WMS: CSV files dropped into an inbox, each produced whole
//! or not at all (`docs/connectors/wms.md`).
//!
//! - `mod.rs`: [`KIND`], the connector in the registry, and [`Wms`], the built connector.
//! - `config`: its name and `[connectors.wms]`.
//! - `metrics`: `onhand_wms_*`.
//! - `mapping`: pure functions from the two CSV formats (movements, stock snapshot) to
//!   movements, and the event id `wms:{sha256 of the file}:{line}`.
//! - `source`: the task that watches the inbox, checks each complete file, produces it
//!   in batches and moves it to `archive/` or `rejected/`.
//! - `replay`: `onhand replay connector wms`, an archived file copied back into the inbox.

mod config;
pub mod mapping;
mod metrics;
pub mod replay;
mod source;

use std::sync::Arc;

use async_trait::async_trait;
use prometheus::Registry;

use self::metrics::WmsMetrics;
pub use self::{
    config::{WmsConfig, NAME},
    source::WmsError,
};
use crate::contract::{section, Connector, ConnectorContext, ConnectorError, ConnectorKind};

/// The lease under which one replica at a time takes the inbox's files.
const LEASE: &str = "wms";

/// The WMS connector, as the registry lists it.
pub const KIND: ConnectorKind = ConnectorKind {
    name: NAME,
    build: |value, _config, metrics| Ok(Arc::new(Wms::new(section(NAME, value)?, metrics)?)),
};

#[derive(Debug)]
pub struct Wms {
    config: Arc<WmsConfig>,
    metrics: WmsMetrics,
}

impl Wms {
    /// Refuses a configuration that cannot work (no inbox, zero limits), then registers the
    /// metrics.
    pub fn new(config: WmsConfig, metrics: &Registry) -> Result<Wms, ConnectorError> {
        config.check()?;
        Ok(Wms { config: Arc::new(config), metrics: WmsMetrics::register(metrics)? })
    }
}

#[async_trait]
impl Connector for Wms {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Watches the inbox only while this replica holds the lease `wms`: replicas sharing an
    /// inbox take each file once, and a file left half-produced by a holder that died stays
    /// in the inbox for the next one.
    async fn run(self: Arc<Self>, context: ConnectorContext) -> Result<(), ConnectorError> {
        context.leased(LEASE, |context| source::run(Arc::clone(&self.config), self.metrics.clone(), context)).await
    }
}

#[cfg(test)]
mod tests;
