//! Flutterwave v3 API routes (real paths under `/v3`), each behind the fault/auth guard.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use chrono::Utc;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::faults::{self, Operation};
use crate::state::PaymentLink;
use crate::{PayOptions, Simulator, wire};

/// Shared by every handler of one server; `stop` releases hung requests on shutdown.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) sim: Simulator,
    pub(crate) stop: watch::Receiver<bool>,
}

pub(crate) fn v3(app: &AppState) -> Router<AppState> {
    let guarded = |op: Operation, route: MethodRouter<AppState>| {
        route.layer(from_fn_with_state((app.clone(), op), faults::guard))
    };
    Router::new()
        .route(
            "/v3/transactions/verify_by_reference",
            guarded(Operation::VerifyByReference, get(verify_by_reference)),
        )
        .route(
            "/v3/transactions",
            guarded(Operation::Transactions, get(list_transactions)),
        )
        .route(
            "/v3/transactions/{id}/verify",
            guarded(Operation::Verify, get(verify)),
        )
        .route(
            "/v3/transactions/{id}/refund",
            guarded(Operation::Refund, post(refund)),
        )
        .route(
            "/v3/refunds",
            guarded(Operation::RefundLookup, get(list_refunds)),
        )
        .route(
            "/v3/refunds/{id}",
            guarded(Operation::RefundLookup, get(get_refund)),
        )
        .route(
            "/v3/payments",
            guarded(Operation::Payments, post(create_payment)),
        )
        .route(
            "/v3/hosted/pay/{token}",
            guarded(Operation::HostedPay, get(hosted_pay)),
        )
}

pub(crate) async fn not_found() -> Response {
    wire::error(StatusCode::NOT_FOUND, "Route not found")
}

/// Bodies are optional on several routes, so an empty body means "all defaults" rather
/// than the content-type rejection axum's `Json` extractor would give.
pub(crate) fn parse_json<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("Invalid JSON body: {e}"))
}

async fn verify(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let tx = id.parse().ok().and_then(|id| app.sim.transaction(id));
    match tx {
        Some(tx) => wire::success("Transaction fetched successfully", wire::verify_data(&tx)),
        None => wire::error(StatusCode::BAD_REQUEST, wire::NO_TRANSACTION),
    }
}

async fn verify_by_reference(
    State(app): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(tx_ref) = query.get("tx_ref").filter(|r| !r.is_empty()) else {
        return wire::error(StatusCode::BAD_REQUEST, "tx_ref is required");
    };
    let tx = app.sim.lock().by_reference(tx_ref).cloned();
    match tx {
        Some(tx) => wire::success("Transaction fetched successfully", wire::verify_data(&tx)),
        None => wire::error(StatusCode::BAD_REQUEST, wire::NO_TRANSACTION),
    }
}

/// `GET /v3/transactions`: every transaction, oldest first, narrowed by
/// `tx_ref` and `status` when given; one page holds them all.
async fn list_transactions(
    State(app): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let tx_ref = query.get("tx_ref").filter(|s| !s.is_empty());
    let status = query.get("status").filter(|s| !s.is_empty());
    let data: Vec<Value> = app
        .sim
        .lock()
        .transactions
        .values()
        .filter(|t| tx_ref.is_none_or(|r| &t.tx_ref == r))
        .filter(|t| status.is_none_or(|s| &t.status == s))
        .map(wire::verify_data)
        .collect();
    wire::page("Transactions fetched", data)
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct RefundBody {
    amount: Option<Value>,
    comments: Option<String>,
}

async fn refund(State(app): State<AppState>, Path(id): Path<String>, body: Bytes) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return wire::error(StatusCode::BAD_REQUEST, wire::NO_TRANSACTION);
    };
    let body: RefundBody = match parse_json(&body) {
        Ok(b) => b,
        Err(msg) => return wire::error(StatusCode::BAD_REQUEST, msg),
    };
    let amount = match body.amount.as_ref().filter(|v| !v.is_null()) {
        None => None,
        Some(v) => match wire::parse_amount(v) {
            Some(a) => Some(a),
            None => return wire::error(StatusCode::BAD_REQUEST, "amount must be a number"),
        },
    };
    let applied = app.sim.lock().apply_refund(id, amount, body.comments);
    match applied {
        Err(msg) => wire::error(StatusCode::BAD_REQUEST, msg),
        Ok((refund, true)) => {
            tracing::info!(
                refund_id = refund.id,
                tx_id = id,
                "refund applied, withholding the answer"
            );
            faults::hang(app.stop.clone()).await
        }
        Ok((refund, false)) => {
            wire::success("Transaction refund initiated", wire::refund_data(&refund))
        }
    }
}

