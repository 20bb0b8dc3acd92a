//! Publishes one outbox record to RabbitMQ and waits for its confirm.

use crate::handler::DeliveryError;
use crate::record::OutboxRecord;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation};
use std::time::Duration;

/// AMQP properties peers rely on: a stable `message_id` for de-duplication,
/// persistence, JSON content type, correlation and trace headers.
pub fn properties(record: &OutboxRecord) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (key, value) in &record.headers {
        headers.insert(
            key.as_str().into(),
            AMQPValue::LongString(value.as_str().into()),
        );
    }
    let timestamp = (record.created_at.timestamp_millis() / 1000).max(0) as u64;
    let mut props = BasicProperties::default()
        .with_message_id(record.message_id.as_str().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(timestamp)
        .with_headers(headers);
    if let Some(correlation) = &record.correlation_id {
        props = props.with_correlation_id(correlation.as_str().into());
    }
    props
}

/// Publishes and waits for the broker's confirm; a record counts as
/// delivered only on an ack. Failures come back as transient; the relay
/// decides from the connection's state whether the broker as a whole is gone.
pub async fn publish(
    channel: &Channel,
    record: &OutboxRecord,
    exchange: &str,
    routing_key: &str,
    confirm_timeout: Duration,
) -> Result<(), DeliveryError> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            record.payload.as_bytes(),
            properties(record),
        )
        .await
        .map_err(|e| DeliveryError::Transient(e.to_string()))?;
    match tokio::time::timeout(confirm_timeout, confirm).await {
        // A broker that neither confirms nor fails (blocked by an alarm, or a
        // peer gone silent) is unavailable as a whole; the record is not to blame.
        Err(_) => Err(DeliveryError::Unavailable {
            reason: "publisher confirm timed out".into(),
            retry_after: Duration::from_secs(1),
        }),
        Ok(Err(e)) => Err(DeliveryError::Transient(e.to_string())),
        Ok(Ok(Confirmation::Nack(_))) => Err(DeliveryError::Transient("broker nacked".into())),
        Ok(Ok(_)) => Ok(()),
    }
}
