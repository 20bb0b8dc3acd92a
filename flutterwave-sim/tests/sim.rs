//! End-to-end tests: the simulator on port 0, driven with reqwest like the Order Service drives Flutterwave.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use flutterwave_sim::{
    Faults, NewTransaction, Operation, PayOptions, SignMode, SimError, SimHandle, Simulator,
    WebhookOptions,
};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const KEY: &str = "FLWSECK_TEST-unit";
const HASH: &str = "test-webhook-hash";

async fn start() -> SimHandle {
    Simulator::new(KEY)
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn send(req: reqwest::RequestBuilder) -> (u16, HeaderMap, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, headers, body)
}

async fn get(h: &SimHandle, path: &str) -> (u16, HeaderMap, Value) {
    send(
        client()
            .get(format!("{}{path}", h.base_url()))
            .bearer_auth(KEY),
    )
    .await
}

async fn post(h: &SimHandle, path: &str, body: Value) -> (u16, HeaderMap, Value) {
    send(
        client()
            .post(format!("{}{path}", h.base_url()))
            .bearer_auth(KEY)
            .json(&body),
    )
    .await
}

fn paid(h: &SimHandle, tx_ref: &str, amount: f64) -> u64 {
    h.sim()
        .add_transaction(NewTransaction {
            tx_ref: tx_ref.into(),
            amount,
            ..Default::default()
        })
        .id
}

#[derive(Debug, Clone)]
struct Hit {
    verif_hash: Option<String>,
    signature: Option<String>,
    signature_valid: bool,
    body: Value,
}

/// A stand-in for the Order Service webhook endpoint that checks signatures itself.
async fn receiver() -> (String, Arc<Mutex<Vec<Hit>>>, tokio::task::JoinHandle<()>) {
    let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
    let store = hits.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let store = store.clone();
            async move {
                let header = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .map(String::from)
                };
                let mut mac = Hmac::<Sha256>::new_from_slice(HASH.as_bytes()).unwrap();
                mac.update(&body);
                let expected =
                    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
                let hit = Hit {
                    verif_hash: header("verif-hash"),
                    signature: header("flutterwave-signature"),
                    signature_valid: header("flutterwave-signature").as_deref()
                        == Some(expected.as_str()),
                    body: serde_json::from_slice(&body).unwrap(),
                };
                let hash_ok = hit.verif_hash.as_deref().is_none_or(|h| h == HASH);
                let sig_ok = hit.signature.is_none() || hit.signature_valid;
                store.lock().unwrap().push(hit);
                if hash_ok && sig_ok {
                    StatusCode::OK
                } else {
                    StatusCode::UNAUTHORIZED
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, hits, task)
}

#[tokio::test]
async fn verify_found_and_unknown() {
    let h = start().await;
    let id = paid(&h, "order-1", 2500.0);
    let (status, _, body) = get(&h, &format!("/transactions/{id}/verify")).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "success");
    assert_eq!(body["message"], "Transaction fetched successfully");
    let d = &body["data"];
    assert_eq!(d["id"], id);
    assert_eq!(d["tx_ref"], "order-1");
    assert_eq!(d["amount"], 2500);
    assert_eq!(d["charged_amount"], 2500);
    assert_eq!(d["app_fee"], 35);
    assert_eq!(d["amount_settled"], 2465);
    assert_eq!(d["currency"], "NGN");
    assert_eq!(d["status"], "successful");
    assert_eq!(d["processor_response"], "Approved");
    assert_eq!(d["customer"]["email"], "customer@example.com");
    assert!(d["meta"].is_null());
    assert!(d["flw_ref"].as_str().unwrap().starts_with("FLW-"));
    assert!(
        chrono::DateTime::parse_from_rfc3339(d["created_at"].as_str().unwrap()).is_ok(),
        "created_at must be ISO 8601"
    );

    for path in ["/transactions/999/verify", "/transactions/abc/verify"] {
        let (status, _, body) = get(&h, path).await;
        assert_eq!(status, 400);
        assert_eq!(
            body,
            json!({"status":"error","message":"No transaction was found for this id","data":null})
        );
    }
    assert_eq!(h.sim().calls().verify, 3);
}

