//! Scale-out against the real MongoDB-wire server and the real RabbitMQ:
//! several relays on one outbox share the work through per-aggregate
//! leases, publish every record once and keep each aggregate's order; a
//! relay that dies holding leases is taken over once they run out.
//!
//! What a peer receives is read back from a queue bound to the test's own
//! exchange, after the relays have stopped, with `basic_get` until it is
//! empty: every confirmed publish is in it, so "exactly once" is checked on
//! the complete set, without waiting a fixed time for stragglers.

use futures::{FutureExt, TryStreamExt};
use lapin::options::BasicGetOptions;
use lapin::{Channel, Connection, ExchangeKind};
use outbox::handler::HandlerFuture;
use outbox::lease::Leases;
use outbox::relay::{Delivery, Observer};
use outbox::transaction::{self, RetryPolicy};
use outbox::{
    Broker, BrokerConfig, DeliveryError, ExchangeSpec, Handler, NewRecord, Outbox, OutboxRecord,
    Relay, RelayConfig, Topology,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

mod common;
use common::{TestError, amqp_uri, mongo_uri};

/// One database, one exchange and one queue bound to it, all the test's own.
struct Env {
    client: mongodb::Client,
    db: mongodb::Database,
    outbox: Outbox,
    exchange: String,
    queue: String,
    /// Holds the exclusive queue; the queue goes away with it.
    _connection: Connection,
    channel: Channel,
}

async fn env() -> Env {
    let client = mongodb::Client::with_uri_str(mongo_uri())
        .await
        .expect("mongo");
    let id = uuid::Uuid::new_v4().simple().to_string();
    let db = client.database(&format!("outbox_scale_{id}"));
    let outbox = Outbox::new(&db);
    outbox.ensure_schema().await.expect("schema");
    let exchange = format!("outbox-scale-{id}");
    let (connection, channel, queue) = common::bound_queue(&exchange, "k").await;
    Env {
        client,
        db,
        outbox,
        exchange,
        queue,
        _connection: connection,
        channel,
    }
}

impl Env {
    fn broker(&self) -> Broker {
        Broker::new(BrokerConfig {
            uri: amqp_uri(),
            connection_name: "outbox-scale-test".into(),
            connect_timeout: Duration::from_secs(5),
            topology: Topology {
                exchanges: vec![ExchangeSpec {
                    name: self.exchange.clone(),
                    kind: ExchangeKind::Direct,
                }],
                queues: vec![],
            },
        })
    }

    /// Stages `records` in one transaction; returns their message ids.
    async fn stage(&self, records: Vec<NewRecord>) -> Vec<String> {
        let outbox = self.outbox.clone();
        transaction::run(&self.client, &RetryPolicy::default(), move |session| {
            let outbox = outbox.clone();
            let records = records.clone();
            async move { Ok::<_, TestError>(outbox.stage(session, records).await?) }.boxed()
        })
        .await
        .expect("commit")
    }

    /// Drops the database and the exchange; the exclusive queue goes with
    /// the connection.
    async fn finish(&self) {
        self.db.drop().await.ok();
        let _ = self
            .channel
            .exchange_delete(self.exchange.as_str().into(), Default::default())
            .await;
    }

    /// An AMQP record for `aggregate`, carrying its position `n` in the body.
    fn message(&self, aggregate: &str, n: usize) -> NewRecord {
        NewRecord::amqp(
            aggregate,
            &self.exchange,
            "k",
            serde_json::json!({ "agg": aggregate, "n": n }),
        )
    }

    /// Waits until no record is pending any more.
    async fn wait_until_delivered(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.outbox.stats().await.expect("stats");
            if stats.pending == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} records still pending after {timeout:?}",
                stats.pending
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything in the test queue, in queue order, as (aggregate, n,
    /// message id). Call it after the relays stopped: confirmed publishes
    /// are all in the queue by then.
    async fn take_all(&self) -> Vec<(String, usize, String)> {
        let mut received = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            let delivery = message.delivery;
            let body: serde_json::Value = serde_json::from_slice(&delivery.data).expect("json");
            received.push((
                body["agg"].as_str().expect("agg").to_string(),
                body["n"].as_u64().expect("n") as usize,
                delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .expect("message_id")
                    .to_string(),
            ));
        }
        received
    }
}

/// Every staged id arrived exactly once, and each aggregate's messages
/// arrived as 0, 1, 2, ...
fn assert_once_and_in_order(received: &[(String, usize, String)], staged: &[String]) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (_, _, id) in received {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let duplicates: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "published more than once: {duplicates:?}"
    );
    let expected: HashSet<&str> = staged.iter().map(String::as_str).collect();
    let got: HashSet<&str> = counts.keys().copied().collect();
    assert_eq!(
        expected.difference(&got).count(),
        0,
        "records lost: {:?}",
        expected.difference(&got).collect::<Vec<_>>()
    );
    assert_eq!(got.len(), expected.len(), "unexpected messages arrived");
    let mut per_aggregate: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (aggregate, n, _) in received {
        per_aggregate.entry(aggregate).or_default().push(*n);
    }
    for (aggregate, order) in per_aggregate {
        let sorted: Vec<usize> = (0..order.len()).collect();
        assert_eq!(order, sorted, "order of {aggregate}");
    }
}

