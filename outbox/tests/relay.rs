//! The outbox against the real MongoDB-wire server and the real RabbitMQ:
//! staged in a transaction, delivered after commit, in order, with confirms.

use bson::doc;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use outbox::handler::HandlerFuture;
use outbox::relay::{Delivery, Observer, Waker};
use outbox::transaction::{self, RetryPolicy};
use outbox::{
    Broker, BrokerConfig, DeliveryError, ExchangeSpec, Handler, Inbox, NewRecord, Outbox,
    OutboxRecord, RecordStatus, Relay, RelayConfig, RelayHandle, Topology,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::{TestError, amqp_uri, mongo_uri};

struct Env {
    client: mongodb::Client,
    db: mongodb::Database,
    outbox: Outbox,
    exchange: String,
}

async fn env() -> Env {
    let client = mongodb::Client::with_uri_str(mongo_uri())
        .await
        .expect("mongo");
    let db = client.database(&format!("outbox_test_{}", uuid::Uuid::new_v4().simple()));
    let outbox = Outbox::new(&db);
    outbox.ensure_schema().await.expect("schema");
    Env {
        client,
        db,
        outbox,
        exchange: format!("outbox-test-{}", uuid::Uuid::new_v4().simple()),
    }
}

fn broker(exchange: &str) -> Broker {
    Broker::new(BrokerConfig {
        uri: amqp_uri(),
        connection_name: "outbox-test".into(),
        connect_timeout: Duration::from_secs(5),
        topology: Topology {
            exchanges: vec![ExchangeSpec {
                name: exchange.into(),
                kind: ExchangeKind::Direct,
            }],
            queues: vec![],
        },
    })
}

/// A consumer bound to `exchange` with routing key `key`, as a peer would be.
async fn bound_queue(exchange: &str, key: &str) -> (Connection, lapin::Consumer) {
    let (conn, ch, queue) = common::bound_queue(exchange, key).await;
    let consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    (conn, consumer)
}

async fn stage(env: &Env, records: Vec<NewRecord>) -> Vec<String> {
    let outbox = env.outbox.clone();
    transaction::run(&env.client, &RetryPolicy::default(), move |session| {
        let outbox = outbox.clone();
        let records = records.clone();
        async move { Ok::<_, TestError>(outbox.stage(session, records).await?) }.boxed()
    })
    .await
    .expect("commit")
}

/// An AMQP record for key `k` that [`receive_exactly`] reads as `(agg, n)`.
fn message(env: &Env, agg: &str, n: i64) -> NewRecord {
    NewRecord::amqp(
        agg,
        &env.exchange,
        "k",
        serde_json::json!({ "agg": agg, "n": n }),
    )
}

fn test_relay(_env: &Env) -> RelayConfig {
    RelayConfig {
        watch_changes: false,
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        ..RelayConfig::default()
    }
}

#[tokio::test]
async fn committed_records_are_published_in_order_with_stable_ids() {
    let env = env().await;
    let (_conn, mut consumer) = bound_queue(&env.exchange, "k").await;
    let mut ids = Vec::new();
    for round in 0..3 {
        let records = ["a", "b"]
            .iter()
            .map(|agg| {
                message(&env, agg, round)
                    .with_header(
                        "traceparent",
                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                    )
                    .with_correlation(Some("corr-1".into()))
            })
            .collect();
        ids.extend(stage(&env, records).await);
    }
    let relay = Relay::new(env.outbox.clone(), test_relay(&env)).with_broker(broker(&env.exchange));
    let outcome = relay.drain(Duration::from_secs(20)).await.expect("drain");
    assert_eq!(outcome.delivered, 6);

    let mut seen: Vec<(String, i64, String)> = Vec::new();
    while seen.len() < 6 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("message in time")
            .expect("stream")
            .expect("delivery");
        let body: serde_json::Value = serde_json::from_slice(&delivery.data).expect("json");
        let props = &delivery.properties;
        assert_eq!(
            props.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(*props.delivery_mode(), Some(2), "persistent");
        assert_eq!(
            props.correlation_id().as_ref().map(|s| s.as_str()),
            Some("corr-1")
        );
        assert!(props.timestamp().is_some());
        let headers = props.headers().as_ref().expect("headers");
        assert!(headers.inner().contains_key("traceparent"));
        seen.push((
            body["agg"].as_str().unwrap().to_string(),
            body["n"].as_i64().unwrap(),
            props.message_id().as_ref().unwrap().to_string(),
        ));
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
    }
    for agg in ["a", "b"] {
        let order: Vec<i64> = seen.iter().filter(|s| s.0 == agg).map(|s| s.1).collect();
        assert_eq!(order, vec![0, 1, 2], "per-aggregate order for {agg}");
    }
    let mut received: Vec<String> = seen.iter().map(|s| s.2.clone()).collect();
    received.sort();
    ids.sort();
    assert_eq!(received, ids, "message_id is the record id");
    let records = env.outbox.records_of("a").await.expect("records");
    assert!(
        records
            .iter()
            .all(|r| r.status == RecordStatus::Published && r.published_at.is_some())
    );
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    env.db.drop().await.ok();
}

#[tokio::test]
async fn an_aborted_transaction_stages_nothing() {
    let env = env().await;
    let outbox = env.outbox.clone();
    let exchange = env.exchange.clone();
    let result: Result<(), TestError> =
        transaction::run(&env.client, &RetryPolicy::default(), move |session| {
            let outbox = outbox.clone();
            let exchange = exchange.clone();
            async move {
                outbox
                    .stage(
                        session,
                        vec![NewRecord::amqp("x", exchange, "k", serde_json::json!({}))],
                    )
                    .await?;
                Err(TestError::GaveUp)
            }
            .boxed()
        })
        .await;
    assert!(matches!(result, Err(TestError::GaveUp)));
    assert!(
        env.outbox
            .records_of("x")
            .await
            .expect("records")
            .is_empty()
    );
    let relay = Relay::new(env.outbox.clone(), test_relay(&env)).with_broker(broker(&env.exchange));
    assert_eq!(
        relay
            .drain(Duration::from_secs(5))
            .await
            .expect("drain")
            .delivered,
        0
    );
    env.db.drop().await.ok();
}

struct Flaky {
    calls: AtomicUsize,
    fail_first: usize,
}

impl Flaky {
    /// A handler whose first `n` calls fail as transient errors.
    fn failing_first(n: usize) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            fail_first: n,
        })
    }

    /// Until the handler has been called `n` times.
    async fn called(&self, n: usize) {
        while self.calls.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Handler for Flaky {
    fn handle<'a>(&'a self, _record: &'a OutboxRecord) -> HandlerFuture<'a> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.fail_first {
                Err(DeliveryError::Transient(format!("failure {n}")))
            } else {
                Ok(())
            }
        })
    }
}

