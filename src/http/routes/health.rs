//! Liveness and readiness.

use crate::http::AppState;
use crate::http::bodies::{Liveness, Readiness};
use crate::http::probe::{Probe, probe};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/order-health", get(order_health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
}

/// The old service's health check, kept for the gateway.
#[utoipa::path(
    get,
    path = "/order-health",
    tag = "operations",
    responses((status = 200, description = "Always this text", body = String,
        content_type = "text/plain", example = "Order Service is healthy"))
)]
pub async fn order_health() -> &'static str {
    "Order Service is healthy"
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "operations",
    responses((status = 200, description = "Alive", body = Liveness))
)]
pub async fn live() -> axum::Json<Liveness> {
    axum::Json(Liveness {
        status: "ok".into(),
    })
}

/// Readiness per dependency; 503 when MongoDB or RabbitMQ is down, as the
/// service then can neither commit nor publish.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "MongoDB or RabbitMQ is down (same body), or timed out (ErrorBody)",
            content((Readiness = "application/json"))),
    )
)]
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let Probe {
        mongo,
        rabbitmq,
        outbox,
    } = probe(&state).await;
    let outbox = outbox.map(|stats| {
        json!({
            "pending": stats.pending,
            "parked": stats.parked,
            "oldestPendingSeconds": stats.oldest_pending_age.as_secs(),
        })
    });
    let up = |ok: bool| if ok { "up" } else { "down" };
    let status = if mongo && rabbitmq {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if status == StatusCode::OK { "ready" } else { "not ready" },
        "mongo": up(mongo),
        "rabbitmq": up(rabbitmq),
        "elasticsearch": if state.config.elastic_search_url.is_some() { "configured" } else { "disabled" },
        "flutterwave": { "breaker": state.payments.flutterwave().breaker_label() },
        "outbox": outbox,
    });
    (status, axum::Json(body))
}
