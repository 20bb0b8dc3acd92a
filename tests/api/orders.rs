//! Each route's success and its 400/401/403/404/409 paths.

use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

fn oid() -> String {
    format!("ord-{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

#[tokio::test]
async fn create_sets_server_figures_and_refuses_duplicates() {
    let app = spawn_app().await;
    let id = oid();
    let reply = app
        .create("Alice", order_body(&id, "Alice", "bob", 2000.0))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.body["message"], "Order created successfully.");
    let order = &reply.body["order"];
    assert_eq!(order["status"], "AWAITING_PAYMENT");
    assert_eq!(
        order["serviceFee"], 200.0,
        "10 % of 2000, never the client's figure"
    );
    assert_eq!(order["version"], 1);
    let tx_ref = order["flutterwave"]["txRef"].as_str().unwrap();
    assert!(tx_ref.starts_with(&format!("{id}-")));
    assert_eq!(tx_ref.rsplit('-').next().unwrap().len(), 6);

    let small = app.new_order(&oid(), "alice", "bob", 500.0).await;
    let slash = app
        .request(
            Method::POST,
            "/api/v1/order/",
            Some("alice"),
            Some(order_body(&oid(), "alice", "bob", 5.0)),
        )
        .await;
    assert_eq!(
        slash.status,
        StatusCode::CREATED,
        "the trailing slash Express accepted"
    );
    assert_eq!(small["serviceFee"], 100.0);

    let again = app
        .create("alice", order_body(&id, "alice", "bob", 2000.0))
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.body["status"], "error");
    assert_eq!(again.body["statusCode"], 409);
    assert_eq!(again.body["comingFrom"], "order-service");
    app.shutdown().await;
}

