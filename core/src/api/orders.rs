//! Orders (`docs/orders.md`): `POST /v1/orders` (with an `Idempotency-Key` header) checks
//! an order field by field, records it as received and puts it on the orders topic for the
//! workers (`order/worker.rs`), answering 202 at once; `GET /v1/orders/{id}` is where it
//! is; `GET /v1/orders/queue` how long the queue is. When the oldest waiting order is
//! older than `orders.queue_age_max_s`, a new order is refused with 503
//! `order_queue_saturated` rather than left waiting in the dark.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::{header::RETRY_AFTER, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Extension, Json,
};
use serde::Serialize;
use tracing::warn;

use super::{
    auth::Principal,
    carts,
    error::{ApiError, ErrorDetail},
    extract::SmallBody,
    state::ApiState,
};
use crate::{
    db::{BackInStock, ChannelEvent, NewOrder, OrderRecord, Received},
    order::{
        cancel::{self, Cancelled},
        worker::set_queue_gauges,
        FieldError, OrderEvent, OrderOutcome, OrderRequest, OrderStatus, RawOrder,
    },
    reservation::service::Caller,
};

/// An order as answered.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct OrderAnswer {
    id: String,
    status: OrderStatus,
    channel: String,
    /// Where to follow it: `GET` this.
    status_url: String,
    received_at: chrono::DateTime<chrono::Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decided_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The workers' decision, once taken: the location, the date and slot of a scheduled
    /// order, or the reason of a rejection with what is available where and similar products.
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<OrderOutcome>,
}

impl OrderAnswer {
    fn of(record: &OrderRecord) -> Result<OrderAnswer, ApiError> {
        let decision = record.decision.as_deref().map(serde_json::from_str).transpose().map_err(|e| {
            warn!(order = %record.id, error = %e, "a stored order decision cannot be read");
            ApiError::Unavailable("the order's decision")
        })?;
        Ok(OrderAnswer {
            id: record.id.clone(),
            status: record.status,
            channel: record.channel.clone(),
            status_url: format!("/v1/orders/{}", record.id),
            received_at: record.received_at,
            decided_at: record.decided_at,
            decision,
        })
    }
}

/// The answer of an order with wrong fields (422 `invalid_order`): every one of them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct InvalidOrderAnswer<'a> {
    error: ErrorDetail<'a>,
    errors: Vec<FieldError>,
}

/// The queue, as `GET /v1/orders/queue` and a saturation answer tell it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct QueueAnswer {
    /// Orders received and not decided yet.
    waiting: i64,
    /// Age of the oldest of them; 0 when none waits.
    oldest_waiting_seconds: f64,
    /// `orders.queue_age_max_s`: above it, new orders are refused.
    limit_seconds: u64,
    saturated: bool,
    /// The orders decided over the last 15 minutes (`GET /v1/orders/queue` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    recent: Option<RecentFigures>,
}

/// How many orders per outcome were decided lately, and how long they waited for it
/// (the last [`RECENT_ORDERS_MAX`] at most).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct RecentFigures {
    window_seconds: i64,
    /// By status now: `scheduled`, `rejected`, `cancelled`.
    decided: std::collections::BTreeMap<&'static str, u64>,
    /// From `POST` to decision, over the orders counted; absent when none was decided.
    decision_p50_seconds: Option<f64>,
    decision_p99_seconds: Option<f64>,
    /// More orders were decided in the window than were counted.
    truncated: bool,
}

/// The window of the queue's recent figures, and the most orders they count.
const RECENT_WINDOW_S: i64 = 900;
const RECENT_ORDERS_MAX: i64 = 10_000;

/// The answer of an order refused because the queue is saturated (503).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct SaturatedAnswer<'a> {
    error: ErrorDetail<'a>,
    queue: QueueAnswer,
}

async fn queue(state: &ApiState) -> Result<QueueAnswer, ApiError> {
    let queue = state.orders.order_queue().await.map_err(|e| {
        warn!(error = %e, "the order queue cannot be read");
        ApiError::Unavailable("the order queue")
    })?;
    let now = state.clock.now();
    let oldest = queue.oldest_received_at.map_or(0.0, |at| (now - at).to_std().map_or(0.0, |d| d.as_secs_f64()));
    let limit = state.orders_config.queue_age_max_s;
    set_queue_gauges(&state.metrics, queue.waiting, oldest);
    Ok(QueueAnswer {
        waiting: queue.waiting,
        oldest_waiting_seconds: oldest,
        limit_seconds: limit,
        saturated: oldest > limit as f64,
        recent: None,
    })
}

