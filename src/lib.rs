//! GigConnect Order Service: orders, their payments through Flutterwave,
//! and every event they cause, delivered through a transactional outbox.
//!
//! - [`config`] - environment to typed configuration;
//! - [`app`] - wiring and graceful shutdown; [`entry`] - the process entry;
//! - [`http`] - routes, authentication, the error boundary;
//! - [`orders`] - the domain (model, state machine, fees, events, commands);
//! - [`payments`] - Flutterwave client, payment checks, refunds;
//! - [`consumers`] - events from other services (reviews), applied once each;
//! - [`webhooks`] - the Flutterwave webhook receiver;
//! - [`realtime`] - Socket.IO notifications, delivered from the outbox;
//! - [`notifications`], [`uploads`] - the smaller parts;
//! - [`telemetry`] - logging.
//!
//! The outbox itself lives in the `outbox` crate and knows nothing of orders.

pub mod app;
pub mod cli;
pub mod config;
pub mod consumers;
pub mod entry;
pub mod http;
pub mod notifications;
pub mod orders;
pub mod payments;
pub mod realtime;
pub mod telemetry;
pub mod uploads;
pub mod webhooks;
