//! Extractors that refuse a request with a code of the error table, where axum's own
//! would answer plain text.

use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::{HeaderMap, StatusCode},
};

use super::error::ApiError;

/// The largest body of every route but `POST /v1/movements`, which reads its own body up
/// to `http.body_bytes_max`.
pub(super) const SMALL_BODY_BYTES_MAX: usize = 64 * 1024;

/// The longest Idempotency-Key accepted.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;

/// The request's `Idempotency-Key`, when it has one: 1 to 255 visible characters, or the
/// request is refused. A retry with the same key must get the first request's effect.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= IDEMPOTENCY_KEY_LEN_MAX => Ok(Some(key)),
        _ => Err(ApiError::InvalidIdempotencyKey(IDEMPOTENCY_KEY_LEN_MAX)),
    }
}

/// The body of a route that takes a small JSON document: at most
/// [`SMALL_BODY_BYTES_MAX`], the limit [`super::finish`] sets for every route.
#[derive(Debug)]
pub(super) struct SmallBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for SmallBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(request, state).await.map(SmallBody).map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge { limit_bytes: SMALL_BODY_BYTES_MAX }
            } else {
                ApiError::InvalidRequest(rejection.body_text())
            }
        })
    }
}
