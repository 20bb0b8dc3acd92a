//! `/api/v1/order/**`: parse, authorize, call one command, shape the answer.

use crate::http::AppState;
use crate::http::auth::User;
use crate::http::bodies::{
    NotificationPage, NotificationReply, OrderPage, OrderReply, PaymentLink,
};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{JsonBody, PageQuery, PathParams};
use crate::orders::OrderError;
use crate::orders::commands::IdempotencyKey;
use crate::orders::model::Order;
use crate::orders::repository::Page;
use crate::orders::validation::{CreateOrder, DeliverOrder, MarkAsRead, RequestExtension};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Bodies are small JSON documents, except a delivery carrying a file.
pub const BODY_LIMIT: usize = 64 * 1024;
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

fn order_response(message: &str, order: Order) -> Json<OrderReply> {
    Json(OrderReply::new(message, order))
}

/// Creates an order in AWAITING_PAYMENT.
///
/// The caller must be the `buyerUsername` of the body. The server sets
/// `serviceFee`, `status`, `flutterwave.txRef` and the dates; such fields
/// in the body are ignored. With `Idempotency-Key`, the same key and body
/// within 24 h replay the first answer (with `Idempotent-Replayed: true`).
#[utoipa::path(
    post,
    path = "/api/v1/order",
    operation_id = "create_order",
    tag = "orders",
    security(("gatewayToken" = [], "userToken" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255,
            description = "Replays the first answer for the same key and body within 24 h"),
    ),
    request_body(content = CreateOrder, content_type = "application/json"),
    responses(
        (status = 201, description = "Created (or replayed)", body = OrderReply,
            headers(("Idempotent-Replayed" = String, description = "`true` on a replay"))),
        (status = 400, description = "Invalid body; the message names the field", body = ErrorBody),
        (status = 403, description = "Bad gateway token, or the caller is not `buyerUsername`", body = ErrorBody),
        (status = 409, description = "An order with this `orderId` exists", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 422, description = "`Idempotency-Key` reused with another body", body = ErrorBody),
    )
)]
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

/// One order, for its buyer or seller.
#[utoipa::path(
    get,
    path = "/api/v1/order/{orderId}",
    tag = "orders",
    security(("gatewayToken" = [], "userToken" = [])),
    params(("orderId" = String, Path, min_length = 1)),
    responses(
        (status = 200, description = "The order", body = OrderReply),
        (status = 403, description = "Bad gateway token, or not a party", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
    )
)]
pub async fn order(
    State(state): State<AppState>,
    User(actor): User,
    PathParams(order_id): PathParams<String>,
) -> Result<Json<OrderReply>, ApiError> {
    let order = state.orders.get(&actor, &order_id).await?;
    Ok(order_response("Order by order id", order))
}

/// The caller's orders as seller `sellerId`, newest first.
///
/// Only the caller's own: anyone else gets an empty list.
#[utoipa::path(
    get,
    path = "/api/v1/order/seller/{sellerId}",
    tag = "orders",
    security(("gatewayToken" = [], "userToken" = [])),
    params(
        ("sellerId" = String, Path, min_length = 1),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "Page size, default 50"),
        ("cursor" = Option<String>, Query, pattern = r"^[0-9a-fA-F-]{1,64}$",
            description = "`nextCursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of orders", body = OrderPage),
        (status = 400, description = "Bad `limit` or `cursor`", body = ErrorBody),
    )
)]
pub async fn seller_orders(
    State(state): State<AppState>,
    User(actor): User,
    PathParams(seller_id): PathParams<String>,
    query: PageQuery,
) -> Result<Json<OrderPage>, ApiError> {
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

/// The caller's orders as buyer `buyerId`, newest first.
///
/// Only the caller's own: anyone else gets an empty list.
#[utoipa::path(
    get,
    path = "/api/v1/order/buyer/{buyerId}",
    tag = "orders",
    security(("gatewayToken" = [], "userToken" = [])),
    params(
        ("buyerId" = String, Path, min_length = 1),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "Page size, default 50"),
        ("cursor" = Option<String>, Query, pattern = r"^[0-9a-fA-F-]{1,64}$",
            description = "`nextCursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of orders", body = OrderPage),
        (status = 400, description = "Bad `limit` or `cursor`", body = ErrorBody),
    )
)]
pub async fn buyer_orders(
    State(state): State<AppState>,
    User(actor): User,
    PathParams(buyer_id): PathParams<String>,
    query: PageQuery,
) -> Result<Json<OrderPage>, ApiError> {
    let page = Page {
        limit: query.limit,
        cursor: query.cursor.as_deref(),
    };
    let orders = state.orders.list_for_buyer(&actor, &buyer_id, page).await?;
    Ok(list_response("Buyer orders", orders, query.limit))
}

