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

/// How often a consuming session checks that its channel is still there.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

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
    let queue = subscription.queues.main.as_str();
    tracing::info!(queue, generation, "consuming");
    let consuming = consumer.take_until(cancel.cancelled()).for_each_concurrent(
        usize::from(subscription.prefetch.max(1)),
        |item| {
            let channel = &channel;
            async move {
                match item {
                    Ok(delivery) => handler.handle(channel, delivery, cancel).await,
                    Err(e) => tracing::warn!(error = %e, "consumer lost its channel"),
                }
            }
        },
    );
    // A lost channel does not always end the stream, and a delivery in hand
    // can wait on it forever (an ack or a confirm that is never answered):
    // seen under repeated connection resets, when the consumer stopped for
    // good. Once the channel is gone, what is in hand is dropped; the broker
    // redelivers it, and the inbox makes the redelivery harmless.
    let channel_lost = async {
        loop {
            tokio::time::sleep(LIVENESS_CHECK).await;
            if !channel.status().connected() {
                break;
            }
        }
    };
    tokio::select! {
        _ = consuming => {}
        _ = channel_lost => {
            tracing::warn!(queue, "channel lost with deliveries in hand; leaving them to redelivery");
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::BasicProperties;
    use lapin::options::{
        BasicAckOptions, BasicPublishOptions, ExchangeDeleteOptions, QueueDeleteOptions,
    };
    use outbox::{BrokerConfig, Topology};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Holds its first delivery forever while its channel goes away, as an
    /// ack or a confirm left unanswered by a reset connection does; acks
    /// every later one.
    struct HangsOnce {
        calls: Arc<AtomicUsize>,
    }

    impl Handler for HangsOnce {
        async fn handle(&self, channel: &Channel, delivery: Delivery, _: &CancellationToken) {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                let channel = channel.clone();
                tokio::spawn(async move { channel.close(200, "gone".into()).await });
                std::future::pending::<()>().await;
            }
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
    }

    /// Against the machine's RabbitMQ (scripts/test.sh starts it).
    #[tokio::test]
    async fn a_delivery_stuck_on_a_lost_channel_does_not_stop_the_consumer() {
        let uri = std::env::var("TEST_AMQP_URI")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        let name = format!("supervisor-test-{}", uuid::Uuid::new_v4().simple());
        let queues = QueueSet::new(name.clone(), name.clone());
        let broker = Broker::new(BrokerConfig {
            uri,
            connection_name: "supervisor-test".into(),
            connect_timeout: Duration::from_secs(5),
            topology: Topology::default(),
        });
        let calls = Arc::new(AtomicUsize::new(0));
        let cancel = CancellationToken::new();
        let consumer = tokio::spawn(run(
            broker.clone(),
            Subscription {
                queues: QueueSet::new(name.clone(), name.clone()),
                tag: "supervisor-test".into(),
                prefetch: 4,
            },
            HangsOnce {
                calls: calls.clone(),
            },
            cancel.clone(),
        ));
        let (connection, _) = broker.connection().await.expect("broker");
        let channel = connection.create_channel().await.expect("channel");
        queues.declare(&channel).await.expect("queues");
        channel
            .basic_publish(
                "".into(),
                name.as_str().into(),
                BasicPublishOptions::default(),
                b"review",
                BasicProperties::default(),
            )
            .await
            .expect("publish");

        // The first delivery hangs on its lost channel; only a consumer that
        // gives it up and subscribes again gets it redelivered.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while calls.load(Ordering::SeqCst) < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the consumer stopped: {} deliveries handled",
                calls.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cancel.cancel();
        let _ = consumer.await;
        for queue in [&queues.main, &queues.retry, &queues.dlq] {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = channel
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}
