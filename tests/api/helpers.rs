//! The test harness: `spawn_app`, a `TestApp` with one method per route, an
//! AMQP tap that reads what peers would receive, a TCP proxy that can cut
//! the service off from the broker, `spawn_binary` for what only the real
//! process wires (telemetry, signals), and `poll_until` for waiting on what
//! happens in the background.

use flutterwave_sim::{NewTransaction, SimHandle, Simulator};
use futures::StreamExt;
use jsonwebtoken::{EncodingKey, Header, encode};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use order_service::app::Application;
use order_service::config::Config;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub const JWT_SECRET: &str = "test-jwt-secret";
pub const GATEWAY_SECRET: &str = "test-gateway-secret";
pub const WEBHOOK_HASH: &str = "test-webhook-hash";
pub const FLW_KEY: &str = "FLWSECK_TEST-integration";

pub fn mongo_uri(db: &str) -> String {
    let base = std::env::var("TEST_MONGODB_HOST").unwrap_or_else(|_| "127.0.0.1:27017".into());
    format!("mongodb://{base}/{db}?directConnection=true")
}

pub fn amqp_uri() -> String {
    std::env::var("TEST_AMQP_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    pub sim: SimHandle,
    pub prefix: String,
    pub db: mongodb::Database,
    pub state: order_service::http::AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
pub struct Options {
    /// Broker address to use instead of the shared one (e.g. a proxy).
    pub amqp_uri: Option<String>,
    /// Variables applied over the test defaults.
    pub extra_env: Vec<(&'static str, String)>,
    /// An existing database (another app's `db.name()`) instead of a fresh
    /// one: a second instance of the same deployment.
    pub database: Option<String>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    let sim = Simulator::new(FLW_KEY)
        .start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("simulator");
    let id = uuid::Uuid::new_v4().simple().to_string();
    let db_name = options
        .database
        .unwrap_or_else(|| format!("order_test_{id}"));
    let prefix = format!("t{}-", &id[..12]);
    let mut vars: HashMap<&str, String> = HashMap::from([
        ("NODE_ENV", "test".to_string()),
        ("PORT", "0".into()),
        ("DATABASE_URL", mongo_uri(&db_name)),
        (
            "RABBITMQ_ENDPOINT",
            options.amqp_uri.unwrap_or_else(amqp_uri),
        ),
        ("AMQP_EXCHANGE_PREFIX", prefix.clone()),
        ("FLUTTERWAVE_API_URL", sim.base_url()),
        ("FLUTTERWAVE_SECRET_KEY", FLW_KEY.into()),
        ("FLUTTERWAVE_WEBHOOK_HASH", WEBHOOK_HASH.into()),
        ("FLUTTERWAVE_TIMEOUT_MS", "2000".into()),
        ("JWT_TOKEN", JWT_SECRET.into()),
        ("GATEWAY_JWT_TOKEN", GATEWAY_SECRET.into()),
        ("OUTBOX_POLL_MS", "100".into()),
        ("CLIENT_URL", "http://client.test".into()),
        ("ADMIN_TOKEN", "test-admin".into()),
    ]);
    vars.extend(options.extra_env);
    let config = Config::from_lookup(|name| vars.get(name).cloned()).expect("config");
    let app = Application::build(config).await.expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let state = app.state().clone();
    let db = state.db.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = app
            .run_until_stopped(async {
                let _ = stopped.await;
            })
            .await;
    });
    TestApp {
        address,
        http: reqwest::Client::new(),
        sim,
        prefix,
        db,
        state,
        stop: Some(stop),
        task: Some(task),
    }
}

#[derive(serde::Serialize)]
struct UserClaims<'a> {
    id: u64,
    username: &'a str,
    email: String,
    iat: i64,
}

pub fn user_token(username: &str) -> String {
    let claims = UserClaims {
        id: 1,
        username,
        email: format!("{username}@example.com"),
        iat: chrono::Utc::now().timestamp(),
    };
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("token")
}

pub fn gateway_token(service: &str) -> String {
    encode(
        &Header::default(),
        &json!({ "id": service, "iat": chrono::Utc::now().timestamp() }),
        &EncodingKey::from_secret(GATEWAY_SECRET.as_bytes()),
    )
    .expect("token")
}

