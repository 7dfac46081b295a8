//! The HTTP API (axum). Every `/v1` route needs an API key (`Authorization: Bearer
//! onh_...`) with the scope of its group; the operational routes are open.
//!
//! - `stock:read`: `GET /v1/stock/{sku}`, `GET /v1/stock/{sku}/{location}`,
//!   `POST /v1/stock/query`, `GET /v1/availability/{sku}?channel=NAME`,
//!   `GET /v1/products/{sku}`.
//! - `movements:write`: `POST /v1/movements`.
//! - `reservations:write`: `POST /v1/reservations`, `GET /v1/reservations/{id}`,
//!   `POST /v1/reservations/{id}/commit`, `POST /v1/reservations/{id}/cancel`.
//! - `admin`: `PUT /v1/products/{sku}`, `PUT /v1/stock/{sku}/{location}/policy`.
//! - open: `GET /healthz`, `GET /readyz`, `GET /metrics`.
//!
//! The modules:
//!
//! - `error`: the table from errors to status and stable code.
//! - `auth`: API keys at the edge: the scope of each route group, the per-key rate limit,
//!   the [`Principal`] handed to routes.
//! - `extract`: body extractors that answer with the error table.
//! - `movements`: ingest of movements onto Kafka.
//! - `stock`: stock reads through the cache, channel availability, stock policies.
//! - `products`: the product catalog.
//! - `reservations`: holding units for checkouts, committing and cancelling them.

mod auth;
mod error;
mod extract;
mod movements;
mod products;
mod reservations;
mod stock;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{
    extract::{DefaultBodyLimit, State},
    http::{header::CONTENT_TYPE, StatusCode, Uri},
    middleware,
    response::IntoResponse,
    routing::{get, post, put},
    Json, Router,
};
use rdkafka::producer::FutureProducer;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

pub use self::{
    auth::Principal,
    error::{error_body, ApiError},
};
use crate::{
    auth::Scope,
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

/// The largest body of every route but `POST /v1/movements`, which reads its own body up
/// to `http.body_bytes_max`.
const SMALL_BODY_BYTES_MAX: usize = 64 * 1024;

/// The routes of the API, to which connectors may add theirs before [`finish`] wraps them.
/// Each group of routes needs one scope, checked by its `route_layer`; connectors' routes
/// authenticate their own way (webhook signatures), so no key is asked of them.
pub fn router(state: ApiState) -> Router {
    let refresh_budget = Duration::from_millis(state.query.database_budget_ms);
    let keys = auth::Authenticator::new(Arc::clone(&state.store), &state.http, refresh_budget, state.metrics.clone());
    let require = |scope| middleware::from_fn_with_state(keys.require(scope), auth::require);

    let stock_read = Router::new()
        .route("/v1/stock/query", post(stock::query))
        .route("/v1/stock/{sku}", get(stock::get_sku))
        .route("/v1/stock/{sku}/{location}", get(stock::get_level))
        .route("/v1/availability/{sku}", get(stock::availability))
        .route("/v1/products/{sku}", get(products::get))
        .route_layer(require(Scope::StockRead));
    let movements_write =
        Router::new().route("/v1/movements", post(movements::post)).route_layer(require(Scope::MovementsWrite));
    let reservations_write = Router::new()
        .route("/v1/reservations", post(reservations::create))
        .route("/v1/reservations/{id}", get(reservations::get))
        .route("/v1/reservations/{id}/commit", post(reservations::commit))
        .route("/v1/reservations/{id}/cancel", post(reservations::cancel))
        .route_layer(require(Scope::ReservationsWrite));
    let admin = Router::new()
        .route("/v1/stock/{sku}/{location}/policy", put(stock::put_policy))
        .route("/v1/products/{sku}", put(products::put))
        .route_layer(require(Scope::Admin));
    let open =
        Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics));

    Router::new()
        .merge(stock_read)
        .merge(movements_write)
        .merge(reservations_write)
        .merge(admin)
        .merge(open)
        .with_state(state)
}

/// Wraps every route with the common layers. Layers apply to the routes present when they
/// are added, so this comes after every `merge`.
pub fn finish(router: Router) -> Router {
    router
        .fallback(not_found)
        // The movements route reads its body itself, up to its own limit; every other
        // route takes a small body at most (`extract::SmallBody`).
        .layer(DefaultBodyLimit::max(SMALL_BODY_BYTES_MAX))
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