#[tokio::test]
async fn marking_published_changes_only_pending_records_and_keeps_the_first_time() {
    let env = env().await;
    // More than one `$in` chunk, so the parallel writes are covered.
    let records = (0..70)
        .map(|n| NewRecord::command("agg", "noop", serde_json::json!({ "n": n })))
        .collect();
    let ids = stage(&env, records).await;
    env.outbox
        .mark_published(&ids[..65])
        .await
        .expect("first mark");
    let first = env.outbox.records_of("agg").await.expect("records");
    assert_eq!(env.outbox.stats().await.expect("stats").pending, 5);
    assert!(
        first[..65]
            .iter()
            .all(|r| r.status == RecordStatus::Published)
    );
    assert!(first[65..].iter().all(|r| r.published_at.is_none()));

    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut again = ids.clone();
    again.push("no-such-record".into());
    env.outbox
        .mark_published(&again)
        .await
        .expect("second mark");
    let second = env.outbox.records_of("agg").await.expect("records");
    assert!(second.iter().all(|r| r.status == RecordStatus::Published));
    for (before, after) in first[..65].iter().zip(&second) {
        assert_eq!(before.published_at, after.published_at, "first time kept");
    }
    assert!(
        second[65..]
            .iter()
            .all(|r| r.published_at > first[0].published_at)
    );
    env.db.drop().await.ok();
}

#[tokio::test]
async fn failing_commands_are_retried_then_parked_and_replayable() {
    let env = env().await;
    stage(
        &env,
        vec![
            NewRecord::command("agg", "refund", serde_json::json!({ "amount": 1 })),
            NewRecord::command("agg", "notify", serde_json::json!({})),
        ],
    )
    .await;
    let config = RelayConfig {
        max_attempts: 3,
        ..test_relay(&env)
    };
    let refund = Flaky::failing_first(usize::MAX);
    let notify = Flaky::failing_first(0);
    let relay = Relay::new(env.outbox.clone(), config.clone())
        .with_handler("refund", refund.clone())
        .with_handler("notify", notify.clone());
    let outcome = relay.drain(Duration::from_secs(20)).await.expect("drain");
    assert_eq!(outcome.parked, 1);
    assert_eq!(
        refund.calls.load(Ordering::SeqCst),
        3,
        "tried max_attempts times"
    );
    assert_eq!(
        notify.calls.load(Ordering::SeqCst),
        1,
        "the record behind a parked one still goes"
    );
    let parked = env.outbox.parked(10).await.expect("parked");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].attempts, 3);
    assert!(
        parked[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("failure")
    );
    assert_eq!(env.outbox.stats().await.expect("stats").parked, 1);

    env.outbox
        .replay(&parked[0].message_id)
        .await
        .expect("replay");
    let fixed = Flaky::failing_first(1);
    let relay = Relay::new(env.outbox.clone(), config).with_handler("refund", fixed.clone());
    relay.drain(Duration::from_secs(20)).await.expect("drain");
    assert_eq!(fixed.calls.load(Ordering::SeqCst), 2);
    let stats = env.outbox.stats().await.expect("stats");
    assert_eq!((stats.pending, stats.parked), (0, 0));
    env.db.drop().await.ok();
}

