//! Prometheus metrics: one registry, every family the service exports, and
//! the hooks that feed them (HTTP middleware, the relay's observer). Names
//! are listed in the README and used by the Grafana dashboard; a test checks
//! that every name the dashboard uses exists.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use outbox::OutboxRecord;
use outbox::relay::{Delivery, Observer};
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use std::sync::Arc;
use std::time::Instant;

/// Buckets from a millisecond to a minute: covers both a confirm on a quiet
/// broker and a backlog drained after an outage.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Families>,
}

pub struct Families {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    /// Requests refused with 429, by scope (`user`, `ip`).
    pub http_rate_limited: IntCounterVec,
    pub outbox_pending: IntGauge,
    pub outbox_parked: IntGauge,
    pub outbox_oldest_pending: Gauge,
    /// Pending records waiting on purpose (a refund still settling).
    pub outbox_deferred: IntGauge,
    pub outbox_oldest_deferred: Gauge,
    pub outbox_deliveries: IntCounterVec,
    pub outbox_commit_to_confirm: HistogramVec,
    pub inbox_duplicates: IntCounterVec,
    pub flutterwave_calls: IntCounterVec,
    pub flutterwave_breaker_state: IntGauge,
    pub flutterwave_rate_limited: IntCounter,
    pub consumer_messages: IntCounterVec,
    pub socket_connections: IntGauge,
    pub socket_emits: IntCounterVec,
    pub log_lines_dropped: IntCounter,
    pub reconcile_checks: IntCounterVec,
    pub dependency_up: IntGaugeVec,
}

/// Registers `metric`, built under `name`. Both steps fail only on a
/// malformed or duplicate name: a programming error every test run catches.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    name: &str,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    metric
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(
        registry,
        name,
        IntCounterVec::new(Opts::new(name, help), labels),
    )
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    registered(registry, name, HistogramVec::new(opts, labels))
}

fn int_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(registry, name, IntCounter::new(name, help))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(registry, name, IntGauge::new(name, help))
}

