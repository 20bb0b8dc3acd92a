//! Rate limits with governor (GCRA, one state per key): per user on
//! `/api/v1/order/**`, checked by [`super::auth::User`] once the user token
//! is verified (the gateway forwards every user from one address, so the
//! address says nothing there); per client IP on every other path (webhooks,
//! health, metrics, admin, docs) and on every failed authentication, so that
//! guessing tokens is throttled too. A refusal is 429 with `Retry-After` and
//! the JSON error, counted in `http_rate_limited_total{scope}`.
//!
//! The client IP is the TCP peer (axum's `ConnectInfo`). `X-Forwarded-For`
//! is believed when the peer is listed in `TRUSTED_PROXIES`, and for a
//! failed user token of a request whose gateway token is valid: the gateway
//! has proved itself, so its forwarding header names the client.

use super::error::ApiError;
use crate::config::RateLimitSettings;
use crate::telemetry::metrics::Metrics;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Keys idle long enough to be full again are dropped once a limiter holds
/// this many, checked every [`SWEEP_EVERY`] requests: memory stays bounded
/// without a background task.
const SWEEP_ABOVE: usize = 10_000;
const SWEEP_EVERY: u64 = 1_024;

/// The limiters of one router; shared by the middleware and the `User`
/// extractor through the request's extensions.
pub struct RateLimits {
    users: Option<DefaultKeyedRateLimiter<String>>,
    ips: Option<DefaultKeyedRateLimiter<IpAddr>>,
    trusted_proxies: Vec<IpAddr>,
    metrics: Metrics,
    checks: AtomicU64,
}

/// The client's address as this service believes it, for handlers and the
/// `User` extractor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

fn limiter<K: Hash + Eq + Clone>(per_minute: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n)))
}

impl RateLimits {
    pub fn new(settings: &RateLimitSettings, metrics: Metrics) -> Self {
        Self {
            users: limiter(settings.per_user_per_min),
            ips: limiter(settings.per_ip_per_min),
            trusted_proxies: settings.trusted_proxies.clone(),
            metrics,
            checks: AtomicU64::new(0),
        }
    }

    /// One request by `username` (case-insensitive, as party checks are).
    pub fn check_user(&self, username: &str) -> Result<(), ApiError> {
        let Some(users) = &self.users else {
            return Ok(());
        };
        self.sweep();
        let outcome = users.check_key(&username.to_lowercase());
        self.refuse_if(
            outcome.err().map(|n| n.wait_time_from(users.clock().now())),
            "user",
        )
    }

    /// One request from `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        let Some(ips) = &self.ips else {
            return Ok(());
        };
        self.sweep();
        let outcome = ips.check_key(&ip);
        self.refuse_if(
            outcome.err().map(|n| n.wait_time_from(ips.clock().now())),
            "ip",
        )
    }

    fn refuse_if(&self, wait: Option<std::time::Duration>, scope: &str) -> Result<(), ApiError> {
        let Some(wait) = wait else {
            return Ok(());
        };
        self.metrics
            .families()
            .http_rate_limited
            .with_label_values(&[scope])
            .inc();
        // Whole seconds, rounded up: a client that waits this long gets in.
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Err(ApiError {
            retry_after: Some(seconds.max(1)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests, slow down",
            )
        })
    }

    fn sweep(&self) {
        if !self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY)
        {
            return;
        }
        if let Some(users) = &self.users
            && users.len() > SWEEP_ABOVE
        {
            users.retain_recent();
            users.shrink_to_fit();
        }
        if let Some(ips) = &self.ips
            && ips.len() > SWEEP_ABOVE
        {
            ips.retain_recent();
            ips.shrink_to_fit();
        }
    }

    /// The TCP peer, or, when the peer is a trusted proxy, the nearest
    /// `X-Forwarded-For` hop that is not one. Without `ConnectInfo` (a
    /// router driven in-process) every request shares one unspecified key.
    pub fn client_ip(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> IpAddr {
        let Some(peer) = peer.map(|p| p.ip()) else {
            return IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        };
        if !self.trusted_proxies.contains(&peer) {
            return peer;
        }
        self.forwarded_client(headers).unwrap_or(peer)
    }

    /// The client of a request that proved it came through the gateway (a
    /// valid `gatewaytoken`): the nearest `X-Forwarded-For` hop that is not
    /// a trusted proxy, as if the gateway were listed in `TRUSTED_PROXIES`;
    /// else `client_ip`. Without it, every user's failed login behind the
    /// gateway would count against the gateway's one address.
    pub fn gateway_client(&self, headers: &HeaderMap, client_ip: IpAddr) -> IpAddr {
        self.forwarded_client(headers).unwrap_or(client_ip)
    }

    fn forwarded_client(&self, headers: &HeaderMap) -> Option<IpAddr> {
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|hop| hop.trim().parse::<IpAddr>())
            .collect::<Result<_, _>>()
            // A malformed header is not believed at all.
            .unwrap_or_default();
        hops.into_iter()
            .rev()
            .find(|hop| !self.trusted_proxies.contains(hop))
    }
}