#[tokio::test]
async fn verify_by_reference_prefers_latest_successful() {
    let h = start().await;
    let ok = paid(&h, "order-2", 100.0);
    h.sim().add_transaction(NewTransaction {
        tx_ref: "order-2".into(),
        status: "failed".into(),
        ..Default::default()
    });
    let (status, _, body) = get(&h, "/transactions/verify_by_reference?tx_ref=order-2").await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["id"], ok);

    let (status, _, body) = get(&h, "/transactions/verify_by_reference?tx_ref=nope").await;
    assert_eq!(status, 400);
    assert_eq!(body["message"], "No transaction was found for this id");
    assert_eq!(h.sim().calls().verify_by_reference, 2);
}

#[tokio::test]
async fn missing_or_wrong_key_is_401() {
    let h = start().await;
    let id = paid(&h, "order-3", 100.0);
    let url = format!("{}/transactions/{id}/verify", h.base_url());
    let (status, _, body) = send(client().get(&url)).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"status":"error","message":"Invalid authorization key","data":null})
    );
    let (status, _, _) = send(client().get(&url).bearer_auth("FLWSECK_TEST-wrong")).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn full_refund_is_applied_recorded_and_listed() {
    let h = start().await;
    let id = paid(&h, "order-4", 5000.0);
    let (status, _, body) = post(&h, &format!("/transactions/{id}/refund"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "Transaction refund initiated");
    let d = &body["data"];
    assert_eq!(d["tx_id"], id);
    assert_eq!(d["amount_refunded"], 5000);
    assert_eq!(d["status"], "completed");
    assert_eq!(d["destination"], "payment_source");
    assert_eq!(d["meta"]["source"], "availablebalance");

    let refunds = h.sim().refunds();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].amount_refunded, 5000.0);
    let refund_id = refunds[0].id;
    assert_eq!(d["id"], refund_id);

    let (status, _, body) = get(&h, &format!("/refunds/{refund_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["tx_id"], id);

    let (status, _, body) = get(&h, &format!("/refunds?tx_id={id}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["message"], "Refunds fetched");
    assert_eq!(body["meta"]["page_info"]["total"], 1);
    assert_eq!(body["data"][0]["id"], refund_id);
    let (_, _, body) = get(&h, "/refunds?tx_id=42").await;
    assert_eq!(body["data"], json!([]));

    // Nothing left to refund.
    let (status, _, body) = post(&h, &format!("/transactions/{id}/refund"), json!({})).await;
    assert_eq!(status, 400);
    assert_eq!(body["status"], "error");
}

#[tokio::test]
async fn partial_refunds_and_over_refund_refused() {
    let h = start().await;
    let id = paid(&h, "order-5", 1000.0);
    let path = format!("/transactions/{id}/refund");
    let (status, _, _) = post(&h, &path, json!({"amount": 300, "comments": "partial"})).await;
    assert_eq!(status, 200);
    let (status, _, body) = post(&h, &path, json!({"amount": 701})).await;
    assert_eq!(status, 400);
    assert_eq!(body["status"], "error");
    assert!(body["data"].is_null());
    let (status, _, body) = post(&h, &path, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["amount_refunded"], 700);
    assert_eq!(h.sim().refunds().len(), 2);
    assert_eq!(h.sim().refunds()[0].comments.as_deref(), Some("partial"));

    let failed = h
        .sim()
        .add_transaction(NewTransaction {
            status: "failed".into(),
            ..Default::default()
        })
        .id;
    let (status, _, _) = post(&h, &format!("/transactions/{failed}/refund"), json!({})).await;
    assert_eq!(status, 400);
    let (status, _, _) = post(&h, "/transactions/77/refund", json!({})).await;
    assert_eq!(status, 400);
    assert_eq!(h.sim().refunds().len(), 2);
    assert_eq!(h.sim().calls().refund, 5);
}

#[tokio::test]
async fn fail_next_then_success() {
    let h = start().await;
    let id = paid(&h, "order-6", 100.0);
    h.sim().set_faults(Faults {
        fail_next: 2,
        fail_status: 503,
        ..Default::default()
    });
    let path = format!("/transactions/{id}/verify");
    for _ in 0..2 {
        let (status, _, body) = get(&h, &path).await;
        assert_eq!(status, 503);
        assert_eq!(body["status"], "error");
        assert!(body["data"].is_null());
    }
    let (status, _, _) = get(&h, &path).await;
    assert_eq!(status, 200);
    assert_eq!(h.sim().calls().verify, 3);
    assert_eq!(h.sim().calls().total, 3);
    assert_eq!(h.sim().faults().fail_next, 0);
}

#[tokio::test]
async fn rate_limit_429_carries_retry_after() {
    let h = start().await;
    let id = paid(&h, "order-7", 100.0);
    h.sim().set_faults(Faults {
        fail_next: 1,
        fail_status: 429,
        retry_after_secs: Some(7),
        ..Default::default()
    });
    let (status, headers, body) = get(&h, &format!("/transactions/{id}/verify")).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "7");
    assert_eq!(body["status"], "error");
}

#[tokio::test]
async fn fail_all_until_cleared_and_only_filter() {
    let h = start().await;
    let id = paid(&h, "order-8", 100.0);
    h.sim().set_faults(Faults {
        fail_all_status: Some(500),
        only: Some(Operation::Refund),
        ..Default::default()
    });
    for _ in 0..3 {
        let (status, _, _) = post(&h, &format!("/transactions/{id}/refund"), json!({})).await;
        assert_eq!(status, 500);
    }
    // Other operations are untouched by a refund-only fault.
    let (status, _, _) = get(&h, &format!("/transactions/{id}/verify")).await;
    assert_eq!(status, 200);
    assert!(h.sim().refunds().is_empty());

    h.sim().set_faults(Faults::default());
    let (status, _, _) = post(&h, &format!("/transactions/{id}/refund"), json!({})).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn refund_applied_but_response_dropped() {
    let h = start().await;
    let id = paid(&h, "order-9", 900.0);
    h.sim().set_faults(Faults {
        refund_drop_response_next: 1,
        ..Default::default()
    });
    let err = client()
        .post(format!("{}/transactions/{id}/refund", h.base_url()))
        .bearer_auth(KEY)
        .json(&json!({"amount": 400}))
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let refunds = h.sim().refunds();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].amount_refunded, 400.0);

    // The lookup the service does after losing the answer sees it.
    let (_, _, body) = get(&h, &format!("/refunds?tx_id={id}")).await;
    assert_eq!(body["meta"]["page_info"]["total"], 1);
    // The fault was one-shot.
    let (status, _, body) = post(&h, &format!("/transactions/{id}/refund"), json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["amount_refunded"], 500);

    tokio::time::timeout(Duration::from_secs(3), h.shutdown())
        .await
        .expect("shutdown must release the withheld refund answer");
}

#[tokio::test]
async fn the_transaction_list_gives_every_payment_of_a_reference() {
    let h = start().await;
    let first = paid(&h, "order-list", 100.0);
    let second = paid(&h, "order-list", 100.0);
    h.sim().add_transaction(NewTransaction {
        tx_ref: "order-list".into(),
        amount: 100.0,
        status: "failed".into(),
        ..Default::default()
    });
    paid(&h, "another-order", 100.0);
    let (status, _, body) = get(&h, "/transactions?tx_ref=order-list").await;
    assert_eq!(status, 200);
    assert_eq!(body["meta"]["page_info"]["total"], 3);
    assert_eq!(body["data"][0]["id"], first);
    assert_eq!(body["data"][1]["id"], second);
    assert_eq!(body["data"][0]["tx_ref"], "order-list");
    let (_, _, body) = get(&h, "/transactions?tx_ref=order-list&status=successful").await;
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(h.sim().calls().transactions, 2);
}

#[tokio::test]
async fn a_pending_refund_settles_after_its_lookups() {
    let h = start().await;
    let id = paid(&h, "order-9p", 300.0);
    h.sim().set_faults(Faults {
        refund_pending_lookups: 2,
        ..Default::default()
    });
    let (status, _, body) = post(&h, &format!("/transactions/{id}/refund"), json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["status"], "pending");
    let refund = body["data"]["id"].as_u64().unwrap();
    let (_, _, body) = get(&h, &format!("/refunds?tx_id={id}")).await;
    assert_eq!(body["data"][0]["status"], "pending");
    let (_, _, body) = get(&h, &format!("/refunds/{refund}")).await;
    assert_eq!(body["data"]["status"], "completed");
    let (_, _, body) = get(&h, &format!("/refunds?tx_id={id}")).await;
    assert_eq!(body["data"][0]["status"], "completed");
}

#[tokio::test]
async fn a_pending_refund_that_fails_gives_its_amount_back() {
    let h = start().await;
    let id = paid(&h, "order-9f", 300.0);
    h.sim().set_faults(Faults {
        refund_pending_lookups: 1,
        refund_pending_then_fails: true,
        ..Default::default()
    });
    let (_, _, body) = post(&h, &format!("/transactions/{id}/refund"), json!({})).await;
    assert_eq!(body["data"]["status"], "pending");
    let (_, _, body) = get(&h, &format!("/refunds?tx_id={id}")).await;
    assert_eq!(body["data"][0]["status"], "failed");
    h.sim().set_faults(Faults::default());
    let (status, _, body) = post(&h, &format!("/transactions/{id}/refund"), json!({})).await;
    assert_eq!(status, 200, "the whole amount is refundable again: {body}");
    assert_eq!(body["data"]["amount_refunded"], 300);
}

#[tokio::test]
async fn hang_and_latency() {
    let h = start().await;
    let id = paid(&h, "order-10", 100.0);
    let url = format!("{}/transactions/{id}/verify", h.base_url());
    h.sim().set_faults(Faults {
        hang: true,
        ..Default::default()
    });
    let err = client()
        .get(&url)
        .bearer_auth(KEY)
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());

    h.sim().set_faults(Faults {
        latency_ms: 250,
        ..Default::default()
    });
    let started = std::time::Instant::now();
    let (status, _, _) = get(&h, &format!("/transactions/{id}/verify")).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(250));
    tokio::time::timeout(Duration::from_secs(3), h.shutdown())
        .await
        .expect("shutdown must not wait for hung requests");
}

