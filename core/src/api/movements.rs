//! `POST /v1/movements`: a JSON array or NDJSON of movements. Each item is checked on its
//! own; the valid ones are produced to Kafka and the answer comes after Kafka acknowledged
//! them, with one result per item.

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{
        header::{CONTENT_TYPE, RETRY_AFTER},
        HeaderMap, StatusCode,
    },
    response::{IntoResponse, Response},
    Extension, Json,
};
use chrono::Utc;
use serde::Serialize;

use super::{
    auth::Principal,
    error::{ApiError, ErrorBody},
    state::ApiState,
};
use crate::{
    auth::may_write,
    event::{InvalidMovement, Movement},
};

/// What became of one item of the request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct ItemResult {
    /// The item's position in the request, from 0.
    index: usize,
    /// `accepted`, `rejected` or `failed` (Kafka did not acknowledge it; resend it).
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ItemError>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct ItemError {
    /// A reject code of `docs/events.md`, or `kafka_unavailable` / `database_unavailable`.
    code: &'static str,
    message: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct PostResponse {
    accepted: usize,
    rejected: usize,
    failed: usize,
    results: Vec<ItemResult>,
}

/// Movements in: each item is checked on its own and the valid ones are produced to Kafka.
#[utoipa::path(
    post, path = "/v1/movements", operation_id = "postMovements", tag = "movements", security(("api_key" = ["movements:write"])),
    summary = "Record movements",
    description = "A JSON array of movements, one object, or NDJSON (one per line). `recorded_at` is set by \
                   onhand. The answer comes after Kafka acknowledged the accepted items.",
    request_body(content(
        (Vec<Movement> = "application/json"),
        (Movement = "application/x-ndjson"),
    )),
    responses(
        (status = 202, description = "every item accepted", body = PostResponse),
        (status = 422, description = "some items refused (see `results`); the others were accepted", body = PostResponse),
        (status = 503, description = "Kafka did not acknowledge some items; resend them", body = PostResponse),
        (status = 400, description = "`invalid_body`", body = ErrorBody),
        (status = 403, description = "`source_not_allowed`, `event_id_not_allowed`, `location_not_allowed`: the key \
                        may not write an item (a key bound to another source, an id namespace of onhand's own)", body = ErrorBody),
        (status = 413, description = "`body_too_large`, `too_many_movements`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
    )
)]
pub(super) async fn post(
    State(state): State<ApiState>,
    Extension(principal): Extension<Arc<Principal>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ndjson = content_is_ndjson(&headers)?;
    let limit_bytes = state.http.body_bytes_max;
    let bytes = axum::body::to_bytes(body, limit_bytes).await.map_err(|e| {
        if is_length_limit(&e) {
            ApiError::BodyTooLarge { limit_bytes }
        } else {
            ApiError::InvalidBody(e.to_string())
        }
    })?;
    let items = parse_items(&bytes, ndjson, state.http.movements_per_request_max)?;

    let mut results: Vec<ItemResult> = Vec::with_capacity(items.len());
    let mut valid = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        match item {
            Ok(movement) => valid.push((index, movement)),
            Err(e) => results.push(rejected(index, e)),
        }
    }
    // Who may say what is not a property of one item: one item the key may not write
    // refuses the request, before anything is accepted.
    for (index, movement) in &valid {
        may_write(principal.scopes, principal.binding.as_ref(), movement)
            .map_err(|e| ApiError::Forbidden { code: e.code, message: format!("item {index}: {}", e.message) })?;
    }
    results.extend(produce(&state, valid).await);
    results.sort_by_key(|r| r.index);
    Ok(respond(&state, results))
}

