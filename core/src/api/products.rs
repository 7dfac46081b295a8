//! The product catalog: `PUT /v1/products/{sku}` and `GET /v1/products/{sku}`.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use tracing::warn;

use super::{error::ApiError, extract::SmallBody, ApiState};
use crate::{
    event::Sku,
    product::{Product, ProductInput, StoredProduct},
};

/// Creates (201) or replaces (200) a product, and answers it as stored.
pub(super) async fn put(
    State(state): State<ApiState>,
    Path(sku): Path<String>,
    SmallBody(body): SmallBody,
) -> Result<(StatusCode, Json<StoredProduct>), ApiError> {
    let sku = Sku::parse(sku).map_err(|e| ApiError::InvalidSku(e.message))?;
    let input: ProductInput = serde_json::from_slice(&body).map_err(|e| ApiError::InvalidProduct(e.to_string()))?;
    let product = Product::parse(sku.clone(), input).map_err(ApiError::InvalidProduct)?;
    let unavailable = |e: crate::store::StoreError| {
        warn!(error = %e, "product write failed");
        ApiError::Unavailable("the database")
    };
    let created = state.store.put_products(std::slice::from_ref(&product)).await.map_err(unavailable)? == 1;
    let stored = state.store.product(&sku).await.map_err(unavailable)?.ok_or(ApiError::Unavailable("the database"))?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(stored)))
}

pub(super) async fn get(
    State(state): State<ApiState>,
    Path(sku): Path<String>,
) -> Result<Json<StoredProduct>, ApiError> {
    let sku = Sku::parse(sku).map_err(|e| ApiError::InvalidSku(e.message))?;
    let product = state.store.product(&sku).await.map_err(|e| {
        warn!(error = %e, "product read failed");
        ApiError::Unavailable("the database")
    })?;
    product.map(Json).ok_or_else(|| ApiError::ProductNotFound(sku.to_string()))
}
