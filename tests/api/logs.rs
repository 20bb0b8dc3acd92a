//! Log shipping against an in-test Elasticsearch `_bulk` endpoint: lines
//! arrive with the documented fields; with the endpoint hanging, requests
//! are not held up and the drop counter rises.

use crate::helpers::*;
use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use order_service::telemetry::elastic::{self, ShipperConfig};
use prometheus::IntCounter;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing_subscriber::layer::SubscriberExt;

#[derive(Clone, Default)]
struct FakeElastic {
    docs: Arc<Mutex<Vec<Value>>>,
    indices: Arc<Mutex<Vec<String>>>,
    hang: Arc<AtomicBool>,
}

async fn start_fake(fake: FakeElastic) -> String {
    let router = Router::new().route(
        "/{index}/_bulk",
        post(
            move |axum::extract::Path(index): axum::extract::Path<String>, body: Bytes| {
                let fake = fake.clone();
                async move {
                    if fake.hang.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    let text = String::from_utf8_lossy(&body).to_string();
                    // NDJSON: an action line, then the document.
                    for (n, line) in text.lines().enumerate() {
                        if n % 2 == 1 {
                            fake.docs
                                .lock()
                                .unwrap()
                                .push(serde_json::from_str(line).unwrap_or(Value::Null));
                        }
                    }
                    fake.indices.lock().unwrap().push(index);
                    axum::Json(serde_json::json!({ "took": 1, "errors": false, "items": [] }))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

#[tokio::test]
async fn logs_reach_elasticsearch_and_an_outage_never_slows_requests() {
    let fake = FakeElastic::default();
    let url = start_fake(fake.clone()).await;
    let dropped = IntCounter::new("dropped", "dropped").unwrap();
    let config = ShipperConfig {
        capacity: 50,
        batch: 20,
        flush_every: Duration::from_millis(100),
        timeout: Duration::from_secs(10),
        ..ShipperConfig::new(url, "test-instance")
    };
    let (layer, shipper) = elastic::layer(config, dropped.clone()).expect("layer");
    // This test's runtime is single-threaded: the app's tasks log through
    // this thread's subscriber.
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(layer);
    let _guard = tracing::subscriber::set_default(subscriber);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(shipper.run(stop.clone()));
    // This test sends hundreds of unauthenticated requests from one address.
    let app = spawn_app_with(Options {
        extra_env: vec![("RATE_LIMIT_PER_IP_PER_MIN", "1000000".into())],
        ..Options::default()
    })
    .await;
    let live = format!("{}/health/live", app.address);
    for _ in 0..5 {
        app.http.get(&live).send().await.unwrap();
    }
    let mut docs = Vec::new();
    // Generous deadline: the whole suite runs in parallel on two cores.
    for _ in 0..300 {
        docs = fake.docs.lock().unwrap().clone();
        if docs.iter().any(|d| d["fields"]["route"] == "/health/live") {
            break;
        }
        app.http.get(&live).send().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let request = docs
        .iter()
        .find(|d| d["fields"]["route"] == "/health/live")
        .expect("a request's log line arrived");
    assert_eq!(request["service.name"], "order-service");
    assert_eq!(request["service.instance"], "test-instance");
    assert_eq!(request["log.level"], "INFO");
    assert!(request["@timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(request["message"].is_string());
    assert!(request["log.logger"].is_string());
    let index = fake.indices.lock().unwrap()[0].clone();
    assert!(index.starts_with("order-service-logs-20"), "{index}");

    fake.hang.store(true, Ordering::SeqCst);
    let mut slowest = Duration::ZERO;
    for _ in 0..200 {
        let started = Instant::now();
        let status = app.http.get(&live).send().await.unwrap().status();
        assert!(status.is_success());
        slowest = slowest.max(started.elapsed());
    }
    // Shipping hangs for 10 s per attempt; a request that waited on it
    // would show it.
    assert!(
        slowest < Duration::from_secs(2),
        "slowest request {slowest:?}"
    );
    assert!(
        dropped.get() > 0,
        "lines were dropped, and counted, instead of piling up"
    );
    stop.cancel();
    app.shutdown().await;
}
