//! The HTTP API (axum). Every `/v1` route needs an API key (`Authorization: Bearer
//! onh_...`) with the scope of its group; the operational routes are open.
//!
//! - `stock:read`: `GET /v1/stock/{sku}`, `GET /v1/stock/{sku}/{location}`,
//!   `POST /v1/stock/query`, `GET /v1/availability/{sku}?channel=NAME`,
//!   `GET /v1/products/{sku}`, `GET /v1/movements`, `GET /v1/stock/{sku}/{location}/history`,
//!   `GET /v1/alerts`, `GET /v1/alerts/{id}`, `POST /v1/alerts/{id}/ack`.
//! - `movements:write`: `POST /v1/movements`.
//! - `reservations:write`: `POST /v1/reservations`, `GET /v1/reservations/{id}`,
//!   `POST /v1/reservations/{id}/commit`, `POST /v1/reservations/{id}/cancel`.
//! - `orders:write`: `POST /v1/orders`, `GET /v1/orders/{id}`, `POST /v1/orders/{id}/cancel`,
//!   `GET /v1/orders/queue`, `PUT|GET|DELETE /v1/carts/{id}`, `POST /v1/back-in-stock`,
//!   `GET /v1/back-in-stock/{id}`.
//! - `admin`: `PUT /v1/products/{sku}`, `PUT /v1/stock/{sku}/{location}/policy`,
//!   `POST /v1/subscriptions`, `GET /v1/subscriptions`, `DELETE /v1/subscriptions/{id}`,
//!   `GET /v1/subscriptions/{id}/deliveries`.
//! - `stock:read` too: `GET /v1/stream` (SSE), `GET /v1/stream/stats`, and `GET /v1/ws`, which
//!   checks its key itself (a header, or its first message).
//! - open: `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /dashboard` (its page and
//!   assets; its data calls need a key).
//!
//! The modules:
//!
//! - `error`: the table from errors to status and stable code.
//! - `auth`: API keys at the edge: the scope of each route group, the per-key rate limit,
//!   the [`Principal`] handed to routes.
//! - `state`: what every handler shares.
//! - `extract`: body extractors that answer with the error table.
//! - `movements`: ingest of movements onto Kafka.
//! - `stock`: stock reads through the cache, channel availability, stock policies.
//! - `history`: the audit trail of movements, and a level over time.
//! - `products`: the product catalog.
//! - `reservations`: holding units for checkouts, committing and cancelling them.
//! - `orders`: checkouts placed on the order queue, and where each order is.
//! - `carts`: a customer's lines before checkout, soft-held where the channel holds.
//! - `alerts`: alerts, their acknowledgement, and webhook subscriptions to them.
//! - `observe`: each request's id, span and metrics.
//! - `params`: query parameters, read strictly.
//! - `stream`: the live stream (SSE, WebSocket) and its flow.
//! - `dashboard`: the dashboard's page and assets, embedded in the binary.

mod alerts;
mod auth;
mod carts;
mod dashboard;
mod error;
mod extract;
mod history;
mod movements;
mod observe;
mod orders;
mod params;
mod products;
mod reservations;
mod state;
mod stock;
mod stream;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{header::CONTENT_TYPE, StatusCode, Uri},
    middleware,
    response::IntoResponse,
    routing::get,
    Json, Router,
};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi as _;
use utoipa_axum::{router::OpenApiRouter, routes};

use self::extract::SMALL_BODY_BYTES_MAX;
pub use self::{
    auth::Principal,
    error::{error_body, ApiError, ErrorBody, ErrorDetail},
    extract::idempotency_key,
    state::{ApiContext, ApiState},
};
use crate::{auth::Scope, db::Ping, freshness::SourceReport, health::Readiness, telemetry::Metrics};

