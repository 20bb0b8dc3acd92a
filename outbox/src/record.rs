//! The stored outbox record and the description a caller stages.

use bson::DateTime;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a record goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Destination {
    /// An AMQP publish; the exchange is declared by the broker's topology.
    #[serde(rename_all = "camelCase")]
    Amqp {
        exchange: String,
        routing_key: String,
    },
    /// A Socket.IO emit to a room, delivered by the handler registered as
    /// [`Destination::SOCKET_HANDLER`].
    #[serde(rename_all = "camelCase")]
    Socket { room: String, event: String },
    /// A command to an external system, run by the handler registered under `name`.
    Command { name: String },
}

impl Destination {
    /// Name under which the socket emitter registers its handler.
    pub const SOCKET_HANDLER: &'static str = "socket";

    /// A short label for logs and metrics (`amqp:exchange/key`, `socket:event`, `command:name`).
    pub fn label(&self) -> String {
        match self {
            Destination::Amqp {
                exchange,
                routing_key,
            } => format!("amqp:{exchange}/{routing_key}"),
            Destination::Socket { event, .. } => format!("socket:{event}"),
            Destination::Command { name } => format!("command:{name}"),
        }
    }
}

/// Delivery state of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RecordStatus {
    Pending,
    Published,
    /// Gave up after the configured attempts, or refused as permanent; kept for replay.
    Parked,
}

/// What a caller stages inside its transaction.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// Records of one aggregate are delivered in the order they were staged.
    pub aggregate_id: String,
    pub destination: Destination,
    pub payload: serde_json::Value,
    /// Carried to the broker as AMQP headers (e.g. `traceparent`).
    pub headers: BTreeMap<String, String>,
    pub correlation_id: Option<String>,
}

impl NewRecord {
    /// The distinct aggregates of `records`, first seen first: what a writer
    /// hands to its relay once they are committed
    /// ([`crate::relay::Waker::hand`]).
    pub fn aggregates(records: &[NewRecord]) -> Vec<String> {
        let mut aggregates: Vec<String> = Vec::new();
        for record in records {
            if !aggregates.contains(&record.aggregate_id) {
                aggregates.push(record.aggregate_id.clone());
            }
        }
        aggregates
    }

    pub fn new(
        aggregate_id: impl Into<String>,
        destination: Destination,
        payload: serde_json::Value,
    ) -> Self {
        Self {
            aggregate_id: aggregate_id.into(),
            destination,
            payload,
            headers: BTreeMap::new(),
            correlation_id: None,
        }
    }

    pub fn amqp(
        aggregate_id: impl Into<String>,
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        payload: serde_json::Value,
    ) -> Self {
        Self::new(
            aggregate_id,
            Destination::Amqp {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
            },
            payload,
        )
    }

    pub fn command(
        aggregate_id: impl Into<String>,
        name: impl Into<String>,
        payload: serde_json::Value,
    ) -> Self {
        Self::new(
            aggregate_id,
            Destination::Command { name: name.into() },
            payload,
        )
    }

    pub fn with_correlation(mut self, correlation_id: Option<String>) -> Self {
        self.correlation_id = correlation_id;
        self
    }

    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }
}

/// A record as stored in the `outbox` collection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxRecord {
    /// The message id (UUIDv7): stable across retries, so consumers can de-duplicate.
    #[serde(rename = "_id")]
    pub message_id: String,
    pub aggregate_id: String,
    /// Position within the aggregate, from 1; delivery follows it.
    pub seq: i64,
    pub destination: Destination,
    /// The JSON body exactly as it will be sent, so retries send the same bytes.
    pub payload: String,
    pub headers: BTreeMap<String, String>,
    pub correlation_id: Option<String>,
    pub status: RecordStatus,
    pub attempts: i32,
    pub next_attempt_at: DateTime,
    pub last_error: Option<String>,
    pub created_at: DateTime,
    /// Set once confirmed; the retention TTL index counts from it.
    pub published_at: Option<DateTime>,
    pub parked_at: Option<DateTime>,
}
