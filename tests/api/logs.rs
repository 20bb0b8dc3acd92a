//! Log shipping against an in-test Elasticsearch `_bulk` endpoint: lines
//! arrive with the documented fields; with the endpoint hanging, requests
//! are not held up and the drop counter rises. The real binary runs with
//! `ELASTIC_SEARCH_URL` set, so the test covers the wiring in `main.rs` and
//! does not depend on a per-thread subscriber inside the test process.

use crate::helpers::*;
use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    let elastic = start_fake(fake.clone()).await;
    let service = spawn_binary(&[
        ("ELASTIC_SEARCH_URL", elastic.clone()),
        ("ELASTIC_LOG_BUFFER_LINES", "50".into()),
        ("INSTANCE_ID", "test-instance".into()),
    ])
    .await;
    let http = service.http.clone();
    let base = service.base.clone();
    let live = format!("{base}/health/live");

    // Generous deadline: the whole suite runs in parallel on two cores.
    let request = poll_until(
        "a request's log line",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            let docs = fake.docs.lock().unwrap().clone();
            let found = docs
                .into_iter()
                .find(|d| d["fields"]["route"] == "/health/live");
            if found.is_none() {
                let _ = http.get(&live).send().await;
            }
            found
        },
    )
    .await;
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
        let status = http.get(&live).send().await.unwrap().status();
        assert!(status.is_success());
        slowest = slowest.max(started.elapsed());
    }
    // A bulk request to the hanging endpoint waits 5 s; a request that
    // waited on logging would show it.
    assert!(
        slowest < Duration::from_secs(2),
        "slowest request {slowest:?}"
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("log_lines_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_default();
    assert!(
        dropped > 0.0,
        "lines were dropped, and counted, instead of piling up"
    );
    service.stop().await;
}