/// The routes of the API and the connectors' routes, which [`finish`] then wraps. Each
/// group of routes needs one scope, checked by its `route_layer`; a connector's routes
/// need the scope it asks for, or none when it authenticates its callers itself.
/// `GET /openapi.json` describes every route of these groups.
pub fn router(context: ApiContext, connector_routes: Vec<ScopedRoutes>) -> Router {
    let refresh_budget = Duration::from_millis(context.query.database_budget_ms);
    let keys = Arc::new(auth::Authenticator::new(
        Arc::clone(&context.keys),
        &context.http,
        refresh_budget,
        context.metrics.clone(),
    ));
    let state = ApiState { context: Arc::new(context), auth: Arc::clone(&keys) };
    let mut api = OpenApiRouter::with_openapi(ApiDoc::openapi());
    for (scope, group) in route_groups() {
        api = api.merge(match scope {
            Some(scope) => group.route_layer(middleware::from_fn_with_state(keys.require(scope), auth::require)),
            None => group,
        });
    }
    let (router, openapi) = api.split_for_parts();
    let document = Bytes::from(openapi.to_pretty_json().expect("the OpenAPI document always serializes"));
    let mut router = router
        .route("/openapi.json", get(move || async move { ([(CONTENT_TYPE, "application/json")], document) }))
        .with_state(state)
        .merge(dashboard::routes());
    for ScopedRoutes { scope, router: routes } in connector_routes {
        router = router.merge(match scope {
            Some(scope) => routes.route_layer(middleware::from_fn_with_state(keys.require(scope), auth::require)),
            None => routes,
        });
    }
    router
}

/// Routes a connector serves through the API, and the scope an API key needs for them;
/// `None` when the connector authenticates its callers itself (webhook signatures).
#[derive(Debug)]
pub struct ScopedRoutes {
    pub scope: Option<Scope>,
    pub router: Router,
}

/// The OpenAPI document of the API, as `GET /openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut api = OpenApiRouter::<ApiState>::with_openapi(ApiDoc::openapi());
    for (_, group) in route_groups() {
        api = api.merge(group);
    }
    api.into_openapi()
}

/// Every route, by the scope its API key needs (`None`: open), each registered with its
/// description so that the document and the routes cannot drift apart.
fn route_groups() -> Vec<(Option<Scope>, OpenApiRouter<ApiState>)> {
    let stock_read = OpenApiRouter::new()
        .routes(routes!(stock::query))
        .routes(routes!(stock::get_sku))
        .routes(routes!(stock::get_level))
        .routes(routes!(stock::availability))
        .routes(routes!(products::get))
        .routes(routes!(sources))
        .routes(routes!(history::movements))
        .routes(routes!(history::level))
        .routes(routes!(alerts::list))
        .routes(routes!(alerts::get))
        .routes(routes!(alerts::acknowledge))
        .routes(routes!(stream::stream))
        .routes(routes!(stream::stats));
    let movements_write = OpenApiRouter::new().routes(routes!(movements::post));
    let reservations_write = OpenApiRouter::new()
        .routes(routes!(reservations::create))
        .routes(routes!(reservations::get))
        .routes(routes!(reservations::commit))
        .routes(routes!(reservations::cancel));
    // The queue's route before the order's, so that `queue` is not read as an order id.
    let orders_write = OpenApiRouter::new()
        .routes(routes!(orders::create))
        .routes(routes!(orders::get_queue))
        .routes(routes!(orders::get))
        .routes(routes!(orders::cancel))
        .routes(routes!(carts::put, carts::get, carts::delete))
        .routes(routes!(orders::watch_back_in_stock))
        .routes(routes!(orders::get_back_in_stock));
    let admin = OpenApiRouter::new()
        .routes(routes!(stock::put_policy))
        .routes(routes!(products::put))
        .routes(routes!(alerts::subscribe, alerts::subscriptions))
        .routes(routes!(alerts::unsubscribe))
        .routes(routes!(alerts::deliveries));
    let open = OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz)).routes(routes!(metrics));
    // The WebSocket admits its key itself: a browser sends it as the first message.
    let open = open.routes(routes!(stream::ws));
    vec![
        (Some(Scope::StockRead), stock_read),
        (Some(Scope::MovementsWrite), movements_write),
        (Some(Scope::ReservationsWrite), reservations_write),
        (Some(Scope::OrdersWrite), orders_write),
        (Some(Scope::Admin), admin),
        (None, open),
    ]
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "onhand",
        description = "Real-time, multi-channel inventory: what every sales channel may sell, and reservations \
                       that never promise the last unit twice. Errors are `{\"error\": {\"code\", \"message\"}}` \
                       with a stable code; docs/api.md has examples.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerKeys),
    tags(
        (name = "movements", description = "Stock movements in"),
        (name = "stock", description = "What is on hand and available, and stock policies"),
        (name = "products", description = "The product catalog"),
        (name = "reservations", description = "Units held for checkouts"),
        (name = "alerts", description = "Alerts raised from stock levels and sources, and webhooks that push them"),
        (name = "operations", description = "Health, readiness and metrics; no key needed"),
        (name = "stream", description = "Levels, alerts and sources' health as they change"),
    )
)]
struct ApiDoc;

