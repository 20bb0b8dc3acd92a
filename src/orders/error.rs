//! What an order command can fail with; `http::error` maps it to responses.

use super::state_machine::Refused;
use outbox::transaction::{self, TransactionError};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("{0}")]
    Invalid(String),
    #[error("order not found")]
    NotFound,
    #[error("{0}")]
    NotFoundWhat(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("the same Idempotency-Key was used with a different request body")]
    IdempotencyMismatch,
    #[error("payment not accepted: {0}")]
    PaymentRejected(String),
    #[error("payment provider unavailable")]
    ProviderUnavailable { retry_after: Duration },
    #[error("payment provider error: {0}")]
    Provider(String),
    /// Another writer changed the order between read and write; retried.
    #[error("concurrent modification")]
    VersionConflict,
    #[error("database error: {0}")]
    Database(#[from] mongodb::error::Error),
    #[error("outbox error: {0}")]
    Outbox(#[from] outbox::Error),
    #[error("stored document is malformed: {0}")]
    Decode(String),
}

impl TransactionError for OrderError {
    fn is_transient(&self) -> bool {
        match self {
            OrderError::VersionConflict => true,
            OrderError::Database(e) | OrderError::Outbox(outbox::Error::Mongo(e)) => {
                transaction::is_transient(e)
            }
            _ => false,
        }
    }
}

impl From<bson::ser::Error> for OrderError {
    fn from(e: bson::ser::Error) -> Self {
        OrderError::Decode(e.to_string())
    }
}

impl From<bson::de::Error> for OrderError {
    fn from(e: bson::de::Error) -> Self {
        OrderError::Decode(e.to_string())
    }
}
