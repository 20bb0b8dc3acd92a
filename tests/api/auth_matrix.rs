//! The auth matrix: every route against every way of getting
//! authentication wrong, each with the status it must answer, and nothing
//! stored changes (orders, notifications, outbox, inbox, idempotency keys
//! compared before and after every single request).

use crate::helpers::*;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// One way of presenting credentials to a `/api/v1/order/**` route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credentials {
    NoGatewayToken,
    /// Signed with a key other than `GATEWAY_JWT_TOKEN`.
    BadGatewayKey,
    /// A valid gateway token for a service that may not call us.
    WrongServiceId,
    NoUserToken,
    Expired,
    /// Signed with a key other than `JWT_TOKEN`.
    WrongSignature,
    AlgNone,
    /// HS512 with the right key: only HS256 is accepted.
    OtherAlgorithm,
    /// Valid tokens of the order's other party (the role the route refuses,
    /// where there is one).
    OtherParty,
    /// Valid tokens of a user who is no party to anything.
    Stranger,
}

use Credentials::*;

const ALL: [Credentials; 10] = [
    NoGatewayToken,
    BadGatewayKey,
    WrongServiceId,
    NoUserToken,
    Expired,
    WrongSignature,
    AlgNone,
    OtherAlgorithm,
    OtherParty,
    Stranger,
];

/// What a route must answer to one kind of caller.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Status(StatusCode),
    /// 200 with an empty list under this key: lists show only one's own.
    EmptyList(&'static str),
    /// Not run: the caller is allowed, and the route would change state.
    Allowed,
}

const FORBIDDEN: Expect = Expect::Status(StatusCode::FORBIDDEN);

struct Route {
    method: Method,
    path: String,
    body: Option<Value>,
    /// The user whose valid tokens count as "the other party".
    other_party: &'static str,
    other: Expect,
    stranger: Expect,
}

fn b64(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn signed(alg: Algorithm, key: &str, claims: Value) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .expect("token")
}

fn user_claims(username: &str) -> Value {
    json!({ "id": 7, "username": username, "email": format!("{username}@example.com"), "iat": now() })
}

/// The (gatewaytoken, bearer) pair presented for `credentials`.
fn tokens(credentials: Credentials, other_party: &str) -> (Option<String>, Option<String>) {
    let gateway = Some(gateway_token("order"));
    let user = |name: &str| Some(user_token(name));
    match credentials {
        NoGatewayToken => (None, user("alice")),
        BadGatewayKey => (
            Some(signed(
                Algorithm::HS256,
                "not-the-gateway-secret",
                json!({ "id": "order", "iat": now() }),
            )),
            user("alice"),
        ),
        WrongServiceId => (Some(gateway_token("payments")), user("alice")),
        NoUserToken => (gateway, None),
        Expired => {
            let mut claims = user_claims("alice");
            claims["exp"] = json!(now() - 3600);
            (gateway, Some(signed(Algorithm::HS256, JWT_SECRET, claims)))
        }
        WrongSignature => (
            gateway,
            Some(signed(
                Algorithm::HS256,
                "not-the-jwt-secret",
                user_claims("alice"),
            )),
        ),
        AlgNone => (
            gateway,
            Some(format!(
                "{}.{}.",
                b64(&json!({ "alg": "none", "typ": "JWT" })),
                b64(&user_claims("alice"))
            )),
        ),
        OtherAlgorithm => (
            gateway,
            Some(signed(Algorithm::HS512, JWT_SECRET, user_claims("alice"))),
        ),
        OtherParty => (gateway, user(other_party)),
        Stranger => (gateway, user("mallory")),
    }
}

fn expected(route: &Route, credentials: Credentials) -> Expect {
    match credentials {
        NoGatewayToken | BadGatewayKey | WrongServiceId => FORBIDDEN,
        NoUserToken | Expired | WrongSignature | AlgNone | OtherAlgorithm => {
            Expect::Status(StatusCode::UNAUTHORIZED)
        }
        OtherParty => route.other,
        Stranger => route.stranger,
    }
}

/// Everything a request could change. Outbox records are compared by
/// identity only: the relay marks them published in the background.
async fn snapshot(app: &TestApp) -> Value {
    let mut all = serde_json::Map::new();
    for (collection, whole) in [
        ("orders", true),
        ("notifications", true),
        ("inbox", true),
        ("idempotency_keys", true),
        ("payment_checks", true),
        ("outbox", false),
    ] {
        let mut cursor = app
            .db
            .collection::<bson::Document>(collection)
            .find(bson::doc! {})
            .sort(bson::doc! { "_id": 1 })
            .await
            .expect("find");
        let mut docs = Vec::new();
        while cursor.advance().await.expect("cursor") {
            let doc = cursor.deserialize_current().expect("doc");
            docs.push(if whole {
                serde_json::to_value(&doc).expect("json")
            } else {
                json!(doc.get("_id").map(|id| id.to_string()))
            });
        }
        all.insert(collection.to_string(), Value::Array(docs));
    }
    Value::Object(all)
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Option<&Value>,
) -> Reply {
    let mut request = app.http.request(method, format!("{}{path}", app.address));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    app.send(request).await
}

