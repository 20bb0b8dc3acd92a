//! Handlers for destinations the relay does not deliver itself (commands, socket emits).

use crate::record::OutboxRecord;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Why a delivery did not succeed; it decides what the relay does next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    /// Worth retrying with backoff; counts as an attempt.
    #[error("transient: {0}")]
    Transient(String),
    /// Will never succeed as it is: parked at once for an operator.
    #[error("permanent: {0}")]
    Permanent(String),
    /// The destination is unavailable as a whole (broker down, breaker open):
    /// wait and try again without holding it against the record.
    #[error("unavailable: {reason}")]
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
    /// The effect is under way elsewhere and not settled yet (a provider
    /// still processing it): look again after `retry_after`. Not a failure,
    /// so it counts no attempt and never parks the record.
    #[error("not yet: {reason}")]
    NotYet {
        reason: String,
        retry_after: Duration,
    },
}

pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send + 'a>>;

/// Runs one record. Must be idempotent: a record can be handed over more than
/// once (a crash after the effect and before the record is marked done).
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(&'a self, record: &'a OutboxRecord) -> HandlerFuture<'a>;
}