/// A full page gets a cursor to the next one.
fn list_response(message: &str, orders: Vec<Order>, limit: i64) -> Json<OrderPage> {
    let next_cursor = (orders.len() as i64 == limit)
        .then(|| orders.last().map(|o| o.id.clone()))
        .flatten();
    Json(OrderPage {
        message: message.to_string(),
        orders,
        next_cursor,
    })
}

/// Verifies a Flutterwave transaction and moves the order to PROCESSING.
///
/// Flutterwave is asked; the transaction must be `successful`, carry the
/// order's `tx_ref` and currency, and cover price + fee. Repeating it for a
/// paid order with the same transaction is a 200 no-op.
#[utoipa::path(
    put,
    path = "/api/v1/order/verify/{transactionId}/{txRef}",
    tag = "orders",
    security(("gatewayToken" = [], "userToken" = [])),
    params(
        ("transactionId" = String, Path, min_length = 1, description = "Flutterwave's transaction id"),
        ("txRef" = String, Path, min_length = 1, description = "The order's `flutterwave.txRef`"),
    ),
    responses(
        (status = 200, description = "Paid (or already paid with this transaction)", body = OrderReply),
        (status = 400, description = "Payment not accepted (status, reference, currency or amount), or a malformed id", body = ErrorBody),
        (status = 403, description = "Bad gateway token, or not the buyer", body = ErrorBody),
        (status = 404, description = "No order with this `txRef`", body = ErrorBody),
        (status = 409, description = "Not awaiting payment (a successful payment it can no longer take is refunded in full, and the message says so), or changed concurrently", body = ErrorBody),
        (status = 502, description = "Flutterwave answered with an error", body = ErrorBody),
        (status = 503, description = "Flutterwave unavailable or its breaker open (or timed out)", body = ErrorBody,
            headers(("Retry-After" = i64, description = "Seconds"))),
    )
)]
pub async fn verify(
    State(state): State<AppState>,
    User(actor): User,
    PathParams((transaction_id, tx_ref)): PathParams<(String, String)>,
) -> Result<Json<OrderReply>, ApiError> {
    let order = state
        .payments
        .verify(&actor, &transaction_id, &tx_ref)
        .await?;
    Ok(order_response("Payment verified successfully.", order))
}

/// The hosted Flutterwave payment link; asking again returns the same link
/// while its page takes payments, then a new one for the same reference.
#[utoipa::path(
    post,
    path = "/api/v1/order/{orderId}/checkout",
    tag = "orders",
    security(("gatewayToken" = [], "userToken" = [])),
    params(("orderId" = String, Path, min_length = 1)),
    responses(
        (status = 200, description = "The link", body = PaymentLink),
        (status = 403, description = "Bad gateway token, or not the buyer", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 409, description = "Not awaiting payment", body = ErrorBody),
        (status = 502, description = "Flutterwave answered with an error", body = ErrorBody),
        (status = 503, description = "Flutterwave unavailable (or timed out)", body = ErrorBody,
            headers(("Retry-After" = i64, description = "Seconds"))),
    )
)]
pub async fn checkout(
    State(state): State<AppState>,
    User(actor): User,
    PathParams(order_id): PathParams<String>,
) -> Result<Json<PaymentLink>, ApiError> {
    let link = state.checkout.link(&actor, &order_id).await?;
    Ok(Json(PaymentLink {
        message: "Payment link".into(),
        link,
    }))
}

