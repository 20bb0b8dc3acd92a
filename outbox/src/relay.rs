//! The relay: delivers staged records after their commit.
//!
//! One round scans for due pending records, takes a lease on each aggregate
//! found, and delivers that aggregate's records strictly in `seq` order,
//! stopping at the first one that fails (so record n+1 never overtakes n).
//! Aggregates are delivered concurrently, sharing one confirm-mode channel,
//! which pipelines publishes across aggregates. The loop wakes on the
//! outbox change stream, on [`Waker::wake`] from the same process, and on a
//! polling interval as a fallback.

use crate::broker::Broker;
use crate::error::Result;
use crate::handler::{DeliveryError, Handler};
use crate::lease::Leases;
use crate::publisher;
use crate::record::{Destination, OutboxRecord};
use crate::store::Outbox;
use backon::{BackoffBuilder, ExponentialBuilder};
use bson::{DateTime, Document, doc};
use futures::{StreamExt, TryStreamExt};
use lapin::Channel;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Tuning of one relay instance; every field has a production default.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Owner name written into leases; unique per process.
    pub instance_id: String,
    /// Most due records looked at per round.
    pub scan_limit: i64,
    /// Aggregates delivered at once.
    pub concurrency: usize,
    /// Most records of one aggregate delivered under one lease.
    pub per_aggregate: i64,
    /// Fallback polling when no change-stream event or local wake-up comes.
    pub poll_interval: Duration,
    /// How long an aggregate stays claimed; a crashed instance's work is
    /// taken over after it.
    pub lease: Duration,
    /// Attempts before a record is parked.
    pub max_attempts: i32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub confirm_timeout: Duration,
    /// Listen to the outbox change stream for inserts.
    pub watch_changes: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            instance_id: format!("relay-{}", uuid::Uuid::new_v4()),
            scan_limit: 500,
            concurrency: 32,
            per_aggregate: 100,
            poll_interval: Duration::from_millis(500),
            lease: Duration::from_secs(30),
            max_attempts: 10,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(300),
            confirm_timeout: Duration::from_secs(10),
            watch_changes: true,
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundOutcome {
    pub delivered: u64,
    pub retried: u64,
    pub parked: u64,
    /// Due work is waiting for an unavailable destination (broker down,
    /// breaker open).
    pub waiting: bool,
}

impl RoundOutcome {
    fn add(&mut self, other: RoundOutcome) {
        self.delivered += other.delivered;
        self.retried += other.retried;
        self.parked += other.parked;
        self.waiting |= other.waiting;
    }

    fn progressed(&self) -> bool {
        self.delivered + self.parked > 0
    }
}

