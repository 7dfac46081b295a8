//! Carts (`docs/orders.md`): `PUT /v1/carts/{id}` keeps a customer's lines before
//! checkout and answers what the channel has of each; in a channel with `hold = true` it
//! also holds their units for `orders.cart_hold_ttl_s` (a reservation, replaced at each
//! `PUT`, that the order made from the cart converts). `GET` reads it, `DELETE` gives the
//! hold back.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Extension, Json,
};
use serde::Serialize;
use tracing::warn;

use super::{
    auth::Principal,
    error::{ApiError, ErrorDetail},
    extract::SmallBody,
    state::ApiState,
};
use crate::{
    db::CartRecord,
    event::Sku,
    order::{check_cart, FieldError, OrderLine, RawCart},
    reservation::{
        service::{Caller, ReservationError, ReservationRequest},
        Decision, LineRequest, ShortLine,
    },
};

/// The owner of carts' holds among reservations.
const CART_OWNER: &str = "carts";
const CART_ID_LEN_MAX: usize = 128;

/// A cart as answered: its lines with what the channel has of each now, and its hold.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct CartAnswer {
    id: String,
    channel: String,
    lines: Vec<CartLine>,
    /// The reservation holding the lines, in a channel that holds; it expires by itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    hold: Option<Hold>,
    /// In a channel that holds: the lines it could not hold (nothing is then held).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    short_lines: Vec<ShortLine>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct CartLine {
    #[schema(value_type = String)]
    sku: Sku,
    quantity: i64,
    in_cart: bool,
    /// What the channel has available of it now.
    available: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Hold {
    reservation_id: String,
    status: crate::reservation::Status,
    expires_at: chrono::DateTime<chrono::Utc>,
}

/// A cart with wrong fields (422 `invalid_cart`): every one of them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct InvalidCartAnswer<'a> {
    error: ErrorDetail<'a>,
    errors: Vec<FieldError>,
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    warn!(error = %e, "a cart cannot be read or written");
    ApiError::Unavailable("the cart store")
}

fn admin() -> Caller<'static> {
    Caller { key_id: CART_OWNER, admin: true }
}

/// The cart `id` when `principal` owns it (an admin sees every cart): the one a cart
/// route or an order names.
pub(super) async fn owned(state: &ApiState, principal: &Principal, id: &str) -> Result<Option<CartRecord>, ApiError> {
    let admin = principal.scopes.allows(crate::auth::Scope::Admin);
    Ok(state.orders.cart(id).await.map_err(unavailable)?.filter(|c| admin || c.owner == principal.key_id))
}

async fn answer(state: &ApiState, cart: &CartRecord, short_lines: Vec<ShortLine>) -> Result<CartAnswer, ApiError> {
    let lines: Vec<OrderLine> = serde_json::from_str(&cart.lines).map_err(unavailable)?;
    let skus: Vec<Sku> = lines.iter().map(|l| l.sku.clone()).collect();
    let levels = state.db.stock_by_skus(&skus).await.map_err(unavailable)?;
    let channel = state.channels.get(&cart.channel).cloned().unwrap_or_default();
    let available: BTreeMap<&Sku, i64> = skus
        .iter()
        .map(|sku| {
            let of_sku: Vec<_> = levels.iter().filter(|l| &l.sku == sku).cloned().collect();
            (sku, channel.available(&of_sku))
        })
        .collect();
    let hold = match &cart.reservation_id {
        Some(id) => match state.reservations.get(id, &admin()).await {
            Ok(r) => Some(Hold { reservation_id: r.id, status: r.status, expires_at: r.expires_at }),
            Err(ReservationError::NotFound(_)) => None,
            Err(e) => return Err(unavailable(e)),
        },
        None => None,
    };
    let lines = lines
        .iter()
        .map(|l| CartLine {
            sku: l.sku.clone(),
            quantity: l.quantity,
            in_cart: l.in_cart,
            available: available.get(&l.sku).copied().unwrap_or(0),
        })
        .collect();
    Ok(CartAnswer {
        id: cart.id.clone(),
        channel: cart.channel.clone(),
        lines,
        hold,
        short_lines,
        updated_at: cart.updated_at,
    })
}

