//! Reservations: `POST /v1/reservations` (with an `Idempotency-Key` header),
//! `GET /v1/reservations/{id}`, `POST /v1/reservations/{id}/commit` and
//! `POST /v1/reservations/{id}/cancel`. The decisions are the reservation service's; this
//! module reads requests at the edge and turns decisions into statuses and bodies.

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Extension, Json,
};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{
    auth::Principal,
    error::{ApiError, ErrorBody, ErrorDetail},
    extract::SmallBody,
    state::ApiState,
};
use crate::{
    event::{LocationId, Sku},
    reservation::{
        service::{Caller, ReservationError, ReservationRequest},
        Decision, LineRequest, Reservation, ShortLine, Status,
    },
};

/// The answer when some line is short (409): the error, and every short line.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct ShortAnswer<'a> {
    error: ErrorDetail<'a>,
    short_lines: &'a [ShortLine],
}

/// A decision as HTTP answers it: 201 with the reservation, or 409 `insufficient_stock`
/// with the short lines.
fn answer(decision: &Decision) -> Response {
    match decision {
        Decision::Held(reservation) => (StatusCode::CREATED, Json(reservation)).into_response(),
        Decision::Short(lines) => {
            let skus: Vec<&str> = lines.iter().map(|l| l.sku.as_str()).collect();
            let message = format!("not enough stock for {}; nothing was reserved", skus.join(", "));
            let body = ShortAnswer {
                error: ErrorDetail { code: "insufficient_stock", message: message.into() },
                short_lines: lines,
            };
            (StatusCode::CONFLICT, Json(body)).into_response()
        }
    }
}

/// A reservation request: all lines are held, or none.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = ReservationRequest)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRequest {
    /// A channel of the configuration; it decides which locations may serve the lines.
    channel: String,
    /// 1 to 100 lines (`reservations.lines_max`).
    lines: Vec<RawLine>,
    /// How long the units are held, 1 to 86400 seconds; 600 when absent.
    #[serde(default)]
    ttl_s: Option<u64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = ReservationLineRequest)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLine {
    sku: String,
    /// 1 or more.
    quantity: i64,
    /// A location serving the channel; absent: the one with the most available.
    #[serde(default)]
    location: Option<String>,
}

/// Reads the body into a request whose SKUs and locations are valid, naming the line of
/// the first bad field.
fn read_request(body: &[u8]) -> Result<ReservationRequest, ApiError> {
    let raw: RawRequest = serde_json::from_slice(body).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let lines = raw
        .lines
        .into_iter()
        .enumerate()
        .map(|(i, line)| {
            let bad = |message: String| ApiError::InvalidRequest(format!("line {}: {message}", i + 1));
            Ok(LineRequest {
                sku: Sku::parse(line.sku).map_err(|e| bad(e.message))?,
                quantity: line.quantity,
                location: line.location.map(LocationId::parse).transpose().map_err(|e| bad(e.message))?,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(ReservationRequest { channel: raw.channel, lines, ttl_s: raw.ttl_s })
}

#[utoipa::path(
    post, path = "/v1/reservations", operation_id = "createReservation", tag = "reservations", security(("api_key" = ["reservations:write"])),
    summary = "Hold units for a checkout",
    params(("Idempotency-Key" = String, Header, description = "required; a retry with the same key gets the first answer")),
    request_body = RawRequest,
    responses(
        (status = 201, description = "held", body = Reservation),
        (status = 409, description = "`insufficient_stock`: nothing was held", body = ShortAnswer),
        (status = 400, description = "`idempotency_key_required`, `invalid_idempotency_key`", body = ErrorBody),
        (status = 404, description = "`unknown_channel`", body = ErrorBody),
        (status = 422, description = "`invalid_request`, `location_not_in_channel`, `idempotency_key_reused`", body = ErrorBody),
        (status = 503, description = "`unavailable`: retry with the same key", body = ErrorBody),
    )
)]
pub(super) async fn create(
    State(state): State<ApiState>,
    Extension(principal): Extension<std::sync::Arc<Principal>>,
    headers: HeaderMap,
    SmallBody(body): SmallBody,
) -> Result<Response, ApiError> {
    let key = super::extract::idempotency_key(&headers)?.ok_or(ApiError::IdempotencyKeyRequired)?;
    let request = read_request(&body)?;
    // Idempotency keys belong to the API key that sent them: two clients may use the same.
    let decision = state.reservations.reserve(&principal.key_id, key, &request).await?;
    Ok(answer(&decision))
}

#[utoipa::path(
    get, path = "/v1/reservations/{id}", operation_id = "getReservation", tag = "reservations", security(("api_key" = ["reservations:write"])),
    summary = "A reservation and its status",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = Reservation),
        (status = 404, description = "`reservation_not_found`", body = ErrorBody),
    )
)]
pub(super) async fn get(
    State(state): State<ApiState>,
    Extension(principal): Extension<std::sync::Arc<Principal>>,
    Path(id): Path<String>,
) -> Result<Json<Reservation>, ApiError> {
    Ok(Json(state.reservations.get(&id, &caller(&principal)).await?))
}

