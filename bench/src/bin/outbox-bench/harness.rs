//! The pieces every phase is built from: a monitored MongoDB client, one
//! fresh database per phase, the order-like write, a relay that notes when
//! each record's confirm arrived, and a tap that reads what a peer receives.

use crate::BoxError;
use crate::cli::Args;
use bson::{DateTime, Document, doc};
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicConsumeOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use mongodb::event::EventHandler;
use mongodb::event::command::CommandEvent;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};
use outbox::relay::{Delivery, Observer, Waker};
use outbox::transaction::{self, RetryPolicy, TransactionError};
use outbox::{
    Broker, BrokerConfig, ExchangeSpec, NewRecord, Outbox, OutboxRecord, Relay, RelayConfig,
    RelayHandle, Topology,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, thiserror::Error)]
pub enum TxError {
    #[error(transparent)]
    Mongo(#[from] mongodb::error::Error),
    #[error(transparent)]
    Outbox(#[from] outbox::Error),
}

impl TransactionError for TxError {
    fn is_transient(&self) -> bool {
        match self {
            TxError::Mongo(e) | TxError::Outbox(outbox::Error::Mongo(e)) => {
                transaction::is_transient(e)
            }
            TxError::Outbox(_) => false,
        }
    }
}

/// Commands the bench's client sent and how long they took, by name; the
/// driver's command monitoring fills it while `recording` is on.
#[derive(Default)]
pub struct Commands {
    pub sent: AtomicU64,
    recording: AtomicBool,
    durations: Mutex<HashMap<String, Vec<Duration>>>,
}

impl Commands {
    fn note(&self, event: CommandEvent) {
        match event {
            CommandEvent::Started(_) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
            }
            CommandEvent::Succeeded(e) if self.recording.load(Ordering::Relaxed) => {
                lock(&self.durations)
                    .entry(e.command_name)
                    .or_default()
                    .push(e.duration);
            }
            _ => {}
        }
    }

    /// Starts collecting durations afresh.
    pub fn record(&self) {
        lock(&self.durations).clear();
        self.recording.store(true, Ordering::Relaxed);
    }

    /// Stops collecting; returns the durations by command name.
    pub fn take(&self) -> HashMap<String, Vec<Duration>> {
        self.recording.store(false, Ordering::Relaxed);
        std::mem::take(&mut *lock(&self.durations))
    }
}

pub struct Bench {
    pub args: Args,
    pub client: Client,
    pub commands: Arc<Commands>,
    pub run: String,
    pub exchange: String,
    databases: Mutex<Vec<Database>>,
}

impl Bench {
    pub async fn connect(args: Args) -> Result<Self, BoxError> {
        let mut options = ClientOptions::parse(args.mongo_uri("admin")).await?;
        // The service's settings (pool size included), so that phases
        // compare like with like.
        options.app_name = Some("outbox-bench".into());
        options.server_selection_timeout = Some(Duration::from_secs(10));
        let commands = Arc::new(Commands::default());
        if args.monitor {
            let sink = commands.clone();
            options.command_event_handler = Some(EventHandler::callback(move |e| sink.note(e)));
        }
        let client = Client::with_options(options)?;
        client
            .database("admin")
            .run_command(doc! { "ping": 1 })
            .await?;
        let run = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let bench = Self {
            exchange: format!("outbox-bench-{run}"),
            args,
            client,
            commands,
            run,
            databases: Mutex::new(Vec::new()),
        };
        bench.declare_exchange().await?;
        Ok(bench)
    }