#[tokio::test]
async fn payment_link_paid_via_hosted_page() {
    let h = start().await;
    let (hook_url, hits, _rx) = receiver().await;
    h.sim().set_webhook_target(hook_url, HASH.to_string());

    let (status, _, body) = post(
        &h,
        "/payments",
        json!({
            "tx_ref": "order-11",
            "amount": "1500",
            "currency": "NGN",
            "redirect_url": "http://localhost:3000/orders/11/paid?from=flw",
            "customer": {"email": "buyer@example.com", "name": "Ada Buyer"},
            "customizations": {"title": "GigConnect order"},
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "Hosted Link");
    let link = body["data"]["link"].as_str().unwrap().to_string();
    assert!(link.starts_with(&format!("{}/hosted/pay/", h.base_url())));
    let links = h.sim().payment_links();
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].amount, 1500.0);
    assert_eq!(links[0].customer_name.as_deref(), Some("Ada Buyer"));

    // The browser opens the link: no bearer token.
    let (status, headers, _) = send(client().get(&link)).await;
    assert_eq!(status, 302);
    let location = reqwest::Url::parse(headers["location"].to_str().unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(q["status"], "successful");
    assert_eq!(q["tx_ref"], "order-11");
    assert_eq!(q["from"], "flw");
    let tx_id: u64 = q["transaction_id"].parse().unwrap();
    let tx = h.sim().transaction(tx_id).unwrap();
    assert_eq!((tx.amount, tx.status.as_str()), (1500.0, "successful"));
    assert_eq!(tx.customer_email, "buyer@example.com");

    let got = hits.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body["event"], "charge.completed");
    assert_eq!(got[0].body["data"]["id"], tx_id);

    // A refresh of the paid page redirects again without charging twice.
    let (status, headers, _) = send(client().get(&link)).await;
    assert_eq!(status, 302);
    assert!(
        headers["location"]
            .to_str()
            .unwrap()
            .contains(&format!("transaction_id={tx_id}"))
    );
    assert_eq!(h.sim().transactions().len(), 1);
    assert_eq!(hits.lock().unwrap().len(), 1);
    assert_eq!(h.sim().calls().payments, 1);
    assert_eq!(h.sim().calls().hosted_pay, 2);
}

