//! Flutterwave v3 JSON shapes: response envelopes and the `data` objects clients parse.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::state::{Refund, Transaction, round2};

pub(crate) const NO_TRANSACTION: &str = "No transaction was found for this id";

/// Flutterwave's timestamps look like `2024-05-01T10:00:00.000Z`.
pub(crate) fn timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Flutterwave prints whole amounts as integers (`1000`, not `1000.0`); a client that
/// deserialises into an integer type must keep working against the simulator.
pub(crate) fn money(x: f64) -> Value {
    if x.is_finite() && x.fract() == 0.0 && x.abs() < 9.0e15 {
        Value::from(x as i64)
    } else {
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

/// Accepts `100`, `100.5` or `"100.5"`: Flutterwave takes amounts in either form.
pub(crate) fn parse_amount(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = json!({"status": "error", "message": message.into(), "data": null});
    (status, Json(body)).into_response()
}

pub(crate) fn success(message: &str, data: Value) -> Response {
    Json(json!({"status": "success", "message": message, "data": data})).into_response()
}

/// A list answer: everything on one page.
pub(crate) fn page(message: &str, data: Vec<Value>) -> Response {
    Json(json!({
        "status": "success",
        "message": message,
        "meta": {"page_info": {"total": data.len(), "current_page": 1, "total_pages": 1}},
        "data": data,
    }))
    .into_response()
}

fn processor_response(status: &str) -> &'static str {
    match status {
        "successful" => "Approved",
        "pending" => "Pending",
        _ => "Declined",
    }
}

fn customer(tx: &Transaction) -> Value {
    json!({
        "id": tx.customer_id,
        "name": tx.customer_name,
        "phone_number": null,
        "email": tx.customer_email,
        "created_at": timestamp(&tx.created_at),
    })
}

/// Fields shared by the verify `data` object and the `charge.completed` webhook `data`.
fn charge_fields(tx: &Transaction) -> serde_json::Map<String, Value> {
    let v = json!({
        "id": tx.id,
        "tx_ref": tx.tx_ref,
        "flw_ref": tx.flw_ref,
        "device_fingerprint": "N/A",
        "amount": money(tx.amount),
        "currency": tx.currency,
        "charged_amount": money(tx.charged_amount),
        "app_fee": money(tx.app_fee),
        "merchant_fee": 0,
        "processor_response": processor_response(&tx.status),
        "auth_model": "PIN",
        "ip": "127.0.0.1",
        "narration": tx.narration,
        "status": tx.status,
        "payment_type": tx.payment_type,
        "created_at": timestamp(&tx.created_at),
        "account_id": tx.account_id,
        "customer": customer(tx),
    });
    match v {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// `data` of `GET /v3/transactions/{id}/verify`.
pub(crate) fn verify_data(tx: &Transaction) -> Value {
    let mut map = charge_fields(tx);
    map.insert(
        "amount_settled".into(),
        money(round2(tx.charged_amount - tx.app_fee)),
    );
    map.insert("meta".into(), Value::Null);
    Value::Object(map)
}

/// Body of the `charge.completed` webhook.
pub(crate) fn webhook_event(tx: &Transaction) -> Value {
    let event_type = if tx.payment_type == "card" {
        "CARD_TRANSACTION".to_string()
    } else {
        format!("{}_TRANSACTION", tx.payment_type.to_uppercase())
    };
    json!({
        "event": "charge.completed",
        "data": Value::Object(charge_fields(tx)),
        "event.type": event_type,
    })
}

pub(crate) fn refund_data(r: &Refund) -> Value {
    json!({
        "id": r.id,
        "account_id": r.account_id,
        "tx_id": r.tx_id,
        "flw_ref": r.flw_ref,
        "wallet_id": r.wallet_id,
        "amount_refunded": money(r.amount_refunded),
        "status": r.status,
        "destination": r.destination,
        "meta": {"source": "availablebalance"},
        "created_at": timestamp(&r.created_at),
    })
}