async fn recent(state: &ApiState) -> Result<RecentFigures, ApiError> {
    let since = state.clock.now() - chrono::Duration::seconds(RECENT_WINDOW_S);
    let decided = state.orders.recent_decisions(since, RECENT_ORDERS_MAX).await.map_err(|e| {
        warn!(error = %e, "the recent decisions cannot be read");
        ApiError::Unavailable("the order queue")
    })?;
    let mut by_status = std::collections::BTreeMap::new();
    for d in &decided {
        *by_status.entry(d.status.as_str()).or_insert(0) += 1;
    }
    let mut waited: Vec<f64> = decided.iter().map(|d| d.waited_s).collect();
    waited.sort_by(f64::total_cmp);
    let percentile = |p: f64| {
        let last = waited.len().checked_sub(1)?;
        waited.get(((last as f64) * p).round() as usize).copied()
    };
    Ok(RecentFigures {
        window_seconds: RECENT_WINDOW_S,
        decided: by_status,
        decision_p50_seconds: percentile(0.5),
        decision_p99_seconds: percentile(0.99),
        truncated: decided.len() as i64 >= RECENT_ORDERS_MAX,
    })
}

#[utoipa::path(
    post, path = "/v1/orders", operation_id = "createOrder", tag = "orders", security(("api_key" = ["orders:write"])),
    summary = "Place an order: checked now, decided by the order workers",
    params(("Idempotency-Key" = String, Header, description = "required; a retry with the same key gets the same order")),
    request_body = RawOrder,
    responses(
        (status = 202, description = "received: follow `status_url`", body = OrderAnswer),
        (status = 400, description = "`idempotency_key_required`, `invalid_idempotency_key`, `invalid_body`", body = super::error::ErrorBody),
        (status = 422, description = "`invalid_order` with every wrong field; `idempotency_key_reused`", body = InvalidOrderAnswer),
        (status = 503, description = "`order_queue_saturated` (with the queue's figures and `Retry-After`), `unavailable`", body = SaturatedAnswer),
    )
)]
pub(super) async fn create(
    State(state): State<ApiState>,
    Extension(principal): Extension<Arc<Principal>>,
    headers: HeaderMap,
    SmallBody(body): SmallBody,
) -> Result<Response, ApiError> {
    let count = |outcome: &str| state.metrics.orders_received_total.with_label_values(&[outcome]).inc();
    let key = super::extract::idempotency_key(&headers)?.ok_or(ApiError::IdempotencyKeyRequired)?;
    let mut raw: RawOrder = serde_json::from_slice(&body).map_err(|e| {
        count("invalid");
        ApiError::InvalidBody(e.to_string())
    })?;
    let invalid = |errors: Vec<FieldError>| {
        count("invalid");
        let message = format!("{} field(s) of the order are wrong; nothing was received", errors.len());
        let error = ErrorDetail { code: "invalid_order", message: message.into() };
        Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(InvalidOrderAnswer { error, errors })).into_response())
    };
    // An order from a cart takes the cart's lines, and converts its hold.
    let mut hold = None;
    if let Some(cart_id) = raw.cart.clone() {
        let wrong = |message: String| vec![FieldError { field: "cart".into(), code: "invalid_cart", message }];
        if !raw.lines.is_empty() {
            return invalid(wrong("give lines or a cart, not both".into()));
        }
        let Some(cart) = carts::owned(&state, &principal, &cart_id).await? else {
            return invalid(wrong(format!("no cart {cart_id:?}")));
        };
        if cart.channel != raw.channel {
            return invalid(wrong(format!("the cart is for channel {:?}", cart.channel)));
        }
        let lines: Vec<crate::order::OrderLine> = serde_json::from_str(&cart.lines).map_err(|e| {
            warn!(cart = %cart_id, error = %e, "a stored cart cannot be read");
            ApiError::Unavailable("the cart store")
        })?;
        raw.lines = lines
            .into_iter()
            .map(|l| crate::order::RawLine { sku: l.sku.to_string(), quantity: l.quantity, in_cart: l.in_cart })
            .collect();
        hold = cart.reservation_id;
    }
    let order = match OrderRequest::check(raw, &state.channels) {
        Ok(order) => OrderRequest { hold, ..order },
        Err(errors) => return invalid(errors),
    };
    let figures = queue(&state).await?;
    if figures.saturated {
        count("saturated");
        return Ok(saturated(figures));
    }
    let request = serde_json::to_string(&order).expect("an order always serializes");
    let id = uuid::Uuid::new_v4().to_string();
    let now = state.clock.now();
    let event = OrderEvent::new(&id, &order.channel, OrderStatus::Received, None, now);
    let payload = event.to_json();
    let new = NewOrder {
        id: &id,
        owner: &principal.key_id,
        idempotency_key: key,
        channel: &order.channel,
        request: &request,
        event: ChannelEvent::of_order(&event, &payload),
        now,
    };
    let received = state.orders.receive_order(&new).await.map_err(|e| {
        count("failed");
        warn!(error = %e, "an order not received");
        ApiError::Unavailable("the order store")
    })?;
    let record = match received {
        Received::New(record) => {
            count("received");
            // Recorded with its event, so it is safe: what the topic does not take now, the
            // workers' sweep sends later.
            state.order_events.kick();
            record
        }
        Received::Replayed(record) => {
            count("replayed");
            record
        }
        Received::KeyReused => {
            count("invalid");
            return Err(ApiError::IdempotencyKeyReused(key.to_string()));
        }
    };
    Ok((StatusCode::ACCEPTED, Json(OrderAnswer::of(&record)?)).into_response())
}

