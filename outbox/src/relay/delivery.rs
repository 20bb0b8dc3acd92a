//! A claimed round's delivery: records in order per aggregate, failures, parking, then the mark.

use super::{Claimed, Delivery, Relay, RoundOutcome};
use crate::error::Result;
use crate::handler::DeliveryError;
use crate::publisher;
use crate::record::{Destination, OutboxRecord};
use crate::store::DEFERRED;
use backon::{BackoffBuilder, ExponentialBuilder};
use bson::{DateTime, Document, doc};
use futures::StreamExt;
use lapin::Channel;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

impl Relay {
    /// Delivers a claimed round, tells the loop through `delivered` once
    /// every publish has its outcome, then marks the confirmed records
    /// published and releases the leases, whatever the mark did.
    pub(super) async fn complete(
        &self,
        claimed: Claimed,
        delivered: watch::Sender<bool>,
    ) -> Result<RoundOutcome> {
        let Claimed {
            claimed,
            pending,
            channel,
            claimed_at,
            span,
        } = claimed;
        let (outcome, confirmed) = self
            .deliver_claimed(pending, channel.as_ref(), claimed_at)
            .instrument(span.clone())
            .await;
        span.record("delivered", outcome.delivered);
        // The next round need not wait for this one's mark and release:
        // its aggregates stay busy until the round is settled.
        delivered.send_replace(true);
        // Chaos: the process dies with the records confirmed but not marked;
        // another relay sends them again once the leases expire.
        fail::fail_point!("outbox-before-mark", |_| std::process::abort());
        let marked = self.outbox.mark_published(&confirmed).await;
        let released = self.leases.release_many(&claimed).await;
        marked?;
        released?;
        Ok(outcome)
    }

    /// Delivers the claimed aggregates' records; the outcome and the ids
    /// of the confirmed ones, still to be marked.
    async fn deliver_claimed(
        &self,
        pending: Vec<Vec<OutboxRecord>>,
        channel: Option<&Channel>,
        claimed_at: Instant,
    ) -> (RoundOutcome, Vec<String>) {
        let now = DateTime::now();
        let chains: Vec<Chain> = futures::stream::iter(pending)
            .map(|records| self.deliver_chain(records, channel, claimed_at, now))
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await;
        let mut total = RoundOutcome::default();
        let mut delivered = Vec::new();
        for chain in chains {
            delivered.extend(chain.delivered);
            total.add(chain.outcome);
            // One aggregate's database hiccup must not stop the others; its
            // records are still pending and the next round tries again.
            if let Some(e) = chain.error {
                tracing::warn!(error = %e, "aggregate delivery failed");
                total.waiting = true;
            }
        }
        (total, delivered)
    }

    /// Sends one aggregate's records in order, each after the previous
    /// one's confirm, stopping at the first that fails and is not parked.
    async fn deliver_chain(
        &self,
        records: Vec<OutboxRecord>,
        channel: Option<&Channel>,
        claimed_at: Instant,
        now: DateTime,
    ) -> Chain {
        let mut chain = Chain::default();
        for record in &records {
            // Keep well inside the lease, so no other relay takes the
            // aggregate over while this one is still sending.
            if record.next_attempt_at > now || claimed_at.elapsed() > self.config.lease / 2 {
                break;
            }
            let started = Instant::now();
            match self.deliver(record, channel, claimed_at).await {
                Ok(()) => {
                    self.observe(
                        record,
                        Delivery::Delivered {
                            latency: started.elapsed(),
                        },
                    );
                    chain.delivered.push(record.message_id.clone());
                    chain.outcome.delivered += 1;
                }
                Err(error) => {
                    // Written before anything behind it goes: a parked record
                    // must be parked before its successor is published.
                    let parked = match self.record_failure(record, &error).await {
                        Ok(parked) => parked,
                        Err(e) => {
                            chain.error = Some(e);
                            break;
                        }
                    };
                    if parked {
                        chain.outcome.parked += 1;
                        // A parked record no longer holds back the ones
                        // behind it: it waits for an operator, they need not.
                        continue;
                    }
                    match error {
                        DeliveryError::Unavailable { .. } => chain.outcome.waiting = true,
                        _ => chain.outcome.retried += 1,
                    }
                    break;
                }
            }
        }
        chain
    }

    async fn deliver(
        &self,
        record: &OutboxRecord,
        channel: Option<&Channel>,
        claimed_at: Instant,
    ) -> Result<(), DeliveryError> {
        match &record.destination {
            Destination::Amqp {
                exchange,
                routing_key,
            } => {
                let Some(channel) = channel else {
                    return Err(DeliveryError::Unavailable {
                        reason: "broker unavailable".into(),
                        retry_after: Duration::from_secs(1),
                    });
                };
                let result = publisher::publish(
                    channel,
                    record,
                    exchange,
                    routing_key,
                    self.config.confirm_timeout,
                )
                .await;
                match (result, &self.broker) {
                    (Err(DeliveryError::Transient(reason)), Some(broker))
                        if !broker.connection_alive().await =>
                    {
                        broker.invalidate().await;
                        Err(DeliveryError::Unavailable {
                            reason,
                            retry_after: Duration::from_secs(1),
                        })
                    }
                    (Err(e @ DeliveryError::Unavailable { .. }), Some(broker)) => {
                        broker.invalidate().await;
                        Err(e)
                    }
                    (result, _) => result,
                }
            }
            Destination::Socket { .. } => {
                self.run_handler(Destination::SOCKET_HANDLER, record, claimed_at)
                    .await
            }
            Destination::Command { name } => self.run_handler(name, record, claimed_at).await,
        }
    }

