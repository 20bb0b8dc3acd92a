//! One function per row of the report. Each phase gets its own database
//! (and routing key), so no phase sees another's records.

use crate::BoxError;
use crate::harness::{
    Bench, Confirms, Pipeline, Tap, TxError, commit, confirm_channel, event, lock, order_document,
};
use crate::proxy::{Proxy, amqp_host};
use crate::sys::{CpuUse, Watched};
use futures::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use outbox::Outbox;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{RwLock, Semaphore};
use tokio::task::JoinSet;

/// Resources a phase used, for the "where the time goes" table.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub cpu: CpuUse,
    /// CPU time of this process, the database server and RabbitMQ
    /// together per unit of work, where all were read.
    pub cpu_per_unit: Option<Duration>,
    /// Commands the bench's MongoDB client sent per unit of work.
    pub commands_per_unit: Option<f64>,
    /// Durations of those commands by name (empty without monitoring).
    pub commands: HashMap<String, Vec<Duration>>,
}

/// Measures CPU and database commands between `begin` and `end`.
pub struct Meter {
    cpu: crate::sys::CpuSample,
    sent: u64,
}

impl Meter {
    pub fn begin(bench: &Bench, watched: &Watched) -> Self {
        bench.commands.record();
        Self {
            cpu: watched.start(),
            sent: bench.commands.sent.load(Ordering::Relaxed),
        }
    }

    pub fn end(self, bench: &Bench, units: u64) -> Usage {
        let sent = bench.commands.sent.load(Ordering::Relaxed) - self.sent;
        let cpu = self.cpu.finish();
        Usage {
            cpu_per_unit: cpu
                .total()
                .filter(|_| units > 0)
                .map(|t| t.div_f64(units as f64)),
            cpu,
            commands_per_unit: (bench.args.monitor && units > 0)
                .then(|| sent as f64 / units as f64),
            commands: bench.commands.take(),
        }
    }
}

pub struct Throughput {
    pub count: u64,
    pub elapsed: Duration,
    pub usage: Usage,
}

