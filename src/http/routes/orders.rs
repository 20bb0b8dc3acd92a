//! `/api/v1/order/**`: parse, authorize, call one command, shape the answer.

use crate::http::AppState;
use crate::http::auth::User;
use crate::http::error::ApiError;
use crate::http::extract::{JsonBody, PageQuery};
use crate::orders::commands::IdempotencyKey;
use crate::orders::model::Order;
use crate::orders::repository::Page;
use crate::orders::validation::{CreateOrder, DeliverOrder, MarkAsRead, RequestExtension};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Bodies are small JSON documents, except a delivery carrying a file.
const BODY_LIMIT: usize = 64 * 1024;
/// A delivered file may come inline as a data: URI (base64 grows it by a third).
pub const DELIVERY_BODY_LIMIT: usize = 14 * 1024 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", post(create))
        .route("/notification/mark-as-read", put(mark_as_read))
        .route("/notification/{user_to}", get(notifications))
        .route("/seller/{seller_id}", get(seller_orders))
        .route("/buyer/{buyer_id}", get(buyer_orders))
        .route("/verify/{transaction_id}/{tx_ref}", put(verify))
        .route("/cancel/{order_id}", put(cancel))
        .route("/extension/{order_id}", put(request_extension))
        .route("/gig/{kind}/{order_id}", put(decide_extension))
        .route(
            "/deliver-order/{order_id}",
            put(deliver).layer(DefaultBodyLimit::max(DELIVERY_BODY_LIMIT)),
        )
        .route("/approve-order/{order_id}", put(approve))
        .route("/{order_id}/checkout", post(checkout))
        .route("/{order_id}", get(order))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

fn order_response(message: &str, order: Order) -> Json<Value> {
    Json(json!({ "message": message, "order": order }))
}

pub async fn create(
    State(state): State<AppState>,
    User(actor): User,
    headers: HeaderMap,
    JsonBody(request, raw): JsonBody<CreateOrder>,
) -> Result<Response, ApiError> {
    let idempotency = match headers.get("idempotency-key") {
        None => None,
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| {
                    ApiError::bad_request("Idempotency-Key must be 1 to 255 visible characters")
                })?;
            // Keys are per user, so one user's key never replays another's order.
            Some(IdempotencyKey {
                key: format!("{}:{key}", actor.username.to_lowercase()),
                request_hash: format!("{:x}", Sha256::digest(canonical_json(&raw).as_bytes())),
            })
        }
    };
    let created = state.orders.create(&actor, request, idempotency).await?;
    let status = StatusCode::from_u16(created.status).unwrap_or(StatusCode::CREATED);
    let mut response = (status, Json(created.body)).into_response();
    if created.replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// JSON with object keys sorted at every level, so the same body in another
