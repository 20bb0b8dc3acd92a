//! `GET /metrics`: the Prometheus text format. Gauges read from the
//! database (outbox backlog) are refreshed at scrape time, so a scrape costs
//! a ping and three small queries, and idle instances cost nothing.

use crate::http::AppState;
use crate::http::probe::probe;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

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
    // Every scrape looks at the dependencies itself, so the dependency
    // alert does not depend on someone probing readiness.
    probe(&state).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
