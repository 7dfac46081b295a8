//! What the webhook route, the reconciliation and the sink share: the running connector's
//! state, its error, and the key under which the sink records what it pushed (which the
//! route reads to recognise its echo).

use std::sync::Arc;

use onhand_core::db::DbError;

use super::{
    client::{Admin, AdminError},
    config::ShopifyConfig,
    metrics::ShopifyMetrics,
};
use crate::contract::ConnectorContext;

/// The name of the webhooks and the reconciliation in `GET /v1/sources`: that of the
/// movements they produce (`freshness::source_name`).
pub const SOURCE: &str = "shopify";
/// The name of the sink in `GET /v1/sources`: it produces no movements, and its health is
/// apart from that of the orders coming in.
pub const SINK_SOURCE: &str = "shopify-sink";

/// What the route, the reconciliation and the sink share.
#[derive(Debug)]
pub struct Shared {
    pub config: Arc<ShopifyConfig>,
    pub admin: Arc<Admin>,
    pub metrics: ShopifyMetrics,
    pub context: ConnectorContext,
}

/// Something the connector could not do; `is_retryable` says whether trying again later
/// may work.
#[derive(Debug, thiserror::Error)]
pub enum ShopifyError {
    #[error("kafka did not acknowledge: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error(transparent)]
    Admin(#[from] AdminError),
}

impl ShopifyError {
    pub fn is_retryable(&self) -> bool {
        match self {
            ShopifyError::Kafka(_) => true,
            ShopifyError::Db(e) => e.is_retryable(),
            ShopifyError::Admin(e) => e.is_retryable(),
        }
    }
}

/// The key under which the sink records what it pushed for an item at a location, in
/// `connector_state`, so that every replica's webhook route sees it.
pub fn pushed_key(inventory_item_id: u64, location_id: u64) -> String {
    format!("pushed:{inventory_item_id}:{location_id}")
}
