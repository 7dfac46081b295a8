//! The Shopify connector: the web store's orders, refunds and manual stock changes in,
//! onhand's availability out. `docs/connectors/shopify.md` is the user's guide.
//!
//! - `mod.rs`: [`KIND`], the connector in the registry, and [`Shopify`], the built
//!   connector.
//! - `config`: its name and `[connectors.shopify]`.
//! - `metrics`: `onhand_shopify_*`.
//! - `payloads`: Shopify's wire shapes (webhook REST JSON, Admin GraphQL nodes).
//! - `mapping`: pure functions from those shapes to movements and dead letters, and the
//!   echo rule of `inventory_levels/update`.
//! - `client`: the Admin GraphQL client: rate limit, retryable errors.
//! - `shared`: what the route, the reconciliation and the sink share: the running state,
//!   the connector's error, the key of what the sink pushed.
//! - `source`: the webhook route (`POST /connectors/shopify/webhooks`) and the
//!   reconciliation task that polls the orders the webhooks missed.
//! - `sink`: follows the stock topic and pushes a channel's availability to Shopify.
//! - `redrive`: a dead letter mapped again once its product or location is known, for
//!   `onhand dlq redrive`.

pub mod client;
pub mod config;
pub mod mapping;
mod metrics;
pub mod payloads;
pub mod redrive;
pub mod shared;
pub mod sink;
pub mod source;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;
use prometheus::Registry;

use self::{client::Admin, config::ShopifyConfig, metrics::ShopifyMetrics, shared::Shared};
pub use self::{config::NAME, shared::ShopifyError};
use crate::contract::{Connector, ConnectorContext, ConnectorError, ConnectorKind, ScopedRoutes};

/// The Shopify connector, as the registry lists it.
pub const KIND: ConnectorKind = ConnectorKind {
    name: NAME,
    build: |value, config, metrics| Ok(Arc::new(Shopify::new(ShopifyConfig::from_section(config, value)?, metrics)?)),
};

#[derive(Debug)]
pub struct Shopify {
    config: Arc<ShopifyConfig>,
    admin: Arc<Admin>,
    metrics: ShopifyMetrics,
}

impl Shopify {
    /// Makes the Admin API client, then registers the metrics.
    pub fn new(shopify: ShopifyConfig, metrics: &Registry) -> Result<Self, ConnectorError> {
        let admin = Admin::new(shopify.graphql_url(), shopify.access_token.clone(), &shopify.http)
            .map_err(|e| ConnectorError { connector: NAME, message: format!("http client: {e}"), retryable: false })?;
        let metrics = ShopifyMetrics::register(metrics)?;
        Ok(Self { config: Arc::new(shopify), admin: Arc::new(admin), metrics })
    }

    fn shared(&self, context: &ConnectorContext) -> Arc<Shared> {
        Arc::new(Shared {
            config: Arc::clone(&self.config),
            admin: Arc::clone(&self.admin),
            metrics: self.metrics.clone(),
            context: context.clone(),
        })
    }
}

/// The lease under which one replica at a time reconciles the orders.
const RECONCILE_LEASE: &str = "shopify.reconcile";

#[async_trait]
impl Connector for Shopify {
    fn name(&self) -> &'static str {
        NAME
    }

    /// The webhook route checks Shopify's signature itself: no API key.
    fn routes(&self, context: &ConnectorContext) -> Vec<ScopedRoutes> {
        vec![ScopedRoutes { scope: None, router: source::routes(self.shared(context)) }]
    }

    /// Runs the reconciliation, on one replica at a time (the lease `shopify.reconcile`),
    /// and, when configured, the sink, until shutdown. The sink runs on every replica: its
    /// consumer group shares the stock topic's partitions between them.
    async fn run(self: Arc<Self>, context: ConnectorContext) -> Result<(), ConnectorError> {
        let shared = self.shared(&context);
        let sink = async {
            match &self.config.sink {
                Some(config) => sink::run(Arc::clone(&shared), config.clone()).await,
                None => Ok(()),
            }
        };
        let reconcile = async {
            if !self.config.reconcile.enabled {
                return Ok(());
            }
            context
                .leased(RECONCILE_LEASE, |context| {
                    let shared = self.shared(&context);
                    async move {
                        source::reconcile(shared).await;
                        Ok(())
                    }
                })
                .await
        };
        let (reconciled, sink) = tokio::join!(reconcile, sink);
        sink.map_err(|e| ConnectorError { connector: NAME, message: e.to_string(), retryable: e.is_retryable() })?;
        reconciled
    }
}
