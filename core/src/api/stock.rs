//! `GET /v1/stock/{sku}`: the level of a SKU at every location (the query API issue adds
//! the cache, reservations and availability).

use axum::{
    extract::{Path, State},
    Json,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::warn;

use super::{error::ApiError, ApiState};
use crate::event::Sku;

#[derive(Debug, Serialize)]
pub(super) struct SkuStock {
    sku: String,
    on_hand_total: i64,
    locations: Vec<LocationStock>,
}

#[derive(Debug, Serialize)]
struct LocationStock {
    location: String,
    on_hand: i64,
    version: i64,
    last_movement_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_count_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
}

pub(super) async fn get(State(state): State<ApiState>, Path(sku): Path<String>) -> Result<Json<SkuStock>, ApiError> {
    let sku = Sku::parse(sku).map_err(|e| ApiError::InvalidSku(e.message))?;
    let levels = state.store.stock_by_sku(&sku).await.map_err(|e| {
        warn!(error = %e, "stock read failed");
        ApiError::Unavailable("the database")
    })?;
    if levels.is_empty() {
        return Err(ApiError::SkuNotFound(sku.to_string()));
    }
    Ok(Json(SkuStock {
        sku: sku.to_string(),
        on_hand_total: levels.iter().map(|l| l.on_hand).sum(),
        locations: levels
            .into_iter()
            .map(|l| LocationStock {
                location: l.location.to_string(),
                on_hand: l.on_hand,
                version: l.version,
                last_movement_at: l.last_movement_at,
                last_count_at: l.last_count_at,
                updated_at: l.updated_at,
            })
            .collect(),
    }))
}