/// Cancels the order; after payment, stages a 95 % refund.
///
/// The old gateway sends `orderData` and figures; any body is ignored.
#[utoipa::path(
    put,
    path = "/api/v1/order/cancel/{orderId}",
    tag = "orders",
    security(("gatewayToken" = [], "userToken" = [])),
    params(("orderId" = String, Path, min_length = 1)),
    responses(
        (status = 200, description = "Cancelled", body = OrderReply),
        (status = 403, description = "Bad gateway token, or not a party", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 409, description = "Already cancelled or completed, or changed concurrently", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    User(actor): User,
    PathParams(order_id): PathParams<String>,
) -> Result<Json<OrderReply>, ApiError> {
    let order = state.orders.cancel(&actor, &order_id).await?;
    Ok(order_response("Cancel order successful.", order))
}

/// The seller asks for a later delivery date.
#[utoipa::path(
    put,
    path = "/api/v1/order/extension/{orderId}",
    tag = "orders",
    security(("gatewayToken" = [], "userToken" = [])),
    params(("orderId" = String, Path, min_length = 1)),
    request_body(content = RequestExtension, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored in `requestExtension`", body = OrderReply),
        (status = 400, description = "Invalid body; the message names the field", body = ErrorBody),
        (status = 403, description = "Bad gateway token, or not the seller", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 409, description = "Not in progress, one already pending, or changed concurrently", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
    )
)]
pub async fn request_extension(
    State(state): State<AppState>,
    User(actor): User,
    PathParams(order_id): PathParams<String>,
    JsonBody(request, _): JsonBody<RequestExtension>,
) -> Result<Json<OrderReply>, ApiError> {
    let order = state
        .orders
        .request_extension(&actor, &order_id, request)
        .await?;
    Ok(order_response("Order delivery request", order))
}

/// The buyer approves or rejects the pending extension.
#[utoipa::path(
    put,
    path = "/api/v1/order/gig/{type}/{orderId}",
    tag = "orders",
    security(("gatewayToken" = [], "userToken" = [])),
    params(
        ("type" = String, Path, pattern = "^(approve|reject)$", description = "`approve` or `reject`"),
        ("orderId" = String, Path, min_length = 1),
    ),
    responses(
        (status = 200, description = "Decided; `requestExtension` cleared", body = OrderReply),
        (status = 400, description = "`type` is neither approve nor reject", body = ErrorBody),
        (status = 403, description = "Bad gateway token, or not the buyer", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 409, description = "No extension pending, or changed concurrently", body = ErrorBody),
    )
)]
pub async fn decide_extension(
    State(state): State<AppState>,
    User(actor): User,
    PathParams((kind, order_id)): PathParams<(String, String)>,
) -> Result<Json<OrderReply>, ApiError> {
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

/// The seller delivers; a `data:` URI file goes to Cloudinary first.
#[utoipa::path(
    put,
    path = "/api/v1/order/deliver-order/{orderId}",
    tag = "orders",
    security(("gatewayToken" = [], "userToken" = [])),
    params(("orderId" = String, Path, min_length = 1)),
    request_body(content = DeliverOrder, content_type = "application/json"),
    responses(
        (status = 200, description = "DELIVERED", body = OrderReply),
        (status = 400, description = "Invalid body (the message names the field), or an inline file where no file store is configured", body = ErrorBody),
        (status = 403, description = "Bad gateway token, or not the seller", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 409, description = "Not in progress, or changed concurrently", body = ErrorBody),
        (status = 413, description = "Body over 14 MiB", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 502, description = "Cloudinary answered with an error", body = ErrorBody),
        (status = 503, description = "Cloudinary unavailable (or timed out)", body = ErrorBody,
            headers(("Retry-After" = i64, description = "Seconds"))),
    )
)]
pub async fn deliver(
    State(state): State<AppState>,
    User(actor): User,
    PathParams(order_id): PathParams<String>,
    JsonBody(mut request, _): JsonBody<DeliverOrder>,
) -> Result<Json<OrderReply>, ApiError> {
    request.validate()?;
    // Authorize, and check the order can be delivered, before uploading
    // anything on the caller's behalf: a refused delivery leaves no file.
    state.orders.check_deliver(&actor, &order_id).await?;
    if let Some(file) = request.file.take() {
        request.file = Some(state.uploads.store(&file).await.map_err(file_store_error)?);
    }
    let order = state.orders.deliver(&actor, &order_id, request).await?;
    Ok(order_response("Order delivered successfully.", order))
}