/// NDJSON when the client says so; otherwise JSON, whose body may also be NDJSON.
fn content_is_ndjson(headers: &HeaderMap) -> Result<bool, ApiError> {
    let Some(value) = headers.get(CONTENT_TYPE) else { return Ok(false) };
    let media = value.to_str().unwrap_or_default().split(';').next().unwrap_or_default().trim();
    match media.to_ascii_lowercase().as_str() {
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "application/json-seq" => Ok(true),
        "application/json" | "text/plain" | "" => Ok(false),
        other => Err(ApiError::UnsupportedMediaType(other.to_string())),
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Splits the body into items, each parsed into a movement or the reason it is refused.
/// A body that starts with `[` is one JSON array; anything else is one movement per line.
fn parse_items(bytes: &Bytes, ndjson: bool, max: usize) -> Result<Vec<Result<Movement, InvalidMovement>>, ApiError> {
    let now = Utc::now();
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    // A single object, possibly spread over lines, when the whole JSON body is one value.
    let single =
        !ndjson && first == Some(&b'{') && serde_json::from_slice::<&serde_json::value::RawValue>(bytes).is_ok();
    let items: Vec<Result<Movement, InvalidMovement>> = if single {
        vec![Movement::accept_json(bytes.trim_ascii(), now)]
    } else if first == Some(&b'[') && !ndjson {
        // Each item is checked from its own bytes, with the same size limit as the ledger's.
        let items: Vec<&serde_json::value::RawValue> =
            serde_json::from_slice(bytes).map_err(|e| ApiError::InvalidBody(e.to_string()))?;
        check_count(items.len(), max)?;
        items.into_iter().map(|item| Movement::accept_json(item.get().as_bytes(), now)).collect()
    } else {
        let lines: Vec<&[u8]> =
            bytes.split(|b| *b == b'\n').filter(|line| line.iter().any(|b| !b.is_ascii_whitespace())).collect();
        check_count(lines.len(), max)?;
        lines.into_iter().map(|line| Movement::accept_json(line, now)).collect()
    };
    if items.is_empty() {
        return Err(ApiError::NoMovements);
    }
    Ok(items)
}

fn check_count(count: usize, max: usize) -> Result<(), ApiError> {
    if count > max {
        return Err(ApiError::TooManyMovements { count, max });
    }
    Ok(())
}

fn rejected(index: usize, e: InvalidMovement) -> ItemResult {
    ItemResult {
        index,
        status: "rejected",
        event_id: None,
        error: Some(ItemError { code: e.code.as_str(), message: e.message }),
    }
}

/// Makes the valid movements safe (acknowledged by Kafka, or in the outbox of `onhand
/// dev`) and answers each one's result.
async fn produce(state: &ApiState, valid: Vec<(usize, Movement)>) -> Vec<ItemResult> {
    let movements: Vec<Movement> = valid.iter().map(|(_, m)| m.clone()).collect();
    let accepted = state.ingest.accept(&movements).await;
    valid
        .into_iter()
        .zip(accepted)
        .map(|((index, movement), accepted)| {
            let event_id = Some(movement.event_id.to_string());
            match accepted {
                Ok(()) => ItemResult { index, status: "accepted", event_id, error: None },
                Err(e) => ItemResult {
                    index,
                    status: "failed",
                    event_id,
                    error: Some(ItemError { code: e.code(), message: format!("{e}; retry it with the same event_id") }),
                },
            }
        })
        .collect()
}

/// 202 when every item was accepted, 503 when Kafka failed any (retrying is safe: event
/// ids make it idempotent), otherwise 422 with the reason of each refused item.
fn respond(state: &ApiState, results: Vec<ItemResult>) -> Response {
    let count = |status: &str| results.iter().filter(|r| r.status == status).count();
    let (accepted, rejected, failed) = (count("accepted"), count("rejected"), count("failed"));
    let metric = &state.metrics.api_movements_total;
    metric.with_label_values(&["accepted"]).inc_by(accepted as u64);
    metric.with_label_values(&["rejected"]).inc_by(rejected as u64);
    metric.with_label_values(&["failed"]).inc_by(failed as u64);
    let body = Json(PostResponse { accepted, rejected, failed, results });
    if failed > 0 {
        return (StatusCode::SERVICE_UNAVAILABLE, [(RETRY_AFTER, "1")], body).into_response();
    }
    let status = if rejected > 0 { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::ACCEPTED };
    (status, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::RejectCode;

    fn item(id: &str) -> String {
        format!(
            r#"{{"event_id":"{id}","source":{{"system":"api","instance":"t","ref":"r"}},"sku":"S1","location":"l1","kind":"receipt","quantity":1,"occurred_at":"2026-11-20T10:00:00Z"}}"#
        )
    }

    const SEED: &str = r#"[{"event_id":"a","source":{"system":"api","instance":"t","ref":"r"},"sku":"S1","location":"l1","kind":"receipt","quantity":1,"occurred_at":"2026-11-20T10:00:00Z"},{"event_id":"b","source":{"system":"api","instance":"t","ref":"r"},"sku":"S1","location":"l1","kind":"sale","quantity":1,"occurred_at":"2026-11-20T10:00:00Z"}]"#;

    proptest::proptest! {
        #![proptest_config(crate::fuzzing::config())]

        /// Fuzz harness: any body, as a JSON array, one object or NDJSON, is split into
        /// items or refused, never a panic.
        #[test]
        fn bodies_never_panic(bytes in crate::fuzzing::hostile(SEED), ndjson in proptest::bool::ANY) {
            let _ = parse_items(&Bytes::from(bytes.clone()), ndjson, 1_000);
            let lines: Vec<u8> = bytes.iter().map(|b| if *b == b',' { b'\n' } else { *b }).collect();
            let _ = parse_items(&Bytes::from(lines), true, 1_000);
        }
    }

    #[test]
    fn arrays_and_ndjson_are_split_into_items() {
        let array = Bytes::from(format!("[{},{}]", item("a"), item("b")));
        assert_eq!(parse_items(&array, false, 10).unwrap().len(), 2);
        let lines = Bytes::from(format!("{}\n\n{}\nnot json\n", item("a"), item("b")));
        let parsed = parse_items(&lines, true, 10).unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[2].as_ref().unwrap_err().code, RejectCode::NotJson);
    }

    #[test]
    fn an_oversized_item_of_an_array_is_refused_like_on_kafka() {
        let big = item("a").replace(r#""quantity":1"#, &format!(r#""quantity":1,"reason":"{}""#, "r".repeat(20_000)));
        let parsed = parse_items(&Bytes::from(format!("[{big},{}]", item("b"))), false, 10).unwrap();
        assert_eq!(parsed[0].as_ref().unwrap_err().code, RejectCode::Oversized);
        assert!(parsed[1].is_ok());
    }

    #[test]
    fn a_single_object_may_span_lines() {
        let pretty =
            serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&item("a")).unwrap()).unwrap();
        let parsed = parse_items(&Bytes::from(pretty), false, 10).unwrap();
        assert_eq!(parsed.len(), 1);
        assert!(parsed[0].is_ok());
    }

    #[test]
    fn bodies_that_cannot_be_split_are_refused() {
        assert!(matches!(parse_items(&Bytes::from("[{"), false, 10), Err(ApiError::InvalidBody(_))));
        assert!(matches!(parse_items(&Bytes::from(" \n "), false, 10), Err(ApiError::NoMovements)));
        let many = Bytes::from(format!("[{}]", vec![item("a"); 3].join(",")));
        assert!(matches!(parse_items(&many, false, 2), Err(ApiError::TooManyMovements { count: 3, max: 2 })));
    }
}
