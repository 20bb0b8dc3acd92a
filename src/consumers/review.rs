//! The review consumer (API.md, "Events in"): reads `order-review-queue`,
//! applies each review once through the inbox, and acknowledges only after
//! the commit. A malformed message goes to the DLQ at once; one that fails
//! for a reason that may pass (its order does not exist yet) goes through the
//! retry queue, and to the DLQ after `max_retries`. While the database is
//! unreachable, deliveries are held and tried again instead of burning their
//! retries, which pauses consumption until it is back.

use super::queues::QueueSet;
use super::republish::{self, Edit, RepublishError};
use super::review_message;
use super::supervisor::{self, Handler, Subscription};
use crate::orders::events::Exchanges;
use crate::orders::reviews::ReviewOutcome;
use crate::orders::{OrderError, Orders};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::{apm, trace_context};
use backon::BackoffBuilder;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use mongodb::error::ErrorKind;
use outbox::{Broker, Inbox};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The queue names of API.md, with the deployment's prefix.
pub fn queues(prefix: &str) -> QueueSet {
    QueueSet::new(
        Exchanges::new(prefix).review,
        format!("{prefix}order-review-queue"),
    )
}

/// Tuning, from `REVIEW_*` variables.
#[derive(Debug, Clone)]
pub struct ReviewSettings {
    pub prefetch: u16,
    pub max_retries: u32,
    pub retry_delay: Duration,
}

#[derive(Clone)]
pub struct ReviewConsumer {
    orders: Orders,
    inbox: Inbox,
    queues: QueueSet,
    settings: ReviewSettings,
    metrics: Option<Metrics>,
}

/// What becomes of one delivery.
#[derive(Debug, PartialEq)]
enum Disposition {
    /// Applied, or applied before: acknowledge.
    Done,
    /// Copy to the retry queue as retry number `attempt`, then acknowledge.
    Retry { attempt: u32, reason: String },
    /// Copy to the DLQ, then acknowledge.
    DeadLetter { reason: String },
    /// Leave unsettled; the broker redelivers it (shutdown, or channel lost).
    Release,
}

impl ReviewConsumer {
    pub fn new(orders: Orders, inbox: Inbox, queues: QueueSet, settings: ReviewSettings) -> Self {
        Self {
            orders,
            inbox,
            queues,
            settings,
            metrics: None,
        }
    }

    /// Count deliveries by outcome (applied, duplicate, retried, dead_lettered).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn count(&self, outcome: &str) {
        if let Some(metrics) = &self.metrics {
            let f = metrics.families();
            f.consumer_messages
                .with_label_values(&["order-review", outcome])
                .inc();
            if outcome == "duplicate" {
                f.inbox_duplicates
                    .with_label_values(&["order-review"])
                    .inc();
            }
        }
    }

    /// Consumes on its own task until `cancel`; await the handle on
    /// shutdown so that the deliveries in hand are settled first.
    pub fn start(self, broker: Broker, tag: String, cancel: CancellationToken) -> JoinHandle<()> {
        let subscription = Subscription {
            queues: self.queues.clone(),
            tag,
            prefetch: self.settings.prefetch,
        };
        tokio::spawn(supervisor::run(broker, subscription, self, cancel))
    }

    async fn decide(
        &self,
        channel: &Channel,
        delivery: &Delivery,
        key: &str,
        traceparent: &str,
        cancel: &CancellationToken,
    ) -> Disposition {
        let correlation_id = delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.to_string());
        let review = match review_message::parse(&delivery.data) {
            Ok(review) => review,
            Err(malformed) => {
                return Disposition::DeadLetter {
                    reason: format!("malformed: {malformed}"),
                };
            }
        };
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            match self
                .orders
                .apply_review(
                    &self.inbox,
                    key,
                    review.clone(),
                    traceparent,
                    correlation_id.clone(),
                )
                .await
            {
                Ok(outcome) => {
                    tracing::debug!(message_id = %key, order_id = %review.order_id, ?outcome, "review consumed");
                    if outcome == ReviewOutcome::Duplicate {
                        tracing::info!(message_id = %key, "review seen before; acknowledged without effect");
                        self.count("duplicate");
                    } else {
                        self.count("applied");
                    }
                    return Disposition::Done;
                }
                Err(e) if worth_holding(&e) => {
                    tracing::warn!(message_id = %key, error = %e, "database unavailable or busy; holding the review");
                    if !channel.status().connected() {
                        return Disposition::Release;
                    }
                    let pause = backoff.next().unwrap_or(Duration::from_secs(10));
                    tokio::select! {
                        _ = cancel.cancelled() => return Disposition::Release,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                Err(e) => {
                    let reason = match e {
                        OrderError::NotFound => format!("order {} not found", review.order_id),
                        other => other.to_string(),
                    };
                    let done = republish::retry_count(&delivery.properties);
                    return if done >= self.settings.max_retries {
                        Disposition::DeadLetter {
                            reason: format!("gave up after {done} retries: {reason}"),
                        }
                    } else {
                        Disposition::Retry {
                            attempt: done + 1,
                            reason,
                        }
                    };
                }
            }
        }
    }

    async fn settle(
        &self,
        channel: &Channel,
        delivery: Delivery,
        key: &str,
        disposition: Disposition,
        cancel: &CancellationToken,
    ) {
        let copied = match disposition {
            Disposition::Release => return,
            Disposition::Done => Ok(()),
            Disposition::Retry { attempt, reason } => {
                tracing::info!(message_id = %key, attempt, %reason, "review will be retried");
                self.count("retried");
                let edit = Edit {
                    set: vec![
                        (
                            republish::RETRY_COUNT,
                            AMQPValue::LongLongInt(attempt.into()),
                        ),
                        (republish::RETRY_REASON, republish::text(&reason)),
                    ],
                    remove: &[],
                    expire_after: Some(self.settings.retry_delay),
                };
                republish::copy_to(channel, &self.queues.retry, &delivery, edit).await
            }
            Disposition::DeadLetter { reason } => {
                tracing::warn!(message_id = %key, %reason, "review dead-lettered");
                self.count("dead_lettered");
                let edit = Edit {
                    set: vec![
                        (republish::DEAD_LETTER_REASON, republish::text(&reason)),
                        (
                            republish::DEAD_LETTERED_AT,
                            republish::text(&chrono::Utc::now().to_rfc3339()),
                        ),
                    ],
                    remove: &[],
                    expire_after: None,
                };
                republish::copy_to(channel, &self.queues.dlq, &delivery, edit).await
            }
        };
        match copied {
            Ok(()) => {
                // Chaos: the process dies after the review's commit, before its ack.
                fail::fail_point!("review-before-ack", |_| std::process::abort());
                // A failed ack is redelivered later; the inbox (or one more
                // copy in the retry queue or DLQ) absorbs it.
                if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                    tracing::warn!(message_id = %key, error = %e, "ack failed; the broker will redeliver");
                }
            }
            Err(e) => self.give_back(delivery, key, e, cancel).await,
        }
    }

    /// The copy is not known to be safe, so the original stays ours to
    /// keep: after a pause (a missing queue would otherwise spin), hand it
    /// back to the queue for another try.
    async fn give_back(
        &self,
        delivery: Delivery,
        key: &str,
        error: RepublishError,
        cancel: &CancellationToken,
    ) {
        tracing::warn!(message_id = %key, error = %error, "could not copy the review; returning it to the queue");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(self.settings.retry_delay) => {}
        }
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        let _ = delivery.nack(requeue).await;
    }
}