/// Reservations belong to the key that made them: another key finds none of them.
fn caller(principal: &Principal) -> Caller<'_> {
    Caller { key_id: &principal.key_id, admin: principal.is_admin() }
}

#[utoipa::path(
    post, path = "/v1/reservations/{id}/commit", operation_id = "commitReservation", tag = "reservations", security(("api_key" = ["reservations:write"])),
    summary = "Turn a held reservation into sales",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "committed, now or before", body = Reservation),
        (status = 404, description = "`reservation_not_found`", body = ErrorBody),
        (status = 409, description = "`reservation_expired`, `reservation_not_held`", body = ErrorBody),
    )
)]
pub(super) async fn commit(
    State(state): State<ApiState>,
    Extension(principal): Extension<std::sync::Arc<Principal>>,
    Path(id): Path<String>,
) -> Result<Json<Reservation>, ApiError> {
    Ok(Json(state.reservations.commit(&id, &caller(&principal)).await?))
}

#[utoipa::path(
    post, path = "/v1/reservations/{id}/cancel", operation_id = "cancelReservation", tag = "reservations", security(("api_key" = ["reservations:write"])),
    summary = "Give a held reservation's units back",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "cancelled, now or before", body = Reservation),
        (status = 404, description = "`reservation_not_found`", body = ErrorBody),
        (status = 409, description = "`reservation_expired`, `reservation_not_held`", body = ErrorBody),
    )
)]
pub(super) async fn cancel(
    State(state): State<ApiState>,
    Extension(principal): Extension<std::sync::Arc<Principal>>,
    Path(id): Path<String>,
) -> Result<Json<Reservation>, ApiError> {
    Ok(Json(state.reservations.cancel(&id, &caller(&principal)).await?))
}

impl From<ReservationError> for ApiError {
    fn from(e: ReservationError) -> Self {
        match e {
            ReservationError::UnknownChannel(channel) => ApiError::UnknownChannel(channel),
            e @ ReservationError::LocationNotInChannel { .. } => ApiError::LocationNotInChannel(e.to_string()),
            ReservationError::Invalid(message) => ApiError::InvalidRequest(message),
            e @ ReservationError::KeyReused(_) => ApiError::IdempotencyKeyReused(e.to_string()),
            ReservationError::NotFound(id) => ApiError::ReservationNotFound(id),
            e @ ReservationError::NotHeld { status: Status::Expired, .. } => {
                ApiError::ReservationExpired(e.to_string())
            }
            e @ ReservationError::NotHeld { .. } => ApiError::ReservationNotHeld(e.to_string()),
            ReservationError::Db(e) => {
                warn!(error = %e, "reservation transaction failed");
                ApiError::Unavailable("the database")
            }
        }
    }
}