/// Declares the `api_key` scheme the routes' `security` refers to.
struct BearerKeys;

impl utoipa::Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("onh_<id>_<secret>")
            .description(Some("An API key from `onhand keys create`; its scopes are listed on each route."))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("api_key", SecurityScheme::Http(scheme));
    }
}

/// Wraps every route with the common layers. Layers apply to the routes present when they
/// are added, so this comes after every `merge`.
pub fn finish(router: Router, metrics: Metrics) -> Router {
    router
        .fallback(not_found)
        // The movements route reads its body itself, up to its own limit; every other
        // route takes a small body at most (`extract::SmallBody`).
        .layer(DefaultBodyLimit::max(SMALL_BODY_BYTES_MAX))
        .layer(middleware::from_fn_with_state(metrics, observe::observe))
}

/// Serves until `shutdown` fires, then finishes the requests in flight.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    // With each connection's address, which the per-address limit of unverified requests uses.
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, service).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

/// Liveness: the process answers. Cheap on purpose; `/readyz` checks dependencies.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "operations", summary = "The process answers",
    responses((status = 200, description = "`{\"status\": \"ok\", \"version\": ...}`")))]
async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

/// Readiness, from the components' states as they last reported them: answering costs
/// nothing, so probes (or a flood of requests) never reach the database. The database's
/// own component is refreshed in the background by [`watch_database`].
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "operations", summary = "Every critical component runs",
    responses((status = 200, description = "ready: `status` is `ok`, or `degraded` when an optional component is not running", body = ReadyAnswer),
              (status = 503, description = "a critical component does not run, or one failed for good", body = ReadyAnswer)))]
async fn readyz(State(state): State<ApiState>) -> impl IntoResponse {
    ready_answer(&state.health)
}

fn ready_answer(health: &crate::health::Health) -> (StatusCode, Json<ReadyAnswer>) {
    let Readiness { ready, degraded, components } = health.readiness();
    let (status, text) = match (ready, degraded) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (true, true) => (StatusCode::OK, "degraded"),
        (true, false) => (StatusCode::OK, "ok"),
    };
    (status, Json(ReadyAnswer { status: text, components }))
}

/// The body of `/readyz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ReadyAnswer {
    /// `ok`, `degraded` or `unavailable`.
    status: &'static str,
    /// Every component of the process by name (`database`, `ledger`, `relay`,
    /// `connector:erp`...).
    components: BTreeMap<String, crate::health::ComponentReport>,
}

/// How often the database's component is refreshed, and how long a ping may take.
const DATABASE_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Pings the database every second and reports it as the `database` component, until
/// `shutdown`.
pub async fn watch_database(db: Arc<dyn Ping>, component: crate::health::Component, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(DATABASE_WATCH_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        match tokio::time::timeout(DATABASE_WATCH_INTERVAL, db.ping()).await {
            Ok(Ok(())) => component.running(),
            Ok(Err(e)) => {
                // The error's text may name hosts and users: logged, never served.
                if component.state() == Some(crate::health::State::Running) {
                    tracing::warn!(error = %e, "the database does not answer");
                }
                component.blocked("the database does not answer")
            }
            Err(_) => component.blocked("the database did not answer within a second"),
        }
    }
}

#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations", summary = "Prometheus metrics",
    responses((status = 200, description = "the text exposition format", content_type = "text/plain")))]
async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    exposition(&state.metrics)
}

fn exposition(metrics: &Metrics) -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render())
}

/// The operational routes alone, `/healthz`, `/readyz` and `/metrics`, for a process that
/// serves no API (`onhand connector NAME --listen`): what its probes and Prometheus read.
pub fn operations(health: crate::health::Health, metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(move || async move { ready_answer(&health) }))
        .route("/metrics", get(move || async move { exposition(&metrics) }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct SourcesAnswer {
    sources: Vec<SourceReport>,
    as_of: chrono::DateTime<chrono::Utc>,
}

/// How far behind each source is (store agents' sequences, connectors' health), and when
/// onhand last heard from it (its newest movement, its last error).
#[utoipa::path(get, path = "/v1/sources", tag = "operations", operation_id = "getSources",
    security(("api_key" = ["stock:read"])), summary = "How far behind each source is",
    responses((status = 200, body = SourcesAnswer), (status = 503, description = "`unavailable`", body = ErrorBody)))]
