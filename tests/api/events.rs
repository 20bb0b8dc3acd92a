//! What peers receive: each AMQP event of API.md read from queues bound to
//! the real exchanges, with its properties.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

fn oid() -> String {
    format!("ev-{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

fn kind(m: &Received) -> String {
    m.body["template"]
        .as_str()
        .or(m.body["type"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn assert_properties(m: &Received) {
    let p = &m.properties;
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
    assert!(p.timestamp().is_some());
    assert!(p.correlation_id().is_some());
    assert!(
        uuid::Uuid::parse_str(&m.message_id()).is_ok(),
        "message_id is a UUID"
    );
    let headers = p.headers().as_ref().expect("headers");
    assert!(headers.inner().contains_key("traceparent"));
}

#[tokio::test]
async fn a_full_lifecycle_publishes_every_event_in_order() {
    let app = spawn_app().await;
    let tap = EventTap::start(&app).await;
    let id = oid();
    let order = app.new_order(&id, "Quinn", "Rosa", 1500.0).await;
    app.pay("quinn", &order).await;
    assert_eq!(
        app.request_extension("rosa", &id).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.decide_extension("quinn", "approve", &id).await.status,
        StatusCode::OK
    );
    assert_eq!(app.deliver("rosa", &id).await.status, StatusCode::OK);
    assert_eq!(app.approve("quinn", &id).await.status, StatusCode::OK);

    let expected = [
        "create-order",
        "orderPlaced",
        "orderReceipt",
        "orderExtension",
        "orderExtensionApproval",
        "orderDelivered",
        "approve-order",
        "purchased-gigs",
    ];
    let all = tap
        .wait_until(Duration::from_secs(20), |all| all.len() >= expected.len())
        .await;
    let kinds: Vec<String> = all.iter().map(kind).collect();
    assert_eq!(kinds, expected, "commit order per order");
    for m in &all {
        assert_properties(m);
    }
    let by = |k: &str| all.iter().find(|m| kind(m) == k).unwrap().clone();

    let created = by("create-order");
    assert_eq!(
        (created.exchange.as_str(), created.routing_key.as_str()),
        ("gigconnect-seller-updates", "user-seller")
    );
    assert_eq!(
        created.body,
        serde_json::json!({ "type": "create-order", "sellerId": "seller-Rosa", "ongoingJobs": 1 })
    );

    let placed = by("orderPlaced");
    assert_eq!(
        (placed.exchange.as_str(), placed.routing_key.as_str()),
        ("gigconnect-order-exchange", "order-email")
    );
    assert_eq!(placed.body["receiverEmail"], "Rosa@example.com");
    assert_eq!(
        placed.body["buyerUsername"], "quinn",
        "usernames lower-case in e-mails"
    );
    assert_eq!(placed.body["sellerUsername"], "rosa");
    assert_eq!(placed.body["amount"], 1500.0);
    assert_eq!(placed.body["serviceFee"], 150.0);
    assert_eq!(placed.body["total"], 1650.0);
    assert_eq!(
        placed.body["orderUrl"],
        format!("http://client.test/orders/{id}/activities")
    );
    for field in [
        "orderId",
        "invoiceId",
        "orderDue",
        "title",
        "description",
        "requirements",
    ] {
        assert!(!placed.body[field].is_null(), "orderPlaced.{field}");
    }
    assert_eq!(
        by("orderReceipt").body["receiverEmail"],
        "Quinn@example.com"
    );

    let extension = by("orderExtension");
    assert_eq!(extension.body["receiverEmail"], "Quinn@example.com");
    assert_eq!(extension.body["newDate"], "2026-12-15");
    let decision = by("orderExtensionApproval");
    assert_eq!(decision.body["type"], "Accepted");
    assert_eq!(decision.body["receiverEmail"], "Rosa@example.com");
    for field in ["subject", "header", "message"] {
        assert!(decision.body[field].is_string());
    }
    let delivered = by("orderDelivered");
    assert_eq!(delivered.body["receiverEmail"], "Quinn@example.com");
    assert_eq!(delivered.body["orderId"], id);

    let approved = by("approve-order");
    assert_eq!(approved.routing_key, "user-seller");
    assert_eq!(
        approved.body["totalEarnings"], 1500.0,
        "from the stored order, not the body's 999999"
    );
    assert_eq!(approved.body["ongoingJobs"], -1);
    assert_eq!(approved.body["completedJobs"], 1);
    assert_eq!(approved.body["buyerId"], "buyer-Quinn");
    assert!(approved.body["recentDelivery"].is_string());
    let purchased = by("purchased-gigs");
    assert_eq!(
        (purchased.exchange.as_str(), purchased.routing_key.as_str()),
        ("gigconnect-buyer-updates", "user-buyer")
    );
    assert_eq!(purchased.body["purchasedGigs"], "gig-1");

    let ids: HashSet<String> = all.iter().map(Received::message_id).collect();
    assert_eq!(ids.len(), all.len(), "one message_id per event");
    let records = app.outbox_records(&id).await;
    assert!(
        records
            .iter()
            .all(|r| r.status == outbox::RecordStatus::Published)
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_redelivered_message_keeps_its_message_id() {
    let app = spawn_app().await;
    let tap = EventTap::start_with(&app, false).await;
    let order = app.new_order(&oid(), "sam", "tina", 100.0).await;
    app.pay("sam", &order).await;
    let all = tap
        .wait_until(Duration::from_secs(20), |all| {
            all.iter().filter(|m| m.redelivered).count() >= 3
        })
        .await;
    for first in all.iter().filter(|m| !m.redelivered) {
        let again = all
            .iter()
            .find(|m| m.redelivered && m.body == first.body)
            .expect("redelivery");
        assert_eq!(again.message_id(), first.message_id());
    }
    app.shutdown().await;
}

#[tokio::test]
async fn cancelling_a_paid_order_refunds_once_and_tells_both_sides() {
    let app = spawn_app().await;
    let tap = EventTap::start(&app).await;
    let id = oid();
    let order = app.new_order(&id, "uma", "victor", 2000.0).await;
    app.pay("uma", &order).await;
    let cancelled = app.cancel("victor", &id).await;
    assert_eq!(cancelled.status, StatusCode::OK);
    assert_eq!(cancelled.body["order"]["refund"]["status"], "pending");
    assert_eq!(cancelled.body["order"]["refund"]["amount"], 1900.0);
    let all = tap
        .wait_until(Duration::from_secs(20), |all| {
            all.iter().filter(|m| kind(m) == "cancel-order").count() >= 2
        })
        .await;
    let seller = all
        .iter()
        .find(|m| kind(m) == "cancel-order" && m.routing_key == "user-seller")
        .unwrap();
    assert_eq!(
        seller.body,
        serde_json::json!({ "type": "cancel-order", "sellerId": "seller-victor" })
    );
    let buyer = all
        .iter()
        .find(|m| kind(m) == "cancel-order" && m.routing_key == "user-buyer")
        .unwrap();
    assert_eq!(
        buyer.body,
        serde_json::json!({ "type": "cancel-order", "buyerId": "buyer-uma", "purchasedGigs": "gig-1" })
    );

    let refunded = wait_for_refund(&app, &id).await;
    assert_eq!(refunded["refund"]["status"], "completed");
    assert!(refunded["refund"]["flutterwaveRefundId"].is_string());
    let refunds = app.sim.sim().refunds();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].amount_refunded, 1900.0);
    app.shutdown().await;
}

#[tokio::test]
async fn a_refund_whose_response_was_lost_is_applied_once() {
    let app = spawn_app().await;
    let id = oid();
    let order = app.new_order(&id, "wendy", "xavier", 1000.0).await;
    app.pay("wendy", &order).await;
    app.sim.sim().set_faults(flutterwave_sim::Faults {
        refund_drop_response_next: 1,
        ..Default::default()
    });
    assert_eq!(app.cancel("wendy", &id).await.status, StatusCode::OK);
    let refunded = wait_for_refund(&app, &id).await;
    assert_eq!(refunded["refund"]["status"], "completed");
    assert_eq!(
        app.sim.sim().refunds().len(),
        1,
        "looked up, not sent twice"
    );
    assert!(refunded["refund"]["attempts"].as_i64().unwrap() >= 2);
    app.shutdown().await;
}

/// An app that looks pending refunds up again every 100 ms, and a paid
/// order whose refunds Flutterwave will report pending for `lookups`
/// look-ups, then completed.
async fn refunds_settling_after(lookups: u32, buyer: &str, seller: &str) -> (TestApp, Value) {
    refunds_held_pending(
        flutterwave_sim::Faults {
            refund_pending_lookups: lookups,
            ..Default::default()
        },
        buyer,
        seller,
    )
    .await
}

async fn refunds_held_pending(
    faults: flutterwave_sim::Faults,
    buyer: &str,
    seller: &str,
) -> (TestApp, Value) {
    let app = spawn_app_with(Options {
        extra_env: vec![("REFUND_RECHECK_MS", "100".into())],
        ..Default::default()
    })
    .await;
    let order = app.new_order(&oid(), buyer, seller, 1000.0).await;
    app.pay(buyer, &order).await;
    app.sim.sim().set_faults(faults);
    (app, order)
}

#[tokio::test]
async fn a_refund_that_fails_after_being_pending_is_recorded_failed_and_not_sent_again() {
    let (app, order) = refunds_held_pending(
        flutterwave_sim::Faults {
            refund_pending_lookups: 3,
            refund_pending_then_fails: true,
            ..Default::default()
        },
        "uma",
        "victor",
    )
    .await;
    let id = order["orderId"].as_str().unwrap();
    assert_eq!(app.cancel("victor", id).await.status, StatusCode::OK);
    let failed = app
        .order_until("uma", id, |o| o["refund"]["status"] == "failed")
        .await;
    assert_eq!(failed["refund"]["status"], "failed", "{failed}");
    let refunds = app.sim.sim().refunds();
    assert_eq!(refunds.len(), 1, "no second refund asked for: {refunds:?}");
    assert_eq!(refunds[0].status, "failed");
    assert_eq!(
        failed["refund"]["flutterwaveRefundId"],
        refunds[0].id.to_string()
    );
    // Parked for an operator, not looked at again for ever. The relay parks
    // the record just after the command has recorded the failure.
    let refund_aggregate = format!("refund:{id}");
    let parked = poll_until(
        "the refund's record to be parked",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let parked = app
                .state
                .outbox
                .parked(10)
                .await
                .expect("parked")
                .into_iter()
                .filter(|r| r.aggregate_id.starts_with(&refund_aggregate))
                .count();
            (parked > 0).then_some(parked)
        },
    )
    .await;
    assert_eq!(parked, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn a_refund_pending_at_flutterwave_is_looked_up_until_it_settles_and_never_sent_twice() {
    // More look-ups than the relay's attempts (10): a look-up counted as a
    // failed attempt would park the refund before it settles.
    let (app, order) = refunds_settling_after(15, "uma", "victor").await;
    let id = order["orderId"].as_str().unwrap();
    assert_eq!(app.cancel("victor", id).await.status, StatusCode::OK);
    let taken = app
        .order_until("uma", id, |o| {
            o["refund"]["flutterwaveRefundId"].is_string()
        })
        .await;
    assert_eq!(
        taken["refund"]["status"], "pending",
        "Flutterwave has not settled it yet: {taken}"
    );
    let settled = app
        .order_until("uma", id, |o| o["refund"]["status"] == "completed")
        .await;
    assert_eq!(settled["refund"]["status"], "completed", "{settled}");
    assert_eq!(
        settled["refund"]["flutterwaveRefundId"],
        taken["refund"]["flutterwaveRefundId"]
    );
    assert_eq!(
        settled["refund"]["attempts"], 1,
        "looking again is no retry"
    );
    let refunds = app.sim.sim().refunds();
    assert_eq!(refunds.len(), 1, "looked up again, never sent twice");
    assert_eq!(refunds[0].status, "completed");
    app.shutdown().await;
}

#[tokio::test]
async fn a_refund_still_settling_does_not_hold_back_the_orders_events() {
    let (app, order) = refunds_settling_after(1_000, "yara", "zeno").await;
    let tap = EventTap::start(&app).await;
    let id = order["orderId"].as_str().unwrap();
    // A second payment of the paid order: refunded in full, and pending.
    let second = app.payment_for(&order);
    let tx_ref = order["flutterwave"]["txRef"].as_str().unwrap();
    assert_eq!(
        app.verify("yara", second, tx_ref).await.status,
        StatusCode::CONFLICT
    );
    let pending = app
        .order_until("yara", id, |o| {
            o["strayPayments"][0]["refund"]["flutterwaveRefundId"].is_string()
        })
        .await;
    assert_eq!(pending["strayPayments"][0]["refund"]["status"], "pending");

    assert_eq!(app.deliver("zeno", id).await.status, StatusCode::OK);
    // Behind the refund, it would wait for the refund to settle (100 s).
    tap.wait_until(Duration::from_secs(10), |all| {
        all.iter().any(|m| kind(m) == "orderDelivered")
    })
    .await;
    assert_eq!(app.sim.sim().refunds()[0].status, "pending");
    app.shutdown().await;
}

async fn wait_for_refund(app: &TestApp, id: &str) -> Value {
    poll_until(
        "the refund to complete",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let order = app.get("wendy", id).await;
            let order = if order.status == StatusCode::OK {
                order.body["order"].clone()
            } else {
                app.get("uma", id).await.body["order"].clone()
            };
            (order["refund"]["status"] == "completed").then_some(order)
        },
    )
    .await
}
