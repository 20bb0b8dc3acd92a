//! The HTTP surface: routes (thin: parse, authorize, call one command),
//! authentication extractors, the error boundary and middleware.

pub mod auth;
pub mod error;
pub mod extract;
pub mod routes;
pub mod trace;

use crate::config::Config;
use crate::notifications::Notifications;
use crate::orders::Orders;
use crate::payments::Payments;
use crate::payments::checkout::Checkout;
use crate::uploads::Uploads;
use crate::webhooks::flutterwave::WebhookReceiver;
use axum::Router;
use axum::http::{HeaderValue, Method, header};
use mongodb::Database;
use outbox::{Broker, Outbox};
use std::sync::Arc;
use tower_http::cors::CorsLayer;
use tower_http::trace::TraceLayer;

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub auth: Arc<auth::Auth>,
    pub db: Database,
    pub orders: Orders,
    pub payments: Payments,
    pub checkout: Checkout,
    pub notifications: Notifications,
    pub uploads: Uploads,
    pub webhooks: WebhookReceiver,
    pub outbox: Outbox,
    pub broker: Broker,
}

/// The whole router; separate from the server so tests can drive it directly.
pub fn router(state: AppState) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(
            HeaderValue::from_str(&state.config.api_gateway_url)
                .unwrap_or(HeaderValue::from_static("http://localhost:4000")),
        )
        .allow_credentials(true)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("gatewaytoken"),
            header::HeaderName::from_static("idempotency-key"),
        ]);
    Router::new()
        .merge(routes::health::router())
        .merge(routes::webhooks::router())
        .nest("/api/v1/order", routes::orders::router())
        // Express answered both spellings; the gateway may still send the slash.
        .route(
            "/api/v1/order/",
            axum::routing::post(routes::orders::create),
        )
        .merge(routes::admin::router())
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn(error::log_internal_errors))
        .layer(TraceLayer::new_for_http().make_span_with(trace::make_span))
        .layer(cors)
        .with_state(state)
}
