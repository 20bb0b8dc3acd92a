//! The OpenAPI 3.1 document, generated from the code (utoipa): each handler
//! carries a `#[utoipa::path]` with its own outcomes, the request and
//! response types derive `ToSchema`, and [`Outcomes`] adds the statuses that
//! every route shares (the middleware's and the extractors'). Served at
//! `GET /api-docs/openapi.json`; `scripts/fuzz.sh` runs schemathesis
//! against it, which is what keeps it truthful.

use super::bodies::{
    BreakerState, Liveness, NotificationPage, NotificationReply, OrderPage, OrderReply,
    OutboxBacklog, ParkedRecord, ParkedRecords, PaymentLink, Readiness, Replayed, WebhookAck,
    WebhookOutcome,
};
use super::error::{ErrorBody, ErrorTag};
use super::routes;
use crate::orders::model;
use crate::orders::validation::{CreateOrder, DeliverOrder, MarkAsRead, RequestExtension};
use crate::webhooks::flutterwave::{WebhookData, WebhookEvent};
use axum::Json;
use axum::Router;
use axum::routing::get;
use std::sync::OnceLock;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{Object, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, PathItem, Ref, RefOr};
use utoipa::{Modify, OpenApi};

/// Security scheme names, as the handlers' `security(...)` use them.
pub const GATEWAY: &str = "gatewayToken";
pub const USER: &str = "userToken";
pub const ADMIN: &str = "adminToken";
pub const WEBHOOK_HASH: &str = "webhookHash";
pub const WEBHOOK_SIGNATURE: &str = "webhookSignature";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "GigConnect Order Service",
        description = "Orders, their Flutterwave payments, notifications and operator routes. \
Every error is the `ErrorBody` JSON. Besides the statuses listed per operation, any path \
that matches no route answers 404 and a known path with another method 405 (with `Allow`), \
both with the `ErrorBody` JSON. Socket.IO (`/socket.io/`) shares the port and is not REST.",
        license(name = "MIT")
    ),
    paths(
        routes::orders::create,
        routes::orders::order,
        routes::orders::seller_orders,
        routes::orders::buyer_orders,
        routes::orders::verify,
        routes::orders::checkout,
        routes::orders::cancel,
        routes::orders::request_extension,
        routes::orders::decide_extension,
        routes::orders::deliver,
        routes::orders::approve,
        routes::orders::notifications,
        routes::orders::mark_as_read,
        routes::webhooks::flutterwave,
        routes::health::order_health,
        routes::health::live,
        routes::health::ready,
        routes::metrics::metrics,
        routes::admin::parked,
        routes::admin::replay_one,
        routes::admin::replay_all,
        openapi_json,
    ),
    components(schemas(
        ErrorBody,
        ErrorTag,
        CreateOrder,
        RequestExtension,
        DeliverOrder,
        MarkAsRead,
        WebhookEvent,
        WebhookData,
        OrderReply,
        OrderPage,
        NotificationPage,
        NotificationReply,
        PaymentLink,
        WebhookAck,
        WebhookOutcome,
        Liveness,
        Readiness,
        BreakerState,
        OutboxBacklog,
        ParkedRecords,
        ParkedRecord,
        Replayed,
        model::Order,
        model::OrderStatus,
        model::Offer,
        model::DeliveredWork,
        model::ExtensionRequest,
        model::OrderEvents,
        model::Review,
        model::Payment,
        model::CheckoutClaim,
        model::Refund,
        model::RefundStatus,
        model::StrayPayment,
        model::Notification,
    )),
    modifiers(&SecuritySchemes, &Aliases, &Outcomes),
    tags(
        (name = "orders", description = "`/api/v1/order/**`: `gatewaytoken` and a user token"),
        (name = "notifications", description = "A user's notifications"),
        (name = "webhooks", description = "Flutterwave, authenticated by its hash or signature"),
        (name = "operations", description = "Health, metrics, this document"),
        (name = "admin", description = "Parked outbox records; `x-admin-token`"),
    )
)]
pub struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static Document {
    static DOCUMENT: OnceLock<Document> = OnceLock::new();
    DOCUMENT.get_or_init(ApiDoc::openapi)
}

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/api-docs/openapi.json", get(openapi_json))
}

/// This document.
#[utoipa::path(
    get,
    path = "/api-docs/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
pub async fn openapi_json() -> Json<&'static Document> {
    Json(document())
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let header = |name: &str, description: &str| {
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                name,
                description,
            )))
        };
        components.add_security_scheme(
            GATEWAY,
            header(
                "gatewaytoken",
                "HS256 JWT signed with GATEWAY_JWT_TOKEN whose `id` is one of auth, seller, \
                 gig, search, buyer, message, order, review. Missing or bad: 403.",
            ),
        );
        components.add_security_scheme(
            USER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256 JWT signed with JWT_TOKEN carrying {id, username, email, iat}; \
                         `exp`/`nbf` enforced when present with 30 s leeway. Missing, \
                         expired or bad: 401.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            ADMIN,
            header(
                "x-admin-token",
                "ADMIN_TOKEN, compared in constant time. Missing or wrong: 403.",
            ),
        );
        components.add_security_scheme(
            WEBHOOK_HASH,
            header(
                "verif-hash",
                "FLUTTERWAVE_WEBHOOK_HASH itself, compared in constant time.",
            ),
        );
        components.add_security_scheme(
            WEBHOOK_SIGNATURE,
            header(
                "flutterwave-signature",
                "base64 HMAC-SHA256 of the raw body keyed with FLUTTERWAVE_WEBHOOK_HASH.",
            ),
        );
    }
}

