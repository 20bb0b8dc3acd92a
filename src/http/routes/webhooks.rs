//! `POST /webhooks/flutterwave` (also under `/api/v1/order`): not behind the
//! gateway token; authenticated by Flutterwave's hash or signature.

use crate::http::AppState;
use crate::http::bodies::{WebhookAck, WebhookOutcome};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::RawBody;
use crate::http::trace;
use crate::webhooks::flutterwave::{self, Receipt, WebhookEvent, authentic};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};

/// Flutterwave events are small; anything larger is not one.
const BODY_LIMIT: usize = 64 * 1024;

pub fn router() -> Router<AppState> {
    let route = post(flutterwave).layer(DefaultBodyLimit::max(BODY_LIMIT));
    Router::new()
        .route("/webhooks/flutterwave", route.clone())
        .route("/api/v1/order/webhooks/flutterwave", route)
}

/// A Flutterwave event (also mounted at `/api/v1/order/webhooks/flutterwave`).
///
/// Authentic when `verif-hash` equals `FLUTTERWAVE_WEBHOOK_HASH` or
/// `flutterwave-signature` is the base64 HMAC-SHA256 of the raw body keyed
/// with it; then recorded once (event type + `data.id`) and answered at
/// once. The payload is never trusted: a `charge.completed` stages a
/// re-verification with the API. Any content type is read as JSON.
#[utoipa::path(
    post,
    path = "/webhooks/flutterwave",
    operation_id = "flutterwave_webhook",
    tag = "webhooks",
    security(("webhookHash" = []), ("webhookSignature" = [])),
    request_body(content = WebhookEvent, content_type = "application/json"),
    responses(
        (status = 200, description = "Recorded (or recognised as a duplicate, or ignored)", body = WebhookAck),
        (status = 400, description = "Authentic, but not a Flutterwave event", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
    )
)]
pub async fn flutterwave(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<WebhookAck>, ApiError> {
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
    let event: WebhookEvent = flutterwave::parse(&body)
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
        Receipt::Accepted => WebhookOutcome::Accepted,
        Receipt::Duplicate => {
            state
                .metrics
                .families()
                .inbox_duplicates
                .with_label_values(&[crate::webhooks::flutterwave::CONSUMER])
                .inc();
            WebhookOutcome::Duplicate
        }
        Receipt::Ignored => WebhookOutcome::Ignored,
    };
    Ok(Json(WebhookAck {
        status: "success".into(),
        message: outcome,
    }))
}