impl Throughput {
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Commits (order + one outbox record each) from `concurrency` producers
/// until `until`; returns each record's id and commit instant.
pub async fn produce_until(
    bench: &Bench,
    pipeline: &Pipeline,
    key: &str,
    until: Instant,
) -> Result<Vec<(String, Instant)>, BoxError> {
    let mut workers = JoinSet::new();
    for w in 0..bench.args.concurrency {
        let producer = pipeline.producer(&bench.client);
        let (exchange, key, run) = (bench.exchange.clone(), key.to_string(), bench.run.clone());
        workers.spawn(async move {
            let mut committed = Vec::new();
            let mut i = 0u64;
            while Instant::now() < until {
                let order_id = format!("{run}-{key}-{w}-{i}");
                let (ids, at) = producer
                    .order_with_event(&exchange, &key, &order_id, i)
                    .await?;
                committed.extend(ids.into_iter().map(|id| (id, at)));
                i += 1;
            }
            Ok::<_, TxError>(committed)
        });
    }
    let mut committed = Vec::new();
    while let Some(done) = workers.join_next().await {
        committed.extend(done??);
    }
    Ok(committed)
}

/// Raw transaction rate: order + outbox record per transaction, no relay.
pub async fn raw_transactions(bench: &Bench, watched: &Watched) -> Result<Throughput, BoxError> {
    let (db, outbox) = bench.database("tx").await?;
    let pipeline = Pipeline::without_relay(db.collection("orders"), outbox);
    let meter = Meter::begin(bench, watched);
    let started = Instant::now();
    let committed = produce_until(bench, &pipeline, "tx", started + bench.args.seconds).await?;
    let elapsed = started.elapsed();
    let count = committed.len() as u64;
    Ok(Throughput {
        count,
        elapsed,
        usage: meter.end(bench, count),
    })
}

/// Raw broker rate: persistent publishes with confirms, `window` in flight,
/// to the run's exchange with a durable queue bound and consumed.
pub async fn raw_broker(bench: &Bench, watched: &Watched) -> Result<Throughput, BoxError> {
    let tap = Tap::start(bench, "broker").await?;
    let (connection, channel) = confirm_channel(bench).await?;
    let record = event(&bench.exchange, "broker", "raw", 0);
    let payload = serde_json::to_vec(&record.payload)?;
    let meter = Meter::begin(bench, watched);
    let started = Instant::now();
    let until = started + bench.args.seconds;
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let (mut sent, mut confirmed) = (0u64, 0u64);
    loop {
        while in_flight.len() < bench.args.window && Instant::now() < until {
            let properties = BasicProperties::default()
                .with_message_id(format!("raw-{sent}").into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            let confirm = channel
                .basic_publish(
                    bench.exchange.as_str().into(),
                    "broker".into(),
                    BasicPublishOptions::default(),
                    &payload,
                    properties,
                )
                .await?;
            in_flight.push(confirm);
            sent += 1;
        }
        match in_flight.next().await {
            Some(confirmation) => match confirmation? {
                Confirmation::Nack(_) => return Err("the broker nacked a publish".into()),
                _ => confirmed += 1,
            },
            None => break,
        }
    }
    let elapsed = started.elapsed();
    let usage = meter.end(bench, confirmed);
    let _ = connection.close(200, "done".into()).await;
    tap.wait_for(confirmed as usize, Duration::from_secs(60))
        .await;
    tap.stop().await;
    Ok(Throughput {
        count: confirmed,
        elapsed,
        usage,
    })
}

pub struct EndToEnd {
    pub throughput: Throughput,
    /// Commit → confirm at full load (queueing included).
    pub latencies: Vec<Duration>,
    pub lost: u64,
}

/// Commits with a running relay for `seconds`, then until the last of them
/// is confirmed: orders committed and delivered per second.
pub async fn end_to_end(bench: &Bench, watched: &Watched) -> Result<EndToEnd, BoxError> {
    let tap = Tap::start(bench, "e2e").await?;
    let mut pipeline = bench.pipeline("e2e", &bench.args.amqp).await?;
    let meter = Meter::begin(bench, watched);
    let started = Instant::now();
    let committed = produce_until(bench, &pipeline, "e2e", started + bench.args.seconds).await?;
    let count = committed.len() as u64;
    let all = pipeline
        .confirms
        .wait_for(count, Duration::from_secs(300))
        .await;
    let last = pipeline
        .confirms
        .span()
        .map(|(_, last)| last)
        .unwrap_or_else(Instant::now);
    let elapsed = last.duration_since(started);
    let usage = meter.end(bench, count);
    pipeline.stop().await;
    if !all {
        eprintln!("end-to-end: not every record was confirmed within 300 s");
    }
    tap.wait_for(committed.len(), Duration::from_secs(30)).await;
    let lost = committed.len().saturating_sub(tap.distinct()) as u64;
    tap.stop().await;
    Ok(EndToEnd {
        latencies: latencies(&committed, &pipeline.confirms),
        throughput: Throughput {
            count,
            elapsed,
            usage,
        },
        lost,
    })
}

/// Sorted commit → confirm latencies of the confirmed records.
pub fn latencies(committed: &[(String, Instant)], confirms: &Confirms) -> Vec<Duration> {
    let at = lock(&confirms.at);
    let mut out: Vec<Duration> = committed
        .iter()
        .filter_map(|(id, commit)| at.get(id).map(|c| c.saturating_duration_since(*commit)))
        .collect();
    out.sort();
    out
}

/// Runs `op(i)` at `rate` per second for `duration` (open loop: the
/// schedule does not wait for answers), at most `cap` at once.
async fn paced<F, Fut, T>(
    rate: f64,
    duration: Duration,
    cap: usize,
    op: F,
) -> Result<(Vec<T>, Duration), BoxError>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<T, TxError>> + Send + 'static,
    T: Send + 'static,
{
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let permits = Arc::new(Semaphore::new(cap));
    let started = tokio::time::Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..total {
        tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / rate.max(1e-3)))
            .await;
        let permit = permits.clone().acquire_owned().await?;
        let work = op(i);
        tasks.spawn(async move {
            let result = work.await;
            drop(permit);
            result
        });
    }
    let issued_in = started.elapsed();
    let mut results = Vec::new();
    while let Some(done) = tasks.join_next().await {
        results.push(done??);
    }
    Ok((results, issued_in))
}

