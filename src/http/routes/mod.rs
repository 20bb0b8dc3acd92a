//! Route tables, one module per area.

pub mod admin;
pub mod health;
pub mod orders;
pub mod webhooks;

use super::error::ApiError;
use axum::http::StatusCode;

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Route not found")
}
