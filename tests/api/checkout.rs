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
    sweeping_with(&[])
}

/// A sweep every 200 ms, checking at once, with `extra` settings (which
/// win over those two).
fn sweeping_with(extra: &[(&'static str, &str)]) -> Options {
    let mut extra_env: Vec<(&'static str, String)> = [
        ("RECONCILE_INTERVAL_MS", "200"),
        ("RECONCILE_FIRST_DELAY_SECS", "0"),
    ]
    .into_iter()
    .filter(|(name, _)| !extra.iter().any(|(set, _)| set == name))
    .map(|(name, value)| (name, value.to_string()))
    .collect();
    extra_env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    Options {
        extra_env,
        ..Options::default()
    }
}

/// A new order of `buyer`'s, with its checkout link made: its id and body.
async fn checked_out(
    app: &TestApp,
    buyer: &str,
    seller: &str,
    price: f64,
) -> (String, serde_json::Value) {
    let id = oid();
    let order = app.new_order(&id, buyer, seller, price).await;
    assert_eq!(checkout(app, buyer, &id).await.status, StatusCode::OK);
    (id, order)
}

/// Pays `order`'s checkout link in the simulator; its webhook is lost.
async fn pay_losing_the_webhook(
    app: &TestApp,
    order: &serde_json::Value,
) -> flutterwave_sim::Transaction {
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
        .expect("paid")
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
        sent.session_duration,
        Some(1440),
        "the page takes payments for as long as the sweep watches it"
    );
    let stored = app.get("kim", &id).await.body["order"]["flutterwave"].clone();
    let at = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(stored[field].as_str().unwrap()).unwrap()
    };
    let lasts = at("checkoutExpiresAt") - at("checkoutAt");
    assert!(
        (23 * 60..=24 * 60).contains(&lasts.num_minutes()),
        "the order knows when its page ends: {stored}"
    );
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
    let (id, order) = checked_out(&app, "oli", "pat", 300.0).await;
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
    let transaction = pay_losing_the_webhook(&app, &order).await;
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
    let (id, order) = checked_out(&app, "eli", "fox", 300.0).await;
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
    let (id, order) = checked_out(&app, "gil", "hu", 400.0).await;
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
    // However many checks come before the second payment, the next is near.
    let app = spawn_app_with(sweeping_with(&[("RECONCILE_MAX_DELAY_SECS", "1")])).await;
    let (id, order) = checked_out(&app, "ivy", "jon", 300.0).await;
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

/// Moves the order's checkout back by `age`, as if it had been made then.
async fn age_checkout(app: &TestApp, order_id: &str, age: chrono::Duration) {
    let then = (chrono::Utc::now() - age).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    app.db
        .collection::<bson::Document>("orders")
        .update_one(
            bson::doc! { "orderId": order_id },
            bson::doc! { "$set": { "flutterwave.checkoutAt": then } },
        )
        .await
        .expect("checkout moved back");
}

#[tokio::test]
async fn a_payment_in_the_last_minutes_of_a_checkout_session_is_still_found() {
    let app = spawn_app_with(sweeping()).await;
    let (id, order) = checked_out(&app, "quin", "rae", 200.0).await;
    // The page was made 24 hours and 5 minutes ago, and paid just before its
    // session ended; the next check comes after the end.
    age_checkout(&app, &id, chrono::Duration::minutes(24 * 60 + 5)).await;
    pay_losing_the_webhook(&app, &order).await;
    let stored = app
        .order_until("quin", &id, |o| o["status"] == "PROCESSING")
        .await;
    assert_eq!(stored["status"], "PROCESSING", "{stored}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_checkout_whose_page_ended_long_ago_is_no_longer_checked() {
    // A fresh checkout waits 3 s for its first check, time enough to age
    // the old one before any sweep can see it young.
    let app = spawn_app_with(sweeping_with(&[("RECONCILE_FIRST_DELAY_SECS", "3")])).await;
    let checks = app.db.collection::<bson::Document>("payment_checks");
    // Past its page's 24 hours and the two hour-long waits after them.
    let (old, old_order) = checked_out(&app, "sam", "tia", 200.0).await;
    age_checkout(&app, &old, chrono::Duration::minutes(26 * 60 + 5)).await;
    pay_losing_the_webhook(&app, &old_order).await;
    // A fresh one, checked by the same sweeps.
    let (fresh, fresh_order) = checked_out(&app, "uma", "vic", 200.0).await;
    pay_losing_the_webhook(&app, &fresh_order).await;
    app.order_until("uma", &fresh, |o| o["status"] == "PROCESSING")
        .await;
    // Its paid-phase schedule appears in a later sweep than the one that
    // paid it, so every sweep that could have seen the old one is over.
    let paid_key = format!("paid:{fresh}");
    poll_until(
        "a later sweep",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            checks
                .find_one(bson::doc! { "_id": &paid_key })
                .await
                .expect("schedule read")
                .is_some()
        },
    )
    .await;
    assert!(
        checks
            .find_one(bson::doc! { "_id": &old })
            .await
            .expect("schedule read")
            .is_none(),
        "the old checkout was never checked"
    );
    assert_eq!(
        app.get("sam", &old).await.body["order"]["status"],
        "AWAITING_PAYMENT"
    );
    assert_eq!(app.sim.sim().calls().verify_by_reference, 1);
    app.shutdown().await;
}

/// `n` orders checked out and paid with their webhooks lost, whose first
/// checks all fall due at one moment, so one sweep finds them all due; every
/// look-up by reference takes 400 ms. Their buyers and ids.
async fn paid_orders_due_together(app: &TestApp, n: usize) -> Vec<(String, String)> {
    let checks = app.db.collection::<bson::Document>("payment_checks");
    // Not due while they are set up, however long that takes.
    let later = bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() + 3_600_000);
    let mut orders = Vec::new();
    for n in 0..n {
        let id = oid();
        checks
            .insert_one(bson::doc! { "_id": &id, "attempts": 0, "nextCheckAt": later })
            .await
            .expect("schedule");
        let (buyer, seller) = (format!("b{n}"), format!("s{n}"));
        let order = app.new_order(&id, &buyer, &seller, 100.0).await;
        assert_eq!(checkout(app, &buyer, &id).await.status, StatusCode::OK);
        pay_losing_the_webhook(app, &order).await;
        orders.push((buyer, id));
    }
    app.sim.sim().set_faults(flutterwave_sim::Faults {
        latency_ms: 400,
        only: Some(flutterwave_sim::Operation::VerifyByReference),
        ..Default::default()
    });
    let ids: Vec<&String> = orders.iter().map(|(_, id)| id).collect();
    checks
        .update_many(
            bson::doc! { "_id": { "$in": ids } },
            bson::doc! { "$set": { "nextCheckAt": bson::DateTime::now() } },
        )
        .await
        .expect("due now");
    orders
}