impl Handler for ReviewConsumer {
    /// One span per consumed message, in the trace its `traceparent` names;
    /// the records the review causes carry the same trace, under that span
    /// while spans are exported.
    async fn handle(&self, channel: &Channel, delivery: Delivery, cancel: &CancellationToken) {
        let incoming = header_text(&delivery, "traceparent");
        let parent = trace_context::continue_or_start(incoming.as_deref());
        let key = review_message::inbox_key(&delivery.properties, &delivery.data);
        let queue = self.queues.main.as_str();
        let span = tracing::info_span!(
            "consume",
            queue,
            message_id = %key,
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
        );
        apm::start_consumer_span(&span, &parent, queue);
        async {
            let traceparent = trace_context::for_what_follows(Some(&parent));
            let disposition = self
                .decide(channel, &delivery, &key, &traceparent, cancel)
                .await;
            self.settle(channel, delivery, &key, disposition, cancel)
                .await;
        }
        .instrument(span)
        .await
    }
}

/// A text header of `delivery`, if present.
fn header_text(delivery: &Delivery, name: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// Errors that say "the database cannot be reached", as opposed to "this
/// message cannot be applied now": they are not held against the message.
/// The database is unreachable, or busy with a conflicting writer: not
/// the review's fault, so it is held and tried again in place, never
/// counted towards dead-lettering. A conflict can last: an instance that
/// died inside a transaction leaves it open, holding its documents, until
/// the server reaps it (60 s on MongoDB and SecantusDB), longer than the
/// retry queue's budget.
fn worth_holding(error: &OrderError) -> bool {
    let driver = match error {
        OrderError::VersionConflict => return true,
        OrderError::Database(e) | OrderError::Outbox(outbox::Error::Mongo(e)) => e,
        _ => return false,
    };
    // `is_transient` covers lost connections and write conflicts.
    outbox::transaction::is_transient(driver)
        || matches!(driver.kind.as_ref(), ErrorKind::ServerSelection { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_or_busy_database_holds_the_review_and_anything_else_retries_it() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let unreachable = OrderError::Database(mongodb::error::Error::from(io));
        assert!(worth_holding(&unreachable));
        let conflict: mongodb::error::CommandError = bson::from_document(bson::doc! {
            "code": 112, "codeName": "WriteConflict", "errmsg": "conflicted",
        })
        .expect("command error");
        let conflict = mongodb::error::Error::from(ErrorKind::Command(conflict));
        assert!(worth_holding(&OrderError::Outbox(outbox::Error::Mongo(
            conflict
        ))));
        assert!(worth_holding(&OrderError::VersionConflict));
        assert!(!worth_holding(&OrderError::NotFound));
        assert!(!worth_holding(&OrderError::Decode("bad".into())));
    }
}