fn saturated(queue: QueueAnswer) -> Response {
    let message = format!(
        "the order queue is saturated: its oldest order waits {:.0} s, above the limit of {} s; retry later",
        queue.oldest_waiting_seconds, queue.limit_seconds
    );
    let retry_after = HeaderValue::from_str(&queue.limit_seconds.max(1).to_string()).expect("digits");
    let body = SaturatedAnswer { error: ErrorDetail { code: "order_queue_saturated", message: message.into() }, queue };
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    response.headers_mut().insert(RETRY_AFTER, retry_after);
    response
}

#[utoipa::path(
    get, path = "/v1/orders/{id}", operation_id = "getOrder", tag = "orders", security(("api_key" = ["orders:write"])),
    summary = "An order: received, scheduled (where, when) or rejected (why, and what instead)",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = OrderAnswer),
        (status = 404, description = "`order_not_found`: no such order, or another key's", body = super::error::ErrorBody),
    )
)]
pub(super) async fn get(
    State(state): State<ApiState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> Result<Json<OrderAnswer>, ApiError> {
    let record = state.orders.order(&id).await.map_err(|e| {
        warn!(error = %e, "an order cannot be read");
        ApiError::Unavailable("the order store")
    })?;
    let admin = principal.scopes.allows(crate::auth::Scope::Admin);
    match record.filter(|r| admin || r.owner == principal.key_id) {
        Some(record) => Ok(Json(OrderAnswer::of(&record)?)),
        None => Err(ApiError::OrderNotFound(id)),
    }
}

#[utoipa::path(
    post, path = "/v1/orders/{id}/cancel", operation_id = "cancelOrder", tag = "orders", security(("api_key" = ["orders:write"])),
    summary = "Cancel an order before its delivery day: its units and its slot go back",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "cancelled (now or before)", body = OrderAnswer),
        (status = 404, description = "`order_not_found`", body = super::error::ErrorBody),
        (status = 409, description = "`order_not_cancellable`: rejected, or its delivery day has come", body = super::error::ErrorBody),
    )
)]
pub(super) async fn cancel(
    State(state): State<ApiState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> Result<Json<OrderAnswer>, ApiError> {
    let caller = Caller { key_id: &principal.key_id, admin: principal.scopes.allows(crate::auth::Scope::Admin) };
    let cancelled = cancel::cancel(&*state.db, &state.reservations, &state.relay, &id, &caller, state.clock.now())
        .await
        .map_err(|e| {
            warn!(order = %id, error = %e, "an order not cancelled");
            ApiError::Unavailable("cancelling orders")
        })?;
    match cancelled {
        Cancelled::Done(order) => Ok(Json(OrderAnswer::of(&order)?)),
        Cancelled::Refused { order, why } => {
            Err(ApiError::OrderNotCancellable(format!("order {} is {}: {why}", order.id, order.status.as_str())))
        }
        Cancelled::NotFound => Err(ApiError::OrderNotFound(id)),
    }
}

#[utoipa::path(
    get, path = "/v1/orders/queue", operation_id = "getOrderQueue", tag = "orders", security(("api_key" = ["orders:write"])),
    summary = "The order queue: how many wait, how long the oldest has, and the decisions of the last 15 minutes",
    responses((status = 200, body = QueueAnswer))
)]
pub(super) async fn get_queue(State(state): State<ApiState>) -> Result<Json<QueueAnswer>, ApiError> {
    let mut answer = queue(&state).await?;
    answer.recent = Some(recent(&state).await?);
    Ok(Json(answer))
}