#[tokio::test]
async fn every_route_refuses_every_wrong_credential_and_changes_nothing() {
    let app = spawn_app().await;
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    // alice buys from bob: one order paid and with an extension pending
    // (every later step is possible), one still unpaid.
    let paid_id = format!("matrix-paid-{run}");
    let paid = app.new_order(&paid_id, "alice", "bob", 500.0).await;
    app.pay("alice", &paid).await;
    assert_eq!(
        app.request_extension("bob", &paid_id).await.status,
        StatusCode::OK
    );
    let unpaid_id = format!("matrix-unpaid-{run}");
    let unpaid = app.new_order(&unpaid_id, "alice", "bob", 700.0).await;
    let tx_ref = unpaid["flutterwave"]["txRef"].as_str().unwrap().to_string();
    let transaction = app.payment_for(&unpaid);
    let notes = app.notifications("bob", "bob").await;
    let note_id = notes.body["notifications"][0]["_id"]
        .as_str()
        .expect("bob was notified of the payment")
        .to_string();
    // Let the relay publish what the set-up staged.
    for _ in 0..100 {
        let stats = app.state.outbox.stats().await.expect("stats");
        if stats.pending == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let status = |s: StatusCode| Expect::Status(s);
    let routes = vec![
        Route {
            method: Method::POST,
            path: "/api/v1/order".into(),
            body: Some(order_body(
                &format!("matrix-new-{run}"),
                "alice",
                "bob",
                10.0,
            )),
            other_party: "bob",
            other: FORBIDDEN,
            stranger: FORBIDDEN,
        },
        Route {
            method: Method::POST,
            path: "/api/v1/order/".into(),
            body: Some(order_body(
                &format!("matrix-slash-{run}"),
                "alice",
                "bob",
                10.0,
            )),
            other_party: "bob",
            other: FORBIDDEN,
            stranger: FORBIDDEN,
        },
        Route {
            method: Method::GET,
            path: format!("/api/v1/order/{paid_id}"),
            body: None,
            other_party: "bob",
            other: status(StatusCode::OK),
            stranger: FORBIDDEN,
        },
        Route {
            method: Method::GET,
            path: "/api/v1/order/seller/seller-bob".into(),
            body: None,
            other_party: "alice",
            other: Expect::EmptyList("orders"),
            stranger: Expect::EmptyList("orders"),
        },
        Route {
            method: Method::GET,
            path: "/api/v1/order/buyer/buyer-alice".into(),
            body: None,
            other_party: "bob",
            other: Expect::EmptyList("orders"),
            stranger: Expect::EmptyList("orders"),
        },
        Route {
            method: Method::PUT,
            path: format!("/api/v1/order/verify/{transaction}/{tx_ref}"),
            body: None,
            other_party: "bob",
            other: FORBIDDEN,
            stranger: FORBIDDEN,
        },
        Route {
            method: Method::POST,
            path: format!("/api/v1/order/{unpaid_id}/checkout"),
            body: None,
            other_party: "bob",
            other: FORBIDDEN,
            stranger: FORBIDDEN,
        },
        Route {
            method: Method::PUT,
            path: format!("/api/v1/order/cancel/{paid_id}"),
            body: Some(json!({ "orderData": { "price": 1 } })),
            other_party: "bob",
            other: Expect::Allowed,
            stranger: FORBIDDEN,
        },
        Route {
            method: Method::PUT,
            path: format!("/api/v1/order/extension/{paid_id}"),
            body: Some(
                json!({ "originalDate": "2026-12-10", "newDate": "2026-12-20", "days": 10, "reason": "More" }),
            ),
            other_party: "alice",
            other: FORBIDDEN,
            stranger: FORBIDDEN,
        },
        Route {
            method: Method::PUT,
            path: format!("/api/v1/order/gig/approve/{paid_id}"),
            body: None,
            other_party: "bob",
            other: FORBIDDEN,
            stranger: FORBIDDEN,
        },
        Route {
            method: Method::PUT,
            path: format!("/api/v1/order/deliver-order/{paid_id}"),
            body: Some(json!({ "message": "Here it is" })),
            other_party: "alice",
            other: FORBIDDEN,
            stranger: FORBIDDEN,
        },
        Route {
            method: Method::PUT,
            path: format!("/api/v1/order/approve-order/{paid_id}"),
            body: None,
            other_party: "bob",
            other: FORBIDDEN,
            stranger: FORBIDDEN,
        },
        Route {
            method: Method::GET,
            path: "/api/v1/order/notification/bob".into(),
            body: None,
            other_party: "alice",
            other: FORBIDDEN,
            stranger: FORBIDDEN,
        },
        Route {
            method: Method::PUT,
            path: "/api/v1/order/notification/mark-as-read".into(),
            body: Some(json!({ "notificationId": note_id })),
            other_party: "alice",
            other: FORBIDDEN,
            stranger: FORBIDDEN,
        },
    ];

    let before = snapshot(&app).await;
    let mut checked = 0;
    for route in &routes {
        for credentials in ALL {
            let expect = expected(route, credentials);
            if matches!(expect, Expect::Allowed) {
                continue;
            }
            let (gateway, bearer) = tokens(credentials, route.other_party);
            let mut headers = Vec::new();
            if let Some(gateway) = gateway {
                headers.push(("gatewaytoken", gateway));
            }
            if let Some(bearer) = bearer {
                headers.push(("authorization", format!("Bearer {bearer}")));
            }
            let reply = send(
                &app,
                route.method.clone(),
                &route.path,
                &headers,
                route.body.as_ref(),
            )
            .await;
            let case = format!("{} {} as {credentials:?}", route.method, route.path);
            match expect {
                Expect::Status(status) => {
                    assert_eq!(reply.status, status, "{case}: {}", reply.body);
                    if !status.is_success() {
                        assert_eq!(reply.body["status"], "error", "{case}");
                        assert_eq!(reply.body["statusCode"], status.as_u16(), "{case}");
                    }
                }
                Expect::EmptyList(key) => {
                    assert_eq!(reply.status, StatusCode::OK, "{case}: {}", reply.body);
                    assert_eq!(reply.body[key], json!([]), "{case}");
                }
                Expect::Allowed => unreachable!(),
            }
            assert_eq!(snapshot(&app).await, before, "{case} changed stored state");
            checked += 1;
        }
    }
    // 14 routes x 10 credentials, less the one allowed mutation.
    assert_eq!(checked, 14 * ALL.len() - 1);
    app.shutdown().await;
}

#[tokio::test]
async fn webhooks_admin_and_public_routes_have_their_own_credentials() {
    let app = spawn_app().await;
    let order = app.new_order("matrix-webhook", "alice", "bob", 100.0).await;
    let transaction = app.payment_for(&order);
    let event = json!({
        "event": "charge.completed",
        "data": { "id": transaction, "tx_ref": order["flutterwave"]["txRef"], "status": "successful" }
    });
    let body = event.to_string();
    let before = snapshot(&app).await;

    let user_headers = || {
        vec![
            ("gatewaytoken", gateway_token("order")),
            ("authorization", format!("Bearer {}", user_token("alice"))),
        ]
    };
    let webhook_cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("no hash or signature", vec![]),
        (
            "wrong verif-hash",
            vec![("verif-hash", "not-the-hash".into())],
        ),
        (
            "verif-hash with a suffix",
            vec![("verif-hash", format!("{WEBHOOK_HASH}x"))],
        ),
        (
            "signature with the wrong key",
            vec![("flutterwave-signature", sign("not-the-hash", &body))],
        ),
        (
            "signature of another body",
            vec![("flutterwave-signature", sign(WEBHOOK_HASH, "{}"))],
        ),
        ("gateway and user tokens instead", user_headers()),
    ];
    for path in [
        "/webhooks/flutterwave",
        "/api/v1/order/webhooks/flutterwave",
    ] {
        for (case, headers) in &webhook_cases {
            let mut request = app
                .http
                .post(format!("{}{path}", app.address))
                .header("content-type", "application/json")
                .body(body.clone());
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            let reply = app.send(request).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{path} {case}: {}",
                reply.body
            );
            assert_eq!(reply.body["status"], "error");
            assert_eq!(snapshot(&app).await, before, "{path} {case} changed state");
        }
    }

    let admin_cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("no admin token", vec![]),
        (
            "wrong admin token",
            vec![("x-admin-token", "test-admin-x".into())],
        ),
        ("user tokens instead", user_headers()),
    ];
    for (method, path) in [
        (Method::GET, "/admin/outbox/parked"),
        (Method::POST, "/admin/outbox/parked/some-id/replay"),
        (Method::POST, "/admin/outbox/replay-parked"),
    ] {
        for (case, headers) in &admin_cases {
            let reply = send(&app, method.clone(), path, headers, None).await;
            assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path} {case}");
            assert_eq!(reply.body["status"], "error");
            assert_eq!(snapshot(&app).await, before, "{path} {case} changed state");
        }
    }

    // Public routes answer anyone, whatever (bad) credentials come along.
    for path in [
        "/order-health",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/api-docs/openapi.json",
    ] {
        for headers in [
            vec![],
            vec![
                ("gatewaytoken", "garbage".to_string()),
                ("authorization", "Bearer garbage".to_string()),
                ("x-admin-token", "garbage".to_string()),
            ],
        ] {
            let reply = send(&app, Method::GET, path, &headers, None).await;
            assert!(
                reply.status == StatusCode::OK
                    || (path == "/health/ready" && reply.status == StatusCode::SERVICE_UNAVAILABLE),
                "{path}: {}",
                reply.status
            );
        }
    }
    assert_eq!(snapshot(&app).await, before);
    app.shutdown().await;
}

fn sign(key: &str, body: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("key");
    mac.update(body.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}
