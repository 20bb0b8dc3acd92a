//! What the outbox's integration tests share: where the real servers are,
//! an error type for transaction bodies, and a peer's queue bound to a
//! test's own exchange.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use outbox::transaction::{self, TransactionError};

pub fn mongo_uri() -> String {
    std::env::var("TEST_MONGODB_URI")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?directConnection=true".into())
}

pub fn amqp_uri() -> String {
    std::env::var("TEST_AMQP_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error(transparent)]
    Mongo(#[from] mongodb::error::Error),
    #[error(transparent)]
    Outbox(#[from] outbox::Error),
    #[allow(dead_code, reason = "only some test binaries give up on purpose")]
    #[error("the body gave up")]
    GaveUp,
}

impl TransactionError for TestError {
    fn is_transient(&self) -> bool {
        match self {
            TestError::Mongo(e) => transaction::is_transient(e),
            TestError::Outbox(outbox::Error::Mongo(e)) => transaction::is_transient(e),
            _ => false,
        }
    }
}

/// An exclusive queue bound to `exchange` (declared durable, direct) with
/// routing key `key`, as a peer's would be; it lives as long as the
/// returned connection.
pub async fn bound_queue(exchange: &str, key: &str) -> (Connection, Channel, String) {
    let connection = Connection::connect(&amqp_uri(), ConnectionProperties::default())
        .await
        .expect("amqp");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    let queue = exclusive_queue(&channel, exchange, key, FieldTable::default()).await;
    (connection, channel, queue)
}

/// An exclusive queue with `arguments`, bound to `exchange` with `key`;
/// its name.
pub async fn exclusive_queue(
    channel: &Channel,
    exchange: &str,
    key: &str,
    arguments: FieldTable,
) -> String {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .expect("queue");
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    queue.name().to_string()
}