/// A wish to be told when a SKU is available again in a channel.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BackInStockRequest {
    channel: String,
    sku: String,
    /// The customer's reference in the channel, as in their order.
    customer: String,
}

#[utoipa::path(
    post, path = "/v1/back-in-stock", operation_id = "watchBackInStock", tag = "orders", security(("api_key" = ["orders:write"])),
    summary = "Tell a customer once when a SKU is available again in a channel",
    request_body = BackInStockRequest,
    responses(
        (status = 201, description = "waiting (or told already: `notified_at`); the same wish again answers the same", body = BackInStock),
        (status = 404, description = "`unknown_channel`", body = super::error::ErrorBody),
        (status = 422, description = "`invalid_request`", body = super::error::ErrorBody),
    )
)]
pub(super) async fn watch_back_in_stock(
    State(state): State<ApiState>,
    Extension(principal): Extension<Arc<Principal>>,
    SmallBody(body): SmallBody,
) -> Result<(StatusCode, Json<BackInStock>), ApiError> {
    let raw: BackInStockRequest = serde_json::from_slice(&body).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    if !state.channels.contains_key(&raw.channel) {
        return Err(ApiError::UnknownChannel(raw.channel));
    }
    let sku = crate::event::Sku::parse(raw.sku).map_err(|e| ApiError::InvalidRequest(format!("sku: {}", e.message)))?;
    let customer = raw.customer.trim();
    if customer.is_empty() || customer.chars().count() > 200 || customer.chars().any(char::is_control) {
        return Err(ApiError::InvalidRequest("customer: must be 1 to 200 characters, no control characters".into()));
    }
    let wish = BackInStock {
        id: uuid::Uuid::new_v4().to_string(),
        owner: principal.key_id.clone(),
        channel: raw.channel,
        sku,
        customer: customer.to_string(),
        created_at: state.clock.now(),
        notified_at: None,
    };
    let recorded = state.orders.watch_back_in_stock(&wish).await.map_err(|e| {
        warn!(error = %e, "a back-in-stock wish not recorded");
        ApiError::Unavailable("the order store")
    })?;
    Ok((StatusCode::CREATED, Json(recorded)))
}

#[utoipa::path(
    get, path = "/v1/back-in-stock/{id}", operation_id = "getBackInStock", tag = "orders", security(("api_key" = ["orders:write"])),
    summary = "A back-in-stock wish: waiting, or when its customer was told",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = BackInStock),
        (status = 404, description = "`back_in_stock_not_found`", body = super::error::ErrorBody),
    )
)]
pub(super) async fn get_back_in_stock(
    State(state): State<ApiState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> Result<Json<BackInStock>, ApiError> {
    let found = state.orders.back_in_stock(&id).await.map_err(|e| {
        warn!(error = %e, "a back-in-stock wish cannot be read");
        ApiError::Unavailable("the order store")
    })?;
    let admin = principal.scopes.allows(crate::auth::Scope::Admin);
    found.filter(|w| admin || w.owner == principal.key_id).map(Json).ok_or(ApiError::BackInStockNotFound(id))
}
