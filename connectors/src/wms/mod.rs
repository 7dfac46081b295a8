//! The distribution centre's WMS: CSV files dropped into an inbox, each produced whole
//! or not at all (`docs/connectors/wms.md`).
//!
//! - `config`: `[connectors.wms]`.
//! - `mapping`: pure functions from the two CSV formats (movements, stock snapshot) to
//!   movements, and the event id `wms:{sha256 of the file}:{line}`.
//! - `source`: the task that watches the inbox, checks each complete file, produces it
//!   in batches and moves it to `archive/` or `rejected/`.

mod config;
pub mod mapping;
mod source;

use std::sync::Arc;

use async_trait::async_trait;

pub use self::{config::WmsConfig, source::WmsError};
use crate::{Connector, ConnectorContext, ConnectorError};

#[derive(Debug)]
pub struct Wms {
    config: Arc<WmsConfig>,
}

impl Wms {
    /// Refuses a configuration that cannot work (no inbox, zero limits).
    pub fn new(config: WmsConfig) -> Result<Wms, ConnectorError> {
        config.check()?;
        Ok(Wms { config: Arc::new(config) })
    }
}

#[async_trait]
impl Connector for Wms {
    fn name(&self) -> &'static str {
        "wms"
    }

    async fn run(self: Arc<Self>, context: ConnectorContext) -> Result<(), ConnectorError> {
        source::run(Arc::clone(&self.config), context).await
    }
}

#[cfg(test)]
mod tests;