    /// Runs a handler, stopping it before the lease runs out: past the
    /// lease another instance may take the aggregate over and run the same
    /// record, and a command (a refund) must never run twice at once.
    async fn run_handler(
        &self,
        name: &str,
        record: &OutboxRecord,
        claimed_at: Instant,
    ) -> Result<(), DeliveryError> {
        let Some(handler) = self.handlers.get(name) else {
            // Not permanent: during a rolling deploy another instance may
            // know the handler; retries give it the chance.
            return Err(DeliveryError::Transient(format!("no handler named {name}")));
        };
        let budget = handler_deadline(self.config.lease).saturating_sub(claimed_at.elapsed());
        match tokio::time::timeout(budget, handler.handle(record)).await {
            Ok(result) => result,
            // Retried like any failure; a handler that can have had an
            // effect checks for it first (the refund asks the provider).
            Err(_) => Err(DeliveryError::Transient(format!(
                "handler {name} stopped: still running when its lease was about to end"
            ))),
        }
    }

    /// Writes the failure down; returns whether the record is now parked.
    async fn record_failure(&self, record: &OutboxRecord, error: &DeliveryError) -> Result<bool> {
        let now = DateTime::now();
        let after = |delay: Duration| {
            DateTime::from_millis(now.timestamp_millis() + delay.as_millis() as i64)
        };
        // A record waiting on purpose keeps its `deferred` mark through a
        // failed look-up: it is still waiting, not late, and its failures
        // count towards parking, which clears the mark.
        let (update, parked) = match error {
            // Broker-wide outages are not written per record: the next
            // round finds the same records due and the loop backs off.
            DeliveryError::Unavailable { .. }
                if matches!(record.destination, Destination::Amqp { .. }) =>
            {
                self.observe(record, Delivery::Failed(error));
                return Ok(false);
            }
            // Not held against the record: no attempt is counted.
            DeliveryError::Unavailable {
                reason,
                retry_after,
            } => (
                doc! { "$set": { "nextAttemptAt": after(*retry_after), "lastError": reason } },
                false,
            ),
            // Progress, not failure: the effect exists. The failures before
            // it are forgiven, so that over days of looking the odd timeout
            // never adds up to parking.
            DeliveryError::NotYet {
                reason,
                retry_after,
            } => (
                doc! {
                    "$set": {
                        "attempts": 0,
                        "nextAttemptAt": after(*retry_after),
                        "lastError": reason,
                        DEFERRED: true,
                    },
                },
                false,
            ),
            DeliveryError::Permanent(reason) => (park(now, reason, record.attempts + 1), true),
            DeliveryError::Transient(reason) => {
                let attempts = record.attempts + 1;
                if attempts >= self.config.max_attempts {
                    (park(now, reason, attempts), true)
                } else {
                    (
                        doc! {
                            "$set": {
                                "attempts": attempts,
                                "nextAttemptAt": after(self.backoff(attempts)),
                                "lastError": reason,
                            },
                        },
                        false,
                    )
                }
            }
        };
        if parked {
            tracing::error!(message_id = %record.message_id, destination = %record.destination.label(), error = %error, "outbox record parked");
            self.observe(record, Delivery::Parked(error));
        } else if let DeliveryError::NotYet { .. } = error {
            tracing::info!(message_id = %record.message_id, destination = %record.destination.label(), error = %error, "outbox record not settled yet; will look again");
            self.observe(record, Delivery::Deferred(error));
        } else {
            tracing::warn!(message_id = %record.message_id, destination = %record.destination.label(), error = %error, "outbox delivery failed; will retry");
            self.observe(record, Delivery::Failed(error));
        }
        // `update_many` on an `_id` is not a retryable write; the update is
        // idempotent, so the server need not keep a retry record for it.
        self.outbox
            .records
            .update_many(
                doc! { "_id": &record.message_id, "status": "pending" },
                update,
            )
            .await?;
        Ok(parked)
    }

    fn backoff(&self, attempts: i32) -> Duration {
        ExponentialBuilder::default()
            .with_min_delay(self.config.min_backoff)
            .with_max_delay(self.config.max_backoff)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(attempts.saturating_sub(1).max(0) as usize)
            .unwrap_or(self.config.max_backoff)
    }

    fn observe(&self, record: &OutboxRecord, delivery: Delivery<'_>) {
        if let Some(observer) = &self.observer {
            observer.observe(record, delivery);
        }
    }
}

/// How long into its lease a handler may run: the rest is left for the
/// round's other chains to settle and for clocks between instances.
fn handler_deadline(lease: Duration) -> Duration {
    lease.mul_f64(0.8)
}

fn park(now: DateTime, reason: &str, attempts: i32) -> Document {
    doc! {
        "$set": { "status": "parked", "parkedAt": now, "attempts": attempts, "lastError": reason },
        "$unset": { DEFERRED: "" },
    }
}

/// What delivering one aggregate's records came to.
#[derive(Default)]
struct Chain {
    /// Confirmed, in order; marked published together after the round.
    delivered: Vec<String>,
    outcome: RoundOutcome,
    error: Option<crate::error::Error>,
}