/// Not settled until its `settles_on`-th call; notes when each call came.
struct Settling {
    calls: Mutex<Vec<std::time::Instant>>,
    settles_on: usize,
    recheck: Duration,
}

impl Handler for Settling {
    fn handle<'a>(&'a self, _record: &'a OutboxRecord) -> HandlerFuture<'a> {
        Box::pin(async move {
            let mut calls = self.calls.lock().expect("calls");
            calls.push(std::time::Instant::now());
            if calls.len() < self.settles_on {
                Err(DeliveryError::NotYet {
                    reason: format!("still settling after {} looks", calls.len()),
                    retry_after: self.recheck,
                })
            } else {
                Ok(())
            }
        })
    }
}

/// Answers its calls from `script` in turn (`None` settles), then settles.
struct Scripted {
    script: Mutex<std::collections::VecDeque<Option<DeliveryError>>>,
}

impl Handler for Scripted {
    fn handle<'a>(&'a self, _record: &'a OutboxRecord) -> HandlerFuture<'a> {
        Box::pin(async move {
            match self.script.lock().expect("script").pop_front().flatten() {
                Some(error) => Err(error),
                None => Ok(()),
            }
        })
    }
}

#[tokio::test]
async fn a_record_waiting_on_purpose_stays_counted_apart_through_a_failed_look() {
    let env = env().await;
    stage(
        &env,
        vec![NewRecord::command("agg", "settle", serde_json::json!({}))],
    )
    .await;
    let soon = Duration::from_millis(1);
    let handler = Arc::new(Scripted {
        script: Mutex::new(
            [
                Some(DeliveryError::NotYet {
                    reason: "pending".into(),
                    retry_after: soon,
                }),
                Some(DeliveryError::Transient("look-up timed out".into())),
                Some(DeliveryError::Unavailable {
                    reason: "breaker open".into(),
                    retry_after: soon,
                }),
            ]
            .into(),
        ),
    });
    let relay = Relay::new(env.outbox.clone(), test_relay(&env)).with_handler("settle", handler);
    for _ in 0..3 {
        relay.run_once().await.expect("a look");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let stats = env.outbox.stats().await.expect("stats");
        assert_eq!(
            (stats.pending, stats.deferred),
            (1, 1),
            "still waiting on purpose"
        );
        assert_eq!(stats.oldest_pending_age, Duration::ZERO, "{stats:?}");
    }
    env.db.drop().await.ok();
}

