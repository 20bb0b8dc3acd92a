//! Request identity: correlation id and W3C `traceparent`, carried into
//! every event a request causes, and the request span (exported to APM when
//! `ENABLE_APM=1`, see `telemetry::apm`).

use crate::telemetry::apm;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, Response};
use rand::Rng;
use std::time::Duration;
use tower_http::trace::{DefaultOnResponse, OnResponse};
use tracing::Span;

/// The incoming `traceparent` if well-formed, else the request span's own
/// while traces are exported (so events and APM show one trace), else a new
/// root one.
pub fn traceparent(headers: &HeaderMap) -> String {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_traceparent(v))
        .map(str::to_string)
        .or_else(apm::current_traceparent)
        .unwrap_or_else(new_traceparent)
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

fn new_traceparent() -> String {
    let mut rng = rand::rng();
    format!(
        "00-{:032x}-{:016x}-01",
        rng.random::<u128>().max(1),
        rng.random::<u64>().max(1)
    )
}

fn valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit());
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1] != "0".repeat(32)
        && parts[2] != "0".repeat(16)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_valid_traceparent_and_replaces_a_bad_one() {
        let mut headers = HeaderMap::new();
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        headers.insert("traceparent", good.parse().unwrap());
        assert_eq!(traceparent(&headers), good);
        headers.insert("traceparent", "00-zz-b7ad6b7169203331-01".parse().unwrap());
        let fresh = traceparent(&headers);
        assert_ne!(fresh, "00-zz-b7ad6b7169203331-01");
        assert!(valid_traceparent(&fresh));
    }
}