async fn get_refund(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let id: Option<u64> = id.parse().ok();
    let refund = app.sim.lock().look_up_refunds(|r| Some(r.id) == id).pop();
    match refund {
        Some(r) => wire::success("Refund fetched", wire::refund_data(&r)),
        None => wire::error(StatusCode::BAD_REQUEST, "No refund was found for this id"),
    }
}

async fn list_refunds(
    State(app): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let tx_id = match query.get("tx_id").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match s.parse::<u64>() {
            Ok(id) => Some(id),
            Err(_) => return wire::error(StatusCode::BAD_REQUEST, "tx_id must be numeric"),
        },
    };
    let flw_ref = query.get("flw_ref").filter(|s| !s.is_empty());
    let data: Vec<Value> = app
        .sim
        .lock()
        .look_up_refunds(|r| {
            tx_id.is_none_or(|id| r.tx_id == id) && flw_ref.is_none_or(|f| &r.flw_ref == f)
        })
        .iter()
        .map(wire::refund_data)
        .collect();
    wire::page("Refunds fetched", data)
}

fn str_field<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, key| v.get(key))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

async fn create_payment(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let bad = |msg: &str| wire::error(StatusCode::BAD_REQUEST, msg);
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return bad("Invalid JSON body");
    };
    let Some(tx_ref) = str_field(&v, &["tx_ref"]) else {
        return bad("tx_ref is required");
    };
    let amount = v.get("amount").and_then(wire::parse_amount);
    let Some(amount) = amount.filter(|a| a.is_finite() && *a > 0.0) else {
        return bad("amount is required and must be greater than 0");
    };
    let Some(redirect_url) = str_field(&v, &["redirect_url"]) else {
        return bad("redirect_url is required");
    };
    if reqwest::Url::parse(redirect_url).is_err() {
        return bad("redirect_url must be a valid URL");
    }
    let Some(email) = str_field(&v, &["customer", "email"]) else {
        return bad("customer.email is required");
    };
    // Flutterwave documents 1440 minutes (24 hours) as the longest session.
    let session_duration = match v.get("session_duration") {
        None | Some(Value::Null) => None,
        Some(minutes) => match minutes.as_u64().filter(|m| (1..=1440).contains(m)) {
            Some(m) => Some(m as u32),
            None => return bad("session_duration must be between 1 and 1440 minutes"),
        },
    };
    let now = Utc::now();

    // The link must be reachable by whoever called us, so it reuses their Host header.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let token = format!("flwlnk-{}", uuid::Uuid::new_v4().simple());
    let link = format!("http://{host}/v3/hosted/pay/{token}");
    app.sim.lock().links.push(PaymentLink {
        token,
        link: link.clone(),
        tx_ref: tx_ref.to_string(),
        amount,
        currency: str_field(&v, &["currency"]).unwrap_or("NGN").to_string(),
        redirect_url: redirect_url.to_string(),
        customer_email: email.to_string(),
        customer_name: str_field(&v, &["customer", "name"]).map(str::to_string),
        title: str_field(&v, &["customizations", "title"]).map(str::to_string),
        paid_tx_id: None,
        created_at: now,
        session_duration,
        expires_at: session_duration.map(|m| now + chrono::Duration::minutes(i64::from(m))),
    });
    wire::success("Hosted Link", json!({"link": link}))
}

async fn hosted_pay(State(app): State<AppState>, Path(token): Path<String>) -> Response {
    let link = {
        let state = app.sim.lock();
        state.links.iter().find(|l| l.token == token).cloned()
    };
    let gone = || wire::error(StatusCode::NOT_FOUND, "Payment link not found or expired");
    let Some(link) = link else {
        return gone();
    };
    // A refresh of an already-paid page must not charge the customer twice.
    let paid = link.paid_tx_id.and_then(|id| app.sim.transaction(id));
    let tx = match paid {
        Some(tx) => tx,
        None if link.expired(Utc::now()) => return gone(),
        None => app.sim.pay(&link, PayOptions::default()).await,
    };
    let Ok(mut url) = reqwest::Url::parse(&link.redirect_url) else {
        return wire::error(StatusCode::BAD_REQUEST, "redirect_url must be a valid URL");
    };
    url.query_pairs_mut()
        .append_pair("status", &tx.status)
        .append_pair("tx_ref", &tx.tx_ref)
        .append_pair("transaction_id", &tx.id.to_string());
    (StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response()
}
