//! The HTTP API (axum). Routes: `POST /v1/movements`; stock reads `GET /v1/stock/{sku}`,
//! `GET /v1/stock/{sku}/{location}`, `POST /v1/stock/query`,
//! `GET /v1/availability/{sku}?channel=NAME`; `PUT /v1/stock/{sku}/{location}/policy`;
//! `PUT`/`GET /v1/products/{sku}`; `POST /v1/reservations`, `GET /v1/reservations/{id}`,
//! `POST /v1/reservations/{id}/commit`, `POST /v1/reservations/{id}/cancel`;
//! `GET /healthz`, `GET /readyz`, `GET /metrics`.
//!
//! - `error`: the table from errors to status and stable code.
//! - `movements`: ingest of movements onto Kafka.
//! - `stock`: stock reads through the cache, channel availability, stock policies.
//! - `products`: the product catalog.
//! - `reservations`: holding units for checkouts, committing and cancelling them.

mod error;
mod movements;
mod products;
mod reservations;
mod stock;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{
    extract::{DefaultBodyLimit, State},
    http::{header::CONTENT_TYPE, StatusCode, Uri},
    response::IntoResponse,
    routing::{get, post, put},
    Json, Router,
};
use rdkafka::producer::FutureProducer;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

pub use self::error::{error_body, ApiError};
use crate::{
    cache::StockCache,
    config::{ChannelConfig, HttpConfig, QueryConfig, Topics},
    ledger::LedgerRunning,
    relay::Relay,
    reservation::Reservations,
    store::Store,
    telemetry::Metrics,
};

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub producer: FutureProducer,
    pub topics: Topics,
    pub metrics: Metrics,
    pub http: HttpConfig,
    pub produce_timeout_ms: u64,
    /// The ledger of this process, if it runs one.
    pub ledger: Option<LedgerRunning>,
    pub cache: StockCache,
    pub query: QueryConfig,
    pub channels: BTreeMap<String, ChannelConfig>,
    pub relay: Relay,
    pub reservations: Reservations,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").field("topics", &self.topics).finish_non_exhaustive()
    }
}

/// The routes of the API, to which connectors may add theirs before [`finish`] wraps them.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/movements", post(movements::post))
        .route("/v1/stock/query", post(stock::query))
        .route("/v1/stock/{sku}", get(stock::get_sku))
        .route("/v1/stock/{sku}/{location}", get(stock::get_level))
        .route("/v1/stock/{sku}/{location}/policy", put(stock::put_policy))
        .route("/v1/availability/{sku}", get(stock::availability))
        .route("/v1/products/{sku}", put(products::put).get(products::get))
        .route("/v1/reservations", post(reservations::create))
        .route("/v1/reservations/{id}", get(reservations::get))
        .route("/v1/reservations/{id}/commit", post(reservations::commit))
        .route("/v1/reservations/{id}/cancel", post(reservations::cancel))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Wraps every route with the common layers. Layers apply to the routes present when they
/// are added, so this comes after every `merge`.
pub fn finish(router: Router) -> Router {
    router
        .fallback(not_found)
        // The movements route reads its body itself, to answer 413 with a stable code;
        // every other route takes a small body at most.
        .layer(DefaultBodyLimit::max(64 * 1024))
        .layer(TraceLayer::new_for_http())
}

/// Serves until `shutdown` fires, then finishes the requests in flight.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

/// Liveness: the process answers. Cheap on purpose; `/readyz` checks dependencies.
async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

/// Readiness: the database answers within a second, and the ledger (if this process runs
/// one) has not stopped.
async fn readyz(State(state): State<ApiState>) -> impl IntoResponse {
    let database = matches!(tokio::time::timeout(Duration::from_secs(1), state.store.ping()).await, Ok(Ok(())));
    let ledger = state.ledger.as_ref().map(LedgerRunning::get);
    let ready = database && ledger != Some(false);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let text = |ok: bool| if ok { "ok" } else { "unavailable" };
    let ledger = match ledger {
        Some(true) => "running",
        Some(false) => "stopped",
        None => "not in this process",
    };
    (status, Json(json!({ "status": text(ready), "database": text(database), "ledger": ledger })))
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_string())
}
