//! Stock reads and the stock policy: `GET /v1/stock/{sku}`, `GET /v1/stock/{sku}/{location}`,
//! `POST /v1/stock/query`, `GET /v1/availability/{sku}?channel=NAME` and
//! `PUT /v1/stock/{sku}/{location}/policy`. Reads go through the cache; every answer says
//! as of when it holds and whether it is stale.

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::header::CONTENT_TYPE,
    response::{IntoResponse, Response},
    Json,
};
use std::sync::Arc;

use axum::Extension;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{
    auth::Principal,
    error::{ApiError, ErrorBody, ErrorDetail},
    extract::SmallBody,
    state::ApiState,
};
use crate::{
    cache::{ReadError, SkuStock},
    db::StockPolicy,
    event::{LocationId, Sku, StockLevel, QUANTITY_MAX},
};

/// A SKU's stock at every location (or the locations asked for), with network totals.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct SkuBody {
    sku: String,
    /// When these levels were last known to be current.
    as_of: DateTime<Utc>,
    /// True when the database did not answer in time and the last known levels answer.
    stale: bool,
    on_hand: i64,
    reserved: i64,
    available: i64,
    locations: Vec<LevelBody>,
}

/// One location's stock. `available` is `max(0, on_hand - reserved - safety_stock)`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct LevelBody {
    location: String,
    on_hand: i64,
    reserved: i64,
    safety_stock: i64,
    available: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reorder_point: Option<i64>,
    version: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_movement_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
}

impl From<&StockLevel> for LevelBody {
    fn from(l: &StockLevel) -> Self {
        LevelBody {
            location: l.location.to_string(),
            on_hand: l.on_hand,
            reserved: l.reserved,
            safety_stock: l.safety_stock,
            available: l.available(),
            reorder_point: l.reorder_point,
            version: l.version,
            last_movement_at: l.last_movement_at,
            updated_at: l.updated_at,
        }
    }
}

impl SkuBody {
    /// The answer for `levels`, some or all of the SKU's.
    fn new<'a>(sku: &Sku, stock: &SkuStock, levels: impl Iterator<Item = &'a StockLevel> + Clone) -> Self {
        SkuBody {
            sku: sku.to_string(),
            as_of: stock.as_of(),
            stale: stock.stale,
            on_hand: levels.clone().map(|l| l.on_hand).sum(),
            reserved: levels.clone().map(|l| l.reserved).sum(),
            available: levels.clone().map(StockLevel::available).sum(),
            locations: levels.map(LevelBody::from).collect(),
        }
    }
}

/// Reads a SKU through the cache, turning each way it can fail into its API error.
pub(super) async fn read(state: &ApiState, sku: &str) -> Result<(Sku, SkuStock), ApiError> {
    let sku = Sku::parse(sku).map_err(|e| ApiError::InvalidSku(e.message))?;
    match state.cache.get(&sku).await {
        Ok(stock) => Ok((sku, stock)),
        Err(e) => Err(read_error(&sku, e)),
    }
}

fn read_error(sku: &Sku, e: ReadError) -> ApiError {
    match e {
        ReadError::NotFound => ApiError::SkuNotFound(sku.to_string()),
        ReadError::Unavailable => ApiError::StockUnavailable(sku.to_string()),
    }
}

/// The hottest route: a cached SKU answers with its body rendered once per version.
#[utoipa::path(
    get, path = "/v1/stock/{sku}", operation_id = "getStock", tag = "stock", security(("api_key" = ["stock:read"])),
    summary = "A SKU's stock at every location",
    params(("sku" = String, Path)),
    responses(
        (status = 200, body = SkuBody),
        (status = 400, description = "`invalid_sku`", body = ErrorBody),
        (status = 404, description = "`sku_not_found`", body = ErrorBody),
        (status = 503, description = "`stock_unavailable`: the database is down and the SKU was never read", body = ErrorBody),
    )
)]
pub(super) async fn get_sku(State(state): State<ApiState>, Path(sku): Path<String>) -> Result<Response, ApiError> {
    let (sku, stock) = read(&state, &sku).await?;
    let body = stock.rendered(|stock| {
        let body = SkuBody::new(&sku, stock, stock.levels().iter());
        Bytes::from(serde_json::to_vec(&body).expect("a stock body always serializes"))
    });
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}

/// One location's stock of a SKU.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct LevelAnswer {
    sku: String,
    #[serde(flatten)]
    level: LevelBody,
    as_of: DateTime<Utc>,
    stale: bool,
}