#[tokio::test]
async fn create_names_the_bad_field() {
    let app = spawn_app().await;
    let mut body = order_body(&oid(), "alice", "bob", 100.0);
    body["offer"]["price"] = json!("free");
    let reply = app.create("alice", body).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.body["message"]
            .as_str()
            .unwrap()
            .contains("offer.price"),
        "{}",
        reply.body
    );

    let mut body = order_body(&oid(), "alice", "bob", 100.0);
    body.as_object_mut().unwrap().remove("gigId");
    let reply = app.create("alice", body).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body["message"].as_str().unwrap().contains("gigId"));

    let reply = app
        .create("alice", order_body(&oid(), "alice", "bob", -5.0))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.body["message"]
            .as_str()
            .unwrap()
            .starts_with("offer.price")
    );

    let reply = app
        .create("alice", order_body("bad id!", "alice", "bob", 5.0))
        .await;
    assert_eq!(
        reply.body["message"],
        "orderId may contain only letters, digits, '-' and '_'"
    );

    let raw = app
        .send(
            app.http
                .post(format!("{}/api/v1/order", app.address))
                .header("gatewaytoken", gateway_token("order"))
                .bearer_auth(user_token("alice"))
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_eq!(raw.status, StatusCode::BAD_REQUEST);
    let form = app
        .send(
            app.http
                .post(format!("{}/api/v1/order", app.address))
                .header("gatewaytoken", gateway_token("order"))
                .bearer_auth(user_token("alice"))
                .body("a=b"),
        )
        .await;
    assert_eq!(form.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let count = app
        .db
        .collection::<bson::Document>("orders")
        .count_documents(bson::doc! {})
        .await
        .unwrap();
    assert_eq!(count, 0, "nothing half-written");
    app.shutdown().await;
}

#[tokio::test]
async fn authentication_and_party_rules() {
    let app = spawn_app().await;
    let id = oid();
    let order = app.new_order(&id, "alice", "bob", 100.0).await;
    let url = format!("{}/api/v1/order/{id}", app.address);

    let no_gateway = app
        .send(app.http.get(&url).bearer_auth(user_token("alice")))
        .await;
    assert_eq!(no_gateway.status, StatusCode::FORBIDDEN);
    let wrong_service = app
        .send(
            app.http
                .get(&url)
                .header("gatewaytoken", gateway_token("payments"))
                .bearer_auth(user_token("alice")),
        )
        .await;
    assert_eq!(wrong_service.status, StatusCode::FORBIDDEN);
    let no_user = app
        .send(
            app.http
                .get(&url)
                .header("gatewaytoken", gateway_token("order")),
        )
        .await;
    assert_eq!(no_user.status, StatusCode::UNAUTHORIZED);
    assert_eq!(no_user.body["statusCode"], 401);
    let forged = app
        .send(
            app.http
                .get(&url)
                .header("gatewaytoken", gateway_token("order"))
                .bearer_auth(user_token("alice") + "x"),
        )
        .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);

    assert_eq!(app.get("alice", &id).await.status, StatusCode::OK);
    let seller = app.get("BOB", &id).await;
    assert_eq!(
        seller.status,
        StatusCode::OK,
        "usernames compare case-insensitively"
    );
    assert_eq!(seller.body["order"]["orderId"], id);
    assert_eq!(app.get("mallory", &id).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.get("alice", "no-such-order").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.cancel("mallory", &id).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.create("mallory", order_body(&oid(), "alice", "bob", 1.0))
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    let mine = app
        .request(
            Method::GET,
            "/api/v1/order/buyer/buyer-alice",
            Some("alice"),
            None,
        )
        .await;
    assert_eq!(mine.body["orders"].as_array().unwrap().len(), 1);
    let theirs = app
        .request(
            Method::GET,
            "/api/v1/order/buyer/buyer-alice",
            Some("mallory"),
            None,
        )
        .await;
    assert_eq!(theirs.status, StatusCode::OK);
    assert!(
        theirs.body["orders"].as_array().unwrap().is_empty(),
        "a stranger lists nothing"
    );
    let sold = app
        .request(
            Method::GET,
            "/api/v1/order/seller/seller-bob",
            Some("bob"),
            None,
        )
        .await;
    assert_eq!(sold.body["orders"][0]["orderId"], order["orderId"]);
    app.shutdown().await;
}

#[tokio::test]
async fn lists_are_newest_first_and_paginated() {
    let app = spawn_app().await;
    let ids: Vec<String> = (0..5).map(|_| oid()).collect();
    for id in &ids {
        app.new_order(id, "carol", "dave", 10.0).await;
    }
    let first = app
        .request(
            Method::GET,
            "/api/v1/order/buyer/buyer-carol?limit=2",
            Some("carol"),
            None,
        )
        .await;
    let page: Vec<&str> = first.body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["orderId"].as_str().unwrap())
        .collect();
    assert_eq!(page, vec![ids[4].as_str(), ids[3].as_str()]);
    let cursor = first.body["nextCursor"].as_str().unwrap();
    let second = app
        .request(
            Method::GET,
            &format!("/api/v1/order/buyer/buyer-carol?limit=2&cursor={cursor}"),
            Some("carol"),
            None,
        )
        .await;
    assert_eq!(second.body["orders"][0]["orderId"], ids[2]);
    let bad = app
        .request(
            Method::GET,
            "/api/v1/order/buyer/buyer-carol?limit=0",
            Some("carol"),
            None,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let repeated = app
        .request(
            Method::GET,
            "/api/v1/order/buyer/buyer-carol?limit=1&limit=2",
            Some("carol"),
            None,
        )
        .await;
    assert_eq!(repeated.status, StatusCode::BAD_REQUEST);
    app.shutdown().await;
}

#[tokio::test]
async fn verify_checks_the_transaction_against_the_stored_order() {
    let app = spawn_app().await;
    let order = app.new_order(&oid(), "erin", "frank", 1000.0).await;
    let tx_ref = order["flutterwave"]["txRef"].as_str().unwrap().to_string();
    let sim = app.sim.sim();
    let cases = [
        (
            "amount too low",
            flutterwave_sim::NewTransaction {
                tx_ref: tx_ref.clone(),
                amount: 1099.0,
                ..Default::default()
            },
        ),
        (
            "wrong currency",
            flutterwave_sim::NewTransaction {
                tx_ref: tx_ref.clone(),
                amount: 1100.0,
                currency: "USD".into(),
                ..Default::default()
            },
        ),
        (
            "wrong tx_ref",
            flutterwave_sim::NewTransaction {
                tx_ref: "other-ref".into(),
                amount: 1100.0,
                ..Default::default()
            },
        ),
        (
            "failed",
            flutterwave_sim::NewTransaction {
                tx_ref: tx_ref.clone(),
                amount: 1100.0,
                status: "failed".into(),
                ..Default::default()
            },
        ),
        (
            "pending",
            flutterwave_sim::NewTransaction {
                tx_ref: tx_ref.clone(),
                amount: 1100.0,
                status: "pending".into(),
                ..Default::default()
            },
        ),
    ];
    for (case, tx) in cases {
        let id = sim.add_transaction(tx).id;
        let reply = app.verify("erin", id, &tx_ref).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{case}: {}",
            reply.body
        );
    }
    assert_eq!(
        app.verify("erin", 999_999_999, &tx_ref).await.status,
        StatusCode::BAD_REQUEST,
        "unknown transaction"
    );
    assert_eq!(
        app.verify("erin", 1, "no-such-ref").await.status,
        StatusCode::NOT_FOUND
    );
    let stored = app.get("erin", order["orderId"].as_str().unwrap()).await;
    assert_eq!(stored.body["order"]["status"], "AWAITING_PAYMENT");
    assert!(
        app.outbox_records(order["orderId"].as_str().unwrap())
            .await
            .is_empty(),
        "no events for refused payments"
    );

    let good = app.payment_for(&order);
    assert_eq!(
        app.verify("frank", good, &tx_ref).await.status,
        StatusCode::FORBIDDEN,
        "the seller cannot verify"
    );
    let paid = app.verify("erin", good, &tx_ref).await;
    assert_eq!(paid.status, StatusCode::OK);
    assert_eq!(paid.body["order"]["status"], "PROCESSING");
    assert_eq!(
        paid.body["order"]["flutterwave"]["transactionId"],
        good.to_string()
    );
    assert_eq!(paid.body["order"]["flutterwave"]["paymentMethod"], "card");
    let again = app.verify("erin", good, &tx_ref).await;
    assert_eq!(again.status, StatusCode::OK, "repeat is a no-op");
    assert_eq!(
        again.body["order"]["version"],
        paid.body["order"]["version"]
    );

    sim.set_faults(flutterwave_sim::Faults {
        fail_all_status: Some(503),
        ..Default::default()
    });
    let other = app.new_order(&oid(), "erin", "frank", 10.0).await;
    let unavailable = app
        .verify(
            "erin",
            good,
            other["flutterwave"]["txRef"].as_str().unwrap(),
        )
        .await;
    assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(unavailable.headers.get("retry-after").is_some());
    app.shutdown().await;
}

