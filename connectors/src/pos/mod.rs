//! Store POS feeds: what the tills sell and return, and the stores' stock reports.
//!
//! - `config`: `[connectors.pos]`.
//! - `mapping`: pure functions from a till's line and the brief's stock report to movements.
//! - `source`: the central routes (`/connectors/pos/...`) that tills and store agents post to.
//! - `agent`: `onhand store-agent`, which serves the same routes in a store, keeps every
//!   line in a local outbox and forwards it in order when the network allows.

pub mod agent;
mod config;
pub mod mapping;
mod source;

use std::sync::Arc;

use async_trait::async_trait;
use onhand_core::auth::Scope;

pub use self::config::PosConfig;
use crate::{Connector, ConnectorContext, ConnectorError, ScopedRoutes};

/// The header a store agent names its numbering's life with.
pub const EPOCH_HEADER: &str = "x-onhand-agent-epoch";
/// The highest sequence number the agent holds.
pub const HEAD_HEADER: &str = "x-onhand-agent-head";
/// When the oldest line the agent has not forwarded yet occurred.
pub const OLDEST_PENDING_HEADER: &str = "x-onhand-agent-oldest-pending";

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
        "pos"
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