pub struct Level {
    pub fraction: f64,
    pub target: f64,
    /// Commits per second the producer actually achieved.
    pub achieved: f64,
    pub latencies: Vec<Duration>,
    pub usage: Usage,
}

/// Commit → confirm latency at fractions of `max_rate`, paced.
pub async fn latency(
    bench: &Bench,
    watched: &Watched,
    max_rate: f64,
) -> Result<Vec<Level>, BoxError> {
    let tap = Tap::start(bench, "latency").await?;
    let mut pipeline = bench.pipeline("latency", &bench.args.amqp).await?;
    let mut levels = Vec::new();
    for (l, fraction) in [0.25, 0.5, 0.9].into_iter().enumerate() {
        let rate = (max_rate * fraction).max(1.0);
        let meter = Meter::begin(bench, watched);
        let producer = pipeline.producer(&bench.client);
        let (exchange, run) = (bench.exchange.clone(), bench.run.clone());
        let (committed, issued_in) = paced(rate, bench.args.latency_seconds, 256, |i| {
            let producer = producer.clone();
            let order_id = format!("{run}-latency-{l}-{i}");
            let exchange = exchange.clone();
            async move {
                let (ids, at) = producer
                    .order_with_event(&exchange, "latency", &order_id, i)
                    .await?;
                Ok(ids.into_iter().map(|id| (id, at)).collect::<Vec<_>>())
            }
        })
        .await?;
        let committed: Vec<(String, Instant)> = committed.into_iter().flatten().collect();
        let before = levels
            .iter()
            .map(|l: &Level| l.latencies.len() as u64)
            .sum::<u64>();
        pipeline
            .confirms
            .wait_for(before + committed.len() as u64, Duration::from_secs(120))
            .await;
        let usage = meter.end(bench, committed.len() as u64);
        levels.push(Level {
            fraction,
            target: rate,
            achieved: committed.len() as f64 / issued_in.as_secs_f64().max(1e-9),
            latencies: latencies(&committed, &pipeline.confirms),
            usage,
        });
    }
    pipeline.stop().await;
    tap.stop().await;
    Ok(levels)
}

pub struct Drain {
    pub records: u64,
    pub staged_in: Duration,
    /// From the first to the last confirm.
    pub drained_in: Duration,
    /// From the broker's return to the first confirm (reconnect backoff).
    pub reconnect: Duration,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub usage: Usage,
}

impl Drain {
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.drained_in.as_secs_f64().max(1e-9)
    }
}

/// A backlog staged by [`stage_backlog`].
pub struct Backlog {
    pub staged_in: Duration,
    /// Its aggregates, in the order they were staged.
    pub aggregates: Vec<String>,
}