async fn sources(State(state): State<ApiState>) -> Result<Json<SourcesAnswer>, ApiError> {
    let unavailable = |e: crate::db::DbError| {
        tracing::warn!(error = %e, "sources read failed");
        ApiError::Unavailable("the database")
    };
    let states = state.freshness.sources().await.map_err(unavailable)?;
    let signals = state.signals.source_signals().await.map_err(unavailable)?;
    let now = chrono::Utc::now();
    Ok(Json(SourcesAnswer { sources: SourceReport::all(states, signals, now, &state.sources), as_of: now }))
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_string())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Every route is in the document, with its method and, for `/v1`, its scope.
    #[test]
    fn the_document_describes_every_route() {
        let doc = openapi();
        let expected = [
            ("/v1/movements", "post", Some("movements:write")),
            ("/v1/stock/query", "post", Some("stock:read")),
            ("/v1/stock/{sku}", "get", Some("stock:read")),
            ("/v1/stock/{sku}/{location}", "get", Some("stock:read")),
            ("/v1/stock/{sku}/{location}/policy", "put", Some("admin")),
            ("/v1/availability/{sku}", "get", Some("stock:read")),
            ("/v1/products/{sku}", "get", Some("stock:read")),
            ("/v1/products/{sku}", "put", Some("admin")),
            ("/v1/reservations", "post", Some("reservations:write")),
            ("/v1/reservations/{id}", "get", Some("reservations:write")),
            ("/v1/reservations/{id}/commit", "post", Some("reservations:write")),
            ("/v1/reservations/{id}/cancel", "post", Some("reservations:write")),
            ("/healthz", "get", None),
            ("/readyz", "get", None),
            ("/metrics", "get", None),
            ("/v1/sources", "get", Some("stock:read")),
            ("/v1/movements", "get", Some("stock:read")),
            ("/v1/stock/{sku}/{location}/history", "get", Some("stock:read")),
            ("/v1/alerts", "get", Some("stock:read")),
            ("/v1/alerts/{id}", "get", Some("stock:read")),
            ("/v1/alerts/{id}/ack", "post", Some("stock:read")),
            ("/v1/subscriptions", "post", Some("admin")),
            ("/v1/subscriptions", "get", Some("admin")),
            ("/v1/subscriptions/{id}", "delete", Some("admin")),
            ("/v1/subscriptions/{id}/deliveries", "get", Some("admin")),
            ("/v1/stream", "get", Some("stock:read")),
            ("/v1/stream/stats", "get", Some("stock:read")),
            ("/v1/ws", "get", Some("stock:read")),
            ("/v1/orders", "post", Some("orders:write")),
            ("/v1/orders/{id}", "get", Some("orders:write")),
            ("/v1/orders/{id}/cancel", "post", Some("orders:write")),
            ("/v1/orders/queue", "get", Some("orders:write")),
            ("/v1/back-in-stock", "post", Some("orders:write")),
            ("/v1/back-in-stock/{id}", "get", Some("orders:write")),
            ("/v1/carts/{id}", "put", Some("orders:write")),
            ("/v1/carts/{id}", "get", Some("orders:write")),
            ("/v1/carts/{id}", "delete", Some("orders:write")),
        ];
        let json = serde_json::to_value(&doc).unwrap();
        for (path, method, scope) in expected {
            let operation = &json["paths"][path][method];
            assert!(operation.is_object(), "{method} {path} is not described");
            let security = &operation["security"][0]["api_key"];
            match scope {
                Some(scope) => assert_eq!(security[0], scope, "{method} {path}"),
                None => assert!(security.is_null(), "{method} {path} needs no key"),
            }
        }
        let operations: usize =
            json["paths"].as_object().unwrap().values().map(|item| item.as_object().unwrap().len()).sum();
        assert_eq!(operations, expected.len(), "a route is described that this test does not know");
        let mut ids: Vec<&str> = json["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .map(|operation| operation["operationId"].as_str().unwrap())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), expected.len(), "operation ids are unique");
        assert!(json["components"]["schemas"]["Movement"].is_object());
        assert!(json["components"]["securitySchemes"]["api_key"].is_object());
    }

    /// `docs/openapi.json` is the served document; run with `UPDATE_SCHEMAS=1` to regenerate it.
    #[test]
    fn the_committed_document_is_up_to_date() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let mut generated = openapi().to_pretty_json().unwrap();
        generated.push('\n');
        if std::env::var_os("UPDATE_SCHEMAS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json is stale: run `UPDATE_SCHEMAS=1 cargo test -p onhand-core committed` and commit it"
        );
    }
}