#[tokio::test]
async fn lifecycle_routes_enforce_roles_and_states() {
    let app = spawn_app().await;
    let id = oid();
    let order = app.new_order(&id, "gina", "hank", 300.0).await;
    assert_eq!(
        app.deliver("hank", &id).await.status,
        StatusCode::CONFLICT,
        "unpaid orders are not delivered"
    );
    app.pay("gina", &order).await;

    assert_eq!(
        app.request_extension("gina", &id).await.status,
        StatusCode::FORBIDDEN,
        "buyers do not ask for extensions"
    );
    let asked = app.request_extension("hank", &id).await;
    assert_eq!(asked.status, StatusCode::OK);
    assert_eq!(asked.body["order"]["requestExtension"]["days"], 5);
    assert_eq!(
        app.request_extension("hank", &id).await.status,
        StatusCode::CONFLICT,
        "one pending at a time"
    );
    assert_eq!(
        app.decide_extension("hank", "approve", &id).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.decide_extension("gina", "maybe", &id).await.status,
        StatusCode::BAD_REQUEST
    );
    let approved = app.decide_extension("gina", "approve", &id).await;
    assert_eq!(approved.status, StatusCode::OK);
    let o = &approved.body["order"];
    assert_eq!(o["offer"]["newDeliveryDate"], "2026-12-15");
    assert_eq!(o["offer"]["deliveryInDays"], 10);
    assert_eq!(o["offer"]["reason"], "More tests");
    assert!(o["requestExtension"].is_null());
    assert!(o["events"]["deliveryDateUpdate"].is_string());
    assert_eq!(
        app.decide_extension("gina", "reject", &id).await.status,
        StatusCode::CONFLICT,
        "nothing pending"
    );
    app.request_extension("hank", &id).await;
    let rejected = app.decide_extension("gina", "reject", &id).await;
    assert_eq!(rejected.status, StatusCode::OK);
    assert_eq!(
        rejected.body["order"]["offer"]["newDeliveryDate"], "2026-12-15",
        "reject keeps the date"
    );

    assert_eq!(
        app.approve("gina", &id).await.status,
        StatusCode::CONFLICT,
        "nothing delivered yet"
    );
    assert_eq!(app.deliver("gina", &id).await.status, StatusCode::FORBIDDEN);
    let delivered = app.deliver("hank", &id).await;
    assert_eq!(delivered.status, StatusCode::OK);
    assert_eq!(delivered.body["order"]["status"], "DELIVERED");
    assert_eq!(
        delivered.body["order"]["deliveredWork"][0]["fileName"],
        "work.zip"
    );
    assert_eq!(app.approve("hank", &id).await.status, StatusCode::FORBIDDEN);
    let done = app.approve("gina", &id).await;
    assert_eq!(done.status, StatusCode::OK);
    assert_eq!(done.body["order"]["status"], "COMPLETED");
    assert_eq!(done.body["order"]["approved"], true);
    let late = app.cancel("gina", &id).await;
    assert_eq!(late.status, StatusCode::CONFLICT);
    assert!(
        late.body["message"].as_str().unwrap().contains("COMPLETED"),
        "names the current status"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn cancel_unpaid_then_again_is_409() {
    let app = spawn_app().await;
    let id = oid();
    app.new_order(&id, "ivy", "jack", 50.0).await;
    let cancelled = app.cancel("jack", &id).await;
    assert_eq!(cancelled.status, StatusCode::OK);
    assert_eq!(cancelled.body["order"]["status"], "CANCELLED");
    assert!(
        cancelled.body["order"]["refund"].is_null(),
        "unpaid: no refund"
    );
    let again = app.cancel("ivy", &id).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.body["message"], "order is already cancelled");
    app.shutdown().await;
}

#[tokio::test]
async fn concurrent_commands_on_one_order_never_both_win() {
    let app = spawn_app().await;
    let id = oid();
    let order = app.new_order(&id, "kate", "liam", 80.0).await;
    app.pay("kate", &order).await;
    app.deliver("liam", &id).await;
    let (cancel, approve) = tokio::join!(app.cancel("kate", &id), app.approve("kate", &id));
    let statuses = [cancel.status, approve.status];
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count(),
        1,
        "{statuses:?}"
    );
    let stored = app.get("kate", &id).await.body["order"].clone();
    let winner = if cancel.status == StatusCode::OK {
        "CANCELLED"
    } else {
        "COMPLETED"
    };
    assert_eq!(stored["status"], winner);
    let records = app.outbox_records(&id).await;
    let kinds: Vec<String> = records.iter().map(|r| r.payload.clone()).collect();
    let cancel_events = kinds.iter().filter(|p| p.contains("cancel-order")).count();
    let approve_events = kinds.iter().filter(|p| p.contains("approve-order")).count();
    assert_eq!(
        (cancel_events > 0) as u8 + (approve_events > 0) as u8,
        1,
        "only the winner staged events"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn idempotency_key_replays_or_refuses() {
    let app = spawn_app().await;
    let id = oid();
    let body = order_body(&id, "mia", "noah", 70.0);
    let send = |body: serde_json::Value| {
        app.send(
            app.http
                .post(format!("{}/api/v1/order", app.address))
                .header("gatewaytoken", gateway_token("order"))
                .bearer_auth(user_token("mia"))
                .header("idempotency-key", "key-1")
                .json(&body),
        )
    };
    let first = send(body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let replay = send(body.clone()).await;
    assert_eq!(replay.status, StatusCode::CREATED, "replayed, not a 409");
    assert_eq!(replay.body, first.body);
    assert_eq!(replay.headers.get("idempotent-replayed").unwrap(), "true");
    let reordered: serde_json::Map<String, serde_json::Value> = body
        .as_object()
        .unwrap()
        .iter()
        .rev()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let same_in_another_order = send(serde_json::Value::Object(reordered)).await;
    assert_eq!(
        same_in_another_order.status,
        StatusCode::CREATED,
        "key order does not matter"
    );
    assert_eq!(same_in_another_order.body, first.body);
    let mut other = body.clone();
    other["price"] = json!(71.0);
    assert_eq!(send(other).await.status, StatusCode::UNPROCESSABLE_ENTITY);
    let count = app
        .db
        .collection::<bson::Document>("orders")
        .count_documents(bson::doc! {})
        .await
        .unwrap();
    assert_eq!(count, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn notifications_go_to_their_receiver_only() {
    let app = spawn_app().await;
    let id = oid();
    let order = app.new_order(&id, "olga", "paul", 90.0).await;
    app.pay("olga", &order).await;
    app.deliver("paul", &id).await;
    let seller = app.notifications("paul", "paul").await;
    assert_eq!(seller.status, StatusCode::OK);
    let list = seller.body["notifications"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["message"], "placed an order for your gig.");
    assert_eq!(list[0]["senderUsername"], "olga");
    let buyer = app.notifications("olga", "olga").await;
    assert_eq!(
        buyer.body["notifications"][0]["message"],
        "delivered your order."
    );
    assert_eq!(
        app.notifications("olga", "paul").await.status,
        StatusCode::FORBIDDEN
    );

    let note_id = list[0]["_id"].as_str().unwrap();
    let stranger = app
        .request(
            Method::PUT,
            "/api/v1/order/notification/mark-as-read",
            Some("olga"),
            Some(json!({ "notificationId": note_id })),
        )
        .await;
    assert_eq!(stranger.status, StatusCode::FORBIDDEN);
    let marked = app
        .request(
            Method::PUT,
            "/api/v1/order/notification/mark-as-read",
            Some("paul"),
            Some(json!({ "notificationId": note_id })),
        )
        .await;
    assert_eq!(marked.status, StatusCode::OK);
    assert_eq!(marked.body["notification"]["isRead"], true);
    let missing = app
        .request(
            Method::PUT,
            "/api/v1/order/notification/mark-as-read",
            Some("paul"),
            Some(json!({ "notificationId": "nope" })),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let bad = app
        .request(
            Method::PUT,
            "/api/v1/order/notification/mark-as-read",
            Some("paul"),
            Some(json!({})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    app.shutdown().await;
}

#[tokio::test]
async fn health_and_admin_routes() {
    let app = spawn_app().await;
    let health = app
        .send(app.http.get(format!("{}/order-health", app.address)))
        .await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body, "Order Service is healthy");
    let live = app
        .send(app.http.get(format!("{}/health/live", app.address)))
        .await;
    assert_eq!(live.status, StatusCode::OK);
    // Readiness reads the backlog; the gauges then say what it read, not
    // what the last scrape did.
    let gauges = app.state.metrics.families();
    gauges.outbox_pending.set(-1);
    let ready = poll_until(
        "the service to be ready",
        std::time::Duration::from_secs(5),
        std::time::Duration::from_millis(100),
        || async {
            let ready = app
                .send(app.http.get(format!("{}/health/ready", app.address)))
                .await;
            if ready.status == StatusCode::OK {
                Ok(ready)
            } else {
                Err(ready.body)
            }
        },
    )
    .await;
    assert_eq!(ready.body["mongo"], "up");
    assert_eq!(ready.body["rabbitmq"], "up");
    assert_eq!(
        gauges.outbox_pending.get(),
        ready.body["outbox"]["pending"].as_i64().expect("pending"),
        "{}",
        ready.body
    );
    assert_eq!(gauges.dependency_up.with_label_values(&["mongo"]).get(), 1);
    let refused = app
        .send(app.http.get(format!("{}/admin/outbox/parked", app.address)))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let parked = app
        .send(
            app.http
                .get(format!("{}/admin/outbox/parked", app.address))
                .header("x-admin-token", "test-admin"),
        )
        .await;
    assert_eq!(parked.status, StatusCode::OK);
    assert!(parked.body["records"].as_array().unwrap().is_empty());
    let unknown = app
        .send(
            app.http
                .post(format!("{}/admin/outbox/parked/nope/replay", app.address))
                .header("x-admin-token", "test-admin"),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let nowhere = app
        .send(app.http.get(format!("{}/api/v1/nowhere", app.address)))
        .await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    assert_eq!(nowhere.body["status"], "error");
    app.shutdown().await;
}

/// A stand-in for Cloudinary's signed upload API: checks the signature the
/// way Cloudinary does (sha1 of the sorted parameters plus the secret), and
/// counts the uploads it was asked for.
async fn fake_cloudinary(secret: &'static str) -> (String, Arc<AtomicUsize>) {
    use sha1::{Digest, Sha1};
    let uploads = Arc::new(AtomicUsize::new(0));
    let counted = uploads.clone();
    let router = axum::Router::new().route(
        "/{cloud}/auto/upload",
        axum::routing::post(move |axum::extract::Path(cloud): axum::extract::Path<String>, axum::Form(form): axum::Form<std::collections::HashMap<String, String>>| async move {
            counted.fetch_add(1, Ordering::SeqCst);
            let expected = format!("{:x}", Sha1::digest(format!("timestamp={}{secret}", form["timestamp"]).as_bytes()));
            if form.get("signature") != Some(&expected) || !form["file"].starts_with("data:") || form["api_key"] != "test-key" {
                return (reqwest::StatusCode::UNAUTHORIZED, axum::Json(json!({ "error": { "message": "Invalid Signature" } })));
            }
            (reqwest::StatusCode::OK, axum::Json(json!({ "secure_url": format!("https://res.cloudinary.test/{cloud}/work.zip") })))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, uploads)
}

#[tokio::test]
async fn a_delivered_data_uri_is_uploaded_and_replaced_by_its_url() {
    let (cloudinary, uploads) = fake_cloudinary("test-secret").await;
    let app = spawn_app_with(Options {
        extra_env: vec![
            ("CLOUD_NAME", "demo".into()),
            ("CLOUD_API_KEY", "test-key".into()),
            ("CLOUD_API_SECRET", "test-secret".into()),
            ("CLOUDINARY_API_URL", cloudinary),
        ],
        ..Options::default()
    })
    .await;
    let id = oid();
    let order = app.new_order(&id, "quil", "rhea", 100.0).await;
    let body = json!({ "message": "Done", "file": "data:application/zip;base64,UEsDBA==", "fileType": "zip", "fileSize": 4, "fileName": "work.zip" });
    let path = format!("/api/v1/order/deliver-order/{id}");
    let deliver =
        |user: &'static str| app.request(Method::PUT, &path, Some(user), Some(body.clone()));
    // Refused deliveries upload nothing: not yet paid, and not the seller.
    assert_eq!(deliver("rhea").await.status, StatusCode::CONFLICT);
    app.pay("quil", &order).await;
    assert_eq!(deliver("quil").await.status, StatusCode::FORBIDDEN);
    assert_eq!(uploads.load(Ordering::SeqCst), 0);
    let delivered = deliver("rhea").await;
    assert_eq!(delivered.status, StatusCode::OK, "{}", delivered.body);
    assert_eq!(uploads.load(Ordering::SeqCst), 1);
    assert_eq!(
        delivered.body["order"]["deliveredWork"][0]["file"],
        "https://res.cloudinary.test/demo/work.zip"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_file_store_refusing_our_credentials_is_our_fault_not_the_sellers() {
    let (cloudinary, uploads) = fake_cloudinary("test-secret").await;
    let app = spawn_app_with(Options {
        extra_env: vec![
            ("CLOUD_NAME", "demo".into()),
            ("CLOUD_API_KEY", "test-key".into()),
            ("CLOUD_API_SECRET", "rotated-secret".into()),
            ("CLOUDINARY_API_URL", cloudinary),
        ],
        ..Options::default()
    })
    .await;
    let id = oid();
    let order = app.new_order(&id, "sol", "tam", 100.0).await;
    app.pay("sol", &order).await;
    let body = json!({ "message": "Done", "file": "data:application/zip;base64,UEsDBA==" });
    let refused = app
        .request(
            Method::PUT,
            &format!("/api/v1/order/deliver-order/{id}"),
            Some("tam"),
            Some(body),
        )
        .await;
    assert_eq!(uploads.load(Ordering::SeqCst), 1);
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY, "{}", refused.body);
    assert_eq!(refused.body["message"], "File store error");
    assert_eq!(
        app.get("sol", &id).await.body["order"]["status"],
        "PROCESSING",
        "nothing delivered"
    );
    app.shutdown().await;
}
