//! The relay: delivers staged records after their commit.
//!
//! One round scans for due pending records, takes the leases on all the
//! aggregates found at once, reads their pending records, and delivers each
//! aggregate's records strictly in `seq` order, stopping at the first one
//! that fails (so record n+1 never overtakes n). Aggregates are delivered
//! concurrently, sharing one confirm-mode channel, which pipelines publishes
//! across aggregates. The confirmed records are then marked published and
//! the leases released, each in one go, so the database work is per round
//! rather than per record. The running loop hands a round's delivery and
//! writes to a task of their own and goes on to scan, claim and read the
//! next round (`rounds_in_flight` at once, on disjoint aggregates), so the
//! database's round trips and the broker's confirms overlap. It does so on
//! a backlog, or to get past a slow round; under a steady load the next
//! round waits for the one in flight, so that batches stay large.
//!
//! The loop wakes on the outbox change stream, on [`Waker::wake`] from the
//! same process, and on a polling interval as a fallback. A process that
//! knows which aggregates it just committed hands them over with
//! [`Waker::hand`] instead, and the round claims them without a scan.
//! While the broker is unreachable it leaves records for it alone and
//! waits for the broker, not for commits.

use crate::broker::Broker;
use crate::error::Result;
use crate::handler::{DeliveryError, Handler};
use crate::lease::{IN_CHUNK, Leases};
use crate::publisher;
use crate::record::{Destination, OutboxRecord};
use crate::store::{DEFERRED, Outbox};
use backon::{BackoffBuilder, ExponentialBuilder};
use bson::{DateTime, Document, doc};
use futures::future::try_join_all;
use futures::{StreamExt, TryStreamExt};
use lapin::Channel;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tokio::task::{self, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Tuning of one relay instance; every field has a production default.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Owner name written into leases; unique per process.
    pub instance_id: String,
    /// Most due records looked at per round.
    pub scan_limit: i64,
    /// Aggregates delivered at once by one round.
    pub concurrency: usize,
    /// Rounds delivering and marking at once, each on aggregates of its
    /// own. A round starts beside others on a backlog, once the youngest
    /// has delivered (it only marks and releases then), or once it has run
    /// `OVERLAP_AFTER` (50 ms); the next round's scan, claim and read
    /// overlap the others' delivery.
    pub rounds_in_flight: usize,
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
            // Measured: a 10 000-record backlog drained at 792 rec/s with
            // 500, 1 215 with 1 000, 1 512–1 604 with 2 000 and 1 553 with
            // 4 000 (docs/scale-and-benchmarks.md); a scan only returns
            // what is due, so rounds under normal load stay small.
            scan_limit: 2000,
            concurrency: 32,
            rounds_in_flight: 3,
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
    /// The broker could not be reached, so records for it were left alone.
    pub broker_unavailable: bool,
    /// Due records were left for another round: the scan was full, or an
    /// aggregate had more than `per_aggregate` pending.
    pub more: bool,
    /// Due records were left alone because a round still in flight holds
    /// their aggregates and did not read them, or a sweep of the backlog
    /// found only records that rounds in flight read: another round
    /// follows as soon as one of those ends.
    pub deferred: bool,
}

impl RoundOutcome {
    fn add(&mut self, other: RoundOutcome) {
        self.delivered += other.delivered;
        self.retried += other.retried;
        self.parked += other.parked;
        self.waiting |= other.waiting;
        self.broker_unavailable |= other.broker_unavailable;
        self.more |= other.more;
        self.deferred |= other.deferred;
    }

    fn progressed(&self) -> bool {
        self.delivered + self.parked > 0
    }
}

