//! Response bodies of the REST routes: the handlers serialize these, and the
//! OpenAPI document ([`super::openapi`]) describes them, so the two cannot
//! drift apart. Field names are the old service's.

use crate::orders::model::{Notification, Order};
use serde::Serialize;
use utoipa::ToSchema;

/// One order and what happened to it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderReply {
    pub message: String,
    pub order: Order,
}

impl OrderReply {
    pub fn new(message: &str, order: Order) -> Self {
        Self {
            message: message.to_string(),
            order,
        }
    }
}

/// A page of orders, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderPage {
    pub message: String,
    pub orders: Vec<Order>,
    /// Pass as `?cursor=` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// A page of notifications, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationPage {
    pub message: String,
    pub notifications: Vec<Notification>,
    /// Pass as `?cursor=` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// One notification after a change.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationReply {
    pub message: String,
    pub notification: Notification,
}

/// The hosted Flutterwave payment page of an order.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentLink {
    pub message: String,
    /// Open it in the buyer's browser; the same link on every request
    /// while its page takes payments, a new one after.
    pub link: String,
}

/// What the webhook did with an authentic event.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAck {
    /// Always `success`.
    pub status: String,
    pub message: WebhookOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookOutcome {
    /// First delivery of a `charge.completed`: re-verification staged.
    Accepted,
    /// Seen before (same event type and `data.id`): no second effect.
    Duplicate,
    /// Another event type: recorded, no effect.
    Ignored,
}

/// `GET /health/live`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    /// Always `ok`.
    pub status: String,
}

/// `GET /health/ready`: per dependency. Documentation only: the handler
/// builds the same shape.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// `ready`, or `not ready` (with 503) when MongoDB or RabbitMQ is down.
    pub status: String,
    /// `up` or `down`.
    pub mongo: String,
    /// `up` or `down`.
    pub rabbitmq: String,
    /// `configured` or `disabled`.
    pub elasticsearch: String,
    pub flutterwave: BreakerState,
    /// `null` when the outbox could not be read within 2 s.
    pub outbox: Option<OutboxBacklog>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BreakerState {
    /// `closed`, `open` or `half_open`.
    pub breaker: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboxBacklog {
    pub pending: u64,
    pub parked: u64,
    pub oldest_pending_seconds: u64,
}

/// `GET /admin/outbox/parked`. Documentation only, as [`Readiness`].
#[derive(Debug, Serialize, ToSchema)]
pub struct ParkedRecords {
    pub message: String,
    pub records: Vec<ParkedRecord>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParkedRecord {
    pub message_id: String,
    /// The order id (or `webhook:{txRef}` for an unknown reference).
    pub aggregate_id: String,
    pub seq: i64,
    /// `amqp:{exchange}/{routingKey}`, `socket:{event}` or `command:{name}`.
    pub destination: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: Option<String>,
    pub parked_at: Option<String>,
    /// The message body as it will be published.
    pub payload: String,
}

/// The admin replay routes.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    pub message: String,
    /// How many parked records were queued again.
    pub replayed: u64,
}
