//! Bad input and hostile clients: body size, JSON depth, field lengths,
//! repeated query parameters, undecodable paths, wrong methods, security
//! headers, CORS, request timeouts and rate limits, each answered with the
//! JSON error.

use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::{Duration, Instant};

fn is_error_json(reply: &Reply, status: StatusCode) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.body["status"], "error", "{}", reply.body);
    assert_eq!(reply.body["statusCode"], status.as_u16());
    assert_eq!(reply.body["comingFrom"], "order-service");
}

fn authed(app: &TestApp, method: Method, path: &str) -> reqwest::RequestBuilder {
    app.http
        .request(method, format!("{}{path}", app.address))
        .header("gatewaytoken", gateway_token("order"))
        .bearer_auth(user_token("alice"))
}

#[tokio::test]
async fn oversized_deep_and_long_input_is_refused_with_the_json_error() {
    let app = spawn_app().await;
    // 413 on the JSON routes and on the webhook, whose body is read raw.
    let big = "x".repeat(70 * 1024);
    let mut body = order_body("big-1", "alice", "bob", 10.0);
    body["requirements"] = json!(big);
    let reply = app.create("alice", body).await;
    is_error_json(&reply, StatusCode::PAYLOAD_TOO_LARGE);
    let reply = app
        .send(
            app.http
                .post(format!("{}/webhooks/flutterwave", app.address))
                .header("verif-hash", WEBHOOK_HASH)
                .body(big.clone()),
        )
        .await;
    is_error_json(&reply, StatusCode::PAYLOAD_TOO_LARGE);
    let reply = app
        .send(
            authed(&app, Method::POST, "/api/v1/order/")
                .header("content-type", "application/json")
                .body(format!("{{\"pad\":\"{big}\"}}")),
        )
        .await;
    is_error_json(&reply, StatusCode::PAYLOAD_TOO_LARGE);

    // Deeper than 32 levels: 400 before the parser recurses.
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    let mut body = order_body("deep-1", "alice", "bob", 10.0);
    body["requirements"] = serde_json::from_str(&deep).unwrap();
    let reply = app.create("alice", body).await;
    is_error_json(&reply, StatusCode::BAD_REQUEST);
    assert!(
        reply.body["message"].as_str().unwrap().contains("deeper"),
        "{}",
        reply.body
    );
    let reply = app
        .send(
            app.http
                .post(format!("{}/webhooks/flutterwave", app.address))
                .header("verif-hash", WEBHOOK_HASH)
                .body(deep),
        )
        .await;
    is_error_json(&reply, StatusCode::BAD_REQUEST);

    // Free text beyond its bound names the field.
    let mut body = order_body("long-1", "alice", "bob", 10.0);
    body["offer"]["reason"] = json!("r".repeat(5_001));
    let reply = app.create("alice", body).await;
    is_error_json(&reply, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.body["message"],
        "offer.reason must be at most 5000 characters"
    );
    let order = app.new_order("long-2", "alice", "bob", 10.0).await;
    app.pay("alice", &order).await;
    let reply = app
        .request(
            Method::PUT,
            "/api/v1/order/deliver-order/long-2",
            Some("bob"),
            Some(json!({ "message": "m", "file": format!("https://files/{}", "a".repeat(2_100)) })),
        )
        .await;
    is_error_json(&reply, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.body["message"],
        "file must be at most 2048 characters"
    );
    // Found by the fuzzer: an inline file without a configured file store
    // was a 503 "Payment provider unavailable"; it is the client's to fix.
    let reply = app
        .request(
            Method::PUT,
            "/api/v1/order/deliver-order/long-2",
            Some("bob"),
            Some(json!({ "message": "m", "file": "data:text/plain;base64,aGk=" })),
        )
        .await;
    is_error_json(&reply, StatusCode::BAD_REQUEST);
    assert!(
        reply.body["message"]
            .as_str()
            .unwrap()
            .contains("no file store"),
        "{}",
        reply.body
    );

    let count = app
        .db
        .collection::<bson::Document>("orders")
        .count_documents(bson::doc! {})
        .await
        .unwrap();
    assert_eq!(count, 1, "only the valid order was stored");
    app.shutdown().await;
}

