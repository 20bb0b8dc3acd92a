//! Flutterwave behind its guards: breaker, rate limit, webhooks (once, and
//! only when authentic), refunds that survive an outage.

use crate::helpers::*;
use flutterwave_sim::{Faults, NewTransaction, SignMode, WebhookOptions};
use reqwest::StatusCode;
use std::time::{Duration, Instant};

fn oid() -> String {
    format!("pay-{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

fn env(pairs: &[(&'static str, &str)]) -> Options {
    Options {
        extra_env: pairs.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        ..Options::default()
    }
}

async fn breaker_state(app: &TestApp) -> String {
    let ready = app
        .send(app.http.get(format!("{}/health/ready", app.address)))
        .await;
    ready.body["flutterwave"]["breaker"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn the_breaker_opens_fails_fast_half_opens_and_closes() {
    let app = spawn_app_with(env(&[
        ("FLUTTERWAVE_BREAKER_MIN_CALLS", "3"),
        ("FLUTTERWAVE_BREAKER_WINDOW", "3"),
        ("FLUTTERWAVE_BREAKER_FAILURE_RATE", "0.5"),
        ("FLUTTERWAVE_BREAKER_OPEN_MS", "1500"),
        ("FLUTTERWAVE_READ_RETRIES", "0"),
    ]))
    .await;
    let order = app.new_order(&oid(), "ann", "ben", 100.0).await;
    let tx_ref = order["flutterwave"]["txRef"].as_str().unwrap().to_string();
    let payment = app.payment_for(&order);
    let sim = app.sim.sim();
    sim.set_faults(Faults {
        fail_all_status: Some(503),
        ..Default::default()
    });
    for _ in 0..3 {
        assert_eq!(
            app.verify("ann", payment, &tx_ref).await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert_eq!(sim.calls().verify, 3, "every failure reached the provider");
    assert_eq!(breaker_state(&app).await, "open");

    let started = Instant::now();
    for _ in 0..5 {
        let reply = app.verify("ann", payment, &tx_ref).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(reply.headers.get("retry-after").is_some());
    }
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "fails fast while open"
    );
    assert_eq!(
        sim.calls().verify,
        3,
        "nothing reached the provider while open"
    );

    sim.set_faults(Faults::default());
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let paid = app.verify("ann", payment, &tx_ref).await;
    assert_eq!(
        paid.status,
        StatusCode::OK,
        "the half-open trial call goes through"
    );
    assert_eq!(sim.calls().verify, 4);
    assert_eq!(breaker_state(&app).await, "closed");
    app.shutdown().await;
}

#[tokio::test]
async fn a_burst_never_exceeds_the_rate_limit() {
    let app = spawn_app_with(env(&[
        ("FLUTTERWAVE_RATE_PER_SEC", "5"),
        // At most half of it for the reconciliation sweep.
        ("RECONCILE_RATE_PER_SEC", "2"),
        ("FLUTTERWAVE_RATE_BURST", "5"),
        ("FLUTTERWAVE_RATE_MAX_WAIT_MS", "0"),
        ("FLUTTERWAVE_READ_RETRIES", "0"),
    ]))
    .await;
    let order = app.new_order(&oid(), "cat", "dan", 100.0).await;
    let tx_ref = order["flutterwave"]["txRef"].as_str().unwrap().to_string();
    let started = Instant::now();
    let replies =
        futures::future::join_all((0..20).map(|i| app.verify("cat", 900_000 + i, &tx_ref))).await;
    let elapsed = started.elapsed().as_secs_f64();
    let reached = app.app_sim_verify_calls();
    let allowed = 5 + (elapsed * 5.0).floor() as u64;
    assert!(
        reached <= allowed,
        "{reached} calls reached the provider, at most {allowed} allowed"
    );
    let limited = replies
        .iter()
        .filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert!(
        limited >= 20 - allowed as usize,
        "the rest were refused locally ({limited})"
    );
    app.shutdown().await;
}

impl TestApp {
    fn app_sim_verify_calls(&self) -> u64 {
        self.sim.sim().calls().verify
    }

    fn webhook_url(&self) -> String {
        format!("{}/api/v1/order/webhooks/flutterwave", self.address)
    }
}

#[tokio::test]
async fn the_same_webhook_ten_times_pays_once() {
    let app = spawn_app().await;
    let tap = EventTap::start(&app).await;
    let order = app.new_order(&oid(), "eve", "fay", 250.0).await;
    let payment = app.payment_for(&order);
    assert_eq!(webhook(&app, payment, 10).await, 200);
    tap.wait_until(Duration::from_secs(30), |_| {
        tap.for_order(&order).len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = tap.for_order(&order);
    assert_eq!(events.len(), 3, "one set of paid events");
    let stored = app
        .get("eve", order["orderId"].as_str().unwrap())
        .await
        .body["order"]
        .clone();
    assert_eq!(stored["status"], "PROCESSING", "paid by webhook alone");
    assert_eq!(stored["version"], 2, "one transition");
    assert_eq!(stored["flutterwave"]["transactionId"], payment.to_string());
    let inbox = app
        .state
        .webhooks
        .inbox()
        .count("flutterwave-webhook")
        .await
        .unwrap();
    assert_eq!(inbox, 1);
    let notes = app.notifications("fay", "fay").await;
    assert_eq!(
        notes.body["notifications"].as_array().unwrap().len(),
        1,
        "one notification"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_forged_webhook_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let order = app.new_order(&oid(), "gus", "hal", 250.0).await;
    let payment = app.payment_for(&order);
    let sim = app.sim.sim();
    sim.set_webhook_target(app.webhook_url(), WEBHOOK_HASH);
    let status = sim
        .send_webhook(
            payment,
            WebhookOptions {
                times: 1,
                concurrent: false,
                sign: SignMode::Forged,
            },
        )
        .await
        .expect("webhook");
    assert_eq!(status, 401);
    let unsigned = app
        .send(
            app.http.post(app.webhook_url()).json(
                &serde_json::json!({ "event": "charge.completed", "data": { "id": payment } }),
            ),
        )
        .await;
    assert_eq!(unsigned.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.state
            .webhooks
            .inbox()
            .count("flutterwave-webhook")
            .await
            .unwrap(),
        0
    );
    let stored = app
        .get("gus", order["orderId"].as_str().unwrap())
        .await
        .body["order"]
        .clone();
    assert_eq!(stored["status"], "AWAITING_PAYMENT");
    assert!(
        app.outbox_records(order["orderId"].as_str().unwrap())
            .await
            .is_empty()
    );

    // Authentic but about no order of ours: accepted, then parked for inspection.
    let stray = sim.add_transaction(NewTransaction {
        tx_ref: "not-ours".into(),
        ..Default::default()
    });
    let status = sim
        .send_webhook(
            stray.id,
            WebhookOptions {
                times: 1,
                concurrent: false,
                sign: SignMode::HmacSignature,
            },
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let parked = poll_until(
        "the stray webhook to be parked",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let parked = app.state.outbox.parked(10).await.unwrap();
            (!parked.is_empty()).then_some(parked)
        },
    )
    .await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].aggregate_id, "webhook:not-ours");
    app.shutdown().await;
}

#[tokio::test]
async fn a_refund_waits_out_a_flutterwave_outage() {
    let app = spawn_app_with(env(&[
        ("FLUTTERWAVE_BREAKER_OPEN_MS", "500"),
        ("FLUTTERWAVE_READ_RETRIES", "0"),
    ]))
    .await;
    let id = oid();
    let order = app.new_order(&id, "ida", "jon", 1000.0).await;
    app.pay("ida", &order).await;
    let sim = app.sim.sim();
    sim.set_faults(Faults {
        fail_all_status: Some(503),
        ..Default::default()
    });
    let cancelled = app.cancel("ida", &id).await;
    // It succeeds while Flutterwave is down: the refund is the relay's job.
    assert_eq!(cancelled.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(sim.refunds().is_empty());
    let pending = app.get("ida", &id).await.body["order"].clone();
    assert_eq!(pending["refund"]["status"], "pending");
    assert!(
        app.state.outbox.parked(10).await.unwrap().is_empty(),
        "an outage parks nothing"
    );

    sim.set_faults(Faults::default());
    let refund = app
        .order_until("ida", &id, |o| o["refund"]["status"] == "completed")
        .await["refund"]
        .clone();
    assert_eq!(refund["status"], "completed");
    assert_eq!(sim.refunds().len(), 1);
    assert_eq!(sim.refunds()[0].amount_refunded, 950.0);
    app.shutdown().await;
}

/// Has the simulator send `payment`'s webhook `times` times at once, signed
/// both ways; the status the service answered.
async fn webhook(app: &TestApp, payment: u64, times: usize) -> u16 {
    let sim = app.sim.sim();
    sim.set_webhook_target(app.webhook_url(), WEBHOOK_HASH);
    sim.send_webhook(
        payment,
        WebhookOptions {
            times,
            concurrent: true,
            sign: SignMode::Both,
        },
    )
    .await
    .expect("webhook")
}

#[tokio::test]
async fn a_payment_made_after_the_order_was_cancelled_is_refunded_in_full_once() {
    let app = spawn_app().await;
    let id = oid();
    let order = app.new_order(&id, "kim", "lee", 300.0).await;
    assert_eq!(app.cancel("kim", &id).await.status, StatusCode::OK);
    // The buyer still had the checkout page open, and pays.
    let payment = app.payment_for(&order);
    assert_eq!(webhook(&app, payment, 3).await, 200);
    // The buyer's page verifies too: refused, and told the money goes back.
    let tx_ref = order["flutterwave"]["txRef"].as_str().unwrap();
    let verified = app.verify("kim", payment, tx_ref).await;
    assert_eq!(verified.status, StatusCode::CONFLICT);
    assert!(
        verified.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("refunded in full")),
        "{:?}",
        verified.body
    );

    let stored = app.stray_refund_settled("kim", &id).await;
    assert_eq!(stored["status"], "CANCELLED");
    assert!(stored["flutterwave"]["transactionId"].is_null());
    let strays = stored["strayPayments"].as_array().unwrap();
    assert_eq!(strays.len(), 1, "{strays:?}");
    assert_eq!(strays[0]["transactionId"], payment.to_string());
    assert_eq!(strays[0]["refund"]["status"], "completed");
    // Webhook three times and the verify route: one refund, of everything paid.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refunds = app.sim.sim().refunds();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0].tx_id, payment);
    assert_eq!(
        refunds[0].amount_refunded,
        300.0 + order["serviceFee"].as_f64().unwrap()
    );
    assert!(app.state.outbox.parked(10).await.unwrap().is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn a_second_payment_of_a_paid_order_is_refunded_and_the_first_kept() {
    let app = spawn_app().await;
    let id = oid();
    let order = app.new_order(&id, "max", "ned", 500.0).await;
    let paid = app.pay("max", &order).await;
    let first = paid["flutterwave"]["transactionId"].clone();
    // A second checkout of the same order, paid as well.
    let second = app.payment_for(&order);
    let tx_ref = order["flutterwave"]["txRef"].as_str().unwrap();
    let verified = app.verify("max", second, tx_ref).await;
    assert_eq!(verified.status, StatusCode::CONFLICT, "{:?}", verified.body);

    let stored = app.stray_refund_settled("max", &id).await;
    assert_eq!(stored["status"], "PROCESSING");
    assert_eq!(stored["flutterwave"]["transactionId"], first);
    assert_eq!(
        stored["strayPayments"][0]["transactionId"],
        second.to_string()
    );
    let refunds = app.sim.sim().refunds();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0].tx_id, second);
    // The order's own payment, verified again, is still its payment.
    let again = app
        .verify("max", first.as_str().unwrap().parse().unwrap(), tx_ref)
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["order"]["version"], stored["version"]);
    app.shutdown().await;
}