/// The file store's failures, named as such (the shared mapping speaks of
/// the payment provider).
fn file_store_error(error: OrderError) -> ApiError {
    match error {
        OrderError::ProviderUnavailable { retry_after } => ApiError {
            retry_after: Some(retry_after.as_secs().max(1)),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "File store unavailable, try again later",
            )
        },
        OrderError::Provider(cause) => ApiError {
            internal: Some(cause),
            ..ApiError::new(StatusCode::BAD_GATEWAY, "File store error")
        },
        other => other.into(),
    }
}

/// The buyer approves the delivery: COMPLETED.
///
/// The old gateway sends `sellerId`, `totalEarnings`, ...; any body is
/// ignored: earnings come from the stored order.
#[utoipa::path(
    put,
    path = "/api/v1/order/approve-order/{orderId}",
    tag = "orders",
    security(("gatewayToken" = [], "userToken" = [])),
    params(("orderId" = String, Path, min_length = 1)),
    responses(
        (status = 200, description = "COMPLETED", body = OrderReply),
        (status = 403, description = "Bad gateway token, or not the buyer", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 409, description = "Not delivered, or changed concurrently", body = ErrorBody),
    )
)]
pub async fn approve(
    State(state): State<AppState>,
    User(actor): User,
    PathParams(order_id): PathParams<String>,
) -> Result<Json<OrderReply>, ApiError> {
    let order = state.orders.approve(&actor, &order_id).await?;
    Ok(order_response("Order approved successfully.", order))
}

/// The caller's notifications, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/order/notification/{userTo}",
    tag = "notifications",
    security(("gatewayToken" = [], "userToken" = [])),
    params(
        ("userTo" = String, Path, min_length = 1, description = "The caller's own username"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "Page size, default 50"),
        ("cursor" = Option<String>, Query, pattern = r"^[0-9a-fA-F-]{1,64}$",
            description = "`nextCursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of notifications", body = NotificationPage),
        (status = 400, description = "Bad `limit` or `cursor`", body = ErrorBody),
        (status = 403, description = "Bad gateway token, or `userTo` is someone else", body = ErrorBody),
    )
)]
pub async fn notifications(
    State(state): State<AppState>,
    User(actor): User,
    PathParams(user_to): PathParams<String>,
    query: PageQuery,
) -> Result<Json<NotificationPage>, ApiError> {
    let page = Page {
        limit: query.limit,
        cursor: query.cursor.as_deref(),
    };
    let notifications = state.notifications.list(&actor, &user_to, page).await?;
    let next_cursor = (notifications.len() as i64 == query.limit)
        .then(|| notifications.last().map(|n| n.id.clone()))
        .flatten();
    Ok(Json(NotificationPage {
        message: "Notifications".into(),
        notifications,
        next_cursor,
    }))
}

/// Marks one of the caller's notifications as read.
#[utoipa::path(
    put,
    path = "/api/v1/order/notification/mark-as-read",
    tag = "notifications",
    security(("gatewayToken" = [], "userToken" = [])),
    request_body(content = MarkAsRead, content_type = "application/json"),
    responses(
        (status = 200, description = "Read", body = NotificationReply),
        (status = 400, description = "Invalid body", body = ErrorBody),
        (status = 403, description = "Bad gateway token, or not the receiver", body = ErrorBody),
        (status = 404, description = "No such notification", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
    )
)]
pub async fn mark_as_read(
    State(state): State<AppState>,
    User(actor): User,
    JsonBody(request, _): JsonBody<MarkAsRead>,
) -> Result<Json<NotificationReply>, ApiError> {
    let notification = state
        .notifications
        .mark_as_read(&actor, &request.notification_id)
        .await?;
    Ok(Json(NotificationReply {
        message: "Notification updated successfully.".into(),
        notification,
    }))
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