#[utoipa::path(
    put, path = "/v1/carts/{id}", operation_id = "putCart", tag = "orders", security(("api_key" = ["orders:write"])),
    summary = "Put a cart's lines: what the channel has of each, and a soft hold where the channel holds",
    params(("id" = String, Path, description = "the channel's cart id: 1 to 128 letters, digits or -_.:")),
    request_body = RawCart,
    responses(
        (status = 200, body = CartAnswer),
        (status = 400, description = "`invalid_body`", body = super::error::ErrorBody),
        (status = 404, description = "`cart_not_found`: another key's cart", body = super::error::ErrorBody),
        (status = 422, description = "`invalid_cart` with every wrong field", body = InvalidCartAnswer),
    )
)]
pub(super) async fn put(
    State(state): State<ApiState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(id): Path<String>,
    SmallBody(body): SmallBody,
) -> Result<Response, ApiError> {
    let plausible = (1..=CART_ID_LEN_MAX).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if !plausible {
        return Err(ApiError::InvalidRequest(format!("a cart id is 1 to {CART_ID_LEN_MAX} letters, digits or -_.:")));
    }
    let raw: RawCart = serde_json::from_slice(&body).map_err(|e| ApiError::InvalidBody(e.to_string()))?;
    let lines = match check_cart(&raw, &state.channels) {
        Ok(lines) => lines,
        Err(errors) => {
            let message = format!("{} field(s) of the cart are wrong", errors.len());
            let error = ErrorDetail { code: "invalid_cart", message: message.into() };
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(InvalidCartAnswer { error, errors })).into_response());
        }
    };
    let existing = state.orders.cart(&id).await.map_err(unavailable)?;
    if existing.as_ref().is_some_and(|c| c.owner != principal.key_id) {
        return Err(ApiError::CartNotFound(id));
    }
    // The hold follows the lines: the old one goes back, a new one is taken.
    if let Some(old) = existing.and_then(|c| c.reservation_id) {
        release(&state, &old).await;
    }
    let holds = state.channels.get(&raw.channel).is_some_and(|c| c.hold);
    let (reservation_id, short_lines) = if holds {
        let ask = ReservationRequest {
            channel: raw.channel.clone(),
            lines: lines
                .iter()
                .map(|l| LineRequest { sku: l.sku.clone(), quantity: l.quantity, location: None })
                .collect(),
            ttl_s: Some(state.orders_config.cart_hold_ttl_s),
        };
        let key = format!("cart:{id}:{}", uuid::Uuid::new_v4());
        match state.reservations.reserve(CART_OWNER, &key, &ask).await {
            Ok(Decision::Held(r)) => (Some(r.id), Vec::new()),
            Ok(Decision::Short(short)) => (None, short),
            Err(e) => return Err(unavailable(e)),
        }
    } else {
        (None, Vec::new())
    };
    let record = CartRecord {
        id: id.clone(),
        owner: principal.key_id.clone(),
        channel: raw.channel,
        lines: serde_json::to_string(&lines).expect("lines always serialize"),
        reservation_id,
        updated_at: state.clock.now(),
    };
    let stored = state.orders.put_cart(&record).await.map_err(unavailable)?;
    Ok(Json(answer(&state, &stored, short_lines).await?).into_response())
}

#[utoipa::path(
    get, path = "/v1/carts/{id}", operation_id = "getCart", tag = "orders", security(("api_key" = ["orders:write"])),
    summary = "A cart: its lines, what the channel has of each now, its hold",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = CartAnswer),
        (status = 404, description = "`cart_not_found`", body = super::error::ErrorBody),
    )
)]
pub(super) async fn get(
    State(state): State<ApiState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> Result<Json<CartAnswer>, ApiError> {
    let cart = owned(&state, &principal, &id).await?.ok_or_else(|| ApiError::CartNotFound(id.clone()))?;
    Ok(Json(answer(&state, &cart, Vec::new()).await?))
}

#[utoipa::path(
    delete, path = "/v1/carts/{id}", operation_id = "deleteCart", tag = "orders", security(("api_key" = ["orders:write"])),
    summary = "Empty a cart: its hold goes back",
    params(("id" = String, Path)),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "`cart_not_found`", body = super::error::ErrorBody),
    )
)]
pub(super) async fn delete(
    State(state): State<ApiState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let cart = owned(&state, &principal, &id).await?.ok_or_else(|| ApiError::CartNotFound(id.clone()))?;
    if let Some(hold) = &cart.reservation_id {
        release(&state, hold).await;
    }
    state.orders.delete_cart(&id).await.map_err(unavailable)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Gives a cart's hold back; one already ended (expired, or converted by its order) is left.
async fn release(state: &ApiState, reservation_id: &str) {
    match state.reservations.cancel(reservation_id, &admin()).await {
        Ok(_) | Err(ReservationError::NotHeld { .. }) | Err(ReservationError::NotFound(_)) => {}
        Err(e) => {
            warn!(reservation = %reservation_id, error = %e, "a cart's hold not given back; it expires by itself")
        }
    }
}