/// Waits until every order is paid; the simulator's call counts then.
async fn all_paid(app: &TestApp, orders: &[(String, String)]) -> flutterwave_sim::CallCounts {
    for (buyer, id) in orders {
        let stored = app
            .order_until(buyer, id, |o| o["status"] == "PROCESSING")
            .await;
        assert_eq!(stored["status"], "PROCESSING", "{stored}");
    }
    app.sim.sim().calls()
}

#[tokio::test]
async fn one_sweep_checks_several_orders_at_once_up_to_its_concurrency() {
    let app = spawn_app_with(sweeping_with(&[("RECONCILE_CONCURRENCY", "3")])).await;
    let orders = paid_orders_due_together(&app, 6).await;
    let calls = all_paid(&app, &orders).await;
    assert!(
        (2..=3).contains(&calls.peak_in_flight),
        "checks overlapped, never more than 3: {calls:?}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_sweep_paces_its_checks_to_leave_flutterwave_room_for_buyers() {
    let app = spawn_app_with(sweeping_with(&[
        ("RECONCILE_CONCURRENCY", "3"),
        // One check a second, each answered in 400 ms: they never overlap.
        ("RECONCILE_RATE_PER_SEC", "1"),
    ]))
    .await;
    let orders = paid_orders_due_together(&app, 3).await;
    let calls = all_paid(&app, &orders).await;
    assert_eq!(calls.peak_in_flight, 1, "{calls:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_paid_order_without_a_checkout_time_is_still_swept_for_second_payments() {
    // Paid through the verify route with no checkout link of ours, as
    // orders were before links were recorded: no `checkoutAt`.
    let app = spawn_app_with(sweeping_with(&[("RECONCILE_MAX_DELAY_SECS", "1")])).await;
    let id = oid();
    let order = app.new_order(&id, "wen", "xu", 150.0).await;
    let paid = app.pay("wen", &order).await;
    assert!(paid["flutterwave"]["checkoutAt"].is_null(), "{paid}");
    // The same reference paid again; its webhook and the verify are lost.
    app.payment_for(&order);
    let stored = app.stray_refund_settled("wen", &id).await;
    assert_eq!(
        stored["strayPayments"][0]["refund"]["status"], "completed",
        "{stored}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn an_order_that_cannot_be_checked_does_not_stop_the_sweep_for_the_others() {
    // One check at a time, newest first: the unreadable order comes first
    // in every sweep.
    let app = spawn_app_with(sweeping_with(&[("RECONCILE_CONCURRENCY", "1")])).await;
    let (id, order) = checked_out(&app, "yan", "zoe", 120.0).await;
    // A newer checkout whose document no longer reads as an order.
    let broken = oid();
    let just_now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    app.db
        .collection::<bson::Document>("orders")
        .insert_one(bson::doc! {
            "orderId": &broken,
            "status": "AWAITING_PAYMENT",
            "flutterwave": { "txRef": "broken", "transactionId": null, "checkoutAt": just_now },
        })
        .await
        .expect("broken order");
    pay_losing_the_webhook(&app, &order).await;
    let stored = app
        .order_until("yan", &id, |o| o["status"] == "PROCESSING")
        .await;
    assert_eq!(stored["status"], "PROCESSING", "{stored}");
    let metrics = app
        .send(app.http.get(format!("{}/metrics", app.address)))
        .await;
    let text = metrics.body.as_str().unwrap_or_default();
    assert!(
        !text.contains(r#"payment_reconcile_checks_total{outcome="failed"} 0"#),
        "the unreadable order's check counted as failed: {text}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_link_whose_session_ended_is_replaced_by_a_new_one_for_the_same_reference() {
    let app = spawn_app().await;
    let sim = app.sim.sim();
    let id = oid();
    let order = app.new_order(&id, "abe", "bea", 250.0).await;
    let tx_ref = order["flutterwave"]["txRef"].as_str().unwrap().to_string();
    let first = checkout(&app, "abe", &id).await.body["link"].clone();
    // The buyer comes back after the page's session: Flutterwave's page and
    // the order's record of it have both ended.
    sim.expire_payment_link(&tx_ref).expect("expired");
    let ended = (chrono::Utc::now() - chrono::Duration::seconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    app.db
        .collection::<bson::Document>("orders")
        .update_one(
            bson::doc! { "orderId": &id },
            bson::doc! { "$set": { "flutterwave.checkoutExpiresAt": ended } },
        )
        .await
        .expect("session ended");
    let renewed = checkout(&app, "abe", &id).await;
    assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.body);
    let second = renewed.body["link"].clone();
    assert_ne!(second, first, "a new page, not the dead one");
    assert_eq!(checkout(&app, "abe", &id).await.body["link"], second);
    assert_eq!(sim.calls().payments, 2, "one call per page");
    let links = sim.payment_links();
    assert!(links.iter().all(|l| l.tx_ref == tx_ref), "{links:?}");
    // The new page takes the payment, which pays the order.
    let payment = pay_losing_the_webhook(&app, &order).await;
    let paid = app.verify("abe", payment.id, &tx_ref).await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
    assert_eq!(paid.body["order"]["status"], "PROCESSING");
    app.shutdown().await;
}
