//! Tokens, secrets and card data never reach the logs: every event, at
//! TRACE and from every crate, is captured while requests carry planted
//! values (valid and forged tokens, the webhook hash and signature, a card
//! number in a webhook body, the admin token), then the capture is searched
//! for each of them.

use crate::helpers::*;
use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// A `MakeWriter` appending to a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn sign(key: &str, body: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("key");
    mac.update(body.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

// The default test runtime is current-thread: the app's tasks run on this
// thread and log through the subscriber set here.
#[tokio::test]
async fn planted_secrets_never_appear_in_the_logs() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = spawn_app().await;
    let buyer_token = user_token("alice");
    let gateway = gateway_token("order");
    let forged_bearer = "planted.forged-bearer-token.d3adb33f";
    let card = "5531886652142950";
    let cvv = "564";

    // A whole payment with valid tokens: create, verify (the service sends
    // its Flutterwave key to the simulator), a signed webhook carrying card
    // data, then the same with forged and wrong credentials.
    let order = app.new_order("logs-1", "alice", "bob", 100.0).await;
    let transaction = app.payment_for(&order);
    app.pay("alice", &order).await;
    let tx_ref = order["flutterwave"]["txRef"].as_str().unwrap();
    let event = json!({
        "event": "charge.completed",
        "data": {
            "id": transaction, "tx_ref": tx_ref, "status": "successful",
            "card": { "first_6digits": &card[..6], "last_4digits": &card[12..], "number": card, "cvv": cvv, "expiry": "09/32" },
        }
    })
    .to_string();
    let signature = sign(WEBHOOK_HASH, &event);
    for headers in [
        vec![("verif-hash", WEBHOOK_HASH.to_string())],
        vec![("flutterwave-signature", signature.clone())],
        vec![("verif-hash", "planted-wrong-hash".to_string())],
    ] {
        let mut request = app
            .http
            .post(format!("{}/webhooks/flutterwave", app.address))
            .header("content-type", "application/json")
            .body(event.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let reply = app.send(request).await;
        assert!(
            [StatusCode::OK, StatusCode::UNAUTHORIZED].contains(&reply.status),
            "{}",
            reply.body
        );
    }
    let forged = app
        .send(
            app.http
                .get(format!("{}/api/v1/order/logs-1", app.address))
                .header("gatewaytoken", &gateway)
                .header("authorization", format!("Bearer {forged_bearer}")),
        )
        .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    let bad_json = app
        .send(
            app.http
                .post(format!("{}/api/v1/order", app.address))
                .header("gatewaytoken", &gateway)
                .bearer_auth(&buyer_token)
                .header("content-type", "application/json")
                .body(format!("{{\"cardNumber\": \"{card}\", oops")),
        )
        .await;
    assert_eq!(bad_json.status, StatusCode::BAD_REQUEST);
    let admin = app
        .send(
            app.http
                .get(format!("{}/admin/outbox/parked", app.address))
                .header("x-admin-token", "test-admin"),
        )
        .await;
    assert_eq!(admin.status, StatusCode::OK);
    // A failure inside the service is logged with its cause: still no secret.
    app.sim.sim().set_faults(flutterwave_sim::Faults {
        fail_all_status: Some(500),
        ..Default::default()
    });
    let other = app.new_order("logs-2", "alice", "bob", 100.0).await;
    let failed = app
        .request(
            Method::POST,
            "/api/v1/order/logs-2/checkout",
            Some("alice"),
            None,
        )
        .await;
    assert!(failed.status.is_server_error(), "{}", failed.body);
    drop(other);
    app.shutdown().await;

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).to_string();
    assert!(
        logs.contains("order service listening") && logs.contains("finished processing request"),
        "the capture saw the service's own lines: {}",
        &logs[..logs.len().min(3000)]
    );
    let signature_of = |token: &str| token.rsplit('.').next().unwrap().to_string();
    for (what, planted) in [
        ("the user token", buyer_token.clone()),
        ("the user token's signature", signature_of(&buyer_token)),
        ("the gateway token", gateway.clone()),
        ("the gateway token's signature", signature_of(&gateway)),
        ("a forged bearer token", forged_bearer.to_string()),
        ("the webhook hash", WEBHOOK_HASH.to_string()),
        ("a wrong webhook hash", "planted-wrong-hash".to_string()),
        ("the webhook signature", signature),
        ("the card number", card.to_string()),
        ("the card number's middle digits", card[6..12].to_string()),
        ("the admin token", "test-admin".to_string()),
        ("the JWT secret", JWT_SECRET.to_string()),
        ("the gateway secret", GATEWAY_SECRET.to_string()),
        ("the Flutterwave secret key", FLW_KEY.to_string()),
    ] {
        if let Some(at) = logs.find(&planted) {
            let line = logs[..at].rsplit('\n').next().unwrap_or_default();
            panic!(
                "{what} appears in the logs: ...{}",
                &line[line.len().saturating_sub(200)..]
            );
        }
    }
}
