//! Traces to Elastic APM when `ENABLE_APM=1`: `tracing` spans become
//! OpenTelemetry spans, exported over OTLP/HTTP (protobuf) to
//! `{ELASTIC_APM_SERVER_URL}/v1/traces`, which APM Server takes as it is.
//!
//! A request only hands its finished span to a bounded queue; a batch
//! processor on its own thread sends the queue, so a slow or absent APM
//! Server never holds a request up (a full queue drops spans instead).
//! Off, nothing here runs: no layer, no thread, no parsing of headers.

use crate::config::{Config, Secret};
use axum::http::{HeaderMap, HeaderValue};
use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;
use tracing::Subscriber;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::registry::LookupSpan;

/// The provider of the installed layer; set once the layer is in the
/// global subscriber, and the switch the request span looks at.
static INSTALLED: OnceLock<SdkTracerProvider> = OnceLock::new();

/// How long the batch processor may take to send what it holds at shutdown.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ApmError {
    #[error("ELASTIC_APM_SERVER_URL is required when ENABLE_APM is on")]
    NoServer,
    #[error("ELASTIC_APM_SECRET_TOKEN cannot be sent in an HTTP header")]
    BadToken,
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Where and as whom spans are exported.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The full OTLP traces URL, `{server}/v1/traces`.
    pub endpoint: String,
    pub token: Option<Secret>,
    /// `deployment.environment`: APM's environment selector.
    pub environment: &'static str,
    /// `service.instance.id`, the same as the log lines' `service.instance`.
    pub instance: String,
}

impl Settings {
    /// `None` when `ENABLE_APM` is off.
    pub fn from_config(config: &Config) -> Result<Option<Self>, ApmError> {
        if !config.enable_apm {
            return Ok(None);
        }
        let server = config
            .elastic_apm_server_url
            .as_deref()
            .ok_or(ApmError::NoServer)?;
        Ok(Some(Self {
            endpoint: format!("{}/v1/traces", server.trim_end_matches('/')),
            token: config.elastic_apm_secret_token.clone(),
            environment: config.environment.as_str(),
            instance: config.instance_id.clone(),
        }))
    }
}

/// A layer not yet switched on: [`Pending::activate`] once the layer is in
/// the global subscriber; dropped, its exporter thread ends.
pub struct Pending {
    provider: SdkTracerProvider,
}

impl Pending {
    pub fn activate(self) {
        // Only the subscriber that `try_init` accepted gets here, and that
        // happens once per process.
        let _ = INSTALLED.set(self.provider);
    }
}

/// The layer that turns spans into exported OpenTelemetry spans.
pub fn layer<S>(
    settings: &Settings,
) -> Result<(OpenTelemetryLayer<S, SdkTracer>, Pending), ApmError>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let mut headers = HashMap::new();
    if let Some(token) = &settings.token {
        let value = format!("Bearer {}", token.expose());
        // The exporter drops a header it cannot send without a word; say so here.
        HeaderValue::from_str(&value).map_err(|_| ApmError::BadToken)?;
        headers.insert("authorization".to_string(), value);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(settings.endpoint.clone())
        .with_headers(headers)
        // No timeout set here: `OTEL_EXPORTER_OTLP_TIMEOUT` (default 10 s) applies.
        .build()?;
    let resource = Resource::builder()
        .with_service_name("order-service")
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("deployment.environment", settings.environment),
            KeyValue::new("service.instance.id", settings.instance.clone()),
        ])
        .build();
    // The thread-based batch processor: its queue is bounded and a full one
    // drops, and `OTEL_BSP_*` variables tune it.
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("order-service");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        // Code locations and thread names mean nothing in APM's views.
        .with_location(false)
        .with_threads(false);
    Ok((layer, Pending { provider }))
}

/// Whether spans are being exported.
pub fn enabled() -> bool {
    INSTALLED.get().is_some()
}

/// Makes `span` continue the caller's trace (W3C `traceparent`) and names
/// it as APM shows transactions, `GET /api/v1/order/{order_id}`. Must run
/// before the span is first entered, when its OpenTelemetry span starts.
pub fn start_server_span(span: &tracing::Span, headers: &HeaderMap, method: &str, route: &str) {
    if !enabled() {
        return;
    }
    span.record("otel.name", format!("{method} {route}"));
    span.record("otel.kind", "server");
    let parent =
        TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    // Without a (valid) `traceparent` the span starts a trace of its own.
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    span.set_attribute("http.request.method", method.to_string());
    span.set_attribute("http.route", route.to_string());
}

/// Makes `span` continue the trace of a consumed message (its
/// `traceparent`) and names it as APM shows message transactions,
/// `order-review-queue process`.
pub fn start_consumer_span(span: &tracing::Span, traceparent: &str, queue: &str) {
    if !enabled() {
        return;
    }
    span.record("otel.name", format!("{queue} process"));
    span.record("otel.kind", "consumer");
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    span.set_attribute("messaging.system", "rabbitmq");
    span.set_attribute("messaging.destination.name", queue.to_string());
}

/// The status of the answer, which APM turns into the transaction's
/// result and outcome.
pub fn record_status(span: &tracing::Span, status: u16) {
    if !enabled() {
        return;
    }
    span.set_attribute("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.set_status(opentelemetry::trace::Status::error(""));
    }
}

/// The `traceparent` of the current span while spans are exported, so that
/// events a request without one causes carry the trace APM shows.
pub fn current_traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// Sends the spans still queued and stops the exporter thread; a no-op
/// when spans are not exported.
pub async fn shutdown() {
    let Some(provider) = INSTALLED.get().cloned() else {
        return;
    };
    // The processor waits on its thread; keep that off the runtime's workers.
    let outcome =
        tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_WAIT)).await;
    if let Ok(Err(e)) = outcome {
        eprintln!("trace export shutdown: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Config {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        Config::from_lookup(|name| map.get(name).map(|v| v.to_string())).expect("config")
    }

    #[test]
    fn off_unless_enabled_and_the_endpoint_is_the_traces_path() {
        assert!(
            Settings::from_config(&config(&[("ELASTIC_APM_SERVER_URL", "http://apm:8200")]))
                .expect("off")
                .is_none()
        );
        let settings = Settings::from_config(&config(&[
            ("ENABLE_APM", "1"),
            ("ELASTIC_APM_SERVER_URL", "https://apm.example:8200/"),
            ("NODE_ENV", "test"),
            ("INSTANCE_ID", "order-7"),
        ]))
        .expect("valid")
        .expect("on");
        assert_eq!(settings.endpoint, "https://apm.example:8200/v1/traces");
        assert_eq!(settings.environment, "test");
        assert_eq!(settings.instance, "order-7");
        assert!(settings.token.is_none());
    }

    #[test]
    fn a_token_that_cannot_be_a_header_is_refused() {
        let settings = Settings {
            endpoint: "http://127.0.0.1:1/v1/traces".into(),
            token: Some(Secret::new("line\nbreak")),
            environment: "test",
            instance: "order-1".into(),
        };
        let refused = layer::<tracing_subscriber::Registry>(&settings).err();
        assert!(matches!(refused, Some(ApmError::BadToken)), "{refused:?}");
    }
}