/// Paths whose limit is per user, applied by the `User` extractor.
fn user_scoped(path: &str) -> bool {
    path.starts_with("/api/v1/order") && !path.starts_with("/api/v1/order/webhooks/")
}

/// Middleware: records the client IP and the limiters in the request's
/// extensions, and applies the per-IP limit outside the user-scoped paths.
pub async fn limit(limits: Arc<RateLimits>, mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    let ip = limits.client_ip(peer, request.headers());
    if !user_scoped(request.uri().path())
        && let Err(refused) = limits.check_ip(ip)
    {
        return refused.into_response();
    }
    request.extensions_mut().insert(ClientIp(ip));
    request.extensions_mut().insert(limits);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_user: u32, per_ip: u32, trusted: &[&str]) -> RateLimits {
        RateLimits::new(
            &RateLimitSettings {
                per_user_per_min: per_user,
                per_ip_per_min: per_ip,
                trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            },
            Metrics::new(),
        )
    }

    #[test]
    fn a_user_gets_the_quota_then_429_with_retry_after() {
        let limits = limits(3, 0, &[]);
        for _ in 0..3 {
            assert!(limits.check_user("Alice").is_ok());
        }
        let refused = limits.check_user("alice").unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.retry_after.is_some_and(|s| (1..=20).contains(&s)));
        assert!(limits.check_user("bob").is_ok(), "users are independent");
        assert!(
            limits.check_ip("127.0.0.1".parse().unwrap()).is_ok(),
            "0 is off"
        );
        let text = limits.metrics.render();
        assert!(text.contains("http_rate_limited_total{scope=\"user\"} 1"));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let limits = limits(1, 1, &["10.0.0.1"]);
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.9, 10.0.0.1".parse().unwrap());
        let proxy: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        assert_eq!(
            limits.client_ip(Some(proxy), &headers),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(limits.client_ip(Some(stranger), &headers), stranger.ip());
        // A request the gateway vouched for: its header names the client
        // whoever the peer is.
        assert_eq!(
            limits.gateway_client(&headers, stranger.ip()),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        headers.insert("x-forwarded-for", "not-an-ip".parse().unwrap());
        assert_eq!(limits.client_ip(Some(proxy), &headers), proxy.ip());
        assert_eq!(
            limits.gateway_client(&headers, stranger.ip()),
            stranger.ip()
        );
        assert_eq!(
            limits.client_ip(None, &headers),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        );
    }

    #[test]
    fn only_order_routes_are_user_scoped() {
        assert!(user_scoped("/api/v1/order/abc"));
        assert!(user_scoped("/api/v1/order"));
        assert!(!user_scoped("/api/v1/order/webhooks/flutterwave"));
        assert!(!user_scoped("/webhooks/flutterwave"));
        assert!(!user_scoped("/health/live"));
    }
}
