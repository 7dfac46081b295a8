//! The product catalog: `PUT /v1/products/{sku}` and `GET /v1/products/{sku}`.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use tracing::warn;

use super::{
    error::{ApiError, ErrorBody},
    extract::SmallBody,
    state::ApiState,
};
use crate::{
    event::Sku,
    product::{Product, ProductInput, StoredProduct},
};

/// Creates (201) or replaces (200) a product, and answers it as stored.
#[utoipa::path(
    put, path = "/v1/products/{sku}", operation_id = "putProduct", tag = "products", security(("api_key" = ["admin"])),
    summary = "Create or replace a product",
    params(("sku" = String, Path)),
    request_body = ProductInput,
    responses(
        (status = 201, description = "created", body = StoredProduct),
        (status = 200, description = "replaced", body = StoredProduct),
        (status = 400, description = "`invalid_sku`", body = ErrorBody),
        (status = 422, description = "`invalid_product`", body = ErrorBody),
        (status = 503, description = "`unavailable`", body = ErrorBody),
    )
)]
pub(super) async fn put(
    State(state): State<ApiState>,
    Path(sku): Path<String>,
    SmallBody(body): SmallBody,
) -> Result<(StatusCode, Json<StoredProduct>), ApiError> {
    let sku = Sku::parse(sku).map_err(|e| ApiError::InvalidSku(e.message))?;
    let input: ProductInput = serde_json::from_slice(&body).map_err(|e| ApiError::InvalidProduct(e.to_string()))?;
    let product = Product::parse(sku.clone(), input).map_err(ApiError::InvalidProduct)?;
    let unavailable = |e: crate::db::DbError| {
        warn!(error = %e, "product write failed");
        ApiError::Unavailable("the database")
    };
    let created = state.catalog.put_products(std::slice::from_ref(&product)).await.map_err(unavailable)? == 1;
    let stored =
        state.catalog.product(&sku).await.map_err(unavailable)?.ok_or(ApiError::Unavailable("the database"))?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(stored)))
}

#[utoipa::path(
    get, path = "/v1/products/{sku}", operation_id = "getProduct", tag = "products", security(("api_key" = ["stock:read"])),
    summary = "A product of the catalog",
    params(("sku" = String, Path)),
    responses(
        (status = 200, body = StoredProduct),
        (status = 400, description = "`invalid_sku`", body = ErrorBody),
        (status = 404, description = "`product_not_found`", body = ErrorBody),
        (status = 503, description = "`unavailable`", body = ErrorBody),
    )
)]
pub(super) async fn get(
    State(state): State<ApiState>,
    Path(sku): Path<String>,
) -> Result<Json<StoredProduct>, ApiError> {
    let sku = Sku::parse(sku).map_err(|e| ApiError::InvalidSku(e.message))?;
    let product = state.catalog.product(&sku).await.map_err(|e| {
        warn!(error = %e, "product read failed");
        ApiError::Unavailable("the database")
    })?;
    product.map(Json).ok_or_else(|| ApiError::ProductNotFound(sku.to_string()))
}