/// Routes mounted twice: the webhook under the order prefix too, and create
/// with the trailing slash Express accepted. The copies get their own
/// operation ids.
struct Aliases;

impl Modify for Aliases {
    fn modify(&self, openapi: &mut Document) {
        for (path, alias, suffix) in [
            (
                "/webhooks/flutterwave",
                "/api/v1/order/webhooks/flutterwave",
                "_under_order_prefix",
            ),
            ("/api/v1/order", "/api/v1/order/", "_trailing_slash"),
        ] {
            let Some(item) = openapi.paths.paths.get(path) else {
                continue;
            };
            let mut copy: PathItem = item.clone();
            for operation in operations(&mut copy) {
                if let Some(id) = &mut operation.operation_id {
                    id.push_str(suffix);
                }
            }
            openapi.paths.paths.insert(alias.to_string(), copy);
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// Statuses every operation can return, whatever its handler does: 400 (a
/// repeated query parameter, an undecodable path segment), 429 (rate
/// limit), 500 and 503 (`REQUEST_TIMEOUT_MS`); 401/403 follow from the
/// operation's security requirement.
struct Outcomes;

fn error(description: &str, retry_after: bool) -> RefOr<Response> {
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    );
    if retry_after {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(Object::with_type(Type::Integer))
                .description(Some("Seconds to wait before trying again"))
                .build(),
        );
    }
    RefOr::T(response.build())
}

impl Modify for Outcomes {
    fn modify(&self, openapi: &mut Document) {
        for item in openapi.paths.paths.values_mut() {
            for operation in operations(item) {
                let schemes: Vec<String> = operation
                    .security
                    .iter()
                    .flatten()
                    .filter_map(|requirement| serde_json::to_value(requirement).ok())
                    .filter_map(|value| value.as_object().cloned())
                    .flat_map(|object| object.keys().cloned().collect::<Vec<_>>())
                    .collect();
                let has = |name: &str| schemes.iter().any(|s| s == name);
                let mut shared = vec![
                    (
                        "400",
                        error(
                            "Bad input: a query parameter given twice, an undecodable path \
                             segment, or (per operation) an invalid body",
                            false,
                        ),
                    ),
                    (
                        "429",
                        error("Rate limit exceeded (per user or per client IP)", true),
                    ),
                    ("500", error("Internal failure; the cause is logged", false)),
                    (
                        "503",
                        error(
                            "Timed out (REQUEST_TIMEOUT_MS) or a provider is unavailable",
                            true,
                        ),
                    ),
                ];
                if has(USER) {
                    shared.push((
                        "401",
                        error("User token missing, expired or invalid", false),
                    ));
                }
                if has(GATEWAY) || has(ADMIN) {
                    shared.push((
                        "403",
                        error(
                            "Gateway or admin token missing or invalid, or not a party to \
                             the order",
                            false,
                        ),
                    ));
                }
                if has(WEBHOOK_HASH) {
                    shared.push((
                        "401",
                        error(
                            "Neither verif-hash nor flutterwave-signature is valid",
                            false,
                        ),
                    ));
                }
                for (status, response) in shared {
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert(response);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_and_lists_every_route() {
        let json = serde_json::to_value(document()).unwrap();
        assert!(json["openapi"].as_str().unwrap().starts_with("3.1"));
        let paths = json["paths"].as_object().unwrap();
        for (path, method) in [
            ("/api/v1/order", "post"),
            ("/api/v1/order/", "post"),
            ("/api/v1/order/{orderId}", "get"),
            ("/api/v1/order/seller/{sellerId}", "get"),
            ("/api/v1/order/buyer/{buyerId}", "get"),
            ("/api/v1/order/verify/{transactionId}/{txRef}", "put"),
            ("/api/v1/order/{orderId}/checkout", "post"),
            ("/api/v1/order/cancel/{orderId}", "put"),
            ("/api/v1/order/extension/{orderId}", "put"),
            ("/api/v1/order/gig/{type}/{orderId}", "put"),
            ("/api/v1/order/deliver-order/{orderId}", "put"),
            ("/api/v1/order/approve-order/{orderId}", "put"),
            ("/api/v1/order/notification/{userTo}", "get"),
            ("/api/v1/order/notification/mark-as-read", "put"),
            ("/webhooks/flutterwave", "post"),
            ("/api/v1/order/webhooks/flutterwave", "post"),
            ("/order-health", "get"),
            ("/health/live", "get"),
            ("/health/ready", "get"),
            ("/metrics", "get"),
            ("/admin/outbox/parked", "get"),
            ("/admin/outbox/parked/{messageId}/replay", "post"),
            ("/admin/outbox/replay-parked", "post"),
            ("/api-docs/openapi.json", "get"),
        ] {
            let operation = &paths[path][method];
            assert!(operation.is_object(), "{method} {path} missing");
            for status in ["400", "429", "500", "503"] {
                assert!(
                    operation["responses"][status].is_object(),
                    "{method} {path}: {status}"
                );
            }
        }
        let create = &paths["/api/v1/order"]["post"];
        for status in ["201", "401", "403", "409", "413", "415", "422"] {
            assert!(create["responses"][status].is_object(), "create {status}");
        }
        let schemes = json["components"]["securitySchemes"].as_object().unwrap();
        assert_eq!(schemes.len(), 5);
        assert_eq!(schemes[GATEWAY]["name"], "gatewaytoken");
        assert_eq!(schemes[USER]["scheme"], "bearer");
        let ids: Vec<&str> = paths
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .filter_map(|op| op["operationId"].as_str())
            .collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(ids.len(), unique.len(), "operation ids are unique");
    }
}
