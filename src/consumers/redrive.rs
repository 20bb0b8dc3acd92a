//! Operator tools for a dead-letter queue: look at what is in it, and move
//! it back to the main queue once the cause is fixed (see
//! docs/review-consumer.md).

use super::queues::QueueSet;
use super::republish::{self, Edit, RepublishError};
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use outbox::Broker;

#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error(transparent)]
    Broker(#[from] outbox::Error),
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("copy to the main queue failed: {0}")]
    Copy(#[from] RepublishError),
}

/// One dead-lettered message as an operator sees it.
#[derive(Debug, Clone)]
pub struct Parked {
    pub message_id: Option<String>,
    pub reason: Option<String>,
    pub dead_lettered_at: Option<String>,
    pub retries: u32,
    /// The first 200 characters of the body.
    pub body: String,
}

/// The number of messages in the DLQ and up to `limit` of them, oldest
/// first. Nothing is removed: the messages are fetched without an ack and
/// return to the queue when the channel closes.
pub async fn peek(
    broker: &Broker,
    queues: &QueueSet,
    limit: usize,
) -> Result<(u32, Vec<Parked>), RedriveError> {
    let channel = open(broker, false).await?;
    let total = depth(&channel, &queues.dlq).await?;
    let mut parked = Vec::new();
    while parked.len() < limit {
        let Some(message) = channel
            .basic_get(
                queues.dlq.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?
        else {
            break;
        };
        let props = &message.delivery.properties;
        parked.push(Parked {
            message_id: props.message_id().as_ref().map(|s| s.to_string()),
            reason: republish::header_text(props, republish::DEAD_LETTER_REASON),
            dead_lettered_at: republish::header_text(props, republish::DEAD_LETTERED_AT),
            retries: republish::retry_count(props),
            body: String::from_utf8_lossy(&message.delivery.data)
                .chars()
                .take(200)
                .collect(),
        });
    }
    let _ = channel.close(200, "peeked".into()).await;
    Ok((total, parked))
}

/// Moves every message in the DLQ at the time of the call back to the main
/// queue, with its body and `message_id` unchanged and a fresh retry budget;
/// each is acknowledged in the DLQ only after the broker confirmed its copy.
/// Messages that fail again while this runs land behind the ones counted at
/// the start, so the loop ends. Returns how many were moved.
pub async fn redrive(broker: &Broker, queues: &QueueSet) -> Result<u64, RedriveError> {
    let channel = open(broker, true).await?;
    let waiting = depth(&channel, &queues.dlq).await?;
    let mut moved = 0;
    for _ in 0..waiting {
        let Some(message) = channel
            .basic_get(
                queues.dlq.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?
        else {
            break;
        };
        let delivery = message.delivery;
        let redrives = republish::header_count(&delivery.properties, republish::REDRIVE_COUNT);
        let edit = Edit {
            set: vec![(
                republish::REDRIVE_COUNT,
                AMQPValue::LongLongInt(i64::from(redrives) + 1),
            )],
            remove: &[
                republish::RETRY_COUNT,
                republish::RETRY_REASON,
                republish::DEAD_LETTER_REASON,
                republish::DEAD_LETTERED_AT,
            ],
            expire_after: None,
        };
        republish::copy_to(&channel, &queues.main, &delivery, edit).await?;
        delivery.ack(BasicAckOptions::default()).await?;
        moved += 1;
    }
    let _ = channel.close(200, "redriven".into()).await;
    Ok(moved)
}

async fn open(broker: &Broker, confirms: bool) -> Result<Channel, RedriveError> {
    let (connection, _) = broker.connection().await?;
    let channel = connection.create_channel().await?;
    if confirms {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
    }
    Ok(channel)
}

/// Messages ready in `queue` (passive declare: fails if it does not exist).
async fn depth(channel: &Channel, queue: &str) -> Result<u32, RedriveError> {
    let queue = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(queue.message_count())
}
