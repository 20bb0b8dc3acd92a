//! `/__sim` control routes for chaos scripts and curl: faults, seeding, inspection, webhooks. No auth.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::routes::{AppState, parse_json};
use crate::{Faults, NewTransaction, PayOptions, SimError, WebhookOptions};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/__sim/faults", get(get_faults).put(put_faults))
        .route(
            "/__sim/transactions",
            get(list_transactions).post(add_transaction),
        )
        .route("/__sim/transactions/{id}", get(get_transaction))
        .route("/__sim/transactions/{id}/webhook", post(send_webhook))
        .route("/__sim/refunds", get(refunds))
        .route("/__sim/calls", get(calls))
        .route("/__sim/payment-links", get(payment_links))
        .route("/__sim/webhook-target", post(set_webhook_target))
        .route("/__sim/webhooks", get(webhook_deliveries))
        .route("/__sim/pay/{tx_ref}", post(pay))
        .route("/__sim/expire/{tx_ref}", post(expire))
}

fn fail(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({"error": message.to_string()}))).into_response()
}

fn sim_error(e: SimError) -> Response {
    let status = match e {
        SimError::UnknownTransaction(_)
        | SimError::UnknownPaymentLink(_)
        | SimError::ExpiredPaymentLink(_) => StatusCode::NOT_FOUND,
        SimError::NoWebhookTarget | SimError::InvalidInput(_) => StatusCode::BAD_REQUEST,
        SimError::Webhook(_) | SimError::Json(_) => StatusCode::BAD_GATEWAY,
    };
    fail(status, e)
}

macro_rules! body_or_400 {
    ($body:expr) => {
        match parse_json(&$body) {
            Ok(v) => v,
            Err(msg) => return fail(StatusCode::BAD_REQUEST, msg),
        }
    };
}

async fn get_faults(State(app): State<AppState>) -> Response {
    Json(app.sim.faults()).into_response()
}

/// An empty body clears all faults.
async fn put_faults(State(app): State<AppState>, body: Bytes) -> Response {
    let faults: Faults = body_or_400!(body);
    app.sim.set_faults(faults.clone());
    Json(faults).into_response()
}

async fn list_transactions(State(app): State<AppState>) -> Response {
    Json(app.sim.transactions()).into_response()
}

async fn add_transaction(State(app): State<AppState>, body: Bytes) -> Response {
    let new: NewTransaction = body_or_400!(body);
    (StatusCode::CREATED, Json(app.sim.add_transaction(new))).into_response()
}

async fn get_transaction(State(app): State<AppState>, Path(id): Path<u64>) -> Response {
    match app.sim.transaction(id) {
        Some(tx) => Json(tx).into_response(),
        None => sim_error(SimError::UnknownTransaction(id)),
    }
}

async fn send_webhook(State(app): State<AppState>, Path(id): Path<u64>, body: Bytes) -> Response {
    let opts: WebhookOptions = body_or_400!(body);
    match app.sim.send_webhook(id, opts).await {
        Ok(status) => Json(json!({"status": status})).into_response(),
        Err(e) => sim_error(e),
    }
}

async fn refunds(State(app): State<AppState>) -> Response {
    Json(app.sim.refunds()).into_response()
}

async fn calls(State(app): State<AppState>) -> Response {
    Json(app.sim.calls()).into_response()
}

async fn payment_links(State(app): State<AppState>) -> Response {
    Json(app.sim.payment_links()).into_response()
}

async fn webhook_deliveries(State(app): State<AppState>) -> Response {
    Json(app.sim.webhook_deliveries()).into_response()
}

#[derive(Deserialize)]
struct TargetBody {
    url: String,
    hash: String,
}

async fn set_webhook_target(State(app): State<AppState>, body: Bytes) -> Response {
    let target: TargetBody = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e),
    };
    app.sim.set_webhook_target(target.url, target.hash);
    StatusCode::NO_CONTENT.into_response()
}

async fn pay(State(app): State<AppState>, Path(tx_ref): Path<String>, body: Bytes) -> Response {
    let opts: PayOptions = body_or_400!(body);
    match app.sim.pay_link(&tx_ref, opts).await {
        Ok(tx) => Json(tx).into_response(),
        Err(e) => sim_error(e),
    }
}

async fn expire(State(app): State<AppState>, Path(tx_ref): Path<String>) -> Response {
    match app.sim.expire_payment_link(&tx_ref) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => sim_error(e),
    }
}