/// Outcome of one delivery, for whoever counts them (metrics, logs).
#[derive(Debug, Clone)]
pub enum Delivery<'a> {
    Delivered {
        latency: Duration,
    },
    /// Not delivered this time, and to be tried again.
    Failed(&'a DeliveryError),
    /// Not settled yet (`DeliveryError::NotYet`): to be looked at again.
    Deferred(&'a DeliveryError),
    Parked(&'a DeliveryError),
}

/// Receives every delivery outcome; the service turns them into metrics.
pub trait Observer: Send + Sync + 'static {
    fn observe(&self, record: &OutboxRecord, delivery: Delivery<'_>);
}

/// Most aggregates held for the next round; more turn into a scan.
const HANDED_MAX: usize = 4096;

/// Lets the writing process wake its relay right after a commit.
#[derive(Clone, Default)]
pub struct Waker(Arc<Wakeups>);

#[derive(Default)]
struct Wakeups {
    notify: Notify,
    /// A wake-up since the last round began asked for a scan.
    scan: AtomicBool,
    /// Aggregates handed over since the last round began.
    handed: std::sync::Mutex<Handed>,
}

/// Handed-over aggregates, each once, in the order first handed: a busy
/// order handed over on every change counts once toward the bound.
#[derive(Default)]
struct Handed {
    order: Vec<String>,
    seen: HashSet<String>,
}

impl Waker {
    /// Something may be due: the next round scans for it.
    pub fn wake(&self) {
        self.0.scan.store(true, Ordering::Release);
        self.0.notify.notify_one();
    }

    /// Records of these aggregates were just committed: the next round
    /// claims them without scanning, one database round trip less between
    /// the commit and the confirm. Their records are still read under the
    /// lease, so a stale hand-over costs a claim and nothing else.
    pub fn hand<I>(&self, aggregates: I)
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let mut handed = self.0.handed.lock().unwrap_or_else(|e| e.into_inner());
        for aggregate in aggregates {
            let aggregate = aggregate.into();
            if handed.seen.insert(aggregate.clone()) {
                handed.order.push(aggregate);
            }
        }
        // Nobody takes them while the broker is down: past a bound, a scan
        // finds them as well, and memory stays flat.
        if handed.order.len() > HANDED_MAX {
            *handed = Handed::default();
            self.0.scan.store(true, Ordering::Release);
        }
        drop(handed);
        self.0.notify.notify_one();
    }

    /// What the next round is asked for: a scan, and the aggregates handed over.
    fn take(&self) -> (bool, Vec<String>) {
        let handed = std::mem::take(&mut *self.0.handed.lock().unwrap_or_else(|e| e.into_inner()));
        (self.0.scan.swap(false, Ordering::AcqRel), handed.order)
    }

    async fn woken(&self) {
        self.0.notify.notified().await;
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
    /// Where the scan goes on from while a backlog larger than one scan is
    /// worked through; `None` scans from the oldest due record.
    sweep: std::sync::Mutex<Option<Sweep>>,
    /// True while the loop waits out a broker outage; the change-stream
    /// watcher rests meanwhile.
    outage: watch::Sender<bool>,
    /// Scans from the oldest due record begun so far: one begun after an
    /// insert was seen has found it, and needs no wake-up for it.
    full_scans: Arc<AtomicU64>,
}

/// A window of the scan's index, `[from, from + span]` in `nextAttemptAt`.
///
/// Scanning from the oldest due record with a limit is cheap on MongoDB,
/// which walks the index and stops; the Python SecantusDB first fetches
/// every record the filter matches, so each scan of a large backlog costs
/// the whole backlog. A bounded window costs only what lies in it. A
/// backlog is therefore worked through window by window (keyset
/// pagination), and once the window reaches the present the next scan
/// starts from the oldest again, picking up whatever a window passed by
/// (aggregates another relay held, records committed late).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sweep {
    from: i64,
    span: i64,
}

/// A running relay; dropping it does not stop it, [`RelayHandle::shutdown`] does.
pub struct RelayHandle {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RelayHandle {
    /// Stops starting rounds and waits for the rounds in flight to end.
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
            sweep: std::sync::Mutex::new(None),
            outage: watch::Sender::new(false),
            full_scans: Arc::new(AtomicU64::new(0)),
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
                relay.config.poll_interval / 10,
                relay.outage.subscribe(),
                relay.full_scans.clone(),
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

    /// One round: claim the due aggregates, deliver their records, mark
    /// the confirmed ones published and release the leases.
    ///
    /// The database work is per round, not per record: one scan, one claim
    /// of every aggregate found, one read of their pending records, one
    /// write marking every confirmed record published and one release.
    /// Aggregates go concurrently on the shared confirm-mode channel; within
    /// one, each record waits for its predecessor's confirm.
    pub async fn run_once(&self) -> Result<RoundOutcome> {
        let (mut outcome, claimed) = self.round(&[], true, Vec::new()).await?;
        if let Some(claimed) = claimed {
            // No round waits on this one.
            outcome.add(self.complete(claimed, watch::Sender::new(false)).await?);
        }
        Ok(outcome)
    }

    /// A round up to the read of its claimed aggregates' pending records,
    /// leaving alone the aggregates that rounds still in flight (`busy`)
    /// hold; the delivery and the writes after it are returned for
    /// [`Relay::complete`], which the loop runs while the next round scans,
    /// claims and reads. It works on what a scan finds, if `scan`, and on
    /// the aggregates `handed` over.
    async fn round(
        &self,
        busy: &[&Busy],
        scan: bool,
        handed: Vec<String>,
    ) -> Result<(RoundOutcome, Option<Claimed>)> {
        let mut due = if scan {
            self.due_aggregates().await?
        } else {
            DueAggregates::default()
        };
        due.hand(handed);
        let sweeping = self
            .sweep
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        let skipped = due.skip(busy);
        let mut total = RoundOutcome {
            more: sweeping,
            deferred: skipped.defers(sweeping, !due.aggregates.is_empty()),
            ..RoundOutcome::default()
        };
        if due.aggregates.is_empty() {
            return Ok((total, None));
        }
        let channel = match &self.broker {
            Some(broker) if due.has_amqp() => match broker.publish_channel().await {
                Ok(channel) => Some(channel),
                Err(e) => {
                    tracing::warn!(error = %e, "broker unavailable; events wait in the outbox");
                    None
                }
            },
            _ => None,
        };
        // A handed-over aggregate counts as going to the broker, since only
        // its records tell; without the broker, reading the kinds of its
        // due records finds those that need none.
        if channel.is_none() && due.has_amqp() {
            let (handed, scanned): (Vec<DueAggregate>, Vec<DueAggregate>) = due
                .aggregates
                .into_iter()
                .partition(|a| a.records.is_none());
            let handed: Vec<String> = handed.into_iter().map(|a| a.id).collect();
            due.aggregates = scanned;
            if !handed.is_empty() {
                due.aggregates
                    .extend(self.due_of(&handed).await?.aggregates);
            }
        }
        // Without a channel, an aggregate with an AMQP record due could only
        // fail; it is left unclaimed and unread until the broker is back.
        let aggregates: Vec<String> = if channel.is_none() && due.has_amqp() {
            total.waiting = true;
            total.broker_unavailable = true;
            due.aggregates
                .into_iter()
                .filter(|a| !a.amqp)
                .map(|a| a.id)
                .collect()
        } else {
            due.aggregates.into_iter().map(|a| a.id).collect()
        };
        if aggregates.is_empty() {
            return Ok((total, None));
        }
        let claimed = self.leases.acquire_many(&aggregates).await?;
        if claimed.is_empty() {
            return Ok((total, None));
        }
        let claimed_at = Instant::now();
        let (pending, capped) = match self.pending_of(&claimed).await {
            Ok(read) => read,
            Err(e) => {
                // Nothing was sent: the records are still pending, and the
                // next round (here or elsewhere) claims them again.
                self.leases.release_many(&claimed).await?;
                return Err(e);
            }
        };
        total.more |= capped;
        // A span per batch that has work: idle rounds make none.
        let span = tracing::info_span!(
            "outbox.relay.batch",
            aggregates = claimed.len(),
            delivered = tracing::field::Empty,
        );
        let claimed = Claimed {
            claimed,
            pending,
            channel,
            claimed_at,
            span,
        };
        Ok((total, Some(claimed)))
    }

    /// Delivers a claimed round, tells the loop through `delivered` once
    /// every publish has its outcome, then marks the confirmed records
    /// published and releases the leases, whatever the mark did.
    async fn complete(
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

    async fn due_aggregates(&self) -> Result<DueAggregates> {
        let now = DateTime::now().timestamp_millis();
        loop {
            let sweep = *self.sweep.lock().unwrap_or_else(|e| e.into_inner());
            let (range, to) = match sweep {
                None => {
                    self.full_scans.fetch_add(1, Ordering::AcqRel);
                    (doc! { "$lte": DateTime::from_millis(now) }, now)
                }
                Some(window) => {
                    let to = window.from.saturating_add(window.span).min(now);
                    let range = doc! {
                        "$gte": DateTime::from_millis(window.from),
                        "$lte": DateTime::from_millis(to),
                    };
                    (range, to)
                }
            };
            let scanned = self
                .scan(doc! { "status": "pending", "nextAttemptAt": range })
                .await?;
            let next = next_sweep(sweep, &scanned, self.config.scan_limit, to, now);
            *self.sweep.lock().unwrap_or_else(|e| e.into_inner()) = next;
            // An empty window: look further at once, or, at the present,
            // from the oldest again; only a scan from the oldest finding
            // nothing means there is nothing due.
            if scanned.is_empty() && sweep.is_some() {
                continue;
            }
            return Ok(DueAggregates::from_scan(&scanned));
        }
    }

    /// The due records of these aggregates, wherever a sweep stands, as a
    /// scan would find them. They are not claimed or read whole.
    async fn due_of(&self, aggregates: &[String]) -> Result<DueAggregates> {
        let now = DateTime::now();
        let finds = aggregates.chunks(IN_CHUNK).map(|chunk| {
            self.scan(doc! {
                "aggregateId": { "$in": chunk },
                "status": "pending",
                "nextAttemptAt": { "$lte": now },
            })
        });
        let scanned: Vec<Document> = try_join_all(finds).await?.concat();
        Ok(DueAggregates::from_scan(&scanned))
    }

    /// Due records matching `filter`, oldest due first, with only what a
    /// round needs to pick aggregates.
    async fn scan(&self, filter: Document) -> Result<Vec<Document>> {
        let raw = self.outbox.records.clone_with_type::<Document>();
        Ok(raw
            .find(filter)
            .projection(
                doc! { "_id": 1, "aggregateId": 1, "destination.kind": 1, "nextAttemptAt": 1 },
            )
            .sort(doc! { "status": 1, "nextAttemptAt": 1 })
            .limit(self.config.scan_limit)
            .batch_size(batch_size(self.config.scan_limit))
            .await?
            .try_collect()
            .await?)
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

    /// The pending records of `aggregates`, each aggregate's in `seq` order
    /// and at most `per_aggregate` of them; and whether any had more.
    async fn pending_of(&self, aggregates: &[String]) -> Result<(Vec<Vec<OutboxRecord>>, bool)> {
        let per_aggregate = self.config.per_aggregate;
        let finds = aggregates.chunks(IN_CHUNK).map(|chunk| async move {
            let limit = per_aggregate.saturating_mul(chunk.len() as i64);
            let records: Vec<OutboxRecord> = self
                .outbox
                .records
                .find(doc! { "aggregateId": { "$in": chunk }, "status": "pending" })
                .sort(doc! { "aggregateId": 1, "seq": 1 })
                .limit(limit)
                .batch_size(batch_size(limit))
                .await?
                .try_collect()
                .await?;
            // A find that filled its limit may have cut an aggregate short.
            let full = records.len() as i64 >= limit;
            Ok::<_, crate::error::Error>((records, full))
        });
        let mut groups: HashMap<String, Vec<OutboxRecord>> = HashMap::new();
        let mut capped = false;
        for (records, full) in try_join_all(finds).await? {
            capped |= full;
            for record in records {
                let group = groups.entry(record.aggregate_id.clone()).or_default();
                if (group.len() as i64) < per_aggregate {
                    group.push(record);
                } else {
                    capped = true;
                }
            }
        }
        // In the order claimed, which is the scan's: oldest due first.
        let pending = aggregates.iter().filter_map(|a| groups.remove(a)).collect();
        Ok((pending, capped))
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

/// A round's work: aggregates with a record due, oldest due first.
#[derive(Default)]
struct DueAggregates {
    aggregates: Vec<DueAggregate>,
}

impl DueAggregates {
    /// The scan's aggregates in the order first seen, which is oldest due first.
    fn from_scan(scanned: &[Document]) -> Self {
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut due = DueAggregates::default();
        for doc in scanned {
            let aggregate = doc.get_str("aggregateId").unwrap_or_default();
            let amqp = doc
                .get_document("destination")
                .ok()
                .and_then(|d| d.get_str("kind").ok())
                .is_some_and(|kind| kind == "amqp");
            let i = *index.entry(aggregate).or_insert_with(|| {
                due.aggregates.push(DueAggregate {
                    id: aggregate.to_string(),
                    amqp: false,
                    records: Some(Vec::new()),
                });
                due.aggregates.len() - 1
            });
            due.aggregates[i].amqp |= amqp;
            if let (Ok(id), Some(records)) = (doc.get_str("_id"), &mut due.aggregates[i].records) {
                records.push(id.to_string());
            }
        }
        due
    }

    /// Adds the handed-over aggregates the scan did not find, after its own.
    /// What their records are is unknown until they are read.
    fn hand(&mut self, handed: Vec<String>) {
        if handed.is_empty() {
            return;
        }
        let mut known: HashSet<String> = self.aggregates.iter().map(|a| a.id.clone()).collect();
        for id in handed {
            if known.insert(id.clone()) {
                self.aggregates.push(DueAggregate {
                    id,
                    amqp: true,
                    records: None,
                });
            }
        }
    }

    fn has_amqp(&self) -> bool {
        self.aggregates.iter().any(|a| a.amqp)
    }

    /// Leaves out the aggregates that a round in flight (`busy`) holds, and
    /// says what they held.
    fn skip(&mut self, busy: &[&Busy]) -> Skipped {
        let mut skipped = Skipped::default();
        self.aggregates.retain(|a| {
            let Some(holder) = busy.iter().find(|b| b.aggregates.contains(&a.id)) else {
                return true;
            };
            // A handed-over aggregate was committed after `busy` was read.
            let unread = a
                .records
                .as_ref()
                .is_none_or(|records| records.iter().any(|r| !holder.records.contains(r)));
            skipped.any = true;
            skipped.unread |= unread;
            false
        });
        skipped
    }
}

/// The due aggregates a round left to the rounds still in flight.
#[derive(Default)]
struct Skipped {
    any: bool,
    /// One has a due record that no round in flight read, so it needs
    /// another round.
    unread: bool,
}

impl Skipped {
    /// Whether another round follows as soon as a round in flight ends.
    /// While a backlog is swept (`sweeping`), a window can hold nothing but
    /// records that rounds in flight read (a batch committed at one instant
    /// is scanned twice): the next window waits for them, not for a poll.
    /// A window with other work (`other_work`) goes on at once, and the
    /// rounds in flight run on beside it.
    fn defers(&self, sweeping: bool, other_work: bool) -> bool {
        self.unread || (self.any && sweeping && !other_work)
    }
}

struct DueAggregate {
    id: String,
    /// One of its due records goes to the broker (or, handed over, may).
    amqp: bool,
    /// The ids of its due records that the scan saw; `None` when handed over.
    records: Option<Vec<String>>,
}

/// What a round in flight holds: the aggregates it will release and the
/// records it read, to deliver and mark published (until then they look
/// pending).
struct Busy {
    aggregates: HashSet<String>,
    records: HashSet<String>,
}

/// A round claimed and read, ready for [`Relay::complete`].
struct Claimed {
    claimed: Vec<String>,
    /// Each claimed aggregate's pending records, in `seq` order.
    pending: Vec<Vec<OutboxRecord>>,
    channel: Option<Channel>,
    claimed_at: Instant,
    span: tracing::Span,
}

/// What delivering one aggregate's records came to.
#[derive(Default)]
struct Chain {
    /// Confirmed, in order; marked published together after the round.
    delivered: Vec<String>,
    outcome: RoundOutcome,
    error: Option<crate::error::Error>,
}

/// Where the next scan starts, given what this one (over `current`, up to
/// `to`) returned, in `nextAttemptAt` order.
fn next_sweep(
    current: Option<Sweep>,
    scanned: &[Document],
    limit: i64,
    to: i64,
    now: i64,
) -> Option<Sweep> {
    let at = |doc: Option<&Document>| {
        doc.and_then(|d| d.get_datetime("nextAttemptAt").ok())
            .map(|t| t.timestamp_millis())
    };
    if (scanned.len() as i64) >= limit {
        // Full: more lies behind the last record. Go on from it with a
        // window that held about this much.
        let (first, last) = (at(scanned.first())?, at(scanned.last())?);
        let from = match current {
            // A whole window at one instant that did not leave: step past
            // it; the next sweep comes back for what is left there.
            Some(window) if last <= window.from => window.from + 1,
            _ => last,
        };
        return Some(Sweep {
            from,
            span: (last - first).max(1),
        });
    }
    match current {
        // Short of the present: on, with a wider window.
        Some(window) if to < now => Some(Sweep {
            from: to,
            span: window.span.saturating_mul(2),
        }),
        // The present is reached: the next scan starts from the oldest.
        _ => None,
    }
}

/// A cursor batch that holds `limit` documents, so one reply carries them.
fn batch_size(limit: i64) -> u32 {
    u32::try_from(limit.max(1)).unwrap_or(u32::MAX)
}

/// Change events asked for per `getMore`; a watcher handed a full batch is
/// behind and starts over at the present.
const CHANGE_BATCH: usize = 1024;

/// While the broker is unreachable, a round (for work that does not need
/// it) runs at most this often; in between the relay only reconnects.
const OUTAGE_ROUND: Duration = Duration::from_secs(5);

/// Without a backlog, a round starts beside one in flight only once that
/// one has delivered (it only marks and releases then), or has run this
/// long: far above a round's usual time under load (a few milliseconds),
/// far below a destination's timeouts.
const OVERLAP_AFTER: Duration = Duration::from_millis(50);

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
    // A reconnect attempt costs the database nothing, so while the broker
    // is down they come often enough to notice its return within a second.
    let reconnect_backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(1))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut outage = outage_backoff();
    let mut reconnect = reconnect_backoff();
    let mut reconnects = relay.broker.as_ref().map(Broker::reconnects);
    // When a round last found the broker unreachable.
    let mut broker_down: Option<Instant> = None;
    // Rounds delivering, marking and releasing in their own tasks while
    // the next round scans, claims and reads, so neither waits for the
    // other's round trips.
    let mut in_flight = InFlightRounds::default();
    // A round left due records to rounds in flight: the next one runs as
    // soon as one of those ends, not after a poll, and meanwhile the loop
    // is free for other work.
    let mut follow = false;
    // The last round left due records behind (a full scan, a sweep, or an
    // aggregate beyond `per_aggregate`).
    let mut backlog = false;
    // Whether the next round scans whatever the wake-ups ask: it does
    // unless the last wait ended on a wake-up, and at least once per
    // `poll_interval` however often hand-overs wake the relay (only a scan
    // finds retries that came due, records of aggregates another instance
    // held, and expired leases).
    let mut scan_next = true;
    let mut last_scan = Instant::now();
    let mut pause = relay.config.poll_interval;
    while !cancel.is_cancelled() {
        if let Some(since) = broker_down {
            // Reconnect before scanning: while the broker is down a scan
            // only finds records that cannot go, and commits are no reason
            // to look again.
            let back = match &relay.broker {
                Some(broker) => broker.publish_channel().await.is_ok(),
                None => false,
            };
            if back {
                tracing::info!("broker reachable again; relaying the backlog");
                broker_down = None;
                relay.outage.send_replace(false);
                reconnect = reconnect_backoff();
            } else if since.elapsed() < OUTAGE_ROUND {
                let pause = reconnect.next().unwrap_or(Duration::from_secs(1));
                if wait_for_broker(&cancel, reconnects.as_mut(), pause).await {
                    break;
                }
                continue;
            }
        }
        in_flight.settle_done();
        // Room comes first: a round that claimed and read, then waited for
        // room, would hold its aggregates' leases idle meanwhile (and past
        // half their time, deliver nothing). And a round beside others in
        // flight pays off on a backlog, or to get past a slow one; under a
        // steady load it only splits the next batch, and the database does
        // each round's fixed work (claim, mark, release) more often, so
        // then the next round waits for the one in flight to deliver, and
        // the hand-overs gather meanwhile.
        let full = in_flight.len() >= relay.config.rounds_in_flight.max(1);
        let youngest = in_flight.youngest();
        let overlap_in = wait_to_overlap(backlog, youngest.as_ref().map(Youngest::progress));
        if full || overlap_in.is_some() {
            let mut delivered = youngest.map(|y| y.delivered);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = in_flight.settle_next() => {}
                _ = tokio::time::sleep(overlap_in.unwrap_or_default()), if !full => {}
                // A round whose task ended without delivering (a panic)
                // drops its sender: `settle_next` takes it, rather than a
                // branch that would end at once on every turn until then.
                _ = async {
                    let ended = match delivered.as_mut() {
                        Some(d) => d.wait_for(|d| *d).await.is_err(),
                        None => true,
                    };
                    if ended {
                        std::future::pending::<()>().await;
                    }
                }, if !full && delivered.is_some() => {}
            }
            continue;
        }
        let (asked, handed) = relay.waker.take();
        let scan = std::mem::replace(&mut scan_next, true) || asked;
        // Otherwise the wake-up was for aggregates an earlier round took,
        // and the wait goes on as it was.
        if scan || !handed.is_empty() {
            if scan {
                last_scan = Instant::now();
            }
            let round = match relay.round(&in_flight.busy(), scan, handed).await {
                Ok((mut round, claimed)) => {
                    follow |= round.deferred;
                    backlog = round.more;
                    let started = claimed.is_some();
                    if let Some(claimed) = claimed {
                        in_flight.start(relay.clone(), claimed);
                    }
                    round.add(in_flight.take_settled());
                    Ok((round, started))
                }
                Err(e) => {
                    backlog = false;
                    Err(e)
                }
            };
            pause = match round {
                Ok((round, _)) if round.broker_unavailable => {
                    broker_down = Some(Instant::now());
                    relay.outage.send_replace(true);
                    let pause = reconnect.next().unwrap_or(Duration::from_secs(1));
                    if wait_for_broker(&cancel, reconnects.as_mut(), pause).await {
                        break;
                    }
                    continue;
                }
                // Work left behind: at once. Otherwise a commit made during
                // the round has already left its wake-up, and the wait ends
                // at once.
                Ok((round, started)) if (started || round.progressed()) && round.more => {
                    outage = outage_backoff();
                    continue;
                }
                Ok((round, started)) if started || round.progressed() => {
                    outage = outage_backoff();
                    relay.config.poll_interval
                }
                Ok((round, _)) if round.waiting => outage.next().unwrap_or(Duration::from_secs(5)),
                Ok(_) => {
                    outage = outage_backoff();
                    relay.config.poll_interval
                }
                Err(e) => {
                    tracing::warn!(error = %e, "relay round failed");
                    outage.next().unwrap_or(Duration::from_secs(5))
                }
            };
        }
        if follow && in_flight.is_empty() {
            follow = false;
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = relay.waker.woken() => {
                scan_next = last_scan.elapsed() >= relay.config.poll_interval;
            }
            _ = in_flight.settle_next(), if follow => follow = false,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    in_flight.settle_all().await;
    tracing::info!("relay stopped");
}

/// What a round in flight holds: the next rounds leave it alone meanwhile.
struct InFlight {
    busy: Busy,
    started: Instant,
    /// Set once its publishes have their outcomes.
    delivered: watch::Receiver<bool>,
}

/// The youngest round in flight, for the decision to start another.
struct Youngest {
    age: Duration,
    delivered: watch::Receiver<bool>,
}

impl Youngest {
    fn progress(&self) -> (Duration, bool) {
        (self.age, *self.delivered.borrow())
    }
}

/// The loop's rounds in flight, each a [`Relay::complete`] in a task of its
/// own. A round is kept until it is settled: forgetting it would let a
/// later round claim its aggregates (their leases are this instance's own)
/// and send their records again. Ends come from the tasks themselves, so a
/// round that panics is settled like one that failed, and a round counts
/// as ended only once its outcome can be taken.
#[derive(Default)]
struct InFlightRounds {
    tasks: JoinSet<Result<RoundOutcome>>,
    rounds: HashMap<task::Id, InFlight>,
    /// What the rounds settled since the last [`Self::take_settled`] did.
    settled: RoundOutcome,
}

impl InFlightRounds {
    fn busy(&self) -> Vec<&Busy> {
        self.rounds.values().map(|r| &r.busy).collect()
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The youngest round in flight, if one is in flight.
    fn youngest(&self) -> Option<Youngest> {
        self.rounds
            .values()
            .max_by_key(|r| r.started)
            .map(|r| Youngest {
                age: r.started.elapsed(),
                delivered: r.delivered.clone(),
            })
    }

    fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Starts a round in a task of its own. The loop made room before the
    /// round claimed anything, waiting for whichever round ended first, so
    /// one held up by a slow destination does not hold up the others.
    fn start(&mut self, relay: Arc<Relay>, claimed: Claimed) {
        let busy = Busy {
            aggregates: claimed.claimed.iter().cloned().collect(),
            records: claimed
                .pending
                .iter()
                .flatten()
                .map(|r| r.message_id.clone())
                .collect(),
        };
        let (delivered_tx, delivered) = watch::channel(false);
        let id = self
            .tasks
            .spawn(async move { relay.complete(claimed, delivered_tx).await })
            .id();
        let started = Instant::now();
        self.rounds.insert(
            id,
            InFlight {
                busy,
                started,
                delivered,
            },
        );
    }

    /// Until a round in flight ends, and settles it; at once if none is in
    /// flight. Cancel safe: a round that ends meanwhile is settled later.
    async fn settle_next(&mut self) {
        if let Some(ended) = self.tasks.join_next_with_id().await {
            self.settle(ended);
        }
    }

    fn settle_done(&mut self) {
        while let Some(ended) = self.tasks.try_join_next_with_id() {
            self.settle(ended);
        }
    }

    async fn settle_all(&mut self) {
        while let Some(ended) = self.tasks.join_next_with_id().await {
            self.settle(ended);
        }
    }

    /// Adds what an ended round did, or, if it failed, a wait before the
    /// next round; its records stay pending and go again (at least once).
    fn settle(&mut self, ended: std::result::Result<(task::Id, Result<RoundOutcome>), JoinError>) {
        let (id, outcome) = match ended {
            Ok((id, outcome)) => (id, outcome.map_err(|e| e.to_string())),
            Err(e) => (e.id(), Err(e.to_string())),
        };
        self.rounds.remove(&id);
        match outcome {
            Ok(outcome) => self.settled.add(outcome),
            Err(failed) => {
                tracing::warn!(error = %failed, "delivering, marking or releasing a round failed");
                self.settled.waiting = true;
            }
        }
    }

    fn take_settled(&mut self) -> RoundOutcome {
        std::mem::take(&mut self.settled)
    }
}

/// How much longer the next round waits for the rounds in flight before
/// it starts beside them, given whether the last round left work behind,
/// and how long the youngest round in flight has run and whether it has
/// delivered.
fn wait_to_overlap(backlog: bool, youngest: Option<(Duration, bool)>) -> Option<Duration> {
    if backlog {
        return None;
    }
    match youngest {
        Some((_, true)) | None => None,
        Some((age, false)) => OVERLAP_AFTER.checked_sub(age),
    }
}

/// Waits `pause`, or less if someone else reconnects the broker; local
/// commits do not end it. Returns whether the relay was cancelled.
async fn wait_for_broker(
    cancel: &CancellationToken,
    reconnects: Option<&mut watch::Receiver<u64>>,
    pause: Duration,
) -> bool {
    let reconnected = async {
        let changed = match reconnects {
            Some(rx) => rx.changed().await.is_ok(),
            None => false,
        };
        // No broker, or one that is gone: only the timer ends the wait.
        if !changed {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = reconnected => false,
        _ = tokio::time::sleep(pause) => false,
    }
}

/// Turns outbox inserts (from any instance) into wake-ups. If the server
/// cannot open a change stream, polling alone carries on.
///
/// One round covers every insert committed before its scan, so the events
/// already in hand are taken together, and the watcher pauses for
/// `coalesce` before it wakes the relay and asks for more: inserts pile up
/// meanwhile and come back in one `getMore` instead of one each. If a scan
/// from the oldest due record began during the pause (a local commit woke
/// the relay, as it does for every commit of this process), the wake-up is
/// not needed and is not given.
///
/// Old events are worth nothing once a wake-up is given, and the server
/// pays for every one it replays: a watcher a whole batch behind opens a
/// new stream at the present, and while the relay waits out a broker
/// outage (when it ignores wake-ups) the watcher closes its stream and
/// opens a new one afterwards.
async fn watch_inserts(
    outbox: Outbox,
    waker: Waker,
    coalesce: Duration,
    mut outage: watch::Receiver<bool>,
    full_scans: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    // Opening first and then waking leaves no insert uncovered: the round
    // woken starts after the stream does.
    let mut wake_when_open = false;
    while !cancel.is_cancelled() {
        if *outage.borrow_and_update() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                over = outage.wait_for(|down| !down) => if over.is_err() { return },
            }
            wake_when_open = true;
        }
        let stream = outbox
            .records
            .watch()
            .pipeline([doc! { "$match": { "operationType": "insert" } }])
            .batch_size(CHANGE_BATCH as u32)
            .await;
        match stream {
            Ok(stream) => {
                if std::mem::take(&mut wake_when_open) {
                    waker.wake();
                }
                let mut batches = stream.ready_chunks(CHANGE_BATCH);
                let behind = loop {
                    let batch = tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = outage.changed() => break true,
                        batch = batches.next() => batch,
                    };
                    let Some(events) = batch else { break false };
                    if events.len() >= CHANGE_BATCH {
                        break true;
                    }
                    if let Some(Err(e)) = events.into_iter().find(|e| e.is_err()) {
                        tracing::debug!(error = %e, "outbox change stream ended");
                        break false;
                    }
                    let scans = full_scans.load(Ordering::Acquire);
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(coalesce) => {}
                    }
                    if full_scans.load(Ordering::Acquire) == scans {
                        waker.wake();
                    }
                };
                wake_when_open = true;
                // Behind, or resting for an outage: a fresh stream at once
                // (after the outage, if there is one). Ended: as below.
                if behind {
                    continue;
                }
            }
            Err(e) => tracing::debug!(error = %e, "outbox change stream unavailable; polling"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(at: &[i64]) -> Vec<Document> {
        at.iter()
            .map(|t| doc! { "aggregateId": "a", "nextAttemptAt": DateTime::from_millis(*t) })
            .collect()
    }

    #[test]
    fn a_scan_short_of_its_limit_from_the_oldest_starts_no_sweep() {
        assert_eq!(next_sweep(None, &scanned(&[1, 2]), 3, 100, 100), None);
        assert_eq!(next_sweep(None, &[], 3, 100, 100), None);
    }

    #[test]
    fn a_full_scan_goes_on_from_its_last_record_with_the_span_it_covered() {
        assert_eq!(
            next_sweep(None, &scanned(&[10, 15, 30]), 3, 100, 100),
            Some(Sweep { from: 30, span: 20 })
        );
        let window = Some(Sweep { from: 30, span: 20 });
        assert_eq!(
            next_sweep(window, &scanned(&[30, 31, 34]), 3, 50, 100),
            Some(Sweep { from: 34, span: 4 })
        );
    }

    #[test]
    fn a_window_short_of_its_limit_widens_until_the_present_then_starts_over() {
        let window = Some(Sweep { from: 30, span: 20 });
        assert_eq!(
            next_sweep(window, &scanned(&[40]), 3, 50, 100),
            Some(Sweep { from: 50, span: 40 })
        );
        assert_eq!(
            next_sweep(window, &[], 3, 50, 100),
            Some(Sweep { from: 50, span: 40 })
        );
        assert_eq!(next_sweep(window, &scanned(&[40]), 3, 100, 100), None);
    }

    #[test]
    fn aggregates_of_rounds_in_flight_are_skipped_and_deferred_only_for_records_they_did_not_read()
    {
        let record = |id: &str, aggregate: &str| {
            doc! {
                "_id": id,
                "aggregateId": aggregate,
                "destination": { "kind": "amqp" },
                "nextAttemptAt": DateTime::from_millis(1),
            }
        };
        let scan = [record("r1", "a"), record("r2", "b"), record("r3", "a")];
        let holding = |aggregate: &str, records: &[&str]| Busy {
            aggregates: HashSet::from([aggregate.to_string()]),
            records: records.iter().map(|r| r.to_string()).collect(),
        };
        let busy = |records: &[&str]| holding("a", records);
        let ids = |due: &DueAggregates| {
            due.aggregates
                .iter()
                .map(|a| a.id.clone())
                .collect::<Vec<_>>()
        };

        let mut due = DueAggregates::from_scan(&scan);
        assert_eq!(
            due.aggregates[0].records,
            Some(vec!["r1".to_string(), "r3".to_string()])
        );
        // Every due record of `a` is in flight: nothing to come back for
        // (unless a sweep goes on past it).
        let skipped = due.skip(&[&busy(&["r1", "r3"])]);
        assert!(skipped.any && !skipped.unread);
        assert_eq!(ids(&due), ["b"]);

        // `r3` came after the round that read `r1`.
        let mut due = DueAggregates::from_scan(&scan);
        assert!(due.skip(&[&busy(&["r1"])]).unread);
        assert_eq!(ids(&due), ["b"]);

        // Two rounds in flight: each aggregate's records are checked
        // against the round that holds it, not against the other's.
        let mut due = DueAggregates::from_scan(&scan);
        let (b, a) = (holding("b", &["r2"]), busy(&["r1", "r3"]));
        let skipped = due.skip(&[&b, &a]);
        assert!(skipped.any && !skipped.unread);
        assert!(ids(&due).is_empty());
        let mut due = DueAggregates::from_scan(&scan);
        let (b, a) = (holding("b", &["r1", "r3"]), busy(&["r2"]));
        assert!(due.skip(&[&b, &a]).unread);

        let mut due = DueAggregates::from_scan(&scan);
        let skipped = due.skip(&[]);
        assert!(!skipped.any && !skipped.unread);
        assert_eq!(ids(&due), ["a", "b"]);

        // Handed over after the scan: only the new aggregate is added, and
        // as one that may go to the broker.
        let mut due = DueAggregates::from_scan(&scan[1..2]);
        due.hand(vec!["b".into(), "a".into(), "a".into()]);
        assert_eq!(ids(&due), ["b", "a"]);
        assert!(due.aggregates[1].amqp && due.aggregates[1].records.is_none());
        // Its records are unknown, so one in flight is come back for.
        assert!(due.skip(&[&busy(&["r1", "r3"])]).unread);
        assert_eq!(ids(&due), ["b"]);
    }

    #[test]
    fn a_round_starts_beside_one_in_flight_only_on_a_backlog_or_once_that_one_delivered_or_is_slow()
    {
        let ms = Duration::from_millis;
        assert_eq!(wait_to_overlap(false, None), None, "nothing in flight");
        assert_eq!(
            wait_to_overlap(true, Some((ms(1), false))),
            None,
            "a backlog"
        );
        assert_eq!(
            wait_to_overlap(false, Some((ms(10), false))),
            Some(OVERLAP_AFTER - ms(10)),
            "a steady load waits for the round in flight to deliver"
        );
        assert_eq!(
            wait_to_overlap(false, Some((ms(10), true))),
            None,
            "it only marks and releases now"
        );
        assert_eq!(
            wait_to_overlap(false, Some((OVERLAP_AFTER + ms(1), false))),
            None,
            "a slow round is overtaken"
        );
    }

    #[test]
    fn a_sweep_waits_for_rounds_in_flight_only_when_its_window_held_nothing_else() {
        let in_flight = Skipped {
            any: true,
            unread: false,
        };
        assert!(
            in_flight.defers(true, false),
            "waits for the rounds in flight, not a poll"
        );
        assert!(
            !in_flight.defers(true, true),
            "other work goes on beside it"
        );
        assert!(!in_flight.defers(false, false), "no backlog behind it");
        let unread = Skipped {
            any: true,
            unread: true,
        };
        assert!(unread.defers(false, true), "its new records need a round");
        assert!(!Skipped::default().defers(true, false));
    }

    #[test]
    fn a_waker_hands_over_aggregates_once_and_a_flood_of_them_becomes_a_scan() {
        let waker = Waker::default();
        assert_eq!(waker.take(), (false, Vec::<String>::new()));
        waker.hand(["a", "b"]);
        waker.hand(["a"]);
        assert_eq!(
            waker.take(),
            (false, vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(waker.take(), (false, Vec::<String>::new()));
        // One aggregate handed over again and again is one, not a flood.
        waker.hand(std::iter::repeat_n("busy", HANDED_MAX + 1));
        assert_eq!(waker.take(), (false, vec!["busy".to_string()]));
        // Taken, it can be handed over again.
        waker.hand(["a"]);
        assert_eq!(waker.take(), (false, vec!["a".to_string()]));
        waker.wake();
        waker.hand(["c"]);
        assert_eq!(waker.take(), (true, vec!["c".to_string()]));
        waker.hand((0..=HANDED_MAX).map(|i| i.to_string()));
        assert_eq!(waker.take(), (true, Vec::<String>::new()));
    }

    #[test]
    fn a_full_window_at_one_instant_is_stepped_past() {
        let window = Some(Sweep { from: 30, span: 1 });
        assert_eq!(
            next_sweep(window, &scanned(&[30, 30, 30]), 3, 31, 100),
            Some(Sweep { from: 31, span: 1 })
        );
        // From the oldest, the same happens one scan later.
        assert_eq!(
            next_sweep(None, &scanned(&[30, 30, 30]), 3, 100, 100),
            Some(Sweep { from: 30, span: 1 })
        );
    }
}
