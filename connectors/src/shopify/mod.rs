//! The Shopify connector: the web store's orders, refunds and manual stock changes in,
//! onhand's availability out. `docs/connectors/shopify.md` is the user's guide.
//!
//! - `config`: `[connectors.shopify]`.
//! - `payloads`: Shopify's wire shapes (webhook REST JSON, Admin GraphQL nodes).
//! - `mapping`: pure functions from those shapes to movements and dead letters, and the
//!   echo rule of `inventory_levels/update`.
//! - `source`: the webhook route (`POST /connectors/shopify/webhooks`) and the
//!   reconciliation task that polls the orders the webhooks missed.
//! - `sink`: follows the stock topic and pushes a channel's availability to Shopify.
//! - `client`: the Admin GraphQL client: rate limit, retryable errors.

pub mod client;
pub mod config;
pub mod mapping;
pub mod payloads;
pub mod sink;
pub mod source;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;
use onhand_core::{config::Config, db::DbError};

use self::{
    client::{Admin, AdminError},
    config::ShopifyConfig,
};
use crate::{Connector, ConnectorContext, ConnectorError, ScopedRoutes};

/// The name of the connector: its section, its routes' prefix, its saved state.
pub const NAME: &str = "shopify";

/// Something the connector could not do; `is_retryable` says whether trying again later
/// may work.
#[derive(Debug, thiserror::Error)]
pub enum ShopifyError {
    #[error("kafka did not acknowledge: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("database: {0}")]
    Store(#[from] DbError),
    #[error(transparent)]
    Admin(#[from] AdminError),
}

impl ShopifyError {
    pub fn is_retryable(&self) -> bool {
        match self {
            ShopifyError::Kafka(_) => true,
            ShopifyError::Store(e) => e.is_retryable(),
            ShopifyError::Admin(e) => e.is_retryable(),
        }
    }
}

#[derive(Debug)]
pub struct Shopify {
    config: Arc<ShopifyConfig>,
    admin: Arc<Admin>,
}

impl Shopify {
    pub fn from_section(config: &Config, section: &serde_json::Value) -> Result<Self, ConnectorError> {
        let shopify = ShopifyConfig::from_section(config, section)?;
        let admin = Admin::new(shopify.graphql_url(), shopify.access_token.clone(), &shopify.http)
            .map_err(|e| ConnectorError { connector: NAME, message: format!("http client: {e}"), retryable: false })?;
        Ok(Self { config: Arc::new(shopify), admin: Arc::new(admin) })
    }

    fn shared(&self, context: &ConnectorContext) -> Arc<source::Shared> {
        Arc::new(source::Shared {
            config: Arc::clone(&self.config),
            admin: Arc::clone(&self.admin),
            context: context.clone(),
        })
    }
}

#[async_trait]
impl Connector for Shopify {
    fn name(&self) -> &'static str {
        NAME
    }

    /// The webhook route checks Shopify's signature itself: no API key.
    fn routes(&self, context: &ConnectorContext) -> Vec<ScopedRoutes> {
        vec![ScopedRoutes { scope: None, router: source::routes(self.shared(context)) }]
    }

    /// Runs the reconciliation and, when configured, the sink, until shutdown.
    async fn run(self: Arc<Self>, context: ConnectorContext) -> Result<(), ConnectorError> {
        let shared = self.shared(&context);
        let sink = async {
            match &self.config.sink {
                Some(config) => sink::run(Arc::clone(&shared), config.clone()).await,
                None => Ok(()),
            }
        };
        let ((), sink) = tokio::join!(source::reconcile(Arc::clone(&shared)), sink);
        sink.map_err(|e| ConnectorError { connector: NAME, message: e.to_string(), retryable: e.is_retryable() })?;
        Ok(())
    }
}
