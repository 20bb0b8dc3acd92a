//! Log shipping to Elasticsearch with the `elasticsearch` crate's bulk API.
//!
//! A `tracing` layer turns each event into a JSON document and pushes it
//! into a bounded buffer; a background task sends the buffer in batches.
//! When Elasticsearch is slow or down the buffer fills and the OLDEST lines
//! are dropped and counted: logging never blocks a request and never grows
//! without bound. Index: `{prefix}-YYYY.MM.DD` (default prefix
//! `order-service-logs`). Fields: `@timestamp`, `log.level`, `message`,
//! `log.logger` (the target), `service.name`, `service.instance`,
//! `trace.id` (when a span carries one) and `fields.*` (the event's and its
//! spans' fields).

use backon::BackoffBuilder;
use elasticsearch::http::Url;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::{BulkOperation, BulkParts, Elasticsearch};
use prometheus::IntCounter;
use serde_json::{Map, Value, json};
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Tuning of the shipper.
#[derive(Debug, Clone)]
pub struct ShipperConfig {
    pub url: String,
    pub index_prefix: String,
    pub instance: String,
    /// Lines held while Elasticsearch is away; older ones are dropped past it.
    pub capacity: usize,
    /// Most lines in one bulk request.
    pub batch: usize,
    /// Longest wait before a partial batch is sent.
    pub flush_every: Duration,
    pub timeout: Duration,
}

impl ShipperConfig {
    pub fn new(url: impl Into<String>, instance: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            index_prefix: "order-service-logs".into(),
            instance: instance.into(),
            capacity: 10_000,
            batch: 500,
            flush_every: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        }
    }
}

struct Buffer {
    lines: Mutex<VecDeque<Value>>,
    ready: Notify,
    capacity: usize,
    dropped: IntCounter,
}

impl Buffer {
    fn push(&self, line: Value) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() >= self.capacity {
            lines.pop_front();
            self.dropped.inc();
        }
        lines.push_back(line);
        if lines.len() >= self.capacity / 2 {
            self.ready.notify_one();
        }
    }

    fn take(&self, most: usize) -> Vec<Value> {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let n = most.min(lines.len());
        lines.drain(..n).collect()
    }

    /// Puts a failed batch back in front, keeping the bound (the oldest go).
    fn restore(&self, batch: Vec<Value>) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        for line in batch.into_iter().rev() {
            if lines.len() >= self.capacity {
                self.dropped.inc();
                continue;
            }
            lines.push_front(line);
        }
    }
}

/// The `tracing` layer; cheap, never waits.
pub struct ElasticLayer {
    buffer: Arc<Buffer>,
    instance: String,
}

/// The background sender; run it with [`Shipper::run`].
pub struct Shipper {
    buffer: Arc<Buffer>,
    client: Elasticsearch,
    config: ShipperConfig,
}

/// Builds the layer and its sender. Fails only on a malformed URL.
pub fn layer(
    config: ShipperConfig,
    dropped: IntCounter,
) -> Result<(ElasticLayer, Shipper), String> {
    let url = Url::parse(&config.url).map_err(|e| format!("ELASTIC_SEARCH_URL: {e}"))?;
    let transport = TransportBuilder::new(SingleNodeConnectionPool::new(url))
        .timeout(config.timeout)
        .disable_proxy()
        .build()
        .map_err(|e| format!("ELASTIC_SEARCH_URL: {e}"))?;
    let buffer = Arc::new(Buffer {
        lines: Mutex::new(VecDeque::new()),
        ready: Notify::new(),
        capacity: config.capacity.max(2),
        dropped,
    });
    let layer = ElasticLayer {
        buffer: buffer.clone(),
        instance: config.instance.clone(),
    };
    let shipper = Shipper {
        buffer,
        client: Elasticsearch::new(transport),
        config,
    };
    Ok((layer, shipper))
}

impl Shipper {
    /// Sends batches until `stop` fires, then one last flush attempt.
    pub async fn run(self, stop: tokio_util::sync::CancellationToken) {
        let fresh = || {
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(Duration::from_secs(30))
                .with_jitter()
                .without_max_times()
                .build()
        };
        let mut backoff = fresh();
        loop {
            let stopping = tokio::select! {
                _ = stop.cancelled() => true,
                _ = self.buffer.ready.notified() => false,
                _ = tokio::time::sleep(self.config.flush_every) => false,
            };
            loop {
                let batch = self.buffer.take(self.config.batch);
                if batch.is_empty() {
                    break;
                }
                let full = batch.len() == self.config.batch;
                if let Err(batch) = self.send(batch).await {
                    self.buffer.restore(batch);
                    if stopping {
                        return;
                    }
                    let pause = backoff.next().unwrap_or(Duration::from_secs(30));
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    break;
                }
                backoff = fresh();
                if !full {
                    break;
                }
            }
            if stopping {
                return;
            }
        }
    }

    async fn send(&self, batch: Vec<Value>) -> Result<(), Vec<Value>> {
        let index = format!(
            "{}-{}",
            self.config.index_prefix,
            chrono::Utc::now().format("%Y.%m.%d")
        );
        let operations: Vec<BulkOperation<Value>> = batch
            .iter()
            .cloned()
            .map(|doc| BulkOperation::index(doc).into())
            .collect();
        match self
            .client
            .bulk(BulkParts::Index(&index))
            .body(operations)
            .send()
            .await
        {
            Ok(response) if response.status_code().is_success() => Ok(()),
            _ => Err(batch),
        }
    }
}

impl<S> Layer<S> for ElasticLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = JsonFields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<JsonFields>()
        {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut own = JsonFields::default();
        event.record(&mut own);
        let mut fields = Map::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(span_fields) = span.extensions().get::<JsonFields>() {
                    fields.extend(span_fields.0.clone());
                }
            }
        }
        let message = own
            .0
            .remove("message")
            .unwrap_or(Value::String(String::new()));
        fields.extend(own.0);
        let trace_id = fields
            .get("traceparent")
            .and_then(Value::as_str)
            .and_then(|t| t.split('-').nth(1))
            .map(str::to_string);
        let meta = event.metadata();
        let mut line = json!({
            "@timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "log.level": meta.level().as_str(),
            "message": message,
            "log.logger": meta.target(),
            "service.name": "order-service",
            "service.instance": self.instance,
            "fields": fields,
        });
        if let (Some(trace_id), Some(map)) = (trace_id, line.as_object_mut()) {
            map.insert("trace.id".into(), Value::String(trace_id));
        }
        self.buffer.push(line);
    }
}

/// Field values as JSON, for events and spans.
#[derive(Default, Clone)]
struct JsonFields(Map<String, Value>);

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), json!(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), json!(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), json!(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), json!(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(capacity: usize) -> Buffer {
        Buffer {
            lines: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            capacity,
            dropped: IntCounter::new("t", "t").unwrap(),
        }
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_counts() {
        let b = buffer(3);
        for n in 0..5 {
            b.push(json!(n));
        }
        assert_eq!(b.dropped.get(), 2);
        assert_eq!(b.take(10), vec![json!(2), json!(3), json!(4)]);
    }

    #[test]
    fn a_failed_batch_goes_back_in_front_within_the_bound() {
        let b = buffer(3);
        b.push(json!(1));
        b.push(json!(2));
        let batch = b.take(2);
        b.push(json!(3));
        b.push(json!(4));
        b.restore(batch);
        assert_eq!(b.take(10), vec![json!(2), json!(3), json!(4)]);
        assert_eq!(b.dropped.get(), 1);
    }
}