    async fn declare_exchange(&self) -> Result<(), BoxError> {
        let connection =
            Connection::connect(&self.args.amqp, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        connection.close(200, "declared".into()).await?;
        Ok(())
    }

    /// A fresh database for one phase: the outbox schema and an `orders`
    /// collection with the service's unique `orderId` index.
    pub async fn database(&self, phase: &str) -> Result<(Database, Outbox), BoxError> {
        let db = self.client.database(&format!("bench_{}_{phase}", self.run));
        let outbox = Outbox::new(&db);
        outbox.ensure_schema().await?;
        outbox::store::create_collection(&db, "orders").await?;
        db.collection::<Document>("orders")
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "orderId": 1 })
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
            )
            .await?;
        lock(&self.databases).push(db.clone());
        Ok((db, outbox))
    }

    /// A database made by someone else (the application under test), to
    /// be dropped at the end.
    pub fn adopt(&self, name: &str) {
        lock(&self.databases).push(self.client.database(name));
    }

    pub fn broker(&self, uri: &str) -> Broker {
        Broker::new(BrokerConfig {
            uri: uri.to_string(),
            connection_name: format!("outbox-bench {}", self.run),
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

    /// The service's relay settings, unless overridden by flags.
    pub fn relay_config(&self, phase: &str) -> RelayConfig {
        let defaults = RelayConfig::default();
        RelayConfig {
            instance_id: format!("bench-{}-{phase}", self.run),
            scan_limit: self.args.scan_limit.unwrap_or(defaults.scan_limit),
            concurrency: self.args.relay_concurrency.unwrap_or(defaults.concurrency),
            rounds_in_flight: self
                .args
                .rounds_in_flight
                .unwrap_or(defaults.rounds_in_flight),
            per_aggregate: self.args.per_aggregate.unwrap_or(defaults.per_aggregate),
            watch_changes: self.args.watch,
            ..defaults
        }
    }

    /// A phase's database with a running relay publishing through `amqp`.
    pub async fn pipeline(&self, phase: &str, amqp: &str) -> Result<Pipeline, BoxError> {
        let (db, outbox) = self.database(phase).await?;
        let confirms = Arc::new(Confirms::default());
        let relay = Relay::new(outbox.clone(), self.relay_config(phase))
            .with_broker(self.broker(amqp))
            .with_observer(confirms.clone());
        let waker = relay.waker();
        let handle = relay.start(CancellationToken::new());
        Ok(Pipeline {
            orders: db.collection("orders"),
            outbox,
            confirms,
            waker,
            hand: self.args.hand,
            handle: Some(handle),
        })
    }

    /// Drops the databases made so far. Between phases, so that one
    /// phase's data (which the server keeps caching and checkpointing)
    /// does not weigh on the next.
    pub async fn drop_databases(&self) {
        let databases = std::mem::take(&mut *lock(&self.databases));
        for db in databases {
            let _ = db.drop().await;
        }
    }

    /// Drops every database the run made and the run's exchange.
    pub async fn cleanup(&self) {
        self.drop_databases().await;
        if let Ok(connection) =
            Connection::connect(&self.args.amqp, ConnectionProperties::default()).await
        {
            if let Ok(channel) = connection.create_channel().await {
                let _ = channel
                    .exchange_delete(self.exchange.as_str().into(), Default::default())
                    .await;
            }
            let _ = connection.close(200, "done".into()).await;
        }
    }
}

/// A new connection's channel in confirm mode, as every publishing phase uses.
pub async fn confirm_channel(bench: &Bench) -> Result<(Connection, Channel), BoxError> {
    let connection = Connection::connect(&bench.args.amqp, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, channel))
}

/// An order as the service stores it on create: about 1 KB of BSON.
pub fn order_document(order_id: &str, i: u64) -> Document {
    let now = DateTime::now();
    doc! {
        "_id": uuid::Uuid::now_v7().to_string(),
        "orderId": order_id,
        "invoiceId": format!("inv-{order_id}"),
        "offer": {
            "gigTitle": "I will build your API", "price": 100.0 + (i % 50) as f64,
            "description": "A REST API with tests and documentation", "deliveryInDays": 5,
            "oldDeliveryDate": "2026-12-10T00:00:00.000Z", "newDeliveryDate": "",
            "accepted": true, "cancelled": false, "reason": ""
        },
        "gigId": "gig-1", "sellerId": format!("seller-{}", i % 97), "sellerUsername": format!("seller{}", i % 97),
        "sellerEmail": format!("seller{}@example.com", i % 97), "sellerImage": "https://img.example.com/s.png",
        "gigCoverImage": "https://img.example.com/c.png", "gigMainTitle": "Main title",
        "gigBasicTitle": "Basic", "gigBasicDescription": "Basic description",
        "buyerId": format!("buyer-{}", i % 89), "buyerUsername": format!("buyer{}", i % 89),
        "buyerEmail": format!("buyer{}@example.com", i % 89), "buyerImage": "https://img.example.com/b.png",
        "status": "AWAITING_PAYMENT", "quantity": 1, "price": 100.0 + (i % 50) as f64,
        "serviceFee": 10.0, "currency": "NGN", "requirements": "Please use Rust",
        "approved": false, "cancelled": false, "delivered": false, "approvedAt": null,
        "paymentIntent": null, "flutterwave": { "txRef": format!("tx-{order_id}") },
        "events": { "placeOrder": now, "requirements": now, "orderStarted": now },
        "version": 1, "createdAt": now, "updatedAt": now,
    }
}

/// An order e-mail event like `orderPlaced`, about 0.5 KB of JSON, with the
/// aggregate and its position for the tap's checks.
pub fn event(exchange: &str, key: &str, aggregate: &str, n: u64) -> NewRecord {
    NewRecord::amqp(
        aggregate,
        exchange,
        key,
        serde_json::json!({
            "agg": aggregate, "n": n,
            "template": "orderPlaced", "orderId": aggregate, "invoiceId": format!("inv-{aggregate}"),
            "orderDue": "2026-12-10T00:00:00.000Z", "amount": "110", "buyerUsername": "buyer",
            "sellerUsername": "seller", "title": "I will build your API",
            "description": "A REST API with tests and documentation", "requirements": "Please use Rust",
            "serviceFee": "10", "total": "120", "orderUrl": format!("http://client.test/orders/{aggregate}/activities"),
            "receiverEmail": "seller@example.com",
        }),
    )
    .with_correlation(Some(uuid::Uuid::now_v7().to_string()))
    .with_header(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
}

/// One create as the service commits it: the order and, when `outbox` is
/// given, its outbox records, in one transaction. Returns the records' ids.
pub async fn commit(
    client: &Client,
    orders: &Collection<Document>,
    outbox: Option<&Outbox>,
    order: Document,
    records: Vec<NewRecord>,
) -> Result<Vec<String>, TxError> {
    transaction::run(client, &RetryPolicy::default(), |session| {
        let (orders, outbox, order, records) = (
            orders.clone(),
            outbox.cloned(),
            order.clone(),
            records.clone(),
        );
        async move {
            orders.insert_one(order).session(&mut *session).await?;
            match outbox {
                Some(outbox) if !records.is_empty() => Ok(outbox.stage(session, records).await?),
                _ => Ok(Vec::new()),
            }
        }
        .boxed()
    })
    .await
}

/// Notes when each record's confirm arrived (the relay calls it right
/// after the broker's ack).
#[derive(Default)]
pub struct Confirms {
    pub count: AtomicU64,
    pub at: Mutex<HashMap<String, Instant>>,
}

impl Observer for Confirms {
    fn observe(&self, record: &OutboxRecord, delivery: Delivery<'_>) {
        if let Delivery::Delivered { .. } = delivery {
            self.note(&record.message_id);
        }
    }
}

impl Confirms {
    /// Notes that `id` was confirmed now (a repeat keeps the first).
    pub fn note(&self, id: &str) {
        let mut at = lock(&self.at);
        if !at.contains_key(id) {
            at.insert(id.to_string(), Instant::now());
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until `n` distinct records were confirmed; false on timeout.
    pub async fn wait_for(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.count.load(Ordering::Relaxed) < n {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// First and last confirm instants.
    pub fn span(&self) -> Option<(Instant, Instant)> {
        let at = lock(&self.at);
        let first = at.values().min().copied()?;
        let last = at.values().max().copied()?;
        Some((first, last))
    }
}

pub struct Pipeline {
    pub orders: Collection<Document>,
    pub outbox: Outbox,
    pub confirms: Arc<Confirms>,
    pub waker: Waker,
    /// Whether producers hand their aggregate over or wake the relay to scan.
    hand: bool,
    handle: Option<RelayHandle>,
}

impl Pipeline {
    /// A phase's collections with no relay: records stay pending.
    pub fn without_relay(orders: Collection<Document>, outbox: Outbox) -> Self {
        Self {
            orders,
            outbox,
            confirms: Arc::new(Confirms::default()),
            waker: Waker::default(),
            hand: false,
            handle: None,
        }
    }

    pub async fn stop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown().await;
        }
    }

    /// A cheap handle for producer tasks committing into this pipeline.
    pub fn producer(&self, client: &Client) -> Producer {
        Producer {
            client: client.clone(),
            orders: self.orders.clone(),
            outbox: self.outbox.clone(),
            waker: self.waker.clone(),
            hand: self.hand,
        }
    }
}

/// Commits orders with their event into a pipeline, as a request would.
#[derive(Clone)]
pub struct Producer {
    client: Client,
    orders: Collection<Document>,
    outbox: Outbox,
    waker: Waker,
    hand: bool,
}

impl Producer {
    /// Order `i` and one `key` event for it in one transaction, then hands
    /// the order to the relay; the record ids and the commit instant.
    pub async fn order_with_event(
        &self,
        exchange: &str,
        key: &str,
        order_id: &str,
        i: u64,
    ) -> Result<(Vec<String>, Instant), TxError> {
        let ids = commit(
            &self.client,
            &self.orders,
            Some(&self.outbox),
            order_document(order_id, i),
            vec![event(exchange, key, order_id, 0)],
        )
        .await?;
        let at = Instant::now();
        if self.hand {
            self.waker.hand([order_id]);
        } else {
            self.waker.wake();
        }
        Ok((ids, at))
    }
}

/// What a peer bound to one routing key received.
#[derive(Default)]
pub struct TapState {
    /// Deliveries per message id.
    pub ids: HashMap<String, u32>,
    /// Last position seen per aggregate (first deliveries only).
    last: HashMap<String, u64>,
    /// First deliveries that did not come right after their predecessor.
    pub out_of_order: u64,
    pub deliveries: u64,
}

#[derive(serde::Deserialize)]
struct Tagged {
    agg: Option<String>,
    n: Option<u64>,
}

/// A queue bound to the run's exchange with one routing key, consumed as a
/// peer service would (auto-ack), checking order per aggregate.
pub struct Tap {
    pub state: Arc<Mutex<TapState>>,
    connection: Connection,
    queue: String,
}

impl Tap {
    pub async fn start(bench: &Bench, key: &str) -> Result<Self, BoxError> {
        let connection =
            Connection::connect(&bench.args.amqp, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let queue = format!("outbox-bench-{}-{key}", bench.run);
        channel
            .queue_declare(
                queue.as_str().into(),
                // Durable, as a peer's queue is: persistent messages are
                // written to disk before they are confirmed.
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                bench.exchange.as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let state = Arc::new(Mutex::new(TapState::default()));
        let sink = state.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                let tagged: Option<Tagged> = serde_json::from_slice(&delivery.data).ok();
                let mut state = lock(&sink);
                state.deliveries += 1;
                let seen = state.ids.entry(id).or_insert(0);
                *seen += 1;
                if *seen > 1 {
                    continue;
                }
                if let Some(Tagged {
                    agg: Some(agg),
                    n: Some(n),
                }) = tagged
                {
                    let expected = state.last.get(&agg).map(|l| l + 1).unwrap_or(0);
                    if n != expected {
                        state.out_of_order += 1;
                    }
                    let last = state.last.entry(agg).or_insert(n);
                    *last = (*last).max(n);
                }
            }
        });
        Ok(Self {
            state,
            connection,
            queue,
        })
    }

    pub fn distinct(&self) -> usize {
        lock(&self.state).ids.len()
    }

    /// Waits until `n` distinct messages arrived; false on timeout.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.distinct() < n {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Waits until nothing new arrived for `quiet`, at most `timeout`.
    pub async fn settle(&self, quiet: Duration, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = (lock(&self.state).deliveries, Instant::now());
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = lock(&self.state).deliveries;
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() >= quiet {
                return;
            }
        }
    }

    /// Deletes the queue and closes the connection.
    pub async fn stop(self) {
        if let Ok(channel) = self.connection.create_channel().await {
            let _ = channel
                .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = self.connection.close(200, "done".into()).await;
    }
}