/// Outcome of one delivery, for whoever counts them (metrics, logs).
#[derive(Debug, Clone)]
pub enum Delivery<'a> {
    Delivered { latency: Duration },
    Failed(&'a DeliveryError),
    Parked(&'a DeliveryError),
}

/// Receives every delivery outcome; the service turns them into metrics.
pub trait Observer: Send + Sync + 'static {
    fn observe(&self, record: &OutboxRecord, delivery: Delivery<'_>);
}

/// Lets the writing process wake its relay right after a commit.
#[derive(Clone, Default)]
pub struct Waker(Arc<Notify>);

impl Waker {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

pub struct Relay {
    outbox: Outbox,
    broker: Option<Broker>,
    handlers: HashMap<String, Arc<dyn Handler>>,
    observer: Option<Arc<dyn Observer>>,
    leases: Leases,
    config: RelayConfig,
    waker: Waker,
}

/// A running relay; dropping it does not stop it, [`RelayHandle::shutdown`] does.
pub struct RelayHandle {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RelayHandle {
    /// Stops after the round in progress and waits for it.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

impl Relay {
    pub fn new(outbox: Outbox, config: RelayConfig) -> Self {
        let leases = Leases::new(
            outbox.leases.clone(),
            config.instance_id.clone(),
            config.lease,
        );
        Self {
            outbox,
            broker: None,
            handlers: HashMap::new(),
            observer: None,
            leases,
            config,
            waker: Waker::default(),
        }
    }

    /// Deliver AMQP destinations through this broker.
    pub fn with_broker(mut self, broker: Broker) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Run [`Destination::Command`] records named `name` (or socket emits,
    /// under [`Destination::SOCKET_HANDLER`]) with `handler`.
    pub fn with_handler(mut self, name: impl Into<String>, handler: Arc<dyn Handler>) -> Self {
        self.handlers.insert(name.into(), handler);
        self
    }

    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// Spawns the loop; it stops when `cancel` fires or on [`RelayHandle::shutdown`].
    pub fn start(self, cancel: CancellationToken) -> RelayHandle {
        let relay = Arc::new(self);
        if relay.config.watch_changes {
            tokio::spawn(watch_inserts(
                relay.outbox.clone(),
                relay.waker.clone(),
                cancel.clone(),
            ));
        }
        let task = tokio::spawn(run_loop(relay, cancel.clone()));
        RelayHandle { cancel, task }
    }

    /// Runs rounds until nothing due is left or `timeout` passes; for tests
    /// and for a one-shot CLI drain. Returns what was done in total.
    pub async fn drain(&self, timeout: Duration) -> Result<RoundOutcome> {
        let deadline = Instant::now() + timeout;
        let mut total = RoundOutcome::default();
        loop {
            let round = self.run_once().await?;
            let done = !round.progressed() && !round.waiting && round.retried == 0;
            total.add(round);
            if done || Instant::now() >= deadline {
                return Ok(total);
            }
        }
    }

    /// One round: claim due aggregates and deliver their records.
    pub async fn run_once(&self) -> Result<RoundOutcome> {
        let due = self.due_aggregates().await?;
        if due.aggregates.is_empty() {
            return Ok(RoundOutcome::default());
        }
        let channel = match (&self.broker, due.has_amqp) {
            (Some(broker), true) => match broker.publish_channel().await {
                Ok(channel) => Some(channel),
                Err(e) => {
                    tracing::warn!(error = %e, "broker unavailable; events wait in the outbox");
                    None
                }
            },
            _ => None,
        };
        let outcomes: Vec<Result<RoundOutcome>> = futures::stream::iter(due.aggregates)
            .map(|aggregate| {
                let channel = channel.as_ref();
                async move { self.deliver_aggregate(&aggregate, channel).await }
            })
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await;
        let mut total = RoundOutcome::default();
        for outcome in outcomes {
            match outcome {
                Ok(o) => total.add(o),
                // One aggregate's database hiccup must not stop the others;
                // its records are still pending and the next round tries again.
                Err(e) => {
                    tracing::warn!(error = %e, "aggregate delivery failed");
                    total.waiting = true;
                }
            }
        }
        Ok(total)
    }

    async fn due_aggregates(&self) -> Result<DueAggregates> {
        let raw = self.outbox.records.clone_with_type::<Document>();
        let mut cursor = raw
            .find(doc! { "status": "pending", "nextAttemptAt": { "$lte": DateTime::now() } })
            .projection(doc! { "aggregateId": 1, "destination.kind": 1 })
            .sort(doc! { "status": 1, "nextAttemptAt": 1 })
            .limit(self.config.scan_limit)
            .await?;
        let mut seen = HashSet::new();
        let mut due = DueAggregates::default();
        while let Some(doc) = cursor.try_next().await? {
            let aggregate = doc.get_str("aggregateId").unwrap_or_default().to_string();
            let kind = doc
                .get_document("destination")
                .ok()
                .and_then(|d| d.get_str("kind").ok())
                .unwrap_or_default();
            due.has_amqp |= kind == "amqp";
            if seen.insert(aggregate.clone()) {
                due.aggregates.push(aggregate);
            }
        }
        Ok(due)
    }

    async fn deliver_aggregate(
        &self,
        aggregate: &str,
        channel: Option<&Channel>,
    ) -> Result<RoundOutcome> {
        let mut outcome = RoundOutcome::default();
        if !self.leases.acquire(aggregate).await? {
            return Ok(outcome);
        }
        let claimed = Instant::now();
        let result = self
            .deliver_claimed(aggregate, channel, claimed, &mut outcome)
            .await;
        self.leases.release(aggregate).await?;
        result.map(|()| outcome)
    }

    async fn deliver_claimed(
        &self,
        aggregate: &str,
        channel: Option<&Channel>,
        claimed: Instant,
        outcome: &mut RoundOutcome,
    ) -> Result<()> {
        let records: Vec<OutboxRecord> = self
            .outbox
            .records
            .find(doc! { "aggregateId": aggregate, "status": "pending" })
            .sort(doc! { "aggregateId": 1, "seq": 1 })
            .limit(self.config.per_aggregate)
            .await?
            .try_collect()
            .await?;
        let now = DateTime::now();
        let mut delivered = Vec::new();
        for record in &records {
            // Keep well inside the lease, so no other relay takes the
            // aggregate over while this one is still sending.
            if record.next_attempt_at > now || claimed.elapsed() > self.config.lease / 2 {
                break;
            }
            let started = Instant::now();
            match self.deliver(record, channel).await {
                Ok(()) => {
                    self.observe(
                        record,
                        Delivery::Delivered {
                            latency: started.elapsed(),
                        },
                    );
                    delivered.push(record.message_id.clone());
                    outcome.delivered += 1;
                }
                Err(error) => {
                    let parked = self.record_failure(record, &error).await?;
                    if parked {
                        outcome.parked += 1;
                        // A parked record no longer holds back the ones
                        // behind it: it waits for an operator, they need not.
                        continue;
                    }
                    match error {
                        DeliveryError::Unavailable { .. } => outcome.waiting = true,
                        _ => outcome.retried += 1,
                    }
                    break;
                }
            }
        }
        if !delivered.is_empty() {
            self.outbox
                .records
                .update_many(
                    doc! { "_id": { "$in": delivered }, "status": "pending" },
                    doc! { "$set": { "status": "published", "publishedAt": DateTime::now() } },
                )
                .await?;
        }
        Ok(())
    }

    async fn deliver(
        &self,
        record: &OutboxRecord,
        channel: Option<&Channel>,
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
                self.run_handler(Destination::SOCKET_HANDLER, record).await
            }
            Destination::Command { name } => self.run_handler(name, record).await,
        }
    }

    async fn run_handler(&self, name: &str, record: &OutboxRecord) -> Result<(), DeliveryError> {
        match self.handlers.get(name) {
            Some(handler) => handler.handle(record).await,
            // Not permanent: during a rolling deploy another instance may
            // know the handler; retries give it the chance.
            None => Err(DeliveryError::Transient(format!("no handler named {name}"))),
        }
    }

    /// Writes the failure down; returns whether the record is now parked.
    async fn record_failure(&self, record: &OutboxRecord, error: &DeliveryError) -> Result<bool> {
        let now = DateTime::now();
        let (update, parked) = match error {
            DeliveryError::Unavailable {
                reason,
                retry_after,
            } => {
                // Broker-wide outages are not written per record: the next
                // round finds the same records due and the loop backs off.
                if matches!(record.destination, Destination::Amqp { .. }) {
                    self.observe(record, Delivery::Failed(error));
                    return Ok(false);
                }
                let next =
                    DateTime::from_millis(now.timestamp_millis() + retry_after.as_millis() as i64);
                (
                    doc! { "$set": { "nextAttemptAt": next, "lastError": reason } },
                    false,
                )
            }
            DeliveryError::Permanent(reason) => (park(now, reason, record.attempts + 1), true),
            DeliveryError::Transient(reason) => {
                let attempts = record.attempts + 1;
                if attempts >= self.config.max_attempts {
                    (park(now, reason, attempts), true)
                } else {
                    let delay = self.backoff(attempts);
                    let next =
                        DateTime::from_millis(now.timestamp_millis() + delay.as_millis() as i64);
                    (
                        doc! { "$set": { "attempts": attempts, "nextAttemptAt": next, "lastError": reason } },
                        false,
                    )
                }
            }
        };
        if parked {
            tracing::error!(message_id = %record.message_id, destination = %record.destination.label(), error = %error, "outbox record parked");
            self.observe(record, Delivery::Parked(error));
        } else {
            tracing::warn!(message_id = %record.message_id, destination = %record.destination.label(), error = %error, "outbox delivery failed; will retry");
            self.observe(record, Delivery::Failed(error));
        }
        self.outbox
            .records
            .update_one(
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

fn park(now: DateTime, reason: &str, attempts: i32) -> Document {
    doc! { "$set": { "status": "parked", "parkedAt": now, "attempts": attempts, "lastError": reason } }
}

#[derive(Default)]
struct DueAggregates {
    aggregates: Vec<String>,
    has_amqp: bool,
}

async fn run_loop(relay: Arc<Relay>, cancel: CancellationToken) {
    // Waits between rounds while a destination is unavailable grow up to a
    // few seconds, so an outage costs little and recovery is noticed quickly.
    let outage_backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut outage = outage_backoff();
    while !cancel.is_cancelled() {
        let pause = match relay.run_once().await {
            Ok(round) if round.progressed() => {
                outage = outage_backoff();
                continue;
            }
            Ok(round) if round.waiting => outage.next().unwrap_or(Duration::from_secs(5)),
            Ok(_) => {
                outage = outage_backoff();
                relay.config.poll_interval
            }
            Err(e) => {
                tracing::warn!(error = %e, "relay round failed");
                outage.next().unwrap_or(Duration::from_secs(5))
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = relay.waker.0.notified() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
    tracing::info!("relay stopped");
}

/// Turns outbox inserts (from any instance) into wake-ups. If the server
/// cannot open a change stream, polling alone carries on.
async fn watch_inserts(outbox: Outbox, waker: Waker, cancel: CancellationToken) {
    while !cancel.is_cancelled() {
        let stream = outbox
            .records
            .watch()
            .pipeline([doc! { "$match": { "operationType": "insert" } }])
            .await;
        match stream {
            Ok(mut stream) => loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    event = stream.next() => match event {
                        Some(Ok(_)) => waker.wake(),
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "outbox change stream ended");
                            break;
                        }
                        None => break,
                    }
                }
            },
            Err(e) => tracing::debug!(error = %e, "outbox change stream unavailable; polling"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