#[tokio::test]
async fn a_link_stops_taking_payments_when_its_session_ends() {
    let h = start().await;
    let body = |tx_ref: &str, session: Value| {
        json!({
            "tx_ref": tx_ref, "amount": 10, "currency": "NGN",
            "redirect_url": "http://localhost/done", "customer": {"email": "a@b.c"},
            "session_duration": session,
        })
    };
    let (status, _, made) = post(&h, "/payments", body("order-30", json!(30))).await;
    assert_eq!(status, 200, "{made}");
    let (status, _, _) = post(&h, "/payments", body("order-31", Value::Null)).await;
    assert_eq!(status, 200);
    let links = h.sim().payment_links();
    assert_eq!(links[0].session_duration, Some(30));
    let lasts = links[0].expires_at.unwrap() - links[0].created_at;
    assert_eq!(lasts.num_minutes(), 30);
    assert_eq!(links[1].expires_at, None, "no session named: no end");

    h.sim().expire_payment_link("order-30").unwrap();
    let link = made["data"]["link"].as_str().unwrap();
    let (status, _, page) = send(client().get(link)).await;
    assert_eq!(status, 404, "{page}");
    assert_eq!(page["message"], "Payment link not found or expired");
    assert!(matches!(
        h.sim().pay_link("order-30", PayOptions::default()).await,
        Err(SimError::ExpiredPaymentLink(_))
    ));
    assert!(h.sim().transactions().is_empty(), "nothing was charged");
    assert!(
        h.sim()
            .pay_link("order-31", PayOptions::default())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn calls_record_how_many_were_in_progress_at_once() {
    let h = start().await;
    let id = paid(&h, "order-32", 100.0);
    h.sim().set_faults(Faults {
        latency_ms: 300,
        ..Default::default()
    });
    let path = format!("/transactions/{id}/verify");
    let (a, b, c) = tokio::join!(get(&h, &path), get(&h, &path), get(&h, &path));
    assert_eq!((a.0, b.0, c.0), (200, 200, 200));
    get(&h, &path).await;
    let calls = h.sim().calls();
    assert_eq!(calls.verify, 4);
    assert_eq!(calls.peak_in_flight, 3, "{calls:?}");
}

#[tokio::test]
async fn payments_validation() {
    let h = start().await;
    let valid = json!({
        "tx_ref": "order-12", "amount": 10, "currency": "NGN",
        "redirect_url": "http://localhost/done", "customer": {"email": "a@b.c"},
    });
    for (field, bad) in [
        ("tx_ref", json!("")),
        ("amount", json!(0)),
        ("redirect_url", Value::Null),
        ("customer", json!({"name": "no email"})),
        ("session_duration", json!(0)),
        ("session_duration", json!(1441)),
        ("session_duration", json!("60")),
    ] {
        let mut body = valid.clone();
        body[field] = bad;
        let (status, _, resp) = post(&h, "/payments", body).await;
        assert_eq!(status, 400, "{field}");
        assert_eq!(resp["status"], "error");
        assert!(resp["data"].is_null());
    }
    assert!(h.sim().payment_links().is_empty());
    let (status, _, _) = post(&h, "/payments", valid).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn webhook_signatures_and_duplicates() {
    let h = start().await;
    let (hook_url, hits, _rx) = receiver().await;
    h.sim().set_webhook_target(hook_url, HASH.to_string());
    let id = paid(&h, "order-13", 750.5);

    let status = h
        .sim()
        .send_webhook(id, WebhookOptions::default())
        .await
        .unwrap();
    assert_eq!(status, 200);
    {
        let got = hits.lock().unwrap();
        assert_eq!(got[0].verif_hash.as_deref(), Some(HASH));
        assert!(got[0].signature_valid);
        let b = &got[0].body;
        assert_eq!(b["event"], "charge.completed");
        assert_eq!(b["event.type"], "CARD_TRANSACTION");
        assert_eq!(b["data"]["tx_ref"], "order-13");
        assert_eq!(b["data"]["amount"], 750.5);
        assert_eq!(b["data"]["status"], "successful");
        assert_eq!(b["data"]["customer"]["email"], "customer@example.com");
    }

    let only_hash = WebhookOptions {
        sign: SignMode::VerifHash,
        ..Default::default()
    };
    h.sim().send_webhook(id, only_hash).await.unwrap();
    let only_sig = WebhookOptions {
        sign: SignMode::HmacSignature,
        ..Default::default()
    };
    h.sim().send_webhook(id, only_sig).await.unwrap();
    {
        let got = hits.lock().unwrap();
        assert!(got[1].signature.is_none() && got[1].verif_hash.is_some());
        assert!(got[2].verif_hash.is_none() && got[2].signature_valid);
    }

    let forged = WebhookOptions {
        sign: SignMode::Forged,
        ..Default::default()
    };
    assert_eq!(h.sim().send_webhook(id, forged).await.unwrap(), 401);

    hits.lock().unwrap().clear();
    for concurrent in [false, true] {
        let dup = WebhookOptions {
            times: 3,
            concurrent,
            ..Default::default()
        };
        assert_eq!(h.sim().send_webhook(id, dup).await.unwrap(), 200);
    }
    let got = hits.lock().unwrap().clone();
    assert_eq!(got.len(), 6);
    assert!(
        got.iter()
            .all(|hit| hit.body == got[0].body && hit.signature_valid)
    );
    assert_eq!(h.sim().webhook_deliveries().len(), 10);
}

#[tokio::test]
async fn pay_link_options_and_missing_target() {
    let h = start().await;
    let (status, _, _) = post(
        &h,
        "/payments",
        json!({"tx_ref": "order-14", "amount": 100, "redirect_url": "http://x/y",
               "customer": {"email": "e@x.io"}}),
    )
    .await;
    assert_eq!(status, 200);
    // No target configured: the payment still happens, the failed delivery is just logged.
    let tx = h
        .sim()
        .pay_link("order-14", PayOptions::default())
        .await
        .unwrap();
    assert_eq!(tx.amount, 100.0);

    let (hook_url, hits, _rx) = receiver().await;
    h.sim().set_webhook_target(hook_url, HASH.to_string());
    let under = PayOptions {
        amount: Some(60.0),
        lose_webhook: true,
        ..Default::default()
    };
    let tx = h.sim().pay_link("order-14", under).await.unwrap();
    assert_eq!(tx.amount, 60.0);
    assert!(hits.lock().unwrap().is_empty());

    assert!(
        h.sim()
            .pay_link("unknown", PayOptions::default())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn control_routes_over_http() {
    let h = start().await;
    let root = h.root_url();
    let c = client();
    let (hook_url, hits, _rx) = receiver().await;

    let (status, _, _) = send(
        c.post(format!("{root}/__sim/webhook-target"))
            .json(&json!({"url": hook_url, "hash": HASH})),
    )
    .await;
    assert_eq!(status, 204);

    let (status, _, tx) = send(
        c.post(format!("{root}/__sim/transactions"))
            .json(&json!({"tx_ref": "order-15", "amount": 42})),
    )
    .await;
    assert_eq!(status, 201);
    let id = tx["id"].as_u64().unwrap();
    assert!(id >= 1_000_001);

    let (status, _, body) = send(
        c.post(format!("{root}/__sim/transactions/{id}/webhook"))
            .json(&json!({"times": 2})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], 200);
    assert_eq!(hits.lock().unwrap().len(), 2);

    let (status, _, _) = send(
        c.put(format!("{root}/__sim/faults"))
            .json(&json!({"fail_next": 1, "fail_status": 502})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(h.sim().faults().fail_next, 1);
    let (status, _, _) = get(&h, &format!("/transactions/{id}/verify")).await;
    assert_eq!(status, 502);
    let (_, _, faults) = send(c.get(format!("{root}/__sim/faults"))).await;
    assert_eq!(faults["fail_next"], 0);
    let (status, _, _) = send(
        c.put(format!("{root}/__sim/faults"))
            .json(&json!({"only": "nonsense"})),
    )
    .await;
    assert_eq!(status, 400);

    let (_, _, calls) = send(c.get(format!("{root}/__sim/calls"))).await;
    assert_eq!(calls["verify"], 1);
    let (_, _, refunds) = send(c.get(format!("{root}/__sim/refunds"))).await;
    assert_eq!(refunds, json!([]));

    let (status, _, body) = send(c.post(format!("{root}/__sim/pay/none"))).await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn router_is_embeddable_and_unknown_routes_are_json() {
    let sim = Simulator::new(KEY);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = sim.router();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (status, _, body) = send(client().get(format!("http://{addr}/v3/nope"))).await;
    assert_eq!(status, 404);
    assert_eq!(body["status"], "error");
    server.abort();
}
