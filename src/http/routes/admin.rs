//! Operator routes: parked outbox records and their replay. Guarded by
//! `ADMIN_TOKEN` in the `x-admin-token` header, not by user tokens.

use crate::http::AppState;
use crate::http::auth::secret_matches;
use crate::http::bodies::{ParkedRecords, Replayed};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::PathParams;
use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post};
use serde_json::json;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/outbox/parked", get(parked))
        .route("/admin/outbox/parked/{message_id}/replay", post(replay_one))
        .route("/admin/outbox/replay-parked", post(replay_all))
}

pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get("x-admin-token")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if secret_matches(presented, &state.config.admin_token) {
            Ok(Admin)
        } else {
            Err(ApiError::new(StatusCode::FORBIDDEN, "admin token required"))
        }
    }
}

/// Parked outbox records (up to 500), oldest first.
#[utoipa::path(
    get,
    path = "/admin/outbox/parked",
    tag = "admin",
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "Parked records", body = ParkedRecords),
        (status = 403, description = "Admin token missing or wrong", body = ErrorBody),
    )
)]
pub async fn parked(
    _: Admin,
    State(state): State<AppState>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let records = state.outbox.parked(500).await.map_err(ApiError::internal)?;
    let records: Vec<_> = records
        .iter()
        .map(|r| {
            json!({
                "messageId": r.message_id,
                "aggregateId": r.aggregate_id,
                "seq": r.seq,
                "destination": r.destination.label(),
                "attempts": r.attempts,
                "lastError": r.last_error,
                "createdAt": r.created_at.try_to_rfc3339_string().ok(),
                "parkedAt": r.parked_at.and_then(|d| d.try_to_rfc3339_string().ok()),
                "payload": r.payload,
            })
        })
        .collect();
    Ok(axum::Json(
        json!({ "message": "Parked outbox records", "records": records }),
    ))
}

/// Queues one parked record for delivery again.
#[utoipa::path(
    post,
    path = "/admin/outbox/parked/{messageId}/replay",
    tag = "admin",
    security(("adminToken" = [])),
    params(("messageId" = String, Path, min_length = 1)),
    responses(
        (status = 200, description = "Queued", body = Replayed),
        (status = 403, description = "Admin token missing or wrong", body = ErrorBody),
        (status = 404, description = "No parked record with that id", body = ErrorBody),
    )
)]
pub async fn replay_one(
    _: Admin,
    State(state): State<AppState>,
    PathParams(message_id): PathParams<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    match state.outbox.replay(&message_id).await {
        Ok(()) => Ok(axum::Json(
            json!({ "message": "Record queued for delivery", "replayed": 1 }),
        )),
        Err(outbox::Error::NotFound(_)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no parked record with that id",
        )),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// Queues every parked record for delivery again.
#[utoipa::path(
    post,
    path = "/admin/outbox/replay-parked",
    tag = "admin",
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "Queued", body = Replayed),
        (status = 403, description = "Admin token missing or wrong", body = ErrorBody),
    )
)]
pub async fn replay_all(
    _: Admin,
    State(state): State<AppState>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let replayed = state
        .outbox
        .replay_all()
        .await
        .map_err(ApiError::internal)?;
    Ok(axum::Json(
        json!({ "message": "Parked records queued for delivery", "replayed": replayed }),
    ))
}