/// A create body as the gateway sends it.
pub fn order_body(order_id: &str, buyer: &str, seller: &str, price: f64) -> Value {
    json!({
        "offer": {
            "gigTitle": "I will build your API", "price": price, "description": "A REST API",
            "deliveryInDays": 5, "oldDeliveryDate": "2026-12-10T00:00:00.000Z", "accepted": true, "cancelled": false
        },
        "gigId": "gig-1", "sellerId": format!("seller-{seller}"), "sellerUsername": seller,
        "sellerEmail": format!("{seller}@example.com"), "sellerImage": "https://img/s.png",
        "gigCoverImage": "https://img/c.png", "gigMainTitle": "Main", "gigBasicTitle": "Basic",
        "gigBasicDescription": "Basic description", "buyerId": format!("buyer-{buyer}"),
        "buyerUsername": buyer, "buyerEmail": format!("{buyer}@example.com"), "buyerImage": "https://img/b.png",
        "orderId": order_id, "invoiceId": format!("inv-{order_id}"), "quantity": 1, "price": price,
        "requirements": "Please use Rust", "status": "ignored", "serviceFee": 1
    })
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl TestApp {
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        user: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.address))
            .header("gatewaytoken", gateway_token("order"));
        if let Some(user) = user {
            request = request.bearer_auth(user_token(user));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn create(&self, buyer: &str, body: Value) -> Reply {
        self.request(Method::POST, "/api/v1/order", Some(buyer), Some(body))
            .await
    }

    /// Creates an order from `buyer` to `seller` and returns it.
    pub async fn new_order(&self, order_id: &str, buyer: &str, seller: &str, price: f64) -> Value {
        let reply = self
            .create(buyer, order_body(order_id, buyer, seller, price))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        reply.body["order"].clone()
    }

    pub async fn get(&self, user: &str, order_id: &str) -> Reply {
        self.request(
            Method::GET,
            &format!("/api/v1/order/{order_id}"),
            Some(user),
            None,
        )
        .await
    }

    /// Reads `order_id` as `user` every 100 ms until `done` holds of it, for
    /// at most 30 s; returns the order as last read.
    pub async fn order_until(
        &self,
        user: &str,
        order_id: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut order = Value::Null;
        for _ in 0..300 {
            order = self.get(user, order_id).await.body["order"].clone();
            if done(&order) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        order
    }

    /// Reads the order until its first stray payment's refund is settled.
    pub async fn stray_refund_settled(&self, user: &str, order_id: &str) -> Value {
        self.order_until(user, order_id, |o| {
            o["strayPayments"][0]["refund"]["status"] == "completed"
        })
        .await
    }

    /// A successful Flutterwave transaction paying `order` in full.
    pub fn payment_for(&self, order: &Value) -> u64 {
        let amount = order["price"].as_f64().unwrap() + order["serviceFee"].as_f64().unwrap();
        self.sim
            .sim()
            .add_transaction(NewTransaction {
                tx_ref: order["flutterwave"]["txRef"].as_str().unwrap().to_string(),
                amount,
                currency: "NGN".into(),
                ..NewTransaction::default()
            })
            .id
    }

    pub async fn verify(&self, user: &str, transaction_id: u64, tx_ref: &str) -> Reply {
        self.request(
            Method::PUT,
            &format!("/api/v1/order/verify/{transaction_id}/{tx_ref}"),
            Some(user),
            None,
        )
        .await
    }

    /// Pays `order` through the verify route.
    pub async fn pay(&self, buyer: &str, order: &Value) -> Value {
        let id = self.payment_for(order);
        let reply = self
            .verify(buyer, id, order["flutterwave"]["txRef"].as_str().unwrap())
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        reply.body["order"].clone()
    }

    pub async fn cancel(&self, user: &str, order_id: &str) -> Reply {
        self.request(
            Method::PUT,
            &format!("/api/v1/order/cancel/{order_id}"),
            Some(user),
            Some(json!({ "orderData": { "price": 1 } })),
        )
        .await
    }

    pub async fn request_extension(&self, user: &str, order_id: &str) -> Reply {
        let body = json!({ "originalDate": "2026-12-10", "newDate": "2026-12-15", "days": 5, "reason": "More tests" });
        self.request(
            Method::PUT,
            &format!("/api/v1/order/extension/{order_id}"),
            Some(user),
            Some(body),
        )
        .await
    }

    pub async fn decide_extension(&self, user: &str, kind: &str, order_id: &str) -> Reply {
        self.request(
            Method::PUT,
            &format!("/api/v1/order/gig/{kind}/{order_id}"),
            Some(user),
            None,
        )
        .await
    }

    pub async fn deliver(&self, user: &str, order_id: &str) -> Reply {
        let body = json!({ "message": "Here it is", "file": "https://files/work.zip", "fileType": "zip", "fileSize": 10, "fileName": "work.zip" });
        self.request(
            Method::PUT,
            &format!("/api/v1/order/deliver-order/{order_id}"),
            Some(user),
            Some(body),
        )
        .await
    }

    pub async fn approve(&self, user: &str, order_id: &str) -> Reply {
        let body =
            json!({ "sellerId": "x", "totalEarnings": 999999, "buyerId": "y", "ongoingJobs": 5 });
        self.request(
            Method::PUT,
            &format!("/api/v1/order/approve-order/{order_id}"),
            Some(user),
            Some(body),
        )
        .await
    }

    pub async fn notifications(&self, user: &str, user_to: &str) -> Reply {
        self.request(
            Method::GET,
            &format!("/api/v1/order/notification/{user_to}"),
            Some(user),
            None,
        )
        .await
    }

    /// Outbox records of one order, in delivery order.
    pub async fn outbox_records(&self, order_id: &str) -> Vec<outbox::OutboxRecord> {
        self.state
            .outbox
            .records_of(order_id)
            .await
            .expect("records")
    }

    /// Test queues and exchanges carry the test's prefix; remove them so the
    /// shared broker does not fill up run after run.
    async fn delete_broker_objects(&self) {
        let Ok(connection) =
            Connection::connect(&amqp_uri(), ConnectionProperties::default()).await
        else {
            return;
        };
        let Ok(channel) = connection.create_channel().await else {
            return;
        };
        let queues = order_service::consumers::review::queues(&self.prefix);
        for queue in [&queues.main, &queues.retry, &queues.dlq] {
            let _ = channel
                .queue_delete(
                    queue.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await;
        }
        for exchange in [
            "gigconnect-seller-updates",
            "gigconnect-buyer-updates",
            "gigconnect-order-exchange",
            "gigconnect-review",
        ] {
            let _ = channel
                .exchange_delete(
                    self.exchange(exchange).as_str().into(),
                    lapin::options::ExchangeDeleteOptions::default(),
                )
                .await;
        }
        let _ = connection.close(200, "done".into()).await;
    }

    pub fn exchange(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
        let _ = self.db.drop().await;
        self.delete_broker_objects().await;
    }
}

/// One message as a peer service receives it.
#[derive(Debug, Clone)]
pub struct Received {
    pub exchange: String,
    pub routing_key: String,
    pub body: Value,
    pub properties: BasicProperties,
    pub redelivered: bool,
}

impl Received {
    pub fn message_id(&self) -> String {
        self.properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default()
    }
}

/// Binds one queue to every exchange and routing key of API.md, as the
/// peer services do, and records what arrives.
pub struct EventTap {
    pub received: Arc<Mutex<Vec<Received>>>,
    _connection: Connection,
}

impl EventTap {
    pub async fn start(app: &TestApp) -> Self {
        Self::start_with(app, true).await
    }

    /// `ack: false` rejects every first delivery once (requeue) to show
    /// that a redelivery carries the same message_id.
    pub async fn start_with(app: &TestApp, ack: bool) -> Self {
        Self::on_prefix(&app.prefix, ack).await
    }

    /// The same for a service running with `AMQP_EXCHANGE_PREFIX=prefix`
    /// (a spawned binary rather than an in-process app).
    pub async fn on_prefix(prefix: &str, ack: bool) -> Self {
        let connection = Connection::connect(&amqp_uri(), ConnectionProperties::default())
            .await
            .expect("amqp");
        let channel = connection.create_channel().await.expect("channel");
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue");
        for (exchange, key) in [
            ("gigconnect-seller-updates", "user-seller"),
            ("gigconnect-buyer-updates", "user-buyer"),
            ("gigconnect-order-exchange", "order-email"),
        ] {
            let exchange = format!("{prefix}{exchange}");
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("exchange");
            channel
                .queue_bind(
                    queue.name().clone(),
                    exchange.as_str().into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind");
        }
        let mut consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let body = serde_json::from_slice(&delivery.data).unwrap_or(Value::Null);
                let message = Received {
                    exchange: delivery
                        .exchange
                        .as_str()
                        .trim_start_matches(prefix.as_str())
                        .to_string(),
                    routing_key: delivery.routing_key.to_string(),
                    body,
                    properties: delivery.properties.clone(),
                    redelivered: delivery.redelivered,
                };
                let first_time = !message.redelivered;
                sink.lock().unwrap().push(message);
                if ack || !first_time {
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                } else {
                    let _ = delivery
                        .reject(lapin::options::BasicRejectOptions { requeue: true })
                        .await;
                }
            }
        });
        Self {
            received,
            _connection: connection,
        }
    }

    pub fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Messages about one order (matched on any id field of the body).
    pub fn for_order(&self, order: &Value) -> Vec<Received> {
        let order_id = order["orderId"].as_str().unwrap_or_default().to_string();
        let seller = order["sellerId"].as_str().unwrap_or_default().to_string();
        let buyer = order["buyerId"].as_str().unwrap_or_default().to_string();
        self.all()
            .into_iter()
            .filter(|m| {
                m.body["orderId"].as_str() == Some(&order_id)
                    || m.body["orderUrl"]
                        .as_str()
                        .is_some_and(|u| u.contains(&format!("/orders/{order_id}/")))
                    || (m.body["sellerId"].as_str() == Some(&seller) && !seller.is_empty())
                    || (m.body["buyerId"].as_str() == Some(&buyer) && !buyer.is_empty())
            })
            .collect()
    }

    /// Waits until `predicate` holds over everything received.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        predicate: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let all = self.all();
            if predicate(&all) {
                return all;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out waiting for events; received {} messages: {:#?}",
                    all.len(),
                    all.iter()
                        .map(|m| (
                            &m.exchange,
                            &m.routing_key,
                            m.body.get("type").or(m.body.get("template"))
                        ))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A TCP proxy in front of the broker that the test can switch off (all
/// connections cut, new ones refused) and on again.
pub struct Proxy {
    pub addr: SocketAddr,
    enabled: Arc<AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let enabled = Arc::new(AtomicBool::new(true));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let upstream = upstream.to_string();
        let (on, cuts) = (enabled.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !on.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            enabled,
            generation,
        }
    }

    pub fn amqp_uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    pub fn cut(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }
}

/// The real `order-service` binary on a free port: the test defaults plus
/// `env`, its own database and exchange names. Killed when dropped;
/// `terminate` stops it as an orchestrator would.
pub struct Binary {
    pub base: String,
    pub http: reqwest::Client,
    db: String,
    child: tokio::process::Child,
}

/// Runs `program` with `args` in `dir` (a tool that a `scripts/deps.sh`
/// option installs) and returns its standard output, once it succeeded.
pub fn run_tool(program: &str, dir: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program} is installed by scripts/deps.sh: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A free local port for a child process: bound, read, released. Another
/// process could take it in between; callers that start a server on it
/// notice the server exiting and say so, or pick another.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// What a check given to [`poll_until`] answers: `true`, `Some(value)` or
/// `Ok(value)` once what it waits for holds. An `Err` says what the check saw
/// instead, for the panic to show: a test that times out says how far it got.
pub trait Polled {
    type Value;
    fn into_result(self) -> Result<Self::Value, Option<String>>;
}

impl Polled for bool {
    type Value = ();
    fn into_result(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Polled for Option<T> {
    type Value = T;
    fn into_result(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: std::fmt::Display> Polled for Result<T, E> {
    type Value = T;
    fn into_result(self) -> Result<T, Option<String>> {
        self.map_err(|seen| Some(seen.to_string()))
    }
}

/// Runs `check` every `every` until it answers that it is done (see
/// [`Polled`]) and returns its value. What the tests wait for happens in the
/// background (the relay, a consumer, another process), so they look again
/// rather than sleep for a guessed time; `within` bounds the wait, after
/// which the panic names `what` and the last thing the check saw.
pub async fn poll_until<P, F, Fut>(
    what: &str,
    within: Duration,
    every: Duration,
    mut check: F,
) -> P::Value
where
    P: Polled,
    F: FnMut() -> Fut,
    Fut: Future<Output = P>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen = match check().await.into_result() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            match seen {
                Some(seen) => panic!("timed out after {within:?} waiting for {what}: {seen}"),
                None => panic!("timed out after {within:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Starts the binary and waits (bounded) until it answers `/health/live`.
pub async fn spawn_binary(env: &[(&str, String)]) -> Binary {
    let port = free_port();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let db = format!("order_bin_{id}");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_order-service"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NODE_ENV", "test")
        .env("PORT", port.to_string())
        .env("DATABASE_URL", mongo_uri(&db))
        .env("RABBITMQ_ENDPOINT", amqp_uri())
        .env("AMQP_EXCHANGE_PREFIX", format!("b{}-", &id[..12]))
        .env("JWT_TOKEN", JWT_SECRET)
        .env("GATEWAY_JWT_TOKEN", GATEWAY_SECRET)
        // The tests poll; the per-IP limit is not what they are about.
        .env("RATE_LIMIT_PER_IP_PER_MIN", "1000000")
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the service binary starts");
    let binary = Binary {
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::new(),
        db,
        child,
    };
    let live = format!("{}/health/live", binary.base);
    // Generous: the whole suite runs in parallel on two cores.
    poll_until(
        "the service to come up",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            binary
                .http
                .get(&live)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await;
    binary
}

impl Binary {
    /// The process's own database.
    pub async fn database(&self) -> mongodb::Database {
        mongodb::Client::with_uri_str(mongo_uri(&self.db))
            .await
            .expect("client")
            .database(&self.db)
    }

    /// SIGTERM, then the exit status (bounded wait).
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("still running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM sent");
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the service exits after SIGTERM")
            .expect("exit status")
    }

    /// Kills the process (if still running) and drops its database.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        if let Ok(client) = mongodb::Client::with_uri_str(mongo_uri(&self.db)).await {
            let _ = client.database(&self.db).drop().await;
        }
    }
}
