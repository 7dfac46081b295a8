//! What every handler shares: the [`ApiContext`] the app builds once, and the
//! [`ApiState`] axum hands each request.

use std::{collections::BTreeMap, sync::Arc};

use super::auth::Authenticator;
use crate::{
    cache::StockCache,
    config::{ChannelConfig, HttpConfig, QueryConfig, SourcesConfig},
    db::{Alerts, Catalog, History, Keys, Signals, Sources, StockPolicies},
    health::Health,
    ingest::Ingest,
    relay::Relay,
    reservation::service::Reservations,
    telemetry::Metrics,
};

/// What every handler shares, built once by the app.
pub struct ApiContext {
    /// The API keys, for the authenticator.
    pub keys: Arc<dyn Keys>,
    /// The catalog (`/v1/products`).
    pub catalog: Arc<dyn Catalog>,
    /// The stock policies (`PUT /v1/stock/{sku}/{location}/policy`).
    pub policies: Arc<dyn StockPolicies>,
    /// The sources' progress (`GET /v1/sources`).
    pub freshness: Arc<dyn Sources>,
    /// What onhand heard from each source (`GET /v1/sources`).
    pub signals: Arc<dyn Signals>,
    /// The audit trail (`GET /v1/movements`, a level's history).
    pub history: Arc<dyn History>,
    /// Alerts and their webhook subscriptions (`/v1/alerts`, `/v1/subscriptions`).
    pub alerts: Arc<dyn Alerts>,
    /// Where accepted movements are made safe before the answer.
    pub ingest: Ingest,
    pub metrics: Metrics,
    pub http: HttpConfig,
    /// What every component of this process is doing, for `/readyz`.
    pub health: Health,
    pub cache: StockCache,
    pub query: QueryConfig,
    pub channels: BTreeMap<String, ChannelConfig>,
    pub relay: Relay,
    pub reservations: Reservations,
    pub sources: SourcesConfig,
    /// The live stream's hub (`GET /v1/stream`, `/v1/ws`).
    pub stream: crate::stream::Hub,
    /// Orders (`/v1/orders`), their queue's limit and the topic the workers read.
    pub orders: Arc<dyn crate::db::Orders>,
    /// Every role, for the order's cancel (its order, its outbox).
    pub db: Arc<dyn crate::db::Db>,
    pub orders_config: crate::config::OrdersConfig,
    pub order_events: crate::order::worker::EventRelay,
    pub clock: crate::clock::Clock,
}

impl std::fmt::Debug for ApiContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiContext").field("ingest", &self.ingest).finish_non_exhaustive()
    }
}

/// The handlers' state: axum clones it for every request, so it is two `Arc`s.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub(super) context: Arc<ApiContext>,
    /// The keys' verification and rate limits, for routes that charge more than one
    /// request's worth.
    pub(super) auth: Arc<Authenticator>,
}

impl std::ops::Deref for ApiState {
    type Target = ApiContext;

    fn deref(&self) -> &ApiContext {
        &self.context
    }
}
