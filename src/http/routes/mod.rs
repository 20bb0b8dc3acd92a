//! Route tables, one module per area.

pub mod admin;
pub mod health;
pub mod metrics;
pub mod orders;
pub mod webhooks;

use super::error::ApiError;
use axum::http::StatusCode;

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Route not found")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed on this route",
    )
}