/// Counts what one relay instance delivered, and when it first delivered
/// to each aggregate.
#[derive(Default)]
struct Tally {
    delivered: AtomicUsize,
    first: Mutex<HashMap<String, Instant>>,
}

impl Observer for Tally {
    fn observe(&self, record: &OutboxRecord, delivery: Delivery<'_>) {
        if let Delivery::Delivered { .. } = delivery {
            self.delivered.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut first) = self.first.lock() {
                first
                    .entry(record.aggregate_id.clone())
                    .or_insert_with(Instant::now);
            }
        }
    }
}

fn relay_config(name: &str, lease: Duration) -> RelayConfig {
    RelayConfig {
        instance_id: format!("{name}-{}", uuid::Uuid::new_v4().simple()),
        lease,
        poll_interval: Duration::from_millis(50),
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        ..RelayConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_relays_share_one_outbox_and_publish_each_record_once_in_order() {
    const AGGREGATES: usize = 12;
    const PER_AGGREGATE: usize = 8;
    let env = Arc::new(env().await);
    let cancel = CancellationToken::new();
    let mut tallies = Vec::new();
    let mut handles = Vec::new();
    for i in 0..3 {
        let tally = Arc::new(Tally::default());
        // Small rounds, so that the three instances interleave on the same
        // aggregates rather than one taking everything in one round. The
        // lease is far longer than the test: no lease expires, so a
        // duplicate could only come from two holders at once.
        let config = RelayConfig {
            concurrency: 3,
            per_aggregate: 2,
            scan_limit: 20,
            ..relay_config(&format!("relay-{i}"), Duration::from_secs(120))
        };
        let relay = Relay::new(env.outbox.clone(), config)
            .with_broker(env.broker())
            .with_observer(tally.clone());
        handles.push(relay.start(cancel.child_token()));
        tallies.push(tally);
    }
    // Writers stage while the relays run: one task per aggregate, one
    // record per transaction, as a service handling requests would.
    let writers: Vec<_> = (0..AGGREGATES)
        .map(|a| {
            let env = env.clone();
            tokio::spawn(async move {
                let aggregate = format!("agg-{a}");
                let mut ids = Vec::new();
                for n in 0..PER_AGGREGATE {
                    ids.extend(env.stage(vec![env.message(&aggregate, n)]).await);
                }
                ids
            })
        })
        .collect();
    let mut staged = Vec::new();
    for writer in writers {
        staged.extend(writer.await.expect("writer"));
    }
    assert_eq!(staged.len(), AGGREGATES * PER_AGGREGATE);

    env.wait_until_delivered(Duration::from_secs(90)).await;
    for handle in handles {
        handle.shutdown().await;
    }
    let received = env.take_all().await;
    assert_once_and_in_order(&received, &staged);

    let shares: Vec<usize> = tallies
        .iter()
        .map(|t| t.delivered.load(Ordering::SeqCst))
        .collect();
    eprintln!("records delivered per instance: {shares:?}");
    assert_eq!(
        shares.iter().sum::<usize>(),
        staged.len(),
        "each record was delivered by exactly one instance"
    );
    assert!(
        shares.iter().filter(|n| **n > 0).count() >= 2,
        "the work was shared: {shares:?}"
    );
    let records = env.outbox.records_of("agg-0").await.expect("records");
    assert!(
        records
            .iter()
            .all(|r| r.status == outbox::RecordStatus::Published)
    );
    env.finish().await;
}

#[tokio::test]
async fn a_lease_held_by_a_dead_instance_delays_its_aggregates_until_it_runs_out() {
    const LEASE: Duration = Duration::from_secs(1);
    let env = env().await;
    let mut staged = Vec::new();
    for n in 0..4 {
        let records = ["held-0", "held-1", "free-0", "free-1"]
            .iter()
            .map(|aggregate| env.message(aggregate, n))
            .collect();
        staged.extend(env.stage(records).await);
    }
    // An instance that claimed two aggregates and then vanished: its leases
    // stay in `outbox_leases` until they expire.
    let dead = Leases::new(
        env.db.collection("outbox_leases"),
        "dead-instance".into(),
        LEASE,
    );
    let claimed = Instant::now();
    for aggregate in ["held-0", "held-1"] {
        assert!(dead.acquire(aggregate).await.expect("lease"));
    }

    let tally = Arc::new(Tally::default());
    let survivor = Relay::new(
        env.outbox.clone(),
        relay_config("survivor", Duration::from_secs(30)),
    )
    .with_broker(env.broker())
    .with_observer(tally.clone());
    let handle = survivor.start(CancellationToken::new());
    env.wait_until_delivered(Duration::from_secs(60)).await;
    handle.shutdown().await;

    let first = tally.first.lock().expect("tally").clone();
    for aggregate in ["held-0", "held-1"] {
        let waited = first[aggregate].duration_since(claimed);
        // Lease times are whole milliseconds; allow for the rounding.
        assert!(
            waited + Duration::from_millis(5) >= LEASE,
            "{aggregate} was delivered {waited:?} after the dead instance claimed it, before its lease ran out"
        );
    }
    eprintln!(
        "first deliveries after the claim: {:?}",
        first
            .iter()
            .map(|(a, t)| (a.clone(), t.duration_since(claimed)))
            .collect::<BTreeMap<_, _>>()
    );
    assert_once_and_in_order(&env.take_all().await, &staged);
    env.finish().await;
}

#[tokio::test]
async fn leases_are_claimed_together_taking_only_free_expired_or_own_ones() {
    let env = env().await;
    let collection = env.db.collection::<bson::Document>("outbox_leases");
    let lease =
        |owner: &str, length: Duration| Leases::new(collection.clone(), owner.into(), length);
    let me = lease("me", Duration::from_secs(30));
    let other = lease("other", Duration::from_secs(30));
    let gone = lease("gone", Duration::from_millis(1));
    assert!(other.acquire("held").await.expect("lease"));
    assert!(gone.acquire("expired").await.expect("lease"));
    // Left behind by a round of this owner that could not release it.
    assert!(me.acquire("mine").await.expect("lease"));
    tokio::time::sleep(Duration::from_millis(20)).await;

    let wanted: Vec<String> = ["free", "held", "expired", "mine"]
        .map(String::from)
        .to_vec();
    let taken = me.acquire_many(&wanted).await.expect("claim");
    assert_eq!(taken, ["free", "expired", "mine"], "in the order asked");
    let taken = other.acquire_many(&wanted).await.expect("claim");
    assert_eq!(taken, ["held"], "only its own live lease");

    me.release_many(&wanted).await.expect("release");
    let left: Vec<bson::Document> = collection
        .find(bson::doc! {})
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("leases");
    assert_eq!(
        left.len(),
        1,
        "only another owner's lease is left: {left:?}"
    );
    assert_eq!(left[0].get_str("owner").expect("owner"), "other");
    env.finish().await;
}

/// A command handler that never returns, like a call into a provider that
/// hangs; it counts how many deliveries entered it.
#[derive(Default)]
struct Hangs {
    entered: AtomicUsize,
}

impl Handler for Hangs {
    fn handle<'a>(&'a self, _record: &'a OutboxRecord) -> HandlerFuture<'a> {
        Box::pin(async move {
            self.entered.fetch_add(1, Ordering::SeqCst);
            futures::future::pending::<Result<(), DeliveryError>>().await
        })
    }
}

#[derive(Default)]
struct Works {
    calls: AtomicUsize,
}

impl Handler for Works {
    fn handle<'a>(&'a self, _record: &'a OutboxRecord) -> HandlerFuture<'a> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_delivery_is_taken_over_after_its_lease_with_nothing_lost() {
    const LEASE: Duration = Duration::from_secs(1);
    const AGGREGATES: usize = 4;
    let env = env().await;
    // Each aggregate starts with a command (say, a refund) and has AMQP
    // messages behind it, which must wait for it.
    let mut staged = Vec::new();
    let mut records = Vec::new();
    for a in 0..AGGREGATES {
        let aggregate = format!("order-{a}");
        records.push(NewRecord::command(
            &aggregate,
            "refund",
            serde_json::json!({}),
        ));
        records.extend((0..5).map(|n| env.message(&aggregate, n)));
    }
    for (i, id) in env.stage(records).await.into_iter().enumerate() {
        // Every sixth record is the command; the rest reach the queue.
        if i % 6 != 0 {
            staged.push(id);
        }
    }

    let hangs = Arc::new(Hangs::default());
    let doomed = Arc::new(
        Relay::new(env.outbox.clone(), relay_config("doomed", LEASE))
            .with_broker(env.broker())
            .with_handler("refund", hangs.clone()),
    );
    let started = Instant::now();
    let round = tokio::spawn({
        let doomed = doomed.clone();
        async move { doomed.run_once().await }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while hangs.entered.load(Ordering::SeqCst) < AGGREGATES {
        assert!(
            Instant::now() < deadline,
            "the doomed relay never claimed every aggregate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Killed mid-delivery: nothing after this point runs, no lease is
    // released, no record is marked.
    round.abort();
    assert!(round.await.expect_err("aborted").is_cancelled());
    drop(doomed);
    let held = env
        .db
        .collection::<bson::Document>("outbox_leases")
        .count_documents(bson::doc! {})
        .await
        .expect("leases");
    assert_eq!(held as usize, AGGREGATES, "the dead relay's leases remain");

    let works = Arc::new(Works::default());
    let tally = Arc::new(Tally::default());
    let survivor = Relay::new(
        env.outbox.clone(),
        relay_config("survivor", Duration::from_secs(30)),
    )
    .with_broker(env.broker())
    .with_handler("refund", works.clone())
    .with_observer(tally.clone());
    let handle = survivor.start(CancellationToken::new());
    env.wait_until_delivered(Duration::from_secs(60)).await;
    let drained = started.elapsed();
    handle.shutdown().await;

    let first = tally.first.lock().expect("tally").clone();
    assert_eq!(first.len(), AGGREGATES);
    for (aggregate, at) in &first {
        assert!(
            at.duration_since(started) + Duration::from_millis(5) >= LEASE,
            "{aggregate} taken over before the lease ran out"
        );
    }
    eprintln!("taken over and drained {drained:?} after the doomed relay started");
    assert_eq!(
        works.calls.load(Ordering::SeqCst),
        AGGREGATES,
        "each command ran once on the survivor"
    );
    assert_once_and_in_order(&env.take_all().await, &staged);
    env.finish().await;
}

/// A command that takes longer than a lease, counting how many of its runs
/// overlap; a run stopped from outside counts as ended.
#[derive(Default)]
struct Slow {
    calls: AtomicUsize,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
}

struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Handler for Slow {
    fn handle<'a>(&'a self, _record: &'a OutboxRecord) -> HandlerFuture<'a> {
        async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            let _running = Running(&self.running);
            self.most_at_once.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(())
        }
        .boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_outliving_its_lease_is_stopped_before_another_relay_can_run_it() {
    let env = env().await;
    env.stage(vec![NewRecord::command(
        "order-1",
        "slow",
        serde_json::json!({}),
    )])
    .await;
    let slow = Arc::new(Slow::default());
    let cancel = CancellationToken::new();
    // Two instances, a one-second lease and a command that needs three: an
    // instance whose command outlived its lease would share it with the
    // other, which takes the expired lease over.
    let handles: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| {
            Relay::new(
                env.outbox.clone(),
                relay_config(name, Duration::from_secs(1)),
            )
            .with_handler("slow", slow.clone())
            .start(cancel.clone())
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(4)).await;
    cancel.cancel();
    for handle in handles {
        handle.shutdown().await;
    }
    // It was tried again after each stop, and never twice at once.
    assert!(slow.calls.load(Ordering::SeqCst) >= 2);
    assert_eq!(slow.most_at_once.load(Ordering::SeqCst), 1);
    let record = &env.outbox.records_of("order-1").await.expect("records")[0];
    assert!(record.attempts >= 1);
    assert!(
        record
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("lease")),
        "{:?}",
        record.last_error
    );
    env.finish().await;
}