#[tokio::test]
async fn a_command_not_settled_yet_is_looked_at_again_later_without_counting_an_attempt() {
    let env = env().await;
    stage(
        &env,
        vec![NewRecord::command("agg", "settle", serde_json::json!({}))],
    )
    .await;
    let recheck = Duration::from_millis(30);
    let settling = Arc::new(Settling {
        calls: Mutex::new(Vec::new()),
        settles_on: 5,
        recheck,
    });
    // Two attempts park a failing record: four looks must not count.
    let config = RelayConfig {
        max_attempts: 2,
        ..test_relay(&env)
    };
    let relay = Relay::new(env.outbox.clone(), config).with_handler("settle", settling.clone());
    relay.run_once().await.expect("first look");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let waiting = env.outbox.stats().await.expect("stats");
    assert_eq!(waiting.pending, 1);
    assert_eq!(
        waiting.oldest_pending_age,
        Duration::ZERO,
        "waiting on purpose is not late"
    );
    assert_eq!(waiting.deferred, 1, "but it is counted apart");
    assert!(
        waiting.oldest_deferred_age >= Duration::from_millis(20),
        "{waiting:?}"
    );
    // A drain stops once nothing is due; the next look is due later.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while env.outbox.stats().await.expect("stats").pending > 0 {
        assert!(std::time::Instant::now() < deadline, "never settled");
        let outcome = relay.drain(Duration::from_secs(5)).await.expect("drain");
        assert_eq!(outcome.parked, 0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let calls = settling.calls.lock().expect("calls").clone();
    assert_eq!(calls.len(), 5, "looked at until it settled");
    for pair in calls.windows(2) {
        assert!(
            pair[1] - pair[0] >= recheck,
            "looked at again after {:?}, before its {recheck:?}",
            pair[1] - pair[0]
        );
    }
    let record = &env.outbox.records_of("agg").await.expect("records")[0];
    assert_eq!(record.status, RecordStatus::Published);
    assert_eq!(record.attempts, 0);
    // Published, it leaves the sparse index the stats read.
    let marked = env
        .db
        .collection::<bson::Document>("outbox")
        .count_documents(doc! { outbox::store::DEFERRED: { "$exists": true } })
        .await
        .expect("count");
    assert_eq!(marked, 0, "the deferred mark is cleared on publish");
    env.db.drop().await.ok();
}

#[tokio::test]
async fn a_record_waits_behind_its_predecessor() {
    let env = env().await;
    stage(
        &env,
        vec![
            NewRecord::command("agg", "first", serde_json::json!({})),
            NewRecord::command("agg", "second", serde_json::json!({})),
        ],
    )
    .await;
    let first = Flaky::failing_first(1);
    let second = Flaky::failing_first(0);
    let config = RelayConfig {
        min_backoff: Duration::from_secs(60),
        max_backoff: Duration::from_secs(60),
        ..test_relay(&env)
    };
    let relay = Relay::new(env.outbox.clone(), config)
        .with_handler("first", first.clone())
        .with_handler("second", second.clone());
    relay.run_once().await.expect("round");
    relay.run_once().await.expect("round");
    assert_eq!(first.calls.load(Ordering::SeqCst), 1, "backing off");
    assert_eq!(
        second.calls.load(Ordering::SeqCst),
        0,
        "never overtakes the first"
    );
    env.db.drop().await.ok();
}

#[tokio::test]
async fn the_inbox_admits_a_message_once() {
    let env = env().await;
    let inbox = Inbox::new(&env.db, Duration::from_secs(3600));
    inbox.ensure_schema().await.expect("schema");
    let mut results = Vec::new();
    for _ in 0..3 {
        let inbox = inbox.clone();
        let first = transaction::run(&env.client, &RetryPolicy::default(), move |session| {
            let inbox = inbox.clone();
            async move {
                    Ok::<_, TestError>(inbox.record(session, "reviews", "m-1", doc! {}).await?)
                }
                .boxed()
        })
        .await
        .expect("commit");
        results.push(first);
    }
    assert_eq!(results, vec![true, false, false]);
    assert_eq!(inbox.count("reviews").await.expect("count"), 1);
    env.db.drop().await.ok();
}

/// Every delivery outcome, in the order the relay reported them.
#[derive(Default)]
struct Outcomes(Mutex<Vec<(String, i64, &'static str)>>);

impl Observer for Outcomes {
    fn observe(&self, record: &OutboxRecord, delivery: Delivery<'_>) {
        let what = match delivery {
            Delivery::Delivered { .. } => "delivered",
            Delivery::Failed(_) => "failed",
            Delivery::Deferred(_) => "deferred",
            Delivery::Parked(_) => "parked",
        };
        if let Ok(mut seen) = self.0.lock() {
            seen.push((record.aggregate_id.clone(), record.seq, what));
        }
    }
}

impl Outcomes {
    fn of(&self, aggregate: &str) -> Vec<(i64, &'static str)> {
        self.0
            .lock()
            .expect("outcomes")
            .iter()
            .filter(|(a, _, _)| a == aggregate)
            .map(|(_, seq, what)| (*seq, *what))
            .collect()
    }
}

/// A queue bound to `key` that already holds the one message it may hold
/// and refuses the rest, so the broker nacks every publish routed to it.
async fn full_queue(channel: &Channel, exchange: &str, key: &str) -> String {
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(1));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let queue = common::exclusive_queue(channel, exchange, key, arguments).await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let confirm = channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "the first message fits");
    queue
}

/// The next `n` messages as (aggregate, n), and then nothing more for a while.
async fn receive_exactly(consumer: &mut lapin::Consumer, n: usize) -> Vec<(String, i64)> {
    let mut got = Vec::new();
    while got.len() < n {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("message in time")
            .expect("stream")
            .expect("delivery");
        let body: serde_json::Value = serde_json::from_slice(&delivery.data).expect("json");
        got.push((
            body["agg"].as_str().expect("agg").to_string(),
            body["n"].as_i64().expect("n"),
        ));
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let extra = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
    assert!(extra.is_err(), "nothing beyond the {n} expected messages");
    got
}

#[tokio::test]
async fn a_nacked_publish_in_a_batch_is_retried_alone_and_its_successor_waits() {
    let env = env().await;
    let (conn, mut peer) = bound_queue(&env.exchange, "k").await;
    let blocker = conn.create_channel().await.expect("channel");
    let full = full_queue(&blocker, &env.exchange, "refused").await;
    // Three aggregates in one batch; the second record of "a" goes where
    // the broker refuses it.
    let mut records = Vec::new();
    for n in 0..3 {
        for agg in ["a", "b", "c"] {
            let key = if (agg, n) == ("a", 1) { "refused" } else { "k" };
            records.push(NewRecord::amqp(
                agg,
                &env.exchange,
                key,
                serde_json::json!({ "agg": agg, "n": n }),
            ));
        }
    }
    stage(&env, records).await;
    let outcomes = Arc::new(Outcomes::default());
    let relay = Relay::new(env.outbox.clone(), test_relay(&env))
        .with_broker(broker(&env.exchange))
        .with_observer(outcomes.clone());

    let round = relay.run_once().await.expect("round");
    assert_eq!((round.delivered, round.retried), (7, 1));
    for agg in ["b", "c"] {
        let records = env.outbox.records_of(agg).await.expect("records");
        assert!(
            records.iter().all(|r| r.status == RecordStatus::Published),
            "the rest of the batch is marked"
        );
    }
    let a = env.outbox.records_of("a").await.expect("records");
    assert_eq!(a[0].status, RecordStatus::Published);
    assert_eq!(
        (a[1].status, a[1].attempts),
        (RecordStatus::Pending, 1),
        "the nacked record counts an attempt"
    );
    assert!(
        a[1].last_error
            .as_deref()
            .unwrap_or_default()
            .contains("nack")
    );
    assert_eq!(
        (a[2].status, a[2].attempts),
        (RecordStatus::Pending, 0),
        "its successor was not tried"
    );
    assert_eq!(
        outcomes.of("a"),
        vec![(1, "delivered"), (2, "failed")],
        "nothing of a after the nack"
    );
    let mut first = receive_exactly(&mut peer, 7).await;
    first.sort();
    assert_eq!(
        first,
        [
            ("a", 0),
            ("b", 0),
            ("b", 1),
            ("b", 2),
            ("c", 0),
            ("c", 1),
            ("c", 2)
        ]
        .map(|(a, n)| (a.to_string(), n))
    );

    // Room again: the nacked record goes, and only then its successor.
    blocker
        .queue_purge(full.as_str().into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
    let outcome = relay.drain(Duration::from_secs(20)).await.expect("drain");
    assert_eq!(outcome.delivered, 2);
    assert_eq!(
        outcomes.of("a"),
        vec![
            (1, "delivered"),
            (2, "failed"),
            (2, "delivered"),
            (3, "delivered")
        ]
    );
    assert_eq!(receive_exactly(&mut peer, 1).await, vec![("a".into(), 2)]);
    let a = env.outbox.records_of("a").await.expect("records");
    assert!(a.iter().all(|r| r.status == RecordStatus::Published));
    env.db.drop().await.ok();
}

#[tokio::test]
async fn while_the_broker_is_unreachable_its_records_are_left_alone_and_commands_still_run() {
    let env = env().await;
    stage(
        &env,
        vec![
            NewRecord::amqp("order-1", &env.exchange, "k", serde_json::json!({})),
            NewRecord::amqp("order-2", &env.exchange, "k", serde_json::json!({})),
            NewRecord::command("order-3", "notify", serde_json::json!({})),
        ],
    )
    .await;
    // Nothing listens on port 1.
    let unreachable = Broker::new(BrokerConfig {
        uri: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
        connection_name: "outbox-test-unreachable".into(),
        connect_timeout: Duration::from_secs(2),
        topology: Topology::default(),
    });
    let notify = Flaky::failing_first(0);
    let outcomes = Arc::new(Outcomes::default());
    let relay = Relay::new(env.outbox.clone(), test_relay(&env))
        .with_broker(unreachable)
        .with_handler("notify", notify.clone())
        .with_observer(outcomes.clone());

    let round = relay.run_once().await.expect("round");
    assert!(round.broker_unavailable && round.waiting);
    assert_eq!(round.delivered, 1, "the command does not need the broker");
    assert_eq!(notify.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        outcomes.0.lock().expect("outcomes").clone(),
        vec![("order-3".to_string(), 1, "delivered")],
        "no AMQP record was attempted"
    );
    for order in ["order-1", "order-2"] {
        let records = env.outbox.records_of(order).await.expect("records");
        assert_eq!(
            (records[0].status, records[0].attempts),
            (RecordStatus::Pending, 0)
        );
    }
    let leases = env
        .db
        .collection::<bson::Document>("outbox_leases")
        .count_documents(doc! {})
        .await
        .expect("leases");
    assert_eq!(leases, 0, "every lease taken was given back");
    env.db.drop().await.ok();
}

#[tokio::test]
async fn a_backlog_larger_than_a_scan_is_swept_in_windows_and_nothing_behind_is_missed() {
    const AGGREGATES: i64 = 12;
    let env = env().await;
    let (_conn, mut peer) = bound_queue(&env.exchange, "k").await;
    // One transaction per aggregate, so the backlog spans many instants.
    for a in 0..AGGREGATES {
        let agg = format!("agg-{a:02}");
        let records = (0..3).map(|n| message(&env, &agg, n)).collect();
        stage(&env, records).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let config = RelayConfig {
        scan_limit: 4,
        ..test_relay(&env)
    };
    let relay = Relay::new(env.outbox.clone(), config).with_broker(broker(&env.exchange));
    let first = relay.run_once().await.expect("round");
    assert!(
        first.delivered > 0 && first.delivered < 3 * AGGREGATES as u64,
        "one scan sees only part of the backlog: {first:?}"
    );
    relay.run_once().await.expect("round");
    // A record that is due from before the sweep's position, as a record
    // committed late or handed back by another relay would be.
    let late = stage(&env, vec![message(&env, "late", 0)]).await;
    env.db
        .collection::<bson::Document>("outbox")
        .update_one(
            doc! { "_id": &late[0] },
            doc! { "$set": { "nextAttemptAt": bson::DateTime::from_millis(1_000) } },
        )
        .await
        .expect("backdate");
    relay.drain(Duration::from_secs(20)).await.expect("drain");

    let stats = env.outbox.stats().await.expect("stats");
    assert_eq!(stats.pending, 0, "everything delivered");
    let received = receive_exactly(&mut peer, 3 * AGGREGATES as usize + 1).await;
    let mut per_aggregate: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for (agg, n) in received {
        per_aggregate.entry(agg).or_default().push(n);
    }
    assert_eq!(per_aggregate.len(), AGGREGATES as usize + 1);
    for (agg, order) in per_aggregate {
        let expected: Vec<i64> = (0..order.len() as i64).collect();
        assert_eq!(order, expected, "each once and in order for {agg}");
    }
    env.db.drop().await.ok();
}

#[tokio::test]
async fn a_backlog_committed_at_a_few_instants_is_swept_without_waiting_for_the_poll() {
    const BATCHES: usize = 4;
    const PER_BATCH: usize = 8;
    let env = env().await;
    let (_conn, mut peer) = bound_queue(&env.exchange, "k").await;
    // Each batch is one transaction: its records share one instant, so a
    // full window at that instant is scanned again, and finds the records
    // the previous round is still marking.
    for b in 0..BATCHES {
        let records = (0..PER_BATCH)
            .flat_map(|a| {
                let agg = format!("batch-{b}-agg-{a}");
                [message(&env, &agg, 0), message(&env, &agg, 1)]
            })
            .collect();
        stage(&env, records).await;
    }
    // Polling an hour apart and no change stream: a round that waited for
    // the poll would leave the rest of the backlog for an hour.
    let relay = Relay::new(
        env.outbox.clone(),
        RelayConfig {
            scan_limit: 4,
            ..woken_only(&env)
        },
    )
    .with_broker(broker(&env.exchange));
    let handle = relay.start(tokio_util::sync::CancellationToken::new());
    let received = receive_exactly(&mut peer, BATCHES * PER_BATCH * 2).await;
    handle.shutdown().await;
    let mut per_aggregate: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for (agg, n) in received {
        per_aggregate.entry(agg).or_default().push(n);
    }
    assert_eq!(per_aggregate.len(), BATCHES * PER_BATCH);
    assert!(
        per_aggregate.values().all(|order| order == &[0, 1]),
        "each once and in order: {per_aggregate:?}"
    );
    env.db.drop().await.ok();
}

/// Starts `relay`: its waker, and the handle that stops it.
fn started(relay: Relay) -> (Waker, RelayHandle) {
    let waker = relay.waker();
    (
        waker,
        relay.start(tokio_util::sync::CancellationToken::new()),
    )
}

/// A relay that polls once an hour and has no watcher: only wake-ups and
/// hand-overs make it run a round.
fn woken_only(env: &Env) -> RelayConfig {
    RelayConfig {
        poll_interval: Duration::from_secs(3600),
        ..test_relay(env)
    }
}

/// A relay started with `config` once its first round, a scan, has
/// delivered a record: from then on it waits for a wake-up, a hand-over
/// or its poll.
async fn started_past_its_first_round(
    env: &Env,
    peer: &mut lapin::Consumer,
    config: RelayConfig,
) -> (Waker, RelayHandle) {
    stage(env, vec![message(env, "first", 0)]).await;
    let (waker, handle) =
        started(Relay::new(env.outbox.clone(), config).with_broker(broker(&env.exchange)));
    assert_eq!(receive_exactly(peer, 1).await, [("first".to_string(), 0)]);
    (waker, handle)
}

#[tokio::test]
async fn a_handed_over_aggregate_is_delivered_without_a_scan_and_a_wake_up_scans() {
    let env = env().await;
    let (_conn, mut peer) = bound_queue(&env.exchange, "k").await;
    let (waker, handle) = started_past_its_first_round(&env, &mut peer, woken_only(&env)).await;

    stage(
        &env,
        vec![message(&env, "handed", 0), message(&env, "left", 0)],
    )
    .await;
    waker.hand(["handed"]);
    // Only the handed-over aggregate goes: no scan found `left`.
    assert_eq!(
        receive_exactly(&mut peer, 1).await,
        [("handed".to_string(), 0)]
    );
    let left = env.outbox.records_of("left").await.expect("records");
    assert_eq!(
        (left[0].status, left[0].attempts),
        (RecordStatus::Pending, 0)
    );

    waker.wake();
    assert_eq!(
        receive_exactly(&mut peer, 1).await,
        [("left".to_string(), 0)]
    );
    handle.shutdown().await;
    env.db.drop().await.ok();
}

#[tokio::test]
async fn a_handed_over_aggregate_that_needs_no_broker_runs_while_the_broker_is_unreachable() {
    let env = env().await;
    let notify = Flaky::failing_first(0);
    stage(
        &env,
        vec![NewRecord::command("first", "notify", serde_json::json!({}))],
    )
    .await;
    let (waker, handle) = started(
        Relay::new(env.outbox.clone(), woken_only(&env))
            .with_broker(Broker::new(BrokerConfig {
                uri: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
                connection_name: "outbox-test-unreachable".into(),
                connect_timeout: Duration::from_secs(2),
                topology: Topology::default(),
            }))
            .with_handler("notify", notify.clone()),
    );
    // The first round scans and asks nothing of the broker.
    tokio::time::timeout(Duration::from_secs(10), notify.called(1))
        .await
        .expect("the first command runs");

    stage(
        &env,
        vec![NewRecord::command(
            "order-3",
            "notify",
            serde_json::json!({}),
        )],
    )
    .await;
    stage(&env, vec![message(&env, "order-4", 0)]).await;
    waker.hand(["order-3", "order-4"]);
    // A handed-over aggregate may hold AMQP records, and the broker is
    // down; the round reads their due records to find which hold none.
    // Without that it would wait for the outage rounds, five seconds apart.
    tokio::time::timeout(Duration::from_secs(3), notify.called(2))
        .await
        .expect("the handed-over command runs without waiting for the broker");
    // The one that needs the broker is left alone: pending, never tried.
    let waiting = env.outbox.records_of("order-4").await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].status, RecordStatus::Pending);
    assert_eq!(waiting[0].attempts, 0);
    handle.shutdown().await;
    env.db.drop().await.ok();
}

#[tokio::test]
async fn hand_overs_more_frequent_than_the_poll_do_not_hold_off_its_scan() {
    let env = env().await;
    let (_conn, mut peer) = bound_queue(&env.exchange, "k").await;
    let config = RelayConfig {
        poll_interval: Duration::from_millis(300),
        ..test_relay(&env)
    };
    let (waker, handle) = started_past_its_first_round(&env, &mut peer, config).await;

    // Every 20 ms a hand-over (of an aggregate with nothing pending) wakes
    // the relay, far more often than it polls.
    let handing = tokio::spawn(async move {
        loop {
            waker.hand(["idle"]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // Neither handed over nor announced: only the polling scan finds it.
    stage(&env, vec![message(&env, "unannounced", 0)]).await;
    assert_eq!(
        receive_exactly(&mut peer, 1).await,
        [("unannounced".to_string(), 0)]
    );
    handing.abort();
    handle.shutdown().await;
    env.db.drop().await.ok();
}

#[tokio::test]
async fn a_round_with_nothing_to_mark_keeps_the_running_mark_so_nothing_is_sent_twice() {
    const RECORDS: i64 = 1500;
    let env = env().await;
    let records = (0..RECORDS)
        .map(|n| NewRecord::command("bulk", "count", serde_json::json!({ "n": n })))
        .collect();
    stage(&env, records).await;
    let counter = Flaky::failing_first(0);
    let config = RelayConfig {
        per_aggregate: RECORDS,
        ..woken_only(&env)
    };
    let (waker, handle) =
        started(Relay::new(env.outbox.clone(), config).with_handler("count", counter.clone()));
    tokio::time::timeout(Duration::from_secs(30), counter.called(RECORDS as usize))
        .await
        .expect("every record delivered once");

    // The round's mark of all of them now runs (about a second on
    // SecantusDB). A scan meanwhile finds them pending but being marked: a
    // round with nothing to do and nothing to mark.
    waker.wake();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A hand-over of the same aggregate must wait for that mark, not claim
    // the aggregate again and send what is not marked yet.
    waker.hand(["bulk"]);
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let records = env.outbox.records_of("bulk").await.expect("records");
            if records.iter().all(|r| r.status == RecordStatus::Published) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("all marked published");
    handle.shutdown().await;
    assert_eq!(
        counter.calls.load(Ordering::SeqCst),
        RECORDS as usize,
        "no record was sent twice"
    );
    env.db.drop().await.ok();
}

/// A command that runs until the test opens it, and at once after.
struct Gate {
    entered: AtomicUsize,
    open: tokio::sync::watch::Sender<bool>,
}

impl Handler for Gate {
    fn handle<'a>(&'a self, _record: &'a OutboxRecord) -> HandlerFuture<'a> {
        Box::pin(async move {
            self.entered.fetch_add(1, Ordering::SeqCst);
            let _ = self.open.subscribe().wait_for(|open| *open).await;
            Ok(())
        })
    }
}

/// Stages one command for `aggregate` and hands the aggregate to the relay.
async fn stage_command(env: &Env, waker: &Waker, aggregate: &str, name: &str) {
    stage(
        env,
        vec![NewRecord::command(aggregate, name, serde_json::json!({}))],
    )
    .await;
    waker.hand([aggregate]);
}

/// Until every record of `aggregates` is published (30 s at most); if not,
/// each record's aggregate, status and attempts.
async fn all_published(
    env: &Env,
    aggregates: &[&str],
) -> Result<(), Vec<(String, RecordStatus, i32)>> {
    let statuses = || async {
        let mut all = Vec::new();
        for aggregate in aggregates {
            let records = env.outbox.records_of(aggregate).await.expect("records");
            all.extend(
                records
                    .into_iter()
                    .map(|r| (r.aggregate_id, r.status, r.attempts)),
            );
        }
        all
    };
    let published = tokio::time::timeout(Duration::from_secs(30), async {
        while !statuses()
            .await
            .iter()
            .all(|(_, status, _)| *status == RecordStatus::Published)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    match published {
        Ok(()) => Ok(()),
        Err(_) => Err(statuses().await),
    }
}

#[tokio::test]
async fn a_slow_round_does_not_hold_back_records_committed_after_it() {
    let env = env().await;
    let gate = Arc::new(Gate {
        entered: AtomicUsize::new(0),
        open: tokio::sync::watch::Sender::new(false),
    });
    let counter = Flaky::failing_first(0);
    // A lease long enough that the slow command is not stopped at its
    // deadline while the test waits.
    let config = RelayConfig {
        lease: Duration::from_secs(300),
        ..test_relay(&env)
    };
    let (waker, handle) = started(
        Relay::new(env.outbox.clone(), config)
            .with_handler("slow", gate.clone())
            .with_handler("count", counter.clone()),
    );

    // A command hanging on its provider, as a refund can for most of the
    // lease, holds only its own round.
    stage_command(&env, &waker, "refund-1", "slow").await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while gate.entered.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the slow command started");
    // Handed over again while in flight: the round that finds it busy
    // follows the slow one, without waiting for it meanwhile.
    waker.hand(["refund-1"]);
    tokio::time::sleep(Duration::from_millis(50)).await;

    stage_command(&env, &waker, "order-2", "count").await;
    tokio::time::timeout(Duration::from_secs(30), counter.called(1))
        .await
        .expect("a later record goes while the slow round is still in flight");
    let slow = env.outbox.records_of("refund-1").await.expect("records");
    assert_eq!(slow[0].status, RecordStatus::Pending, "still running");

    gate.open.send_replace(true);
    if let Err(left) = all_published(&env, &["refund-1", "order-2"]).await {
        panic!(
            "both marked published: {left:?}, slow command entered {} times",
            gate.entered.load(Ordering::SeqCst)
        );
    }
    handle.shutdown().await;
    // At least once: the round that ran it marks it, unless that write
    // failed and a later round sends it again.
    assert!(gate.entered.load(Ordering::SeqCst) >= 1);
    assert!(counter.calls.load(Ordering::SeqCst) >= 1);
    env.db.drop().await.ok();
}

/// Panics on its first call, as a handler with a bug for one input would.
struct PanicsOnce {
    calls: AtomicUsize,
}

impl Handler for PanicsOnce {
    fn handle<'a>(&'a self, _record: &'a OutboxRecord) -> HandlerFuture<'a> {
        Box::pin(async move {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("a handler bug");
            }
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_that_panics_is_settled_and_its_record_goes_again() {
    let env = env().await;
    let buggy = Arc::new(PanicsOnce {
        calls: AtomicUsize::new(0),
    });
    let counter = Flaky::failing_first(0);
    // One round in flight: a panicked round that was never settled would
    // leave no room for the next one.
    let config = RelayConfig {
        rounds_in_flight: 1,
        ..test_relay(&env)
    };
    let (waker, handle) = started(
        Relay::new(env.outbox.clone(), config)
            .with_handler("buggy", buggy.clone())
            .with_handler("count", counter.clone()),
    );

    stage_command(&env, &waker, "order-1", "buggy").await;
    stage_command(&env, &waker, "order-2", "count").await;

    if let Err(left) = all_published(&env, &["order-1", "order-2"]).await {
        panic!(
            "both published after the panic: {left:?}, handler ran {} times",
            buggy.calls.load(Ordering::SeqCst)
        );
    }
    assert_eq!(
        buggy.calls.load(Ordering::SeqCst),
        2,
        "once more after the panic"
    );
    handle.shutdown().await;
    env.db.drop().await.ok();
}
