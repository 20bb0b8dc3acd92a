//! Limits on what a request may be and how long it may take, and the
//! response headers a hostile page cannot abuse. Body sizes are set per
//! route (`DefaultBodyLimit`); JSON depth and content type are checked by
//! [`super::extract::JsonBody`]; field lengths by `orders::validation`.
//!
//! - [`single_valued_query`]: a query parameter given twice is 400 (the old
//!   service's HPP), on every route.
//! - [`timeout`]: a request still running after `REQUEST_TIMEOUT_MS` is
//!   answered 503 with the JSON error and `Retry-After`.
//! - [`security_headers`]: what helmet sets by default, tightened for an
//!   API that serves only JSON and text.

use super::error::ApiError;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashSet;
use std::time::Duration;
use tower_http::set_header::SetResponseHeaderLayer;

/// Deepest nesting of arrays and objects accepted in a JSON body. The
/// deepest legitimate body (create: `offer` inside the order) has 2.
pub const MAX_JSON_DEPTH: usize = 32;

/// Longest query parameter name echoed back in an error message.
const ECHO_LIMIT: usize = 64;

/// Rejects a query that names a parameter more than once.
pub async fn single_valued_query(request: Request, next: Next) -> Response {
    if let Some(query) = request.uri().query() {
        let mut seen = HashSet::new();
        for (key, _) in form_urlencoded::parse(query.as_bytes()) {
            if !seen.insert(key.clone()) {
                let name: String = key.chars().take(ECHO_LIMIT).collect();
                return ApiError::bad_request(format!(
                    "query parameter {name:?} given more than once"
                ))
                .into_response();
            }
        }
    }
    next.run(request).await
}

/// Answers 503 with the JSON error when the handler takes longer than
/// `limit`. The handler's future is dropped: a MongoDB transaction in
/// progress is aborted, never half-applied; one that committed just before
/// stays committed, and a retry finds it (verify is a no-op on a paid
/// order, create replays with its `Idempotency-Key`).
pub async fn timeout(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError {
            retry_after: Some(1),
            internal: Some(format!("no response within {} ms", limit.as_millis())),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Request timed out")
        }
        .into_response(),
    }
}

/// helmet's defaults, adapted to a JSON API: nothing may be framed, run
/// scripts, or be sniffed into another type.
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("origin-agent-cluster", "?1"),
    ("referrer-policy", "no-referrer"),
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-dns-prefetch-control", "off"),
    ("x-download-options", "noopen"),
    ("x-frame-options", "DENY"),
    ("x-permitted-cross-domain-policies", "none"),
    ("x-xss-protection", "0"),
];

/// Adds [`SECURITY_HEADERS`] to every response that does not set its own.
pub fn security_headers<S: Clone + Send + Sync + 'static>(mut router: Router<S>) -> Router<S> {
    for (name, value) in SECURITY_HEADERS {
        router = router.layer(SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        ));
    }
    router
}

/// Whether `bytes` (JSON or not) nests arrays and objects deeper than
/// `max`. Brackets inside strings do not count. Linear, no allocation: runs
/// before the parser, so a hostile body never reaches its recursion.
pub fn too_deep(bytes: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in bytes {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        assert!(!too_deep(br#"{"a":{"b":[1,2,{"c":3}]}}"#, 4));
        assert!(too_deep(br#"{"a":{"b":[1,2,{"c":3}]}}"#, 3));
        assert!(!too_deep(br#"{"a":"[[[[[[[[[[\"{{{{{{{{"}"#, 1));
        let deep = format!("{}{}", "[".repeat(33), "]".repeat(33));
        assert!(too_deep(deep.as_bytes(), MAX_JSON_DEPTH));
        let ok = format!("{}{}", "[".repeat(32), "]".repeat(32));
        assert!(!too_deep(ok.as_bytes(), MAX_JSON_DEPTH));
        assert!(!too_deep(b"", MAX_JSON_DEPTH));
        assert!(!too_deep(b"]]]]}}}", 0));
    }
}
