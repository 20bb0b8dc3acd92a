//! Request identity: correlation id and W3C `traceparent`, carried into
//! every event a request causes, and the request span (exported to APM when
//! `ENABLE_APM=1`, see `telemetry::apm`).

use crate::telemetry::{apm, trace_context};
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, Response};
use std::time::Duration;
use tower_http::trace::{DefaultOnResponse, OnResponse};
use tracing::Span;

/// What the events a request causes carry: the request span's own
/// `traceparent` while traces are exported (so a peer's span sits under the
/// request's in APM), else the incoming one if well-formed, else a new root.
/// Called inside the request span.
pub fn traceparent(headers: &HeaderMap) -> String {
    trace_context::for_what_follows(headers.get("traceparent").and_then(|v| v.to_str().ok()))
}

/// The caller's correlation id (`x-correlation-id`, else `x-request-id`), if sane.
pub fn correlation_id(headers: &HeaderMap) -> String {
    ["x-correlation-id", "x-request-id"]
        .iter()
        .filter_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
        .find(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// A span per request, named by the matched route rather than the raw path
/// (ids in paths would make every span unique).
pub fn make_span(request: &Request) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    // `otel.*` stay empty, and out of the log lines, unless traces are exported.
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        route = %route,
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
    );
    apm::start_server_span(&span, request.headers(), request.method().as_str(), &route);
    span
}

/// The one INFO line per request, and the status on the exported span.
#[derive(Clone, Debug)]
pub struct RecordResponse(DefaultOnResponse);

impl Default for RecordResponse {
    fn default() -> Self {
        Self(DefaultOnResponse::new().level(tracing::Level::INFO))
    }
}

impl<B> OnResponse<B> for RecordResponse {
    fn on_response(self, response: &Response<B>, latency: Duration, span: &Span) {
        apm::record_status(span, response.status().as_u16());
        self.0.on_response(response, latency, span);
    }
}