#[tokio::test]
async fn queries_paths_and_methods_are_checked_on_every_route() {
    let app = spawn_app().await;
    // A repeated query parameter is 400 everywhere, with or without a query
    // of its own (the old HPP).
    for path in [
        "/api/v1/order/buyer/buyer-alice?limit=1&limit=2",
        "/api/v1/order/seller/seller-alice?cursor=0a&cursor=0b",
        "/api/v1/order/notification/alice?limit=5&limit=5",
        "/api/v1/order/some-order?x=1&x=2",
    ] {
        let reply = app.send(authed(&app, Method::GET, path)).await;
        is_error_json(&reply, StatusCode::BAD_REQUEST);
    }
    for path in [
        "/health/live?a=1&a=2",
        "/metrics?x&x",
        "/webhooks/flutterwave?a=&a=",
    ] {
        let method = if path.starts_with("/webhooks") {
            Method::POST
        } else {
            Method::GET
        };
        let reply = app
            .send(app.http.request(method, format!("{}{path}", app.address)))
            .await;
        is_error_json(&reply, StatusCode::BAD_REQUEST);
    }
    let single = app
        .send(authed(
            &app,
            Method::GET,
            "/api/v1/order/buyer/buyer-alice?limit=1&cursor=0a",
        ))
        .await;
    assert_eq!(single.status, StatusCode::OK);

    // A path segment that is not UTF-8 once decoded: 400, JSON.
    let reply = app
        .send(authed(&app, Method::GET, "/api/v1/order/%FF%FE"))
        .await;
    is_error_json(&reply, StatusCode::BAD_REQUEST);

    // A known path with another method: 405, JSON, with Allow.
    let reply = app
        .send(authed(&app, Method::DELETE, "/api/v1/order/some-order"))
        .await;
    is_error_json(&reply, StatusCode::METHOD_NOT_ALLOWED);
    assert!(reply.headers.get("allow").is_some());
    let reply = app
        .send(
            app.http
                .get(format!("{}/webhooks/flutterwave", app.address)),
        )
        .await;
    is_error_json(&reply, StatusCode::METHOD_NOT_ALLOWED);
    app.shutdown().await;
}

