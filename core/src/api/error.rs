//! The one table from API errors to HTTP status and stable error code. Details of the
//! database or Kafka are logged where they happen, never sent to the client.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

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
    #[error("no route for {0}")]
    NotFound(String),
    #[error("{0} is unavailable, retry later")]
    Unavailable(&'static str),
}

impl ApiError {
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
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

/// The body of every error answer.
pub fn error_body(code: &str, message: &str) -> serde_json::Value {
    json!({ "error": { "code": code, "message": message } })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut response = (status, Json(error_body(code, &self.to_string()))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}
