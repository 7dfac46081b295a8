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
use chrono::{DateTime, Utc};
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::warn;

use super::{error::ApiError, extract::SmallBody, ApiState};
use crate::{
    cache::{ReadError, SkuStock},
    event::{LocationId, Sku, StockLevel, QUANTITY_MAX},
    store::StockPolicy,
};

#[derive(Debug, Serialize)]
pub(super) struct SkuBody {
    sku: String,
    as_of: DateTime<Utc>,
    stale: bool,
    on_hand: i64,
    reserved: i64,
    available: i64,
    locations: Vec<LevelBody>,
}

#[derive(Debug, Serialize)]
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
async fn read(state: &ApiState, sku: &str) -> Result<(Sku, SkuStock), ApiError> {
    let sku = Sku::parse(sku).map_err(|e| ApiError::InvalidSku(e.message))?;
    match state.cache.get(&sku).await {
        Ok(stock) => Ok((sku, stock)),
        Err(ReadError::NotFound) => Err(ApiError::SkuNotFound(sku.to_string())),
        Err(ReadError::Unavailable) => Err(ApiError::StockUnavailable(sku.to_string())),
    }
}

/// The hottest route: a cached SKU answers with its body rendered once per version.
pub(super) async fn get_sku(State(state): State<ApiState>, Path(sku): Path<String>) -> Result<Response, ApiError> {
    let (sku, stock) = read(&state, &sku).await?;
    let body = stock.rendered(|stock| {
        let body = SkuBody::new(&sku, stock, stock.levels().iter());
        Bytes::from(serde_json::to_vec(&body).expect("a stock body always serializes"))
    });
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}

pub(super) async fn get_level(
    State(state): State<ApiState>,
    Path((sku, location)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let location = LocationId::parse(location).map_err(|e| ApiError::InvalidLocation(e.message))?;
    let (sku, stock) = read(&state, &sku).await?;
    let level = stock
        .levels()
        .iter()
        .find(|l| l.location == location)
        .ok_or_else(|| ApiError::LocationNotFound(sku.to_string(), location.to_string()))?;
    let mut body = serde_json::to_value(LevelBody::from(level)).expect("a level body always serializes");
    body["sku"] = json!(sku.as_str());
    body["as_of"] = json!(stock.as_of());
    body["stale"] = json!(stock.stale);
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    skus: Vec<String>,
    /// Only these locations, when given.
    #[serde(default)]
    locations: Option<Vec<String>>,
}

/// A batch of SKUs in one request; each SKU answers on its own, found or with its error.
pub(super) async fn query(State(state): State<ApiState>, SmallBody(body): SmallBody) -> Result<Json<Value>, ApiError> {
    let request: QueryRequest = serde_json::from_slice(&body).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let max = state.query.query_skus_max;
    if request.skus.len() > max {
        return Err(ApiError::TooManySkus { count: request.skus.len(), max });
    }
    let locations: Option<Vec<LocationId>> = request
        .locations
        .map(|ls| {
            ls.into_iter().map(|l| LocationId::parse(l).map_err(|e| ApiError::InvalidLocation(e.message))).collect()
        })
        .transpose()?;
    let (state, locations) = (&state, &locations);
    let results = join_all(request.skus.iter().map(|sku| async move {
        match read(state, sku).await {
            Ok((sku, stock)) => {
                let wanted = |l: &&StockLevel| locations.as_ref().is_none_or(|ls| ls.contains(&l.location));
                json!({ "status": "ok", "stock": SkuBody::new(&sku, &stock, stock.levels().iter().filter(wanted)) })
            }
            Err(e) => json!({ "status": "error", "sku": sku, "error": { "code": e.code(), "message": e.to_string() } }),
        }
    }))
    .await;
    Ok(Json(json!({ "results": results })))
}

#[derive(Debug, Deserialize)]
pub(super) struct ChannelParam {
    channel: Option<String>,
}

/// What a channel may sell of a SKU: the availability at the locations that serve it.
pub(super) async fn availability(
    State(state): State<ApiState>,
    Path(sku): Path<String>,
    Query(param): Query<ChannelParam>,
) -> Result<Json<Value>, ApiError> {
    let name = param.channel.ok_or(ApiError::MissingChannel)?;
    let channel = state.channels.get(&name).ok_or_else(|| ApiError::UnknownChannel(name.clone()))?;
    let (sku, stock) = read(&state, &sku).await?;
    let serving: Vec<&StockLevel> = stock.levels().iter().filter(|l| channel.serves(l.location.as_str())).collect();
    let locations: Vec<Value> =
        serving.iter().map(|l| json!({ "location": l.location.as_str(), "available": l.available() })).collect();
    Ok(Json(json!({
        "sku": sku.as_str(),
        "channel": name,
        "available": serving.iter().map(|l| l.available()).sum::<i64>(),
        "locations": locations,
        "as_of": stock.as_of(),
        "stale": stock.stale,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyRequest {
    safety_stock: i64,
    #[serde(default)]
    reorder_point: Option<i64>,
}

/// Sets a level's stock policy, publishes the level and answers it.
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
    let level = state.store.set_policy(&(sku, location), policy).await.map_err(|e| {
        warn!(error = %e, "policy write failed");
        ApiError::Unavailable("the database")
    })?;
    state.relay.publish_levels(std::slice::from_ref(&level)).await;
    Ok(Json(LevelBody::from(&level)))
}
