//! The crate's error type.

/// Everything the outbox, inbox and relay can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("broker error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker unavailable: {0}")]
    BrokerUnavailable(String),
    #[error("payload is not valid JSON: {0}")]
    Payload(#[from] serde_json::Error),
    #[error("stored record is malformed: {0}")]
    Decode(#[from] bson::de::Error),
    #[error("record could not be encoded: {0}")]
    Encode(#[from] bson::ser::Error),
    #[error("lease write refused: {0}")]
    Lease(String),
    #[error("no such record: {0}")]
    NotFound(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
