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
//!
//! Layout:
//! - this module: the relay, its settings and one round's scan, claim and read;
//! - `delivery`: a claimed round's sends, in order per aggregate, its failures,
//!   and the mark and release after;
//! - `due`: which aggregates a round takes, given the rounds in flight;
//! - `sweep`: the window a scan of a large backlog covers;
//! - `run_loop`: the running loop and its rounds in flight;
//! - `waker`: wake-ups and hand-overs from the writing process;
//! - `watcher`: wake-ups from the outbox change stream.

mod delivery;
mod due;
mod run_loop;
mod sweep;
mod waker;
mod watcher;

pub use waker::Waker;

use crate::broker::Broker;
use crate::error::Result;
use crate::handler::{DeliveryError, Handler};
use crate::lease::{IN_CHUNK, Leases};
use crate::record::OutboxRecord;
use crate::store::Outbox;
use bson::{DateTime, Document, doc};
use due::{Busy, DueAggregate, DueAggregates};
use futures::TryStreamExt;
use futures::future::try_join_all;
use lapin::Channel;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use sweep::{Sweep, next_sweep};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

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

    /// Run [`Destination::Command`](crate::Destination::Command) records
    /// named `name` (or socket emits, under
    /// [`Destination::SOCKET_HANDLER`](crate::Destination::SOCKET_HANDLER))
    /// with `handler`.
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
            tokio::spawn(watcher::watch_inserts(
                relay.outbox.clone(),
                relay.waker.clone(),
                relay.config.poll_interval / 10,
                relay.outage.subscribe(),
                relay.full_scans.clone(),
                cancel.clone(),
            ));
        }
        let task = tokio::spawn(run_loop::run_loop(relay, cancel.clone()));
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

/// A cursor batch that holds `limit` documents, so one reply carries them.
fn batch_size(limit: i64) -> u32 {
    u32::try_from(limit.max(1)).unwrap_or(u32::MAX)
}
