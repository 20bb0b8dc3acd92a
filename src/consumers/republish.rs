//! Copies a consumed message to another queue (retry or DLQ) and waits for
//! the broker's confirm, so that the original may be acknowledged only once
//! the copy is safe: a message is never in neither place.

use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use std::time::Duration;

/// Header: how many retries a message has had.
pub const RETRY_COUNT: &str = "x-retry-count";
/// Header: why the last try failed (on retry copies).
pub const RETRY_REASON: &str = "x-retry-reason";
/// Header: why a message was dead-lettered.
pub const DEAD_LETTER_REASON: &str = "x-dead-letter-reason";
/// Header: when it was dead-lettered (RFC 3339).
pub const DEAD_LETTERED_AT: &str = "x-dead-lettered-at";
/// Header: how often an operator moved it back from the DLQ.
pub const REDRIVE_COUNT: &str = "x-redrive-count";

/// A broker that neither confirms nor fails within this is treated as failed.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// Header values are kept short: they are for a human reading the DLQ.
const MAX_HEADER_CHARS: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum RepublishError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    /// The target queue does not exist: the copy would have been dropped.
    #[error("queue {0} is missing; the copy was returned")]
    Unroutable(String),
    #[error("the broker refused the copy")]
    Nacked,
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
}

/// How the copy differs from the original.
#[derive(Debug, Default)]
pub struct Edit {
    /// Headers to set (replacing any of the same name).
    pub set: Vec<(&'static str, AMQPValue)>,
    /// Headers to drop.
    pub remove: &'static [&'static str],
    /// Per-message expiry in the target queue (the retry delay).
    pub expire_after: Option<Duration>,
}

/// Publishes a copy of `delivery` (body, `message_id` and headers) to `queue`
/// through the default exchange and waits for the confirm. `channel` must
/// be in confirm mode.
pub async fn copy_to(
    channel: &Channel,
    queue: &str,
    delivery: &Delivery,
    edit: Edit,
) -> Result<(), RepublishError> {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            // Mandatory: an unroutable copy comes back instead of vanishing.
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &delivery.data,
            properties(&delivery.properties, edit),
        )
        .await?;
    match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
        Err(_) => Err(RepublishError::Timeout(CONFIRM_TIMEOUT)),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(Confirmation::Ack(Some(_)))) => Err(RepublishError::Unroutable(queue.to_string())),
        Ok(Ok(Confirmation::Ack(None))) | Ok(Ok(Confirmation::NotRequested)) => Ok(()),
        Ok(Ok(Confirmation::Nack(_))) => Err(RepublishError::Nacked),
    }
}

/// The copy's properties: what identifies and describes the message, made
/// persistent. Not copied: `user-id` (the broker refuses one that is not
/// ours), `expiration` (a DLQ copy must not expire), `reply-to`.
fn properties(original: &BasicProperties, edit: Edit) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(existing) = original.headers() {
        for (key, value) in existing {
            if !edit.remove.contains(&key.as_str()) {
                headers.insert(key.clone(), value.clone());
            }
        }
    }
    for (key, value) in edit.set {
        headers.insert(key.into(), value);
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(v) = original.message_id() {
        props = props.with_message_id(v.clone());
    }
    if let Some(v) = original.correlation_id() {
        props = props.with_correlation_id(v.clone());
    }
    if let Some(v) = original.content_type() {
        props = props.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        props = props.with_content_encoding(v.clone());
    }
    if let Some(v) = original.timestamp() {
        props = props.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        props = props.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        props = props.with_app_id(v.clone());
    }
    if let Some(after) = edit.expire_after {
        props = props.with_expiration(ShortString::from(after.as_millis().to_string()));
    }
    props
}

/// A text header, cut to a readable length.
pub fn text(value: &str) -> AMQPValue {
    let short: String = value.chars().take(MAX_HEADER_CHARS).collect();
    AMQPValue::LongString(short.as_str().into())
}

/// Retries recorded on `properties` (0 when none, or not a number).
pub fn retry_count(properties: &BasicProperties) -> u32 {
    header_count(properties, RETRY_COUNT)
}

/// A non-negative integer header, whatever integer type the writer chose.
pub fn header_count(properties: &BasicProperties, name: &str) -> u32 {
    let Some(value) = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
    else {
        return 0;
    };
    let n: i64 = match value {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => *v,
        _ => 0,
    };
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// Reads a text header.
pub fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_headers(pairs: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut headers = FieldTable::default();
        for (k, v) in pairs {
            headers.insert((*k).into(), v.clone());
        }
        BasicProperties::default()
            .with_headers(headers)
            .with_message_id("m-1".into())
            .with_expiration("100".into())
            .with_user_id("someone-else".into())
    }

    #[test]
    fn retry_count_reads_any_integer_type() {
        assert_eq!(retry_count(&BasicProperties::default()), 0);
        for value in [
            AMQPValue::LongLongInt(3),
            AMQPValue::LongInt(3),
            AMQPValue::ShortShortUInt(3),
        ] {
            assert_eq!(retry_count(&with_headers(&[(RETRY_COUNT, value)])), 3);
        }
        let text_value = with_headers(&[(RETRY_COUNT, text("3"))]);
        assert_eq!(retry_count(&text_value), 0);
        let negative = with_headers(&[(RETRY_COUNT, AMQPValue::LongLongInt(-2))]);
        assert_eq!(retry_count(&negative), 0);
    }

    #[test]
    fn a_copy_keeps_identity_and_drops_what_would_break_it() {
        let original = with_headers(&[("keep", text("yes")), (RETRY_COUNT, text("1"))]);
        let copy = properties(
            &original,
            Edit {
                set: vec![(DEAD_LETTER_REASON, text("bad"))],
                remove: &[RETRY_COUNT],
                expire_after: None,
            },
        );
        assert_eq!(copy.message_id().as_ref().map(|s| s.as_str()), Some("m-1"));
        assert_eq!(copy.expiration(), &None, "a DLQ copy must not expire");
        assert_eq!(copy.user_id(), &None);
        assert_eq!(copy.delivery_mode(), &Some(2));
        assert_eq!(header_text(&copy, "keep").as_deref(), Some("yes"));
        assert_eq!(
            header_text(&copy, DEAD_LETTER_REASON).as_deref(),
            Some("bad")
        );
        assert!(header_text(&copy, RETRY_COUNT).is_none());
    }

    #[test]
    fn long_reasons_are_cut() {
        let AMQPValue::LongString(s) = text(&"x".repeat(5000)) else {
            panic!("text header");
        };
        assert_eq!(s.len(), MAX_HEADER_CHARS);
    }
}
