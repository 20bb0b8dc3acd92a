//! Traces to Elastic APM against an in-test OTLP/HTTP collector, with the
//! real binary (the layer is wired in `telemetry::init`, the flush in the
//! process's shutdown). With `ENABLE_APM=1` the request span arrives as
//! protobuf with the secret token, in the caller's trace and named by its
//! matched route, and the events it causes sit under it; a hanging
//! collector holds no request up; SIGTERM sends
//! what is still queued; without `ENABLE_APM` nothing is sent at all.

use crate::helpers::*;
use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use futures::TryStreamExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use rand::Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every `POST /v1/traces`, headers and body as received.
#[derive(Clone, Default)]
struct Collector {
    posts: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    hang: Arc<AtomicBool>,
}

impl Collector {
    async fn start(&self) -> String {
        let collector = self.clone();
        let router = Router::new().route(
            "/v1/traces",
            post(move |headers: HeaderMap, body: Bytes| {
                let collector = collector.clone();
                async move {
                    if collector.hang.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    collector.posts.lock().unwrap().push((headers, body));
                    // An empty ExportTraceServiceResponse: everything accepted.
                    ([("content-type", "application/x-protobuf")], Bytes::new())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        url
    }

    fn posts(&self) -> Vec<(HeaderMap, Bytes)> {
        self.posts.lock().unwrap().clone()
    }

    /// The export holding the request span of `trace_id`, waited for up
    /// to 30 s (the batch processor sends every 200 ms here).
    async fn request_export(&self, trace_id: &str) -> (HeaderMap, ExportTraceServiceRequest) {
        poll_until(
            "the request's span to be exported",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async { self.export_with(trace_id) },
        )
        .await
    }

    /// The export that holds a span of `trace_id`, decoded, with its headers.
    fn export_with(&self, trace_id: &str) -> Option<(HeaderMap, ExportTraceServiceRequest)> {
        self.posts().into_iter().find_map(|(headers, body)| {
            let request = ExportTraceServiceRequest::decode(body.as_ref())
                .expect("the body is an OTLP protobuf ExportTraceServiceRequest");
            let holds = spans(&request).any(|span| hex(&span.trace_id) == trace_id);
            holds.then_some((headers, request))
        })
    }
}

fn spans(request: &ExportTraceServiceRequest) -> impl Iterator<Item = &Span> {
    request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An attribute's value as text (strings and integers, what the service sets).
fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// A fresh W3C trace context: (trace id, parent span id, `traceparent`).
fn new_trace() -> (String, String, String) {
    let mut rng = rand::rng();
    let trace_id = format!("{:032x}", rng.random::<u128>().max(1));
    let span_id = format!("{:016x}", rng.random::<u64>().max(1));
    let traceparent = format!("00-{trace_id}-{span_id}-01");
    (trace_id, span_id, traceparent)
}

/// GET of one order (unknown: 404), a route with a parameter, so the span
/// name shows the matched route rather than the path.
async fn get_order(service: &Binary, traceparent: &str) -> u16 {
    let order_id = uuid::Uuid::new_v4().simple().to_string();
    service
        .http
        .get(format!("{}/api/v1/order/{order_id}", service.base))
        .header("gatewaytoken", gateway_token("order"))
        .bearer_auth(user_token("tracy"))
        .header("traceparent", traceparent)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// Creates an order of tracy's (with sam) through `service`; its id.
async fn new_order(service: &Binary) -> String {
    let order_id = format!("apm-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let created = service
        .http
        .post(format!("{}/api/v1/order", service.base))
        .header("gatewaytoken", gateway_token("order"))
        .bearer_auth(user_token("tracy"))
        .json(&order_body(&order_id, "tracy", "sam", 40.0))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status().as_u16(), 201);
    order_id
}

fn apm_env(collector: &str, token: &str, delay_ms: u64) -> Vec<(&'static str, String)> {
    vec![
        ("ENABLE_APM", "1".into()),
        ("ELASTIC_APM_SERVER_URL", collector.to_string()),
        ("ELASTIC_APM_SECRET_TOKEN", token.to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", delay_ms.to_string()),
        ("INSTANCE_ID", "apm-instance".into()),
    ]
}

#[tokio::test]
async fn request_spans_reach_apm_in_the_callers_trace_and_never_wait_on_it() {
    let collector = Collector::default();
    let url = collector.start().await;
    let token = uuid::Uuid::new_v4().simple().to_string();
    let service = spawn_binary(&apm_env(&url, &token, 200)).await;
    let (trace_id, parent_id, traceparent) = new_trace();
    let status = get_order(&service, &traceparent).await;

    let (headers, export) = collector.request_export(&trace_id).await;
    assert_eq!(
        headers.get("authorization").and_then(|v| v.to_str().ok()),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/x-protobuf")
    );
    let resource = export
        .resource_spans
        .iter()
        .find(|r| {
            r.scope_spans
                .iter()
                .flat_map(|s| &s.spans)
                .any(|s| hex(&s.trace_id) == trace_id)
        })
        .and_then(|r| r.resource.as_ref())
        .expect("the spans carry a resource");
    assert_eq!(
        attribute(&resource.attributes, "service.name").as_deref(),
        Some("order-service")
    );
    assert_eq!(
        attribute(&resource.attributes, "service.version").as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        attribute(&resource.attributes, "deployment.environment").as_deref(),
        Some("test")
    );
    assert_eq!(
        attribute(&resource.attributes, "service.instance.id").as_deref(),
        Some("apm-instance")
    );
    let span = spans(&export)
        .find(|s| hex(&s.trace_id) == trace_id)
        .expect("span");
    assert_eq!(span.name, "GET /api/v1/order/{order_id}");
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(hex(&span.parent_span_id), parent_id, "child of the caller");
    assert_eq!(
        attribute(&span.attributes, "http.route").as_deref(),
        Some("/api/v1/order/{order_id}")
    );
    assert_eq!(
        attribute(&span.attributes, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(
        attribute(&span.attributes, "http.response.status_code"),
        Some(status.to_string())
    );

    // A collector that never answers: spans queue (and drop) off the
    // request path. The exporter's own timeout is 10 s; a request that
    // waited on it would show.
    collector.hang.store(true, Ordering::SeqCst);
    let mut slowest = Duration::ZERO;
    for _ in 0..100 {
        let (_, _, traceparent) = new_trace();
        let started = Instant::now();
        get_order(&service, &traceparent).await;
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        slowest < Duration::from_secs(2),
        "slowest request {slowest:?}"
    );
    service.stop().await;
}

#[tokio::test]
async fn the_events_a_request_causes_sit_under_its_span_in_the_callers_trace() {
    let collector = Collector::default();
    let url = collector.start().await;
    let service = spawn_binary(&apm_env(&url, "child-token", 200)).await;
    let order_id = new_order(&service).await;
    // The cancel notifies the seller: an outbox record the request causes.
    let (trace_id, caller_span, traceparent) = new_trace();
    let cancelled = service
        .http
        .put(format!("{}/api/v1/order/cancel/{order_id}", service.base))
        .header("gatewaytoken", gateway_token("order"))
        .bearer_auth(user_token("tracy"))
        .header("traceparent", &traceparent)
        .json(&serde_json::json!({ "orderData": { "price": 1 } }))
        .send()
        .await
        .expect("cancel");
    assert_eq!(cancelled.status().as_u16(), 200);

    let (_, export) = collector.request_export(&trace_id).await;
    let request_span = spans(&export)
        .find(|s| hex(&s.trace_id) == trace_id && s.kind == SpanKind::Server as i32)
        .expect("the request span");
    assert_eq!(hex(&request_span.parent_span_id), caller_span);
    let expected = format!("00-{trace_id}-{}-01", hex(&request_span.span_id));

    let records: Vec<bson::Document> = service
        .database()
        .await
        .collection::<bson::Document>("outbox")
        .find(bson::doc! { "headers.traceparent": { "$regex": trace_id.as_str() } })
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("records");
    assert!(!records.is_empty(), "the cancel staged events");
    for record in &records {
        let carried = record
            .get_document("headers")
            .and_then(|h| h.get_str("traceparent"))
            .expect("traceparent");
        assert_eq!(
            carried, expected,
            "a child of the request span, not a sibling of it: {record}"
        );
    }
    service.stop().await;
}

#[tokio::test]
async fn spans_still_queued_are_sent_at_shutdown() {
    let collector = Collector::default();
    let url = collector.start().await;
    let token = uuid::Uuid::new_v4().simple().to_string();
    // A batch delay far beyond the test: only the shutdown flush sends.
    let mut service = spawn_binary(&apm_env(&url, &token, 600_000)).await;
    let (trace_id, _, traceparent) = new_trace();
    get_order(&service, &traceparent).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        collector.export_with(&trace_id).is_none(),
        "nothing is sent before the batch delay or shutdown"
    );
    let exit = service.terminate().await;
    assert!(exit.success(), "graceful exit: {exit:?}");
    let (_, export) = collector
        .export_with(&trace_id)
        .expect("the queued span was sent before the process exited");
    assert!(spans(&export).any(|s| s.name == "GET /api/v1/order/{order_id}"));
    service.stop().await;
}

#[tokio::test]
async fn without_enable_apm_nothing_is_exported() {
    let collector = Collector::default();
    let url = collector.start().await;
    // Everything but the switch: the switch alone turns export on.
    let mut env = apm_env(&url, "unused-token", 100);
    env.retain(|(name, _)| *name != "ENABLE_APM");
    let mut service = spawn_binary(&env).await;
    for _ in 0..20 {
        let (_, _, traceparent) = new_trace();
        get_order(&service, &traceparent).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Shutdown would flush a queue if there were one.
    let exit = service.terminate().await;
    assert!(exit.success(), "graceful exit: {exit:?}");
    assert_eq!(
        collector.posts().len(),
        0,
        "nothing was sent to the collector"
    );
    service.stop().await;
}

#[tokio::test]
async fn a_consumed_review_and_the_relay_batch_it_causes_are_spans() {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    let collector = Collector::default();
    let url = collector.start().await;
    let prefix = format!("apm{}-", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let mut env = apm_env(&url, "consumer-token", 200);
    env.push(("AMQP_EXCHANGE_PREFIX", prefix.clone()));
    let service = spawn_binary(&env).await;
    let queues = order_service::consumers::review::queues(&prefix);

    let connection = Connection::connect(&amqp_uri(), ConnectionProperties::default())
        .await
        .expect("amqp");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let (trace_id, parent_id, traceparent) = new_trace();
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(traceparent.as_str().into()),
    );
    // An order for the review to land on: its notification is an outbox
    // record, which a relay batch (a span of its own) delivers.
    let order_id = new_order(&service).await;
    let body = serde_json::json!({
        "type": "buyer-review", "orderId": order_id, "rating": 5,
        "review": "Traced", "createdAt": "2026-11-20T10:00:00.000Z"
    });
    // Declared here too (the same durable fanout the service declares), as
    // the service may not have declared it yet: a publish to a missing
    // exchange closes the channel. Publish until the service's queue is
    // bound; a message routed nowhere is acked and dropped.
    channel
        .exchange_declare(
            queues.exchange.as_str().into(),
            lapin::ExchangeKind::Fanout,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare the review exchange");
    let (_, export) = poll_until(
        "a consumer span in the message's trace",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            // Looked at first: the last round's message has had its 500 ms.
            let found = collector.export_with(&trace_id);
            if found.is_none() {
                let confirm = channel
                    .basic_publish(
                        queues.exchange.as_str().into(),
                        "".into(),
                        BasicPublishOptions::default(),
                        body.to_string().as_bytes(),
                        BasicProperties::default()
                            .with_message_id(uuid::Uuid::new_v4().to_string().into())
                            .with_headers(headers.clone()),
                    )
                    .await
                    .expect("publish");
                let _ = confirm.await;
            }
            found
        },
    )
    .await;
    let span = spans(&export)
        .find(|s| hex(&s.trace_id) == trace_id)
        .expect("span");
    assert_eq!(span.name, format!("{} process", queues.main));
    assert_eq!(span.kind, SpanKind::Consumer as i32);
    assert_eq!(
        hex(&span.parent_span_id),
        parent_id,
        "child of the producer"
    );
    assert_eq!(
        attribute(&span.attributes, "messaging.destination.name").as_deref(),
        Some(queues.main.as_str())
    );
    poll_until(
        "the relay's batch to be exported as a span",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            collector.posts().iter().any(|(_, body)| {
                ExportTraceServiceRequest::decode(body.as_ref())
                    .map(|r| spans(&r).any(|s| s.name == "outbox.relay.batch"))
                    .unwrap_or(false)
            })
        },
    )
    .await;
    let _ = connection.close(200, "done".into()).await;
    service.stop().await;
}
