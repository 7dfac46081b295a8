//! Store POS feeds: what the tills sell and return, and the stores' stock reports.
//!
//! - `mod.rs`: [`KIND`], the connector in the registry, and [`Pos`], the built connector.
//! - `config`: its name and `[connectors.pos]`.
//! - `mapping`: pure functions from a till's line and the brief's stock report to movements.
//! - `source`: the central routes (`/connectors/pos/...`) that tills and store agents post
//!   to, and the headers an agent sends them.
//! - `agent`: `onhand store-agent`, which serves the same routes in a store, keeps every
//!   line in a local outbox and forwards it in order when the network allows.
//!
//! It defines no metrics of its own, so it has no `metrics.rs`.

pub mod agent;
mod config;
pub mod mapping;
mod source;

use std::sync::Arc;

use async_trait::async_trait;
use onhand_core::auth::Scope;

pub use self::{
    config::{PosConfig, NAME},
    source::{EPOCH_HEADER, HEAD_HEADER, OLDEST_PENDING_HEADER},
};
use crate::contract::{section, Connector, ConnectorContext, ConnectorError, ConnectorKind, ScopedRoutes};

/// The POS connector, as the registry lists it.
pub const KIND: ConnectorKind =
    ConnectorKind { name: NAME, build: |value, _config, _metrics| Ok(Arc::new(Pos::new(section(NAME, value)?))) };

#[derive(Debug)]
pub struct Pos {
    config: Arc<PosConfig>,
}

impl Pos {
    pub fn new(config: PosConfig) -> Pos {
        Pos { config: Arc::new(config) }
    }
}

#[async_trait]
impl Connector for Pos {
    fn name(&self) -> &'static str {
        NAME
    }

    /// The tills and agents post with an API key that may write movements.
    fn routes(&self, context: &ConnectorContext) -> Vec<ScopedRoutes> {
        let router = source::routes(context.clone(), Arc::clone(&self.config));
        vec![ScopedRoutes { scope: Some(Scope::MovementsWrite), router }]
    }

    /// The routes do the work; nothing runs on its own.
    async fn run(self: Arc<Self>, context: ConnectorContext) -> Result<(), ConnectorError> {
        context.shutdown.cancelled().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
