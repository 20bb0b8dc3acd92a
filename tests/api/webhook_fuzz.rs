//! Property test of the webhook route itself: arbitrary bodies and headers
//! (none, the right or a wrong hash, a valid, forged or garbage signature)
//! go through the whole router in-process (`tower::ServiceExt::oneshot`).
//! The route never panics and never answers 5xx; without a valid hash or
//! signature it is always 401, and a valid one gets 200 for an event and
//! 400 for anything else, each error the JSON error. `PROPTEST_CASES`
//! (default 64 here) sets how many cases run.

use crate::helpers::*;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tower::ServiceExt;

#[derive(Debug, Clone)]
enum Auth {
    Nothing,
    Hash,
    WrongHash(Vec<u8>),
    Signature,
    SignatureOfOtherBody,
    GarbageSignature(Vec<u8>),
}

fn sign(body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_HASH.as_bytes()).expect("key");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    // Visible ASCII and spaces: what an HTTP header value may carry.
    proptest::collection::vec(0x20u8..0x7f, 0..80)
}

fn auth() -> impl Strategy<Value = Auth> {
    prop_oneof![
        Just(Auth::Nothing),
        Just(Auth::Hash),
        header_bytes().prop_map(Auth::WrongHash),
        Just(Auth::Signature),
        Just(Auth::SignatureOfOtherBody),
        header_bytes().prop_map(Auth::GarbageSignature),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..400),
        "[\\[\\]{}\":,0-9a-z_.\\\\ -]{0,200}".prop_map(String::into_bytes),
        (
            "[a-z.]{0,24}",
            any::<i64>(),
            proptest::option::of("[A-Za-z0-9-]{0,40}")
        )
            .prop_map(|(event, id, tx_ref)| {
                serde_json::json!({ "event": event, "data": { "id": id, "tx_ref": tx_ref } })
                    .to_string()
                    .into_bytes()
            }),
        (1usize..100)
            .prop_map(|n| format!("{}{}", "{\"a\":".repeat(n), "}".repeat(n)).into_bytes()),
    ]
}

#[test]
fn the_webhook_route_answers_any_request_without_panicking_or_5xx() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let app = runtime.block_on(spawn_app());
    let router = order_service::http::router(app.state.clone());
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(
        &(
            auth(),
            body(),
            prop_oneof![
                Just("/webhooks/flutterwave"),
                Just("/api/v1/order/webhooks/flutterwave")
            ],
            proptest::option::of("[ -~]{0,40}"),
        ),
        |(auth, body, path, content_type)| {
            let mut request = Request::post(path);
            let valid = match &auth {
                Auth::Nothing => false,
                Auth::Hash => {
                    request = request.header("verif-hash", WEBHOOK_HASH);
                    true
                }
                Auth::WrongHash(bytes) => {
                    request = request.header("verif-hash", bytes.as_slice());
                    bytes == WEBHOOK_HASH.as_bytes()
                }
                Auth::Signature => {
                    request = request.header("flutterwave-signature", sign(&body));
                    true
                }
                Auth::SignatureOfOtherBody => {
                    let mut other = body.clone();
                    other.push(b' ');
                    request = request.header("flutterwave-signature", sign(&other));
                    false
                }
                Auth::GarbageSignature(bytes) => {
                    request = request.header("flutterwave-signature", bytes.as_slice());
                    *bytes == sign(&body).into_bytes()
                }
            };
            if let Some(content_type) = &content_type {
                request = request.header("content-type", content_type.as_str());
            }
            let request = request.body(Body::from(body.clone())).expect("request");
            let (status, bytes) = runtime.block_on(async {
                let response = router.clone().oneshot(request).await.expect("infallible");
                let status = response.status();
                let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .expect("body");
                (status, bytes)
            });
            prop_assert!(!status.is_server_error(), "{status}: {bytes:?}");
            let json: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON body");
            if !valid {
                prop_assert_eq!(status, StatusCode::UNAUTHORIZED);
            } else if order_service::webhooks::flutterwave::parse(&body).is_ok() {
                prop_assert_eq!(status, StatusCode::OK);
                prop_assert_eq!(&json["status"], "success");
            } else {
                prop_assert_eq!(status, StatusCode::BAD_REQUEST);
            }
            if status != StatusCode::OK {
                prop_assert_eq!(&json["status"], "error");
                prop_assert_eq!(
                    json["statusCode"].as_u64(),
                    Some(u64::from(status.as_u16()))
                );
            }
            Ok(())
        },
    );
    runtime.block_on(app.shutdown());
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
