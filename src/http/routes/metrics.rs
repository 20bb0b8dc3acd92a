//! `GET /metrics`: the Prometheus text format. Gauges read from the
//! database (outbox backlog) are refreshed at scrape time, so a scrape costs
//! three small queries and idle instances cost nothing.

use crate::http::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use std::time::Duration;

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// Prometheus metrics, text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Metrics", body = String,
        content_type = "text/plain"))
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let stats = tokio::time::timeout(Duration::from_secs(2), state.outbox.stats()).await;
    let f = state.metrics.families();
    // The stats are read from MongoDB, so they also say whether it answers:
    // every scrape refreshes both dependencies, not only readiness probes.
    let mongo = match stats {
        Ok(Ok(stats)) => {
            state.metrics.set_outbox(&stats);
            true
        }
        _ => false,
    };
    f.dependency_up
        .with_label_values(&["mongo"])
        .set(i64::from(mongo));
    f.flutterwave_breaker_state
        .set(state.payments.flutterwave().breaker_code());
    f.dependency_up
        .with_label_values(&["rabbitmq"])
        .set(i64::from(state.broker.is_connected()));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