/// key order hashes the same (serde_json may keep insertion order).
fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&map[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(canonical_json)
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

async fn order(
    State(state): State<AppState>,
    User(actor): User,
    Path(order_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let order = state.orders.get(&actor, &order_id).await?;
    Ok(order_response("Order by order id", order))
}

async fn seller_orders(
    State(state): State<AppState>,
    User(actor): User,
    Path(seller_id): Path<String>,
    query: PageQuery,
) -> Result<Json<Value>, ApiError> {
    let page = Page {
        limit: query.limit,
        cursor: query.cursor.as_deref(),
    };
    let orders = state
        .orders
        .list_for_seller(&actor, &seller_id, page)
        .await?;
    Ok(list_response("Seller orders", orders, query.limit))
}

async fn buyer_orders(
    State(state): State<AppState>,
    User(actor): User,
    Path(buyer_id): Path<String>,
    query: PageQuery,
) -> Result<Json<Value>, ApiError> {
    let page = Page {
        limit: query.limit,
        cursor: query.cursor.as_deref(),
    };
    let orders = state.orders.list_for_buyer(&actor, &buyer_id, page).await?;
    Ok(list_response("Buyer orders", orders, query.limit))
}

/// A full page gets a cursor to the next one.
fn list_response(message: &str, orders: Vec<Order>, limit: i64) -> Json<Value> {
    let next = (orders.len() as i64 == limit)
        .then(|| orders.last().map(|o| o.id.clone()))
        .flatten();
    Json(json!({ "message": message, "orders": orders, "nextCursor": next }))
}

async fn verify(
    State(state): State<AppState>,
    User(actor): User,
    Path((transaction_id, tx_ref)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let order = state
        .payments
        .verify(&actor, &transaction_id, &tx_ref)
        .await?;
    Ok(order_response("Payment verified successfully.", order))
}

/// The hosted payment link; asking again returns the same link.
async fn checkout(
    State(state): State<AppState>,
    User(actor): User,
    Path(order_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let link = state.checkout.link(&actor, &order_id).await?;
    Ok(Json(json!({ "message": "Payment link", "link": link })))
}

/// The old gateway sends `orderData` and figures; they are ignored.
async fn cancel(
    State(state): State<AppState>,
    User(actor): User,
    Path(order_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let order = state.orders.cancel(&actor, &order_id).await?;
    Ok(order_response("Cancel order successful.", order))
}

async fn request_extension(
    State(state): State<AppState>,
    User(actor): User,
    Path(order_id): Path<String>,
    JsonBody(request, _): JsonBody<RequestExtension>,
) -> Result<Json<Value>, ApiError> {
    let order = state
        .orders
        .request_extension(&actor, &order_id, request)
        .await?;
    Ok(order_response("Order delivery request", order))
}

async fn decide_extension(
    State(state): State<AppState>,
    User(actor): User,
    Path((kind, order_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let approve = match kind.as_str() {
        "approve" => true,
        "reject" => false,
        _ => return Err(ApiError::bad_request("type must be approve or reject")),
    };
    let order = state
        .orders
        .decide_extension(&actor, &order_id, approve)
        .await?;
    Ok(order_response("Gig delivery date extension decided", order))
}

async fn deliver(
    State(state): State<AppState>,
    User(actor): User,
    Path(order_id): Path<String>,
    JsonBody(mut request, _): JsonBody<DeliverOrder>,
) -> Result<Json<Value>, ApiError> {
    request.validate()?;
    // Authorize before uploading anything on the caller's behalf.
    state.orders.get(&actor, &order_id).await?;
    if let Some(file) = request.file.take() {
        request.file = Some(state.uploads.store(&file).await?);
    }
    let order = state.orders.deliver(&actor, &order_id, request).await?;
    Ok(order_response("Order delivered successfully.", order))
}

/// The old gateway sends `sellerId`, `totalEarnings`, ...; they are ignored:
/// earnings come from the stored order.
async fn approve(
    State(state): State<AppState>,
    User(actor): User,
    Path(order_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let order = state.orders.approve(&actor, &order_id).await?;
    Ok(order_response("Order approved successfully.", order))
}

async fn notifications(
    State(state): State<AppState>,
    User(actor): User,
    Path(user_to): Path<String>,
    query: PageQuery,
) -> Result<Json<Value>, ApiError> {
    let page = Page {
        limit: query.limit,
        cursor: query.cursor.as_deref(),
    };
    let notifications = state.notifications.list(&actor, &user_to, page).await?;
    let next = (notifications.len() as i64 == query.limit)
        .then(|| notifications.last().map(|n| n.id.clone()))
        .flatten();
    Ok(Json(
        json!({ "message": "Notifications", "notifications": notifications, "nextCursor": next }),
    ))
}

async fn mark_as_read(
    State(state): State<AppState>,
    User(actor): User,
    JsonBody(request, _): JsonBody<MarkAsRead>,
) -> Result<Json<Value>, ApiError> {
    let notification = state
        .notifications
        .mark_as_read(&actor, &request.notification_id)
        .await?;
    Ok(Json(
        json!({ "message": "Notification updated successfully.", "notification": notification }),
    ))
}

#[cfg(test)]
mod tests {
    use super::canonical_json;

    #[test]
    fn key_order_does_not_change_the_canonical_form() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[1,{"d":2,"c":3}],"x":null}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a":{"x":null,"y":[1,{"c":3,"d":2}]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":null,"y":[1,{"c":3,"d":2}]},"b":1}"#
        );
    }
}