/// Commits `--records` records for `key` (`--drain-per-aggregate` per
/// aggregate, `--drain-batch` per transaction) from up to eight writers.
pub async fn stage_backlog(bench: &Bench, outbox: &Outbox, key: &str) -> Result<Backlog, BoxError> {
    let args = &bench.args;
    let per_aggregate = args.drain_per_aggregate;
    let aggregates = args.records.div_ceil(per_aggregate);
    let per_batch = (args.drain_batch / per_aggregate).max(1);
    let batches = aggregates.div_ceil(per_batch);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..args.concurrency.min(8) {
        let (client, outbox, next) = (bench.client.clone(), outbox.clone(), next.clone());
        let (exchange, run, records) = (bench.exchange.clone(), bench.run.clone(), args.records);
        let key = key.to_string();
        workers.spawn(async move {
            loop {
                let batch = next.fetch_add(1, Ordering::SeqCst);
                if batch >= batches {
                    return Ok::<_, TxError>(());
                }
                let mut staged = Vec::new();
                for a in batch * per_batch..((batch + 1) * per_batch).min(aggregates) {
                    let aggregate = backlog_aggregate(&run, &key, a);
                    for n in 0..per_aggregate {
                        if a * per_aggregate + n < records {
                            staged.push(event(&exchange, &key, &aggregate, n as u64));
                        }
                    }
                }
                outbox::transaction::run(
                    &client,
                    &outbox::transaction::RetryPolicy::default(),
                    |session| {
                        let (outbox, staged) = (outbox.clone(), staged.clone());
                        Box::pin(async move {
                            outbox.stage(session, staged).await?;
                            Ok::<_, TxError>(())
                        })
                    },
                )
                .await?;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(Backlog {
        staged_in: started.elapsed(),
        aggregates: (0..aggregates)
            .map(|a| backlog_aggregate(&bench.run, key, a))
            .collect(),
    })
}

fn backlog_aggregate(run: &str, key: &str, a: usize) -> String {
    format!("{run}-{key}-{a}")
}

/// `records` committed while the broker is unreachable (the relay runs,
/// behind a proxy that is cut), then drained once it is back.
pub async fn drain(bench: &Bench, watched: &Watched) -> Result<Drain, BoxError> {
    let args = &bench.args;
    let proxy = Proxy::start(amqp_host(&args.amqp)).await?;
    proxy.cut();
    let tap = Tap::start(bench, "drain").await?;
    let mut pipeline = bench.pipeline("drain", &proxy.amqp_uri(&args.amqp)).await?;
    let staged_in = stage_backlog(bench, &pipeline.outbox, "drain")
        .await?
        .staged_in;
    let pending = pipeline.outbox.stats().await?.pending;
    eprintln!(
        "drain: {pending} records pending after {staged_in:.1?}, {} confirmed while the broker was cut",
        pipeline.confirms.count.load(Ordering::Relaxed)
    );
    let meter = Meter::begin(bench, watched);
    let restored = Instant::now();
    proxy.restore();
    let total = args.records as u64;
    let timeout = Duration::from_secs(900);
    if !pipeline.confirms.wait_for(total, timeout).await {
        eprintln!("drain: not drained within {timeout:?}");
    }
    let usage = meter.end(bench, total);
    let (first, last) = pipeline.confirms.span().unwrap_or((restored, restored));
    pipeline.stop().await;
    tap.wait_for(args.records, Duration::from_secs(120)).await;
    let (distinct, deliveries, out_of_order) = {
        let state = lock(&tap.state);
        (state.ids.len() as u64, state.deliveries, state.out_of_order)
    };
    tap.stop().await;
    Ok(Drain {
        records: total,
        staged_in,
        drained_in: last.duration_since(first),
        reconnect: first.saturating_duration_since(restored),
        lost: total.saturating_sub(distinct),
        duplicates: deliveries - distinct,
        out_of_order,
        usage,
    })
}

pub struct Http {
    pub throughput: Throughput,
    pub failures: u64,
    pub latencies: Vec<Duration>,
    /// VmRSS and VmHWM of the bench process (application + load generator), MiB.
    pub rss: (f64, f64),
}

#[derive(serde::Serialize)]
struct UserClaims<'a> {
    id: u64,
    username: &'a str,
    email: String,
    iat: i64,
}

const JWT_SECRET: &str = "bench-jwt-secret";
const GATEWAY_SECRET: &str = "bench-gateway-secret";

/// POST create through the real router (the service's `Application` on a
/// free port) from `http_concurrency` clients for `seconds`.
pub async fn http(bench: &Bench, watched: &Watched) -> Result<Http, BoxError> {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use order_service::app::Application;
    use order_service::config::Config;

    let db_name = format!("bench_{}_http", bench.run);
    bench.adopt(&db_name);
    let prefix = format!("bench{}-", bench.run);
    let vars: HashMap<&str, String> = HashMap::from([
        ("NODE_ENV", "test".to_string()),
        ("PORT", "0".into()),
        ("DATABASE_URL", bench.args.mongo_uri(&db_name)),
        ("RABBITMQ_ENDPOINT", bench.args.amqp.clone()),
        ("AMQP_EXCHANGE_PREFIX", prefix.clone()),
        ("JWT_TOKEN", JWT_SECRET.into()),
        ("GATEWAY_JWT_TOKEN", GATEWAY_SECRET.into()),
        ("CLIENT_URL", "http://client.test".into()),
        ("FLUTTERWAVE_API_URL", "http://127.0.0.1:9/v3".into()),
        // The load comes from one address and a handful of users; the
        // service's request rate limits are not what is measured.
        ("RATE_LIMIT_PER_USER_PER_MIN", "100000000".into()),
        ("RATE_LIMIT_PER_IP_PER_MIN", "100000000".into()),
        ("RUST_LOG", "warn".into()),
    ]);
    let config = Config::from_lookup(|name| vars.get(name).cloned())?;
    let app = Application::build(config).await?;
    let address = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let now = chrono::Utc::now().timestamp();
    let gateway = encode(
        &Header::default(),
        &serde_json::json!({ "id": "order", "iat": now }),
        &EncodingKey::from_secret(GATEWAY_SECRET.as_bytes()),
    )?;
    let http = reqwest::Client::new();
    let meter = Meter::begin(bench, watched);
    let started = Instant::now();
    let until = started + bench.args.seconds;
    let failures = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for w in 0..bench.args.http_concurrency {
        let buyer = format!("benchbuyer{w}");
        let token = encode(
            &Header::default(),
            &UserClaims {
                id: w as u64,
                username: &buyer,
                email: format!("{buyer}@example.com"),
                iat: now,
            },
            &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        )?;
        let (http, address, gateway, failures, run) = (
            http.clone(),
            address.clone(),
            gateway.clone(),
            failures.clone(),
            bench.run.clone(),
        );
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while Instant::now() < until {
                let order_id = format!("{run}-http-{w}-{i}");
                i += 1;
                let sent = Instant::now();
                let response = http
                    .post(format!("{address}/api/v1/order"))
                    .header("gatewaytoken", &gateway)
                    .bearer_auth(&token)
                    .json(&create_body(&order_id, &buyer))
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == reqwest::StatusCode::CREATED => {
                        let _ = r.bytes().await;
                        latencies.push(sent.elapsed());
                    }
                    Ok(r) => {
                        if failures.fetch_add(1, Ordering::Relaxed) < 3 {
                            let status = r.status();
                            eprintln!("http: {status}: {}", r.text().await.unwrap_or_default());
                        }
                    }
                    Err(e) => {
                        if failures.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("http: {e}");
                        }
                    }
                }
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = workers.join_next().await {
        latencies.extend(done?);
    }
    let elapsed = started.elapsed();
    let count = latencies.len() as u64;
    let mut usage = meter.end(bench, count);
    // The application has its own client, which the bench does not monitor.
    usage.commands_per_unit = None;
    let rss = crate::sys::rss_mib();
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), server).await;
    delete_service_objects(bench, &prefix).await;
    latencies.sort();
    Ok(Http {
        throughput: Throughput {
            count,
            elapsed,
            usage,
        },
        failures: failures.load(Ordering::Relaxed),
        latencies,
        rss,
    })
}

/// A create body as the gateway sends it.
fn create_body(order_id: &str, buyer: &str) -> serde_json::Value {
    serde_json::json!({
        "offer": {
            "gigTitle": "I will build your API", "price": 100.0, "description": "A REST API",
            "deliveryInDays": 5, "oldDeliveryDate": "2026-12-10T00:00:00.000Z", "accepted": true, "cancelled": false
        },
        "gigId": "gig-1", "sellerId": "seller-bench", "sellerUsername": "benchseller",
        "sellerEmail": "benchseller@example.com", "sellerImage": "https://img/s.png",
        "gigCoverImage": "https://img/c.png", "gigMainTitle": "Main", "gigBasicTitle": "Basic",
        "gigBasicDescription": "Basic description", "buyerId": format!("buyer-{buyer}"),
        "buyerUsername": buyer, "buyerEmail": format!("{buyer}@example.com"), "buyerImage": "https://img/b.png",
        "orderId": order_id, "invoiceId": format!("inv-{order_id}"), "quantity": 1, "price": 100.0,
        "requirements": "Please use Rust"
    })
}

/// The exchanges and review queues the application declared.
async fn delete_service_objects(bench: &Bench, prefix: &str) {
    let Ok(connection) =
        Connection::connect(&bench.args.amqp, ConnectionProperties::default()).await
    else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        let queues = order_service::consumers::review::queues(prefix);
        for queue in [&queues.main, &queues.retry, &queues.dlq] {
            let _ = channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
        }
        let exchanges = order_service::orders::events::Exchanges::new(prefix);
        for exchange in [
            &exchanges.seller_updates,
            &exchanges.buyer_updates,
            &exchanges.order,
            &exchanges.review,
        ] {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), Default::default())
                .await;
        }
    }
    let _ = connection.close(200, "done".into()).await;
}

