//! Two real `order-service` processes on one database share the outbox;
//! one is killed with SIGKILL while it has a backlog, and the other
//! delivers everything, each order's events still in order.
//!
//! The backlog is staged straight into the shared outbox (as committed
//! requests would have left it), so the test controls its size; a queue
//! bound to the service's order exchange reads what a peer receives.

use crate::helpers::{EventTap, amqp_uri, free_port, mongo_uri, poll_until};
use futures::{FutureExt, StreamExt};
use lapin::{Connection, ConnectionProperties};
use outbox::transaction::{self, RetryPolicy};
use outbox::{NewRecord, Outbox};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

const AGGREGATES: usize = 60;
const PER_AGGREGATE: usize = 5;
const LEASE_SECS: u64 = 2;

/// Starts the real binary on `port` against `database`.
fn spawn_service(name: &str, port: u16, database: &str, prefix: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_order-service"))
        .env("NODE_ENV", "test")
        .env("PORT", port.to_string())
        .env("DATABASE_URL", mongo_uri(database))
        .env("RABBITMQ_ENDPOINT", amqp_uri())
        .env("AMQP_EXCHANGE_PREFIX", prefix)
        .env("INSTANCE_ID", name)
        .env("OUTBOX_LEASE_SECS", LEASE_SECS.to_string())
        .env("OUTBOX_POLL_MS", "100")
        // Small rounds, so both instances hold leases while the backlog lasts.
        .env("OUTBOX_CONCURRENCY", "4")
        .env("OUTBOX_PER_AGGREGATE", "2")
        .env("OUTBOX_SCAN_LIMIT", "50")
        .env("JWT_TOKEN", "scale-jwt-secret")
        .env("GATEWAY_JWT_TOKEN", "scale-gateway-secret")
        .env("FLUTTERWAVE_API_URL", "http://127.0.0.1:9/v3")
        .env("RUST_LOG", "warn")
        .env_remove("REDIS_URL")
        .env_remove("ELASTIC_SEARCH_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("order-service starts")
}

async fn wait_live(port: u16, child: &mut Child) {
    let http = reqwest::Client::new();
    poll_until(
        &format!("order-service on port {port} to become live"),
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("order-service on port {port} exited during start-up: {status}");
            }
            let live = http
                .get(format!("http://127.0.0.1:{port}/health/live"))
                .send();
            async move { live.await.is_ok_and(|r| r.status().is_success()) }
        },
    )
    .await;
}

