//! 200 orders driven concurrently through create -> verify -> deliver ->
//! approve: every event arrives and per-order order holds.

use crate::helpers::*;
use futures::StreamExt;
use reqwest::StatusCode;
use std::time::Duration;

const ORDERS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_orders_keep_every_event_in_order() {
    // The Flutterwave rate limit is not under test here.
    let app = spawn_app_with(Options {
        extra_env: vec![
            ("FLUTTERWAVE_RATE_PER_SEC", "10000".into()),
            ("FLUTTERWAVE_RATE_BURST", "10000".into()),
            // A slow shared database under parallel tests must not turn into 503s here.
            ("REQUEST_TIMEOUT_MS", "300000".into()),
        ],
        ..Options::default()
    })
    .await;
    let tap = EventTap::start(&app).await;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let orders: Vec<serde_json::Value> = futures::stream::iter(0..ORDERS)
        .map(|i| {
            let (app, run) = (&app, &run);
            async move {
                let (buyer, seller) = (format!("b{run}{i}"), format!("s{run}{i}"));
                let id = format!("load-{run}-{i}");
                let order = app.new_order(&id, &buyer, &seller, 100.0 + i as f64).await;
                app.pay(&buyer, &order).await;
                assert_eq!(app.deliver(&seller, &id).await.status, StatusCode::OK);
                assert_eq!(app.approve(&buyer, &id).await.status, StatusCode::OK);
                order
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    let expected = [
        "create-order",
        "orderPlaced",
        "orderReceipt",
        "orderDelivered",
        "approve-order",
        "purchased-gigs",
    ];
    tap.wait_until(Duration::from_secs(120), |all| {
        all.len() >= ORDERS * expected.len()
    })
    .await;
    for order in &orders {
        let kinds: Vec<String> = tap
            .for_order(order)
            .iter()
            .map(|m| {
                m.body["template"]
                    .as_str()
                    .or(m.body["type"].as_str())
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(kinds, expected, "order {}", order["orderId"]);
    }
    app.shutdown().await;
}
