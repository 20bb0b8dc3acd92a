//! Liveness and readiness.

use crate::http::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use bson::doc;
use serde_json::json;
use std::time::Duration;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/order-health",
            get(|| async { "Order Service is healthy" }),
        )
        .route(
            "/health/live",
            get(|| async { axum::Json(json!({ "status": "ok" })) }),
        )
        .route("/health/ready", get(ready))
}

/// Per dependency; 503 when MongoDB or RabbitMQ is down, as the service then
/// can neither commit nor publish.
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let mongo = tokio::time::timeout(
        Duration::from_secs(2),
        state.db.run_command(doc! { "ping": 1 }),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let rabbitmq = state.broker.is_connected();
    let outbox = match tokio::time::timeout(Duration::from_secs(2), state.outbox.stats()).await {
        Ok(Ok(stats)) => json!({
            "pending": stats.pending,
            "parked": stats.parked,
            "oldestPendingSeconds": stats.oldest_pending_age.as_secs(),
        }),
        _ => json!(null),
    };
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