/// The old service's way: commit, then publish on a plain channel (no
/// confirms); a failed publish is logged and the event is gone. It
/// reconnects in the background, as a careful Node service would.
struct DirectPublisher {
    uri: String,
    channel: RwLock<Option<(Connection, lapin::Channel)>>,
    connecting: AtomicBool,
    errors: AtomicU64,
}

impl DirectPublisher {
    async fn publish(self: &Arc<Self>, exchange: &str, key: &str, id: &str, body: &[u8]) {
        let channel = self
            .channel
            .read()
            .await
            .as_ref()
            .filter(|(c, _)| c.status().connected())
            .map(|(_, ch)| ch.clone());
        let result = match channel {
            Some(channel) => channel
                .basic_publish(
                    exchange.into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    body,
                    BasicProperties::default()
                        .with_message_id(id.into())
                        .with_delivery_mode(2),
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => {
                self.reconnect();
                Err("not connected".to_string())
            }
        };
        if let Err(e) = result {
            // "errors logged": counted, and shown once in a while.
            if self
                .errors
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(50)
            {
                eprintln!("direct publish failed (event lost): {e}");
            }
            *self.channel.write().await = None;
        }
    }

    fn reconnect(self: &Arc<Self>) {
        if self.connecting.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let connected = tokio::time::timeout(Duration::from_secs(1), async {
                let connection =
                    Connection::connect(&this.uri, ConnectionProperties::default()).await?;
                let channel = connection.create_channel().await?;
                Ok::<_, lapin::Error>((connection, channel))
            })
            .await;
            if let Ok(Ok(pair)) = connected {
                *this.channel.write().await = Some(pair);
            }
            this.connecting.store(false, Ordering::SeqCst);
        });
    }
}