#[derive(Debug, thiserror::Error)]
enum StageError {
    #[error(transparent)]
    Mongo(#[from] mongodb::error::Error),
    #[error(transparent)]
    Outbox(#[from] outbox::Error),
}

impl transaction::TransactionError for StageError {
    fn is_transient(&self) -> bool {
        match self {
            StageError::Mongo(e) | StageError::Outbox(outbox::Error::Mongo(e)) => {
                transaction::is_transient(e)
            }
            StageError::Outbox(_) => false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_leaves_its_backlog_to_the_other_with_nothing_lost() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let database = format!("order_scale_{id}");
    let prefix = format!("s{}-", &id[..12]);
    let exchange = format!("{prefix}gigconnect-order-exchange");

    // A peer's queue on every exchange, declared before anything is sent.
    let tap = EventTap::on_prefix(&prefix, true).await;
    // (aggregate, n, message id) in arrival order.
    let received = || -> Vec<(String, u64, String)> {
        tap.all()
            .iter()
            .map(|m| {
                (
                    m.body["orderId"].as_str().unwrap_or_default().to_string(),
                    m.body["n"].as_u64().unwrap_or(u64::MAX),
                    m.message_id(),
                )
            })
            .collect()
    };

    let (port_a, port_b) = (free_port(), free_port());
    let mut a = spawn_service(&format!("scale-a-{id}"), port_a, &database, &prefix);
    let mut b = spawn_service(&format!("scale-b-{id}"), port_b, &database, &prefix);
    wait_live(port_a, &mut a).await;
    wait_live(port_b, &mut b).await;

    // The backlog: committed as requests would have left it.
    let client = mongodb::Client::with_uri_str(mongo_uri(&database))
        .await
        .expect("mongo");
    let db = client.database(&database);
    let outbox = Outbox::new(&db);
    let mut staged = Vec::new();
    for chunk in (0..AGGREGATES).collect::<Vec<_>>().chunks(10) {
        let records: Vec<NewRecord> = chunk
            .iter()
            .flat_map(|a| {
                let order = format!("scale-order-{a}");
                let exchange = exchange.clone();
                (0..PER_AGGREGATE).map(move |n| {
                    NewRecord::amqp(
                        order.as_str(),
                        exchange.as_str(),
                        "order-email",
                        serde_json::json!({ "template": "orderDelivered", "orderId": order, "n": n }),
                    )
                })
            })
            .collect();
        let outbox = outbox.clone();
        let ids = transaction::run(&client, &RetryPolicy::default(), move |session| {
            let (outbox, records) = (outbox.clone(), records.clone());
            async move { Ok::<_, StageError>(outbox.stage(session, records).await?) }.boxed()
        })
        .await
        .expect("stage");
        staged.extend(ids);
    }

    // Kill A once delivery is under way and a backlog remains.
    poll_until(
        "delivery to start",
        Duration::from_secs(60),
        Duration::from_millis(10),
        || async { tap.all().len() >= staged.len() / 10 },
    )
    .await;
    a.start_kill().expect("SIGKILL");
    let killed_at = Instant::now();
    a.wait().await.expect("reaped");
    let leases = db.collection::<bson::Document>("outbox_leases");
    let held_by_a: Vec<String> = leases
        .find(bson::doc! { "owner": format!("scale-a-{id}") })
        .await
        .expect("leases")
        .filter_map(|d| async move { d.ok().and_then(|d| d.get_str("_id").ok().map(String::from)) })
        .collect()
        .await;
    let backlog = outbox.stats().await.expect("stats").pending;
    eprintln!(
        "killed A with {backlog} records pending and leases on {} aggregates: {held_by_a:?}",
        held_by_a.len()
    );
    assert!(backlog > 0, "A was killed with a backlog");

    // B alone delivers all of it: A's aggregates once A's leases run out.
    poll_until(
        "B to deliver the backlog",
        Duration::from_secs(180),
        Duration::from_millis(50),
        || async {
            let stats = outbox.stats().await.expect("stats");
            if stats.pending == 0 {
                Ok(())
            } else {
                Err(format!(
                    "{} records still pending {:?} after A was killed",
                    stats.pending,
                    killed_at.elapsed()
                ))
            }
        },
    )
    .await;
    let drained_after = killed_at.elapsed();
    let wanted: HashSet<String> = staged.iter().cloned().collect();
    poll_until(
        "every staged record to arrive",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            let got: HashSet<String> = received().into_iter().map(|r| r.2).collect();
            if wanted.is_subset(&got) {
                Ok(())
            } else {
                Err(format!(
                    "lost: {:?}",
                    wanted.difference(&got).collect::<Vec<_>>()
                ))
            }
        },
    )
    .await;

    let received = received();
    let mut first_seen: HashSet<&str> = HashSet::new();
    let mut per_order: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut deliveries: HashMap<&str, usize> = HashMap::new();
    for (order, n, id) in &received {
        *deliveries.entry(id).or_default() += 1;
        // A record may arrive twice (A died between a confirm and marking
        // it); order is about first deliveries.
        if first_seen.insert(id) {
            per_order.entry(order).or_default().push(*n);
        }
    }
    for (order, ns) in &per_order {
        assert_eq!(
            ns,
            &(0..PER_AGGREGATE as u64).collect::<Vec<_>>(),
            "order of {order}"
        );
    }
    assert_eq!(per_order.len(), AGGREGATES);
    let duplicates = deliveries.values().filter(|n| **n > 1).count();
    eprintln!(
        "B drained the backlog {drained_after:?} after the kill; {duplicates} records arrived twice"
    );
    for held in &held_by_a {
        assert!(
            outbox
                .records_of(held)
                .await
                .expect("records")
                .iter()
                .all(|r| r.status == outbox::RecordStatus::Published),
            "{held}, leased by A when it died, was delivered by B"
        );
    }

    b.start_kill().expect("stop B");
    let _ = b.wait().await;
    db.drop().await.ok();
    let cleanup = Connection::connect(&amqp_uri(), ConnectionProperties::default())
        .await
        .expect("amqp");
    let channel = cleanup.create_channel().await.expect("channel");
    let queues = order_service::consumers::review::queues(&prefix);
    for queue in [&queues.main, &queues.retry, &queues.dlq] {
        let _ = channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }
    let exchanges = order_service::orders::events::Exchanges::new(&prefix);
    for exchange in [
        &exchanges.order,
        &exchanges.seller_updates,
        &exchanges.buyer_updates,
        &exchanges.review,
    ] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await;
    }
    let _ = cleanup.close(200, "done".into()).await;
}