#[utoipa::path(
    get, path = "/v1/stock/{sku}/{location}", operation_id = "getStockLevel", tag = "stock", security(("api_key" = ["stock:read"])),
    summary = "A SKU's stock at one location",
    params(("sku" = String, Path), ("location" = String, Path)),
    responses(
        (status = 200, body = LevelAnswer),
        (status = 400, description = "`invalid_sku`, `invalid_location`", body = ErrorBody),
        (status = 404, description = "`sku_not_found`, `location_not_found`", body = ErrorBody),
        (status = 503, description = "`stock_unavailable`", body = ErrorBody),
    )
)]
pub(super) async fn get_level(
    State(state): State<ApiState>,
    Path((sku, location)): Path<(String, String)>,
) -> Result<Json<LevelAnswer>, ApiError> {
    let location = LocationId::parse(location).map_err(|e| ApiError::InvalidLocation(e.message))?;
    let (sku, stock) = read(&state, &sku).await?;
    let level = stock
        .levels()
        .iter()
        .find(|l| l.location == location)
        .ok_or_else(|| ApiError::LocationNotFound(sku.to_string(), location.to_string()))?;
    Ok(Json(LevelAnswer {
        sku: sku.to_string(),
        level: LevelBody::from(level),
        as_of: stock.as_of(),
        stale: stock.stale,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct QueryRequest {
    /// At most 500 (`query.query_skus_max`).
    skus: Vec<String>,
    /// Only these locations, when given.
    #[serde(default)]
    locations: Option<Vec<String>>,
}

/// One SKU's answer in a batch: `stock` when found, else `sku` and `error`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct QueryResult {
    /// `ok` or `error`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    stock: Option<SkuBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sku: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorDetail<'static>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct QueryAnswer {
    results: Vec<QueryResult>,
}

/// A batch of SKUs in one request; each SKU answers on its own, found or with its error.
#[utoipa::path(
    post, path = "/v1/stock/query", operation_id = "queryStock", tag = "stock", security(("api_key" = ["stock:read"])),
    summary = "The stock of many SKUs, optionally at some locations",
    request_body = QueryRequest,
    responses(
        (status = 200, description = "one result per SKU, in order", body = QueryAnswer),
        (status = 413, description = "`too_many_skus`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: a query costs one request of the key's limit per SKU", body = ErrorBody),
        (status = 422, description = "`invalid_request`", body = ErrorBody),
    )
)]
pub(super) async fn query(
    State(state): State<ApiState>,
    Extension(principal): Extension<Arc<Principal>>,
    SmallBody(body): SmallBody,
) -> Result<Json<QueryAnswer>, ApiError> {
    let request: QueryRequest = serde_json::from_slice(&body).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let max = state.query.query_skus_max;
    if request.skus.len() > max {
        return Err(ApiError::TooManySkus { count: request.skus.len(), max });
    }
    // A query of many SKUs costs as many requests of the key's rate limit, the one
    // request the middleware took included.
    let extra = u32::try_from(request.skus.len().saturating_sub(1)).unwrap_or(u32::MAX);
    state.auth.limit(&principal.key_id, extra)?;
    let locations: Option<Vec<LocationId>> = request
        .locations
        .map(|ls| {
            ls.into_iter().map(|l| LocationId::parse(l).map_err(|e| ApiError::InvalidLocation(e.message))).collect()
        })
        .transpose()?;
    let parsed: Vec<Result<Sku, ApiError>> =
        request.skus.iter().map(|sku| Sku::parse(sku.as_str()).map_err(|e| ApiError::InvalidSku(e.message))).collect();
    let valid: Vec<Sku> = parsed.iter().filter_map(|p| p.as_ref().ok().cloned()).collect();
    // Every SKU the cache cannot answer is read from the database at once.
    let mut read = state.cache.get_many(&valid).await.into_iter();
    let results = parsed
        .into_iter()
        .zip(&request.skus)
        .map(|(parsed, asked)| {
            let answer = parsed.and_then(|sku| {
                let stock = read.next().unwrap_or(Err(ReadError::Unavailable));
                stock.map(|stock| (sku.clone(), stock)).map_err(|e| read_error(&sku, e))
            });
            match answer {
                Ok((sku, stock)) => {
                    let wanted = |l: &&StockLevel| locations.as_ref().is_none_or(|ls| ls.contains(&l.location));
                    let body = SkuBody::new(&sku, &stock, stock.levels().iter().filter(wanted));
                    QueryResult { status: "ok", stock: Some(body), sku: None, error: None }
                }
                Err(e) => QueryResult {
                    status: "error",
                    stock: None,
                    sku: Some(asked.clone()),
                    error: Some(ErrorDetail { code: e.code(), message: e.to_string().into() }),
                },
            }
        })
        .collect();
    Ok(Json(QueryAnswer { results }))
}

#[derive(Debug, Deserialize)]
pub(super) struct ChannelParam {
    channel: Option<String>,
}

/// What a channel may sell of a SKU, in total and per serving location.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct AvailabilityAnswer {
    sku: String,
    channel: String,
    available: i64,
    locations: Vec<LocationAvailability>,
    as_of: DateTime<Utc>,
    stale: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct LocationAvailability {
    location: String,
    available: i64,
}

/// What a channel may sell of a SKU: the availability at the locations that serve it.
#[utoipa::path(
    get, path = "/v1/availability/{sku}", operation_id = "getAvailability", tag = "stock", security(("api_key" = ["stock:read"])),
    summary = "What a sales channel may sell of a SKU",
    params(("sku" = String, Path), ("channel" = String, Query, description = "a channel of the configuration")),
    responses(
        (status = 200, body = AvailabilityAnswer),
        (status = 400, description = "`invalid_sku`, `missing_channel`", body = ErrorBody),
        (status = 404, description = "`sku_not_found`, `unknown_channel`", body = ErrorBody),
        (status = 503, description = "`stock_unavailable`", body = ErrorBody),
    )
)]
pub(super) async fn availability(
    State(state): State<ApiState>,
    Path(sku): Path<String>,
    Query(param): Query<ChannelParam>,
) -> Result<Json<AvailabilityAnswer>, ApiError> {
    let name = param.channel.ok_or(ApiError::MissingChannel)?;
    let channel = state.channels.get(&name).ok_or_else(|| ApiError::UnknownChannel(name.clone()))?;
    let (sku, stock) = read(&state, &sku).await?;
    let serving: Vec<&StockLevel> = stock.levels().iter().filter(|l| channel.serves(l.location.as_str())).collect();
    Ok(Json(AvailabilityAnswer {
        sku: sku.to_string(),
        channel: name,
        available: channel.available(stock.levels()),
        locations: serving
            .iter()
            .map(|l| LocationAvailability { location: l.location.to_string(), available: l.available() })
            .collect(),
        as_of: stock.as_of(),
        stale: stock.stale,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyRequest {
    /// Units kept back from every channel, 0 or more.
    safety_stock: i64,
    /// At or below this on_hand the location is low on stock.
    #[serde(default)]
    reorder_point: Option<i64>,
}

/// Sets a level's stock policy, publishes the level and answers it.
#[utoipa::path(
    put, path = "/v1/stock/{sku}/{location}/policy", operation_id = "putStockPolicy", tag = "stock", security(("api_key" = ["admin"])),
    summary = "Set the safety stock and reorder point of a level",
    params(("sku" = String, Path), ("location" = String, Path)),
    request_body = PolicyRequest,
    responses(
        (status = 200, description = "the level as written", body = LevelBody),
        (status = 400, description = "`invalid_sku`, `invalid_location`", body = ErrorBody),
        (status = 422, description = "`invalid_request`", body = ErrorBody),
        (status = 503, description = "`unavailable`", body = ErrorBody),
    )
)]
pub(super) async fn put_policy(
    State(state): State<ApiState>,
    Path((sku, location)): Path<(String, String)>,
    SmallBody(body): SmallBody,
) -> Result<Json<LevelBody>, ApiError> {
    let sku = Sku::parse(sku).map_err(|e| ApiError::InvalidSku(e.message))?;
    let location = LocationId::parse(location).map_err(|e| ApiError::InvalidLocation(e.message))?;
    let request: PolicyRequest = serde_json::from_slice(&body).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let in_range = |v: i64| (0..=QUANTITY_MAX).contains(&v);
    if !in_range(request.safety_stock) || !request.reorder_point.is_none_or(in_range) {
        return Err(ApiError::InvalidRequest(format!(
            "safety_stock and reorder_point must be within 0 and {QUANTITY_MAX}"
        )));
    }
    let policy = StockPolicy { safety_stock: request.safety_stock, reorder_point: request.reorder_point };
    let level = state.policies.set_policy(&(sku, location), policy).await.map_err(|e| {
        warn!(error = %e, "policy write failed");
        ApiError::Unavailable("the database")
    })?;
    state.relay.publish_levels(std::slice::from_ref(&level)).await;
    Ok(Json(LevelBody::from(&level)))
}