pub struct Outage {
    pub rate: f64,
    pub outbox_committed: u64,
    pub outbox_lost: u64,
    pub outbox_duplicates: u64,
    pub outbox_out_of_order: u64,
    pub direct_committed: u64,
    pub direct_lost: u64,
    pub direct_errors: u64,
}

/// The outbox and the old commit-then-publish approach side by side, each
/// paced at `rate`, both through one proxy that is cut for `outage`.
pub async fn outage(bench: &Bench, rate: f64) -> Result<Outage, BoxError> {
    let args = &bench.args;
    let proxy = Arc::new(Proxy::start(amqp_host(&args.amqp)).await?);
    let uri = proxy.amqp_uri(&args.amqp);
    let outbox_tap = Tap::start(bench, "outage-outbox").await?;
    let direct_tap = Tap::start(bench, "outage-direct").await?;
    let mut pipeline = bench.pipeline("outage", &uri).await?;
    let (direct_db, _) = bench.database("direct").await?;
    let direct_orders = direct_db.collection::<bson::Document>("orders");
    let direct = Arc::new(DirectPublisher {
        uri,
        channel: RwLock::new(None),
        connecting: AtomicBool::new(false),
        errors: AtomicU64::new(0),
    });
    direct.reconnect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while direct.channel.read().await.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The cut: a third into the run, for `outage`.
    let cutter = {
        let (proxy, start, length) = (proxy.clone(), args.outage_run / 3, args.outage);
        tokio::spawn(async move {
            tokio::time::sleep(start).await;
            eprintln!("outage: broker cut off");
            proxy.cut();
            tokio::time::sleep(length).await;
            proxy.restore();
            eprintln!("outage: broker back");
        })
    };
    let (client, exchange, run) = (
        bench.client.clone(),
        bench.exchange.clone(),
        bench.run.clone(),
    );
    let outbox_side = {
        let producer = pipeline.producer(&client);
        let (exchange, run) = (exchange.clone(), run.clone());
        paced(rate, args.outage_run, 256, move |i| {
            let producer = producer.clone();
            let order_id = format!("{run}-outbox-{i}");
            let exchange = exchange.clone();
            async move {
                let (ids, _) = producer
                    .order_with_event(&exchange, "outage-outbox", &order_id, i)
                    .await?;
                Ok(ids)
            }
        })
    };
    let direct_side = {
        let direct = direct.clone();
        paced(rate, args.outage_run, 256, move |i| {
            let (client, orders, direct) = (client.clone(), direct_orders.clone(), direct.clone());
            let order_id = format!("{run}-direct-{i}");
            let body = event(&exchange, "outage-direct", &order_id, 0)
                .payload
                .to_string();
            let exchange = exchange.clone();
            async move {
                commit(&client, &orders, None, order_document(&order_id, i), vec![]).await?;
                let id = uuid::Uuid::now_v7().to_string();
                direct
                    .publish(&exchange, "outage-direct", &id, body.as_bytes())
                    .await;
                Ok(id)
            }
        })
    };
    let (outbox_result, direct_result) = tokio::join!(outbox_side, direct_side);
    let _ = cutter.await;
    let outbox_ids: Vec<String> = outbox_result?.0.into_iter().flatten().collect();
    let direct_ids = direct_result?.0;
    let outbox_committed = outbox_ids.len() as u64;
    pipeline
        .confirms
        .wait_for(outbox_committed, Duration::from_secs(120))
        .await;
    pipeline.stop().await;
    outbox_tap
        .wait_for(outbox_ids.len(), Duration::from_secs(30))
        .await;
    direct_tap
        .settle(Duration::from_secs(1), Duration::from_secs(10))
        .await;
    let (outbox_lost, outbox_duplicates, outbox_out_of_order) = {
        let state = lock(&outbox_tap.state);
        let lost = outbox_ids
            .iter()
            .filter(|id| !state.ids.contains_key(*id))
            .count() as u64;
        let distinct = state.ids.len() as u64;
        (lost, state.deliveries - distinct, state.out_of_order)
    };
    let direct_lost = {
        let state = lock(&direct_tap.state);
        direct_ids
            .iter()
            .filter(|id| !state.ids.contains_key(*id))
            .count() as u64
    };
    outbox_tap.stop().await;
    direct_tap.stop().await;
    if let Some((connection, _)) = direct.channel.write().await.take() {
        let _ = connection.close(200, "done".into()).await;
    }
    Ok(Outage {
        rate,
        outbox_committed,
        outbox_lost,
        outbox_duplicates,
        outbox_out_of_order,
        direct_committed: direct_ids.len() as u64,
        direct_lost,
        direct_errors: direct.errors.load(Ordering::Relaxed),
    })
}