fn seconds_gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    registered(registry, name, Gauge::new(name, help))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Builds every family. Registration can only fail on a duplicate or
    /// malformed name, a programming error caught by every test run, so it
    /// panics rather than threading an error through start-up.
    pub fn new() -> Self {
        let r = Registry::new();
        let rate_limited = int_counter(
            &r,
            "flutterwave_rate_limited_total",
            "Flutterwave calls refused by the local rate limit",
        );
        let dropped = int_counter(
            &r,
            "log_lines_dropped_total",
            "Log lines dropped because Elasticsearch was slow or down",
        );
        let dependency_up = registered(
            &r,
            "dependency_up",
            IntGaugeVec::new(
                Opts::new(
                    "dependency_up",
                    "1 when a dependency answered its last check (a readiness probe or a scrape)",
                ),
                &["dependency"],
            ),
        );
        let families = Families {
            http_requests: counter(
                &r,
                "http_requests_total",
                "HTTP requests by method, matched route and status",
                &["method", "route", "status"],
            ),
            http_duration: histogram(
                &r,
                "http_request_duration_seconds",
                "HTTP request latency by method and matched route",
                &["method", "route"],
            ),
            http_rate_limited: counter(
                &r,
                "http_rate_limited_total",
                "HTTP requests refused by the rate limit, by scope (user, ip)",
                &["scope"],
            ),
            outbox_pending: gauge(&r, "outbox_pending", "Outbox records waiting for delivery"),
            outbox_parked: gauge(
                &r,
                "outbox_parked",
                "Outbox records parked after their last attempt",
            ),
            outbox_oldest_pending: seconds_gauge(
                &r,
                "outbox_oldest_pending_age_seconds",
                "Age of the oldest pending outbox record not waiting on purpose",
            ),
            outbox_deferred: gauge(
                &r,
                "outbox_deferred",
                "Pending outbox records waiting on purpose (a refund still settling)",
            ),
            outbox_oldest_deferred: seconds_gauge(
                &r,
                "outbox_oldest_deferred_age_seconds",
                "Age of the oldest outbox record waiting on purpose",
            ),
            outbox_deliveries: counter(
                &r,
                "outbox_deliveries_total",
                "Outbox delivery outcomes by destination kind and outcome",
                &["destination", "outcome"],
            ),
            outbox_commit_to_confirm: histogram(
                &r,
                "outbox_commit_to_confirm_seconds",
                "From commit to confirmed delivery",
                &["destination"],
            ),
            inbox_duplicates: counter(
                &r,
                "inbox_duplicates_total",
                "Messages recognised as already processed, by consumer",
                &["consumer"],
            ),
            flutterwave_calls: counter(
                &r,
                "flutterwave_calls_total",
                "Flutterwave calls by operation and outcome",
                &["operation", "outcome"],
            ),
            flutterwave_breaker_state: gauge(
                &r,
                "flutterwave_breaker_state",
                "Flutterwave circuit breaker: 0 closed, 1 open, 2 half-open",
            ),
            flutterwave_rate_limited: rate_limited,
            consumer_messages: counter(
                &r,
                "consumer_messages_total",
                "Consumed messages by consumer and outcome (applied, duplicate, retried, dead_lettered)",
                &["consumer", "outcome"],
            ),
            socket_connections: gauge(&r, "socketio_connections", "Open Socket.IO connections"),
            socket_emits: counter(
                &r,
                "socketio_emits_total",
                "Socket.IO emits by event",
                &["event"],
            ),
            log_lines_dropped: dropped,
            reconcile_checks: counter(
                &r,
                "payment_reconcile_checks_total",
                "Reconciliation checks by outcome (paid, pending, stray, failed)",
                &["outcome"],
            ),
            dependency_up,
            registry: r,
        };
        // Series with known labels start at zero, so dashboards and alerts
        // see them before the first event rather than "no data".
        for destination in ["amqp", "socket", "command"] {
            for outcome in ["delivered", "failed", "deferred", "parked"] {
                families
                    .outbox_deliveries
                    .with_label_values(&[destination, outcome]);
            }
            families
                .outbox_commit_to_confirm
                .with_label_values(&[destination]);
        }
        for operation in [
            "verify",
            "verify_by_reference",
            "transactions",
            "refund",
            "refund_lookup",
            "payments",
        ] {
            for outcome in [
                "ok",
                "rejected",
                "timeout",
                "breaker_open",
                "rate_limited",
                "unavailable",
            ] {
                families
                    .flutterwave_calls
                    .with_label_values(&[operation, outcome]);
            }
        }
        for outcome in ["applied", "duplicate", "retried", "dead_lettered"] {
            families
                .consumer_messages
                .with_label_values(&["order-review", outcome]);
        }
        for consumer in ["order-review", "flutterwave-webhook"] {
            families.inbox_duplicates.with_label_values(&[consumer]);
        }
        for outcome in ["paid", "pending", "stray", "failed"] {
            families.reconcile_checks.with_label_values(&[outcome]);
        }
        families
            .socket_emits
            .with_label_values(&["order notification"]);
        for scope in ["user", "ip"] {
            families.http_rate_limited.with_label_values(&[scope]);
        }
        for dependency in ["mongo", "rabbitmq"] {
            families.dependency_up.with_label_values(&[dependency]);
        }
        Self {
            inner: Arc::new(families),
        }
    }

    pub fn families(&self) -> &Families {
        &self.inner
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if encoder
            .encode(&self.inner.registry.gather(), &mut buffer)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }

    pub fn set_outbox(&self, stats: &outbox::OutboxStats) {
        let f = &self.inner;
        f.outbox_pending.set(stats.pending as i64);
        f.outbox_parked.set(stats.parked as i64);
        f.outbox_oldest_pending
            .set(stats.oldest_pending_age.as_secs_f64());
        f.outbox_deferred.set(stats.deferred as i64);
        f.outbox_oldest_deferred
            .set(stats.oldest_deferred_age.as_secs_f64());
    }
}

/// Request count and latency by matched route (never the raw path, whose
/// ids would make every series unique).
pub async fn track_http(metrics: Metrics, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let response = next.run(request).await;
    let f = metrics.families();
    f.http_duration
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    f.http_requests
        .with_label_values(&[&method, &route, response.status().as_str()])
        .inc();
    response
}

/// The destination kind used as a label (exchange names stay out of labels).
fn destination(record: &OutboxRecord) -> &'static str {
    match record.destination {
        outbox::Destination::Amqp { .. } => "amqp",
        outbox::Destination::Socket { .. } => "socket",
        outbox::Destination::Command { .. } => "command",
    }
}

impl Observer for Metrics {
    fn observe(&self, record: &OutboxRecord, delivery: Delivery<'_>) {
        let f = self.families();
        let kind = destination(record);
        let outcome = match delivery {
            Delivery::Delivered { .. } => {
                let age_ms =
                    bson::DateTime::now().timestamp_millis() - record.created_at.timestamp_millis();
                f.outbox_commit_to_confirm
                    .with_label_values(&[kind])
                    .observe(age_ms.max(0) as f64 / 1000.0);
                "delivered"
            }
            Delivery::Failed(_) => "failed",
            Delivery::Deferred(_) => "deferred",
            Delivery::Parked(_) => "parked",
        };
        f.outbox_deliveries
            .with_label_values(&[kind, outcome])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_renders_with_its_name() {
        let metrics = Metrics::new();
        metrics
            .families()
            .http_requests
            .with_label_values(&["GET", "/x", "200"])
            .inc();
        metrics.families().outbox_pending.set(3);
        let text = metrics.render();
        assert!(text.contains("http_requests_total{method=\"GET\",route=\"/x\",status=\"200\"} 1"));
        assert!(text.contains("outbox_pending 3"));
    }
}
