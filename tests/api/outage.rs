//! The broker unreachable at commit time (a proxy this test controls, never
//! the shared broker itself): HTTP keeps working, events wait in the outbox,
//! and arrive once per message_id, in order, when the broker is back.

use crate::helpers::*;
use reqwest::StatusCode;
use std::collections::HashSet;
use std::time::Duration;

#[tokio::test]
async fn events_committed_during_an_outage_arrive_after_it_in_order() {
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let app = spawn_app_with(Options {
        amqp_uri: Some(proxy.amqp_uri()),
        ..Options::default()
    })
    .await;
    let tap = EventTap::start(&app).await;
    wait_ready(&app).await;

    proxy.cut();
    let id = format!("out-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let order = app.new_order(&id, "yara", "zane", 400.0).await;
    app.pay("yara", &order).await;
    assert_eq!(
        app.deliver("zane", &id).await.status,
        StatusCode::OK,
        "HTTP works while the broker is away"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        tap.for_order(&order).is_empty(),
        "nothing can arrive during the outage"
    );
    let pending = app.outbox_records(&id).await;
    assert_eq!(pending.len(), 4);
    assert!(
        pending
            .iter()
            .all(|r| r.status == outbox::RecordStatus::Pending)
    );
    assert!(
        pending.iter().all(|r| r.attempts == 0),
        "an outage is not held against the records"
    );

    proxy.restore();
    let all = tap
        .wait_until(Duration::from_secs(60), |_| {
            tap.for_order(&order).len() >= 4
        })
        .await;
    drop(all);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = tap.for_order(&order);
    let ids: Vec<String> = received.iter().map(Received::message_id).collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 4, "every event, once per message_id");
    let expected: Vec<String> = pending.iter().map(|r| r.message_id.clone()).collect();
    let mut first_seen = Vec::new();
    for id in ids {
        if !first_seen.contains(&id) {
            first_seen.push(id);
        }
    }
    assert_eq!(first_seen, expected, "in commit order");
    app.shutdown().await;
}

#[tokio::test]
async fn the_service_starts_and_serves_while_the_broker_is_down() {
    let proxy = Proxy::start("127.0.0.1:5672").await;
    proxy.cut();
    let app = spawn_app_with(Options {
        amqp_uri: Some(proxy.amqp_uri()),
        ..Options::default()
    })
    .await;
    let tap = EventTap::start(&app).await;
    let ready = app
        .send(app.http.get(format!("{}/health/ready", app.address)))
        .await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["rabbitmq"], "down");
    let order = app.new_order("down-1", "abe", "bea", 10.0).await;
    app.pay("abe", &order).await;
    proxy.restore();
    tap.wait_until(Duration::from_secs(60), |_| {
        tap.for_order(&order).len() >= 3
    })
    .await;
    wait_ready(&app).await;
    app.shutdown().await;
}

async fn wait_ready(app: &TestApp) {
    poll_until(
        "the service to become ready",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            app.send(app.http.get(format!("{}/health/ready", app.address)))
                .await
                .status
                == StatusCode::OK
        },
    )
    .await;
}
