//! Hosted checkout (one provider call per order) and the reconciliation
//! sweep that catches lost webhooks.

use crate::helpers::*;
use flutterwave_sim::{PayOptions, SignMode, WebhookOptions};
use reqwest::{Method, StatusCode};
use std::time::Duration;

fn oid() -> String {
    format!("chk-{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

fn sweeping() -> Options {
    Options {
        extra_env: vec![
            ("RECONCILE_INTERVAL_MS", "200".into()),
            ("RECONCILE_FIRST_DELAY_SECS", "0".into()),
        ],
        ..Options::default()
    }
}

/// Pays `order`'s checkout link in the simulator; its webhook is lost.
async fn pay_losing_the_webhook(app: &TestApp, order: &serde_json::Value) {
    app.sim
        .sim()
        .pay_link(
            order["flutterwave"]["txRef"].as_str().unwrap(),
            PayOptions {
                lose_webhook: true,
                ..Default::default()
            },
        )
        .await
        .expect("paid");
}

async fn checkout(app: &TestApp, user: &str, order_id: &str) -> Reply {
    app.request(
        Method::POST,
        &format!("/api/v1/order/{order_id}/checkout"),
        Some(user),
        None,
    )
    .await
}

#[tokio::test]
async fn checkout_asks_flutterwave_once_however_often_it_is_asked() {
    let app = spawn_app().await;
    let id = oid();
    let order = app.new_order(&id, "kim", "lee", 1000.0).await;
    let replies = futures::future::join_all((0..5).map(|_| checkout(&app, "kim", &id))).await;
    let links: Vec<String> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            r.body["link"].as_str().unwrap().to_string()
        })
        .collect();
    let again = checkout(&app, "kim", &id).await;
    assert_eq!(again.body["link"], links[0].as_str());
    assert!(
        links.iter().all(|l| *l == links[0]),
        "the same link for everyone"
    );
    let sim = app.sim.sim();
    assert_eq!(sim.calls().payments, 1, "one provider call");
    let sent = &sim.payment_links()[0];
    assert_eq!(sent.tx_ref, order["flutterwave"]["txRef"].as_str().unwrap());
    assert_eq!(sent.amount, 1100.0, "price plus fee, from the stored order");
    assert!(sent.redirect_url.starts_with("http://client.test/"));
    assert_eq!(
        checkout(&app, "lee", &id).await.status,
        StatusCode::FORBIDDEN,
        "the seller does not pay"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn checkout_is_refused_for_paid_and_cancelled_orders() {
    let app = spawn_app().await;
    let paid = app.new_order(&oid(), "max", "ned", 100.0).await;
    app.pay("max", &paid).await;
    let reply = checkout(&app, "max", paid["orderId"].as_str().unwrap()).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(
        reply.body["message"]
            .as_str()
            .unwrap()
            .contains("PROCESSING")
    );
    let cancelled = app.new_order(&oid(), "max", "ned", 100.0).await;
    app.cancel("max", cancelled["orderId"].as_str().unwrap())
        .await;
    assert_eq!(
        checkout(&app, "max", cancelled["orderId"].as_str().unwrap())
            .await
            .status,
        StatusCode::CONFLICT
    );
    assert_eq!(app.sim.sim().calls().payments, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn the_sweep_pays_an_order_whose_webhook_was_lost() {
    let app = spawn_app_with(sweeping()).await;
    let tap = EventTap::start(&app).await;
    let id = oid();
    let order = app.new_order(&id, "oli", "pat", 300.0).await;
    assert_eq!(checkout(&app, "oli", &id).await.status, StatusCode::OK);
    pay_losing_the_webhook(&app, &order).await;
    tap.wait_until(Duration::from_secs(30), |_| {
        tap.for_order(&order).len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kinds: Vec<String> = tap
        .for_order(&order)
        .iter()
        .map(|m| {
            m.body["template"]
                .as_str()
                .or(m.body["type"].as_str())
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        ["create-order", "orderPlaced", "orderReceipt"],
        "every paid event, once"
    );
    let stored = app.get("oli", &id).await.body["order"].clone();
    assert_eq!(stored["status"], "PROCESSING");
    assert!(app.sim.sim().calls().verify_by_reference >= 1);
    app.shutdown().await;
}

#[tokio::test]
async fn webhook_verify_route_and_sweep_racing_make_one_transition() {
    let app = spawn_app_with(sweeping()).await;
    let tap = EventTap::start(&app).await;
    let id = oid();
    let order = app.new_order(&id, "quin", "ray", 500.0).await;
    checkout(&app, "quin", &id).await;
    let tx_ref = order["flutterwave"]["txRef"].as_str().unwrap().to_string();
    let sim = app.sim.sim();
    sim.set_webhook_target(
        format!("{}/webhooks/flutterwave", app.address),
        WEBHOOK_HASH,
    );
    let transaction = sim
        .pay_link(
            &tx_ref,
            PayOptions {
                lose_webhook: true,
                ..Default::default()
            },
        )
        .await
        .expect("paid");
    let (webhooks, verify) = tokio::join!(
        sim.send_webhook(
            transaction.id,
            WebhookOptions {
                times: 3,
                concurrent: true,
                sign: SignMode::VerifHash
            }
        ),
        app.verify("quin", transaction.id, &tx_ref),
    );
    assert_eq!(webhooks.expect("webhooks"), 200);
    assert_eq!(verify.status, StatusCode::OK);
    tap.wait_until(Duration::from_secs(30), |_| {
        tap.for_order(&order).len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(tap.for_order(&order).len(), 3, "one set of events");
    let notes = app.notifications("ray", "ray").await;
    assert_eq!(
        notes.body["notifications"].as_array().unwrap().len(),
        1,
        "one notification"
    );
    let records = app.outbox_records(&id).await;
    let paid_events = records
        .iter()
        .filter(|r| r.payload.contains("create-order"))
        .count();
    assert_eq!(paid_events, 1, "one transition staged");
    app.shutdown().await;
}

#[tokio::test]
async fn orders_checked_recently_do_not_keep_a_due_one_from_a_small_sweep() {
    // One order per sweep, newest checkout first.
    let app = spawn_app_with(Options {
        extra_env: vec![
            ("RECONCILE_INTERVAL_MS", "200".into()),
            ("RECONCILE_FIRST_DELAY_SECS", "1".into()),
            ("RECONCILE_BATCH", "1".into()),
        ],
        ..Options::default()
    })
    .await;
    let sim = app.sim.sim();
    // The oldest checkout, paid with its webhook lost.
    let id = oid();
    let order = app.new_order(&id, "eli", "fox", 300.0).await;
    assert_eq!(checkout(&app, "eli", &id).await.status, StatusCode::OK);
    pay_losing_the_webhook(&app, &order).await;
    // Two newer unpaid checkouts, whose schedules say "in an hour", as if
    // they had just been checked.
    let checks = app.db.collection::<bson::Document>("payment_checks");
    for (buyer, seller) in [("ada", "bo"), ("cy", "di")] {
        let newer = oid();
        app.new_order(&newer, buyer, seller, 100.0).await;
        assert_eq!(checkout(&app, buyer, &newer).await.status, StatusCode::OK);
        let in_an_hour =
            bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() + 3_600_000);
        checks
            .insert_one(bson::doc! { "_id": &newer, "attempts": 1, "nextCheckAt": in_an_hour })
            .await
            .expect("schedule");
    }
    let status = app
        .order_until("eli", &id, |o| o["status"] == "PROCESSING")
        .await["status"]
        .clone();
    assert_eq!(
        status, "PROCESSING",
        "the newer, not-due checkouts took no turn"
    );
    assert_eq!(
        sim.calls().verify_by_reference,
        1,
        "only the due order was asked about"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_sweep_refunds_a_payment_made_after_the_order_was_cancelled() {
    let app = spawn_app_with(sweeping()).await;
    let id = oid();
    let order = app.new_order(&id, "gil", "hu", 400.0).await;
    assert_eq!(checkout(&app, "gil", &id).await.status, StatusCode::OK);
    assert_eq!(app.cancel("gil", &id).await.status, StatusCode::OK);
    // Paid on the page left open; the webhook is lost and the buyer's page
    // never verifies.
    pay_losing_the_webhook(&app, &order).await;
    let sim = app.sim.sim();
    let stored = app.stray_refund_settled("gil", &id).await;
    assert_eq!(
        stored["strayPayments"][0]["refund"]["status"], "completed",
        "{stored}"
    );
    assert_eq!(stored["status"], "CANCELLED");
    let refunds = sim.refunds();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(
        refunds[0].amount_refunded,
        400.0 + order["serviceFee"].as_f64().unwrap()
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_sweep_refunds_a_second_payment_of_a_paid_order_when_both_webhooks_were_lost() {
    let mut options = sweeping();
    // However many checks come before the second payment, the next is near.
    options
        .extra_env
        .push(("RECONCILE_MAX_DELAY_SECS", "1".into()));
    let app = spawn_app_with(options).await;
    let id = oid();
    let order = app.new_order(&id, "ivy", "jon", 300.0).await;
    assert_eq!(checkout(&app, "ivy", &id).await.status, StatusCode::OK);
    pay_losing_the_webhook(&app, &order).await;
    let paid = app
        .order_until("ivy", &id, |o| o["status"] == "PROCESSING")
        .await;
    let first = paid["flutterwave"]["transactionId"].clone();
    assert!(
        first.is_string(),
        "the sweep found the first payment: {paid}"
    );
    // The page, still open, is paid again; that webhook is lost too, and
    // no verify comes: only the sweep can see it.
    pay_losing_the_webhook(&app, &order).await;
    let stored = app.stray_refund_settled("ivy", &id).await;
    assert_eq!(
        stored["strayPayments"][0]["refund"]["status"], "completed",
        "{stored}"
    );
    assert_eq!(stored["status"], "PROCESSING");
    assert_eq!(
        stored["flutterwave"]["transactionId"], first,
        "the first kept"
    );
    let refunds = app.sim.sim().refunds();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(
        refunds[0].tx_id.to_string(),
        stored["strayPayments"][0]["transactionId"]
            .as_str()
            .unwrap()
    );
    assert_eq!(
        refunds[0].amount_refunded,
        300.0 + order["serviceFee"].as_f64().unwrap()
    );
    assert!(app.sim.sim().calls().transactions >= 1);
    app.shutdown().await;
}
