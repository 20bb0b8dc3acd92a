//! The tower stack every Flutterwave call goes through, outermost first:
//! concurrency limit, rate limit (governor, GCRA), circuit breaker
//! (tower-resilience), timeout, then the HTTP transport. Retries are not in
//! the stack: only idempotent reads are retried, by the client (backon).

use super::flutterwave::ProviderError;
use crate::config::FlutterwaveLimits;
use axum::body::Bytes;
use futures::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};
use tower_resilience::circuitbreaker::{
    CircuitBreakerError, CircuitBreakerHandle, CircuitBreakerLayer, CircuitState,
};

/// What the transport hands back for any answer that is not a provider fault.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

/// A call refused by the local rate limit before reaching Flutterwave.
#[derive(Debug, thiserror::Error)]
#[error("Flutterwave rate limit reached locally")]
pub struct RateLimited;

/// The assembled stack, cheap to clone (all clones share limits and breaker).
#[derive(Clone)]
pub struct Guarded {
    service: BoxCloneSyncService<reqwest::Request, Reply, BoxError>,
    breaker: CircuitBreakerHandle,
    open_for: Duration,
}

impl Guarded {
    pub fn new(
        http: reqwest::Client,
        limits: &FlutterwaveLimits,
        timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let (breaker, handle) = CircuitBreakerLayer::builder()
            .name("flutterwave")
            .failure_rate_threshold(limits.breaker_failure_rate)
            .sliding_window_size(limits.breaker_window.max(1))
            .minimum_number_of_calls(limits.breaker_min_calls.max(1))
            .wait_duration_in_open(limits.breaker_open)
            .permitted_calls_in_half_open(1)
            .on_state_transition(|from, to| {
                tracing::warn!(?from, ?to, "Flutterwave circuit breaker changed state");
            })
            .build_with_handle()
            .map_err(|e| ProviderError::Decode(format!("breaker configuration: {e}")))?;
        let transport = tower::service_fn(move |request: reqwest::Request| {
            let http = http.clone();
            async move { transport(&http, request).await }
        });
        let service = ServiceBuilder::new()
            .concurrency_limit(limits.max_concurrency.max(1))
            .layer(GovernorLayer::new(limits))
            .layer(breaker)
            .timeout(timeout)
            .service(transport)
            .map_err(Into::<BoxError>::into);
        Ok(Self {
            service: BoxCloneSyncService::new(service),
            breaker: handle,
            open_for: limits.breaker_open,
        })
    }

    pub async fn call(&self, request: reqwest::Request) -> Result<Reply, ProviderError> {
        self.service
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| self.classify(e))
    }

    pub fn breaker_state(&self) -> CircuitState {
        self.breaker.state()
    }

    /// Breaker state as shown by readiness and metrics.
    pub fn breaker_label(&self) -> &'static str {
        match self.breaker.state() {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    fn classify(&self, error: BoxError) -> ProviderError {
        if error.is::<RateLimited>() {
            return ProviderError::Unavailable {
                reason: "local rate limit".into(),
                retry_after: Duration::from_secs(1),
            };
        }
        match error.downcast::<CircuitBreakerError<BoxError>>() {
            Ok(breaker) => match *breaker {
                CircuitBreakerError::OpenCircuit => ProviderError::Unavailable {
                    reason: "circuit breaker open".into(),
                    retry_after: self.open_for.max(Duration::from_secs(1)),
                },
                CircuitBreakerError::Inner(inner) => inner_error(inner),
            },
            Err(other) => inner_error(other),
        }
    }
}

fn inner_error(error: BoxError) -> ProviderError {
    if error.is::<tower::timeout::error::Elapsed>() {
        return ProviderError::Timeout;
    }
    match error.downcast::<ProviderError>() {
        Ok(provider) => *provider,
        Err(other) => ProviderError::Decode(other.to_string()),
    }
}

/// Sends one request. 5xx, 429, timeouts and connection failures are errors,
/// so the breaker counts them; any other answer (4xx included) is a reply.
async fn transport(
    http: &reqwest::Client,
    request: reqwest::Request,
) -> Result<Reply, ProviderError> {
    let response = http.execute(request).await.map_err(|e| {
        if e.is_timeout() {
            ProviderError::Timeout
        } else {
            ProviderError::Unavailable {
                reason: "connection failed".into(),
                retry_after: Duration::from_secs(5),
            }
        }
    })?;
    let status = response.status();
    if status.as_u16() == 429 || status.is_server_error() {
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(5);
        return Err(ProviderError::Unavailable {
            reason: format!("HTTP {status}"),
            retry_after: Duration::from_secs(retry_after),
        });
    }
    // A body cut off after the headers leaves the outcome unknown.
    let body = response.bytes().await.map_err(|_| ProviderError::Timeout)?;
    Ok(Reply {
        status: status.as_u16(),
        body,
    })
}

/// Rate limit with governor: waits up to `max_wait` for a slot, then fails
/// fast, so a burst never reaches Flutterwave above the quota.
#[derive(Clone)]
pub struct GovernorLayer {
    limiter: Arc<DefaultDirectRateLimiter>,
    max_wait: Duration,
}

impl GovernorLayer {
    pub fn new(limits: &FlutterwaveLimits) -> Self {
        let rate = NonZeroU32::new(limits.rate_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.rate_burst).unwrap_or(rate);
        Self {
            limiter: Arc::new(RateLimiter::direct(
                Quota::per_second(rate).allow_burst(burst),
            )),
            max_wait: limits.rate_max_wait,
        }
    }
}

impl<S> Layer<S> for GovernorLayer {
    type Service = Governed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Governed {
            inner,
            limiter: self.limiter.clone(),
            max_wait: self.max_wait,
        }
    }
}

#[derive(Clone)]
pub struct Governed<S> {
    inner: S,
    limiter: Arc<DefaultDirectRateLimiter>,
    max_wait: Duration,
}

impl<S, R> Service<R> for Governed<S>
where
    S: Service<R> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // The readied service goes into the future; a fresh clone stays for
        // the next poll_ready (the usual tower pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (limiter, max_wait) = (self.limiter.clone(), self.max_wait);
        Box::pin(async move {
            if tokio::time::timeout(max_wait, limiter.until_ready())
                .await
                .is_err()
            {
                return Err(RateLimited.into());
            }
            inner.call(request).await.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn limits(rate: u32) -> FlutterwaveLimits {
        FlutterwaveLimits {
            max_concurrency: 100,
            rate_per_second: rate,
            rate_burst: rate,
            rate_max_wait: Duration::from_millis(0),
            breaker_failure_rate: 0.5,
            breaker_window: 10,
            breaker_min_calls: 5,
            breaker_open: Duration::from_secs(30),
            read_retries: 0,
        }
    }

    #[tokio::test]
    async fn the_governor_lets_only_the_quota_through() {
        let passed = Arc::new(AtomicUsize::new(0));
        let counter = passed.clone();
        let inner = tower::service_fn(move |_: ()| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(()) }
        });
        let service = GovernorLayer::new(&limits(3)).layer(inner);
        let mut refused = 0;
        for _ in 0..10 {
            if service.clone().oneshot(()).await.is_err() {
                refused += 1;
            }
        }
        assert_eq!(passed.load(Ordering::SeqCst), 3);
        assert_eq!(refused, 7);
    }
}
