//! The one table from API errors to HTTP status and stable error code. Details of the
//! database or Kafka are logged where they happen, never sent to the client.

use axum::{
    http::{
        header::{RETRY_AFTER, WWW_AUTHENTICATE},
        HeaderName, HeaderValue, StatusCode,
    },
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;

use crate::auth::Scope;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is larger than {limit_bytes} bytes")]
    BodyTooLarge { limit_bytes: usize },
    #[error("{count} movements in one request, at most {max} are accepted")]
    TooManyMovements { count: usize, max: usize },
    #[error("the body is not a JSON array or NDJSON: {0}")]
    InvalidBody(String),
    #[error("the body holds no movement")]
    NoMovements,
    #[error("content type {0:?} is not supported: send application/json or application/x-ndjson")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    InvalidSku(String),
    #[error("no stock is recorded for sku {0:?}")]
    SkuNotFound(String),
    #[error("sku {0:?} has no stock level at location {1:?}")]
    LocationNotFound(String, String),
    #[error("{0}")]
    InvalidLocation(String),
    #[error("no channel {0:?} is configured")]
    UnknownChannel(String),
    #[error("the query parameter channel is required")]
    MissingChannel,
    #[error("the database is unavailable and sku {0:?} was never read before; retry later")]
    StockUnavailable(String),
    #[error("{count} skus in one query, at most {max} are accepted")]
    TooManySkus { count: usize, max: usize },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidProduct(String),
    #[error("no product {0:?} in the catalog")]
    ProductNotFound(String),
    #[error("the Idempotency-Key header is required: a retry with the same key gets the first answer")]
    IdempotencyKeyRequired,
    #[error("the Idempotency-Key header must be 1 to {0} visible characters")]
    InvalidIdempotencyKey(usize),
    #[error("{0}")]
    IdempotencyKeyReused(String),
    #[error("{0}")]
    LocationNotInChannel(String),
    #[error("no reservation {0:?}")]
    ReservationNotFound(String),
    #[error("{0}")]
    ReservationExpired(String),
    #[error("{0}")]
    ReservationNotHeld(String),
    /// A query parameter that cannot be read: `name` is the parameter (or `query` for the
    /// whole query string).
    #[error("invalid parameter {name}: {message}")]
    InvalidParameter { name: &'static str, message: String },
    #[error("invalid parameter cursor: {0}")]
    InvalidCursor(String),
    #[error("{0}")]
    TooManyPoints(String),
    #[error("more than {0} movements occurred in this window: ask a shorter one")]
    WindowTooLarge(i64),
    #[error("no alert {0:?}")]
    AlertNotFound(String),
    #[error("{0}")]
    AlertResolved(String),
    #[error("{0}")]
    InvalidSubscription(String),
    #[error("no subscription {0:?}")]
    SubscriptionNotFound(String),
    #[error("no order {0:?}")]
    OrderNotFound(String),
    #[error("{0}")]
    OrderNotCancellable(String),
    #[error("no back-in-stock wish {0:?}")]
    BackInStockNotFound(String),
    #[error("no cart {0:?}")]
    CartNotFound(String),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("{0} is unavailable, retry later")]
    Unavailable(&'static str),
    #[error("{0} live stream clients are connected to this instance, the most it takes; retry later")]
    TooManyStreamClients(usize),
    #[error("this route needs an api key, sent as the header authorization: bearer <key>")]
    MissingApiKey,
    #[error("the api key is not valid, or it was revoked")]
    InvalidApiKey,
    #[error("this route needs an api key with the scope {0}")]
    InsufficientScope(Scope),
    #[error("too many requests with this api key, retry in {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    /// The key may not write this for this source (a key bound to another source, an id
    /// namespace of onhand's own): `code` says which rule.
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
}

impl ApiError {
    /// The stable code clients program against.
    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    /// The status and stable code of each error: the contract clients program against.
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::TooManyMovements { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_movements"),
            ApiError::InvalidBody(_) => (StatusCode::BAD_REQUEST, "invalid_body"),
            ApiError::NoMovements => (StatusCode::UNPROCESSABLE_ENTITY, "no_movements"),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::InvalidSku(_) => (StatusCode::BAD_REQUEST, "invalid_sku"),
            ApiError::SkuNotFound(_) => (StatusCode::NOT_FOUND, "sku_not_found"),
            ApiError::LocationNotFound(..) => (StatusCode::NOT_FOUND, "location_not_found"),
            ApiError::InvalidLocation(_) => (StatusCode::BAD_REQUEST, "invalid_location"),
            ApiError::UnknownChannel(_) => (StatusCode::NOT_FOUND, "unknown_channel"),
            ApiError::MissingChannel => (StatusCode::BAD_REQUEST, "missing_channel"),
            ApiError::StockUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "stock_unavailable"),
            ApiError::TooManySkus { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_skus"),
            ApiError::InvalidRequest(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            ApiError::InvalidProduct(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_product"),
            ApiError::ProductNotFound(_) => (StatusCode::NOT_FOUND, "product_not_found"),
            ApiError::IdempotencyKeyRequired => (StatusCode::BAD_REQUEST, "idempotency_key_required"),
            ApiError::InvalidIdempotencyKey(_) => (StatusCode::BAD_REQUEST, "invalid_idempotency_key"),
            ApiError::IdempotencyKeyReused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            ApiError::LocationNotInChannel(_) => (StatusCode::UNPROCESSABLE_ENTITY, "location_not_in_channel"),
            ApiError::ReservationNotFound(_) => (StatusCode::NOT_FOUND, "reservation_not_found"),
            ApiError::ReservationExpired(_) => (StatusCode::CONFLICT, "reservation_expired"),
            ApiError::ReservationNotHeld(_) => (StatusCode::CONFLICT, "reservation_not_held"),
            ApiError::InvalidParameter { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_parameter"),
            ApiError::InvalidCursor(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_cursor"),
            ApiError::TooManyPoints(_) => (StatusCode::UNPROCESSABLE_ENTITY, "too_many_points"),
            ApiError::WindowTooLarge(_) => (StatusCode::UNPROCESSABLE_ENTITY, "window_too_large"),
            ApiError::AlertNotFound(_) => (StatusCode::NOT_FOUND, "alert_not_found"),
            ApiError::AlertResolved(_) => (StatusCode::CONFLICT, "alert_resolved"),
            ApiError::InvalidSubscription(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_subscription"),
            ApiError::SubscriptionNotFound(_) => (StatusCode::NOT_FOUND, "subscription_not_found"),
            ApiError::OrderNotFound(_) => (StatusCode::NOT_FOUND, "order_not_found"),
            ApiError::OrderNotCancellable(_) => (StatusCode::CONFLICT, "order_not_cancellable"),
            ApiError::BackInStockNotFound(_) => (StatusCode::NOT_FOUND, "back_in_stock_not_found"),
            ApiError::CartNotFound(_) => (StatusCode::NOT_FOUND, "cart_not_found"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::TooManyStreamClients(_) => (StatusCode::SERVICE_UNAVAILABLE, "too_many_stream_clients"),
            ApiError::MissingApiKey => (StatusCode::UNAUTHORIZED, "missing_api_key"),
            ApiError::InvalidApiKey => (StatusCode::UNAUTHORIZED, "invalid_api_key"),
            ApiError::InsufficientScope(_) => (StatusCode::FORBIDDEN, "insufficient_scope"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Forbidden { code, .. } => (StatusCode::FORBIDDEN, code),
        }
    }

    /// The header that tells a client what to do next: how to authenticate (RFC 6750's
    /// `WWW-Authenticate`), or when to retry.
    fn header(&self) -> Option<(HeaderName, HeaderValue)> {
        let value = |text: String| HeaderValue::from_str(&text).expect("a header of ascii text");
        match self {
            ApiError::MissingApiKey => Some((WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))),
            ApiError::InvalidApiKey => {
                Some((WWW_AUTHENTICATE, HeaderValue::from_static(r#"Bearer error="invalid_token""#)))
            }
            ApiError::InsufficientScope(scope) => {
                Some((WWW_AUTHENTICATE, value(format!(r#"Bearer error="insufficient_scope", scope="{scope}""#))))
            }
            ApiError::RateLimited { retry_after_s } => Some((RETRY_AFTER, value(retry_after_s.to_string()))),
            _ if self.status_and_code().0 == StatusCode::SERVICE_UNAVAILABLE => {
                Some((RETRY_AFTER, HeaderValue::from_static("1")))
            }
            _ => None,
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail<'a> {
    /// Stable: clients program against it (`docs/api.md` lists them per route).
    pub code: &'a str,
    /// For people; it may change.
    pub message: std::borrow::Cow<'a, str>,
}

pub fn error_body(code: &str, message: &str) -> serde_json::Value {
    serde_json::to_value(ErrorBody { error: ErrorDetail { code, message: message.into() } })
        .expect("an error body always serializes")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut response = (status, Json(error_body(code, &self.to_string()))).into_response();
        if let Some((name, value)) = self.header() {
            response.headers_mut().insert(name, value);
        }
        response
    }
}
