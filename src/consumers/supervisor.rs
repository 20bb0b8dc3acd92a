//! The consume loop every consumer shares: take the broker's current
//! connection, open an own channel, declare the queues, set the prefetch,
//! consume; when the stream ends (the connection or channel is gone), back
//! off and do it again. Messages left unacknowledged by a lost channel are
//! redelivered by the broker; the inbox makes the redelivery harmless.

use super::queues::QueueSet;
use backon::BackoffBuilder;
use futures::StreamExt;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use outbox::Broker;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Setting up a channel on a half-dead connection can hang until heartbeats
/// notice; give up sooner and try a fresh connection.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Settles one delivery: acknowledges it, or copies it elsewhere and then
/// acknowledges it, or leaves it for the broker to redeliver.
pub(crate) trait Handler: Send + Sync {
    fn handle(
        &self,
        channel: &Channel,
        delivery: Delivery,
        cancel: &CancellationToken,
    ) -> impl Future<Output = ()> + Send;
}

/// What to consume and how much at once.
pub(crate) struct Subscription {
    pub(crate) queues: QueueSet,
    /// Shown in the broker's consumer list.
    pub(crate) tag: String,
    /// Unacknowledged deliveries the broker sends ahead; also how many are
    /// handled concurrently.
    pub(crate) prefetch: u16,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Broker(#[from] outbox::Error),
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("channel setup timed out")]
    Timeout,
}

/// Consumes until `cancel`, reconnecting as often as needed. Returns after
/// the deliveries in hand are settled and the channel is closed.
pub(crate) async fn run<H: Handler>(
    broker: Broker,
    subscription: Subscription,
    handler: H,
    cancel: CancellationToken,
) {
    let fresh = || {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = fresh();
    let queue = subscription.queues.main.as_str();
    while !cancel.is_cancelled() {
        match session(&broker, &subscription, &handler, &cancel).await {
            Ok(()) if cancel.is_cancelled() => break,
            Ok(()) => {
                // It did consume, so the next attempt starts from the
                // smallest pause rather than where the last outage left off.
                backoff = fresh();
                tracing::warn!(queue, "consumer stream ended; resubscribing");
            }
            Err(e) => tracing::warn!(queue, error = %e, "cannot consume; retrying"),
        }
        let pause = backoff.next().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    tracing::info!(queue, "consumer stopped");
}

/// One subscription on one channel; `Ok` once the stream has ended.
async fn session<H: Handler>(
    broker: &Broker,
    subscription: &Subscription,
    handler: &H,
    cancel: &CancellationToken,
) -> Result<(), SessionError> {
    let (channel, consumer, generation) =
        tokio::time::timeout(SETUP_TIMEOUT, subscribe(broker, subscription))
            .await
            .map_err(|_| SessionError::Timeout)??;
    tracing::info!(queue = %subscription.queues.main, generation, "consuming");
    consumer
        .take_until(cancel.cancelled())
        .for_each_concurrent(usize::from(subscription.prefetch.max(1)), |item| {
            let channel = &channel;
            async move {
                match item {
                    Ok(delivery) => handler.handle(channel, delivery, cancel).await,
                    Err(e) => tracing::warn!(error = %e, "consumer lost its channel"),
                }
            }
        })
        .await;
    // Closing hands every delivery not yet settled back to the queue at once
    // (on a dead channel this fails quickly, and the broker did it already).
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        channel.close(200, "consumer stopping".into()),
    )
    .await;
    Ok(())
}

async fn subscribe(
    broker: &Broker,
    subscription: &Subscription,
) -> Result<(Channel, lapin::Consumer, u64), SessionError> {
    let (connection, generation) = broker.connection().await?;
    let channel = connection.create_channel().await?;
    subscription.queues.declare(&channel).await?;
    channel
        .basic_qos(subscription.prefetch.max(1), BasicQosOptions::default())
        .await?;
    // The same channel publishes retry and DLQ copies, with confirms, so a
    // copy and the ack of its original live and die together.
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            subscription.queues.main.as_str().into(),
            // Tags are for people; an over-long one is left to the broker.
            ShortString::try_new(subscription.tag.as_str()).unwrap_or_default(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer, generation))
}
