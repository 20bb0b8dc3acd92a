//! `POST /webhooks/flutterwave` (also under `/api/v1/order`): not behind the
//! gateway token; authenticated by Flutterwave's hash or signature.

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::trace;
use crate::webhooks::flutterwave::{Receipt, WebhookEvent, authentic};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

/// Flutterwave events are small; anything larger is not one.
const BODY_LIMIT: usize = 64 * 1024;

pub fn router() -> Router<AppState> {
    let route = post(flutterwave).layer(DefaultBodyLimit::max(BODY_LIMIT));
    Router::new()
        .route("/webhooks/flutterwave", route.clone())
        .route("/api/v1/order/webhooks/flutterwave", route)
}

async fn flutterwave(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let verif_hash = headers.get("verif-hash").map(|v| v.as_bytes());
    let signature = headers.get("flutterwave-signature").map(|v| v.as_bytes());
    if !authentic(
        verif_hash,
        signature,
        &body,
        &state.config.flutterwave_webhook_hash,
    ) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Invalid webhook signature",
        ));
    }
    let event: WebhookEvent = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("Not a Flutterwave event: {e}")))?;
    let receipt = state
        .webhooks
        .receive(
            event,
            trace::correlation_id(&headers),
            trace::traceparent(&headers),
        )
        .await?;
    let outcome = match receipt {
        Receipt::Accepted => "accepted",
        Receipt::Duplicate => "duplicate",
        Receipt::Ignored => "ignored",
    };
    Ok(Json(json!({ "status": "success", "message": outcome })))
}