#[tokio::test]
async fn responses_carry_security_headers_and_cors_answers_only_the_gateway() {
    let app = spawn_app_with(Options {
        extra_env: vec![("API_GATEWAY_URL", "https://gateway.example".into())],
        ..Options::default()
    })
    .await;
    for reply in [
        app.send(app.http.get(format!("{}/health/live", app.address)))
            .await,
        app.send(app.http.get(format!("{}/nowhere", app.address)))
            .await,
        app.get("alice", "no-such-order").await,
    ] {
        for (name, value) in order_service::http::limits::SECURITY_HEADERS {
            assert_eq!(
                reply.headers.get(*name).map(|v| v.to_str().unwrap()),
                Some(*value),
                "{name}"
            );
        }
    }
    let preflight = |origin: &'static str| {
        app.http
            .request(
                Method::OPTIONS,
                format!("{}/api/v1/order/some-order", app.address),
            )
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header(
                "access-control-request-headers",
                "gatewaytoken,authorization",
            )
            .send()
    };
    let gateway = preflight("https://gateway.example").await.unwrap();
    assert_eq!(
        gateway.headers()["access-control-allow-origin"],
        "https://gateway.example"
    );
    assert_eq!(
        gateway.headers()["access-control-allow-credentials"],
        "true"
    );
    // Another origin is told the gateway's: the browser refuses the
    // mismatch, so the page gets nothing.
    let evil = preflight("https://evil.example").await.unwrap();
    assert_eq!(
        evil.headers()["access-control-allow-origin"],
        "https://gateway.example"
    );
    let simple = app
        .send(
            app.http
                .get(format!("{}/health/live", app.address))
                .header("origin", "https://evil.example"),
        )
        .await;
    assert_eq!(
        simple.headers["access-control-allow-origin"],
        "https://gateway.example"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_request_that_runs_too_long_gets_503_with_the_json_error() {
    let app = spawn_app_with(Options {
        extra_env: vec![
            ("REQUEST_TIMEOUT_MS", "2000".into()),
            ("FLUTTERWAVE_TIMEOUT_MS", "10000".into()),
        ],
        ..Options::default()
    })
    .await;
    let order = app.new_order("slow-1", "alice", "bob", 10.0).await;
    let transaction = app.payment_for(&order);
    app.sim.sim().set_faults(flutterwave_sim::Faults {
        hang: true,
        ..Default::default()
    });
    let started = Instant::now();
    let reply = app
        .verify(
            "alice",
            transaction,
            order["flutterwave"]["txRef"].as_str().unwrap(),
        )
        .await;
    is_error_json(&reply, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body["message"], "Request timed out");
    assert_eq!(reply.headers["retry-after"], "1");
    assert!(started.elapsed() < Duration::from_secs(10));
    app.sim.sim().set_faults(flutterwave_sim::Faults::default());
    // Read behind the service's back: a loaded machine may time this out too.
    let stored = app
        .db
        .collection::<bson::Document>("orders")
        .find_one(bson::doc! { "orderId": "slow-1" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.get_str("status").unwrap(), "AWAITING_PAYMENT");
    app.shutdown().await;
}

#[tokio::test]
async fn behind_the_gateway_failed_logins_count_per_client_not_per_gateway() {
    // No TRUSTED_PROXIES: every request arrives from one address, as all
    // do through the gateway.
    let app = spawn_app_with(Options {
        extra_env: vec![("RATE_LIMIT_PER_IP_PER_MIN", "3".into())],
        ..Options::default()
    })
    .await;
    let attempt = |client: &str, gateway: String| {
        app.send(
            app.http
                .get(format!("{}/api/v1/order/x", app.address))
                .header("gatewaytoken", gateway)
                .header("x-forwarded-for", client)
                .bearer_auth("not-a-token"),
        )
    };
    // Through the gateway (its token is valid), its forwarding header names
    // the client: one client's failures do not lock the others out.
    for _ in 0..3 {
        let reply = attempt("203.0.113.7", gateway_token("order")).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    let refused = attempt("203.0.113.7", gateway_token("order")).await;
    is_error_json(&refused, StatusCode::TOO_MANY_REQUESTS);
    let other = attempt("203.0.113.8", gateway_token("order")).await;
    assert_eq!(other.status, StatusCode::UNAUTHORIZED, "{:?}", other.body);
    // Without a valid gateway token the header proves nothing: a new
    // address each time still counts against the sender.
    for n in 0..3 {
        let reply = attempt(&format!("198.51.100.{n}"), "forged".into()).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
    }
    let refused = attempt("198.51.100.99", "forged".into()).await;
    is_error_json(&refused, StatusCode::TOO_MANY_REQUESTS);
    app.shutdown().await;
}

#[tokio::test]
async fn rate_limits_apply_per_user_and_per_ip_with_retry_after() {
    let app = spawn_app_with(Options {
        extra_env: vec![
            ("RATE_LIMIT_PER_USER_PER_MIN", "3".into()),
            ("RATE_LIMIT_PER_IP_PER_MIN", "3".into()),
        ],
        ..Options::default()
    })
    .await;
    // Per user: the fourth request within the minute is refused; another
    // user (same IP, as behind the gateway) is not affected.
    for _ in 0..3 {
        assert_eq!(
            app.get("alice", "no-such-order").await.status,
            StatusCode::NOT_FOUND
        );
    }
    let refused = app.get("ALICE", "no-such-order").await;
    is_error_json(&refused, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    assert_eq!(
        app.get("bob", "no-such-order").await.status,
        StatusCode::NOT_FOUND
    );

    // Per IP: the webhook, the public routes and failed authentications
    // share the client address's quota.
    let webhook = || {
        app.send(
            app.http
                .post(format!("{}/webhooks/flutterwave", app.address))
                .body("{}"),
        )
    };
    assert_eq!(webhook().await.status, StatusCode::UNAUTHORIZED);
    let bad_token = app
        .send(
            app.http
                .get(format!("{}/api/v1/order/x", app.address))
                .header("gatewaytoken", gateway_token("order"))
                .bearer_auth("not-a-token"),
        )
        .await;
    assert_eq!(bad_token.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.send(app.http.get(format!("{}/health/live", app.address)))
            .await
            .status,
        StatusCode::OK
    );
    let refused = webhook().await;
    is_error_json(&refused, StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers.get("retry-after").is_some());
    let refused = app
        .send(
            app.http
                .get(format!("{}/api/v1/order/x", app.address))
                .bearer_auth("still-not-a-token"),
        )
        .await;
    is_error_json(&refused, StatusCode::TOO_MANY_REQUESTS);
    // A valid caller is still served: the user limit applies to them.
    assert_eq!(
        app.get("carol", "no-such-order").await.status,
        StatusCode::NOT_FOUND
    );

    let text = app.state.metrics.render();
    assert!(
        text.contains("http_rate_limited_total{scope=\"user\"} 1"),
        "{text}"
    );
    assert!(text.contains("http_rate_limited_total{scope=\"ip\"} 2"));
    app.shutdown().await;
}

#[tokio::test]
async fn the_openapi_document_is_served() {
    let app = spawn_app().await;
    let reply = app
        .send(
            app.http
                .get(format!("{}/api-docs/openapi.json", app.address)),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(reply.body["paths"]["/api/v1/order/{orderId}"]["get"].is_object());
    assert!(reply.body["components"]["schemas"]["ErrorBody"].is_object());
    app.shutdown().await;
}
