//! The HTTP surface: routes (thin: parse, authorize, call one command),
//! authentication extractors, the error boundary and middleware (limits,
//! rate limits, security headers), and the OpenAPI document of it all.

pub mod auth;
pub mod bodies;
pub mod error;
pub mod extract;
pub mod limits;
pub mod openapi;
pub mod probe;
pub mod rate_limit;
pub mod routes;
pub mod trace;

use crate::config::Config;
use crate::notifications::Notifications;
use crate::orders::Orders;
use crate::payments::Payments;
use crate::payments::checkout::Checkout;
use crate::realtime::Realtime;
use crate::telemetry::metrics::{self, Metrics};
use crate::uploads::Uploads;
use crate::webhooks::flutterwave::WebhookReceiver;
use axum::Router;
use axum::http::{HeaderValue, Method, header};
use mongodb::Database;
use outbox::{Broker, Outbox};
use std::sync::Arc;
use tower_http::cors::CorsLayer;
use tower_http::trace::TraceLayer;

/// Everything a handler may need, behind one `Arc`: axum clones the state
/// for every request and for every extractor and middleware that takes it,
/// and the services hold strings and settings that are not free to copy.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Services {
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
    pub metrics: Metrics,
    /// The Socket.IO server on this port (and the emitter's fault switch).
    pub realtime: Realtime,
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
    let router = Router::new()
        .merge(routes::health::router())
        .merge(routes::webhooks::router())
        .nest("/api/v1/order", routes::orders::router())
        // Express answered both spellings; the gateway may still send the slash.
        .route(
            "/api/v1/order/",
            axum::routing::post(routes::orders::create).layer(
                axum::extract::DefaultBodyLimit::max(routes::orders::BODY_LIMIT),
            ),
        )
        .merge(routes::admin::router())
        .merge(routes::metrics::router())
        .merge(openapi::router())
        // After every route: a known path with another method is 405 with
        // the JSON error (and `Allow`), not an empty body.
        .method_not_allowed_fallback(routes::method_not_allowed)
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn(limits::single_valued_query))
        .layer(axum::middleware::from_fn({
            let limit = state.config.request_timeout;
            move |request, next| limits::timeout(limit, request, next)
        }))
        .layer(axum::middleware::from_fn(error::log_internal_errors))
        .layer(axum::middleware::from_fn({
            let limits = Arc::new(rate_limit::RateLimits::new(
                &state.config.rate_limits,
                state.metrics.clone(),
            ));
            move |request, next| rate_limit::limit(limits.clone(), request, next)
        }))
        .layer(axum::middleware::from_fn({
            let metrics = state.metrics.clone();
            move |request, next| metrics::track_http(metrics.clone(), request, next)
        }))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(trace::make_span)
                // One line per request at INFO: what operators search in Kibana.
                .on_response(trace::RecordResponse::default()),
        );
    // Socket.IO answers `/socket.io/` ahead of the routes and their metrics
    // (long polls and websockets would swamp the request histograms); CORS
    // stays outermost so the socket, too, answers only the gateway's origin.
    // The security headers go on every response, the socket's included.
    let router = limits::security_headers(state.realtime.attach(router));
    router.layer(cors).with_state(state)
}
