//! Socket.IO notifications, as the reference client (socket.io-client from
//! npm, driven by tests/socket/client.mjs) receives them: handshake auth,
//! per-user rooms, order of events, two instances through Redis, retries
//! and client-side de-duplication.

use crate::helpers::*;
use order_service::realtime::emitter::Fault;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const TIMEOUT: Duration = Duration::from_secs(30);

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A username no other test uses (rooms are per user).
fn user(name: &str) -> String {
    format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

fn oid() -> String {
    format!("rt-{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

/// One `node tests/socket/client.mjs` process and the JSON lines it printed.
struct SocketClient {
    lines: Arc<Mutex<Vec<Value>>>,
    // Killed when the test ends, pass or fail.
    _child: Child,
}

impl SocketClient {
    /// Starts a client against `app`; `token: None` sends no `auth` at all.
    fn spawn(app: &TestApp, token: Option<&str>) -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/socket");
        assert!(
            dir.join("node_modules/socket.io-client").exists(),
            "socket.io-client is not installed: run `npm ci --prefix tests/socket` (scripts/test.sh does)"
        );
        let mut child = Command::new("node")
            .arg(dir.join("client.mjs"))
            .arg(&app.address)
            .arg(token.unwrap_or("-"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (scripts/deps.sh installs it)");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let value = serde_json::from_str(&line).unwrap_or(json!({ "unparsed": line }));
                sink.lock().unwrap().push(value);
            }
        });
        Self {
            lines,
            _child: child,
        }
    }

    /// A client of `username` whose handshake the service accepted.
    async fn connected(app: &TestApp, username: &str) -> Self {
        let client = Self::spawn(app, Some(&user_token(username)));
        client
            .wait_for("the handshake to be accepted", |lines| {
                lines.iter().any(|l| l["type"] == "connect")
            })
            .await;
        client
    }

    fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    fn of_type(&self, kind: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["type"] == kind)
            .collect()
    }

    /// De-duplicated `order notification` events, in arrival order.
    fn notifications(&self) -> Vec<Value> {
        self.of_type("notification")
    }

    /// Polls until `done` holds over the lines printed so far.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        poll_until(what, TIMEOUT, Duration::from_millis(25), || async {
            let lines = self.lines();
            if done(&lines) {
                Ok(lines)
            } else {
                Err(format!("the client printed {lines:#?}"))
            }
        })
        .await
    }

    async fn wait_notifications(&self, count: usize) -> Vec<Value> {
        self.wait_for(&format!("{count} notification(s)"), |lines| {
            lines.iter().filter(|l| l["type"] == "notification").count() >= count
        })
        .await;
        self.notifications()
    }
}

/// Creates an order from `buyer` to `seller` and pays it: the seller gets
/// "placed an order for your gig.".
async fn paid_order(app: &TestApp, buyer: &str, seller: &str) -> Value {
    let order = app.new_order(&oid(), buyer, seller, 300.0).await;
    app.pay(buyer, &order).await
}

async fn mark_as_read(app: &TestApp, username: &str, notification_id: &str) -> Value {
    let reply = app
        .request(
            Method::PUT,
            "/api/v1/order/notification/mark-as-read",
            Some(username),
            Some(json!({ "notificationId": notification_id })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.body["notification"].clone()
}

/// The socket record of `aggregate` once the relay has marked it published.
async fn published_record(app: &TestApp, aggregate: &str) -> outbox::OutboxRecord {
    poll_until(
        &format!("{aggregate} to be published"),
        TIMEOUT,
        Duration::from_millis(25),
        || async {
            let records = app.outbox_records(aggregate).await;
            assert!(records.len() <= 1, "one record: {records:?}");
            records
                .into_iter()
                .find(|r| r.status == outbox::RecordStatus::Published)
        },
    )
    .await
}

fn expired_token(username: &str) -> String {
    token_expiring(username, -3600)
}

/// A user token whose `exp` is `in_secs` from now (negative: past).
fn token_expiring(username: &str, in_secs: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "id": 1, "username": username, "iat": now - 7200, "exp": now + in_secs }),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("token")
}

#[tokio::test]
async fn a_socket_is_disconnected_when_its_token_expires() {
    let app = spawn_app().await;
    // Expired 27 s ago: still inside the 30 s leeway, so the handshake takes
    // it, and the socket has about 3 s left.
    let client = SocketClient::spawn(&app, Some(&token_expiring("uma", -27)));
    client
        .wait_for("the handshake to be accepted", |lines| {
            lines.iter().any(|l| l["type"] == "connect")
        })
        .await;
    let connected = tokio::time::Instant::now();
    let lines = client
        .wait_for("the server to end the socket", |lines| {
            lines.iter().any(|l| l["type"] == "disconnect")
        })
        .await;
    let ended = lines.iter().find(|l| l["type"] == "disconnect").unwrap();
    assert_eq!(ended["reason"], "io server disconnect");
    assert!(connected.elapsed() < Duration::from_secs(10));
    // A token without expiry keeps its socket.
    let lasting = SocketClient::connected(&app, "uma").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(lasting.of_type("disconnect").is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn missing_and_bad_tokens_are_refused_at_the_handshake() {
    let app = spawn_app().await;
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "id": 1, "username": "mallory", "iat": 0 }),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret"),
    )
    .expect("token");
    let cases = [
        (None, "Authentication error: token missing"),
        (
            Some("garbage".to_string()),
            "Authentication error: invalid token",
        ),
        (Some(forged), "Authentication error: invalid token"),
        (
            Some(expired_token("mallory")),
            "Authentication error: invalid token",
        ),
    ];
    for (token, message) in cases {
        let client = SocketClient::spawn(&app, token.as_deref());
        let lines = client
            .wait_for("connect_error", |lines| {
                lines.iter().any(|l| l["type"] == "connect_error")
            })
            .await;
        let refusal = lines
            .iter()
            .find(|l| l["type"] == "connect_error")
            .expect("refusal");
        assert_eq!(refusal["message"], message, "token {token:?}");
        assert!(
            !lines.iter().any(|l| l["type"] == "connect"),
            "a refused socket never connects: {lines:?}"
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn the_socket_answers_only_the_gateway_origin() {
    let app = spawn_app().await;
    let gateway = app.state.config.api_gateway_url.clone();
    let handshake = format!("{}/socket.io/?EIO=4&transport=polling", app.address);
    let allowed = app
        .http
        .get(&handshake)
        .header("origin", &gateway)
        .send()
        .await
        .expect("handshake");
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        gateway.as_str()
    );
    assert!(
        allowed.text().await.expect("body").starts_with('0'),
        "an engine.io open packet"
    );
    let preflight = app
        .http
        .request(Method::OPTIONS, &handshake)
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    // The grant names the gateway whatever the caller's origin, so a
    // browser on any other origin refuses to hand over the response.
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        gateway.as_str(),
        "{:?}",
        preflight.headers()
    );
    app.shutdown().await;
}

#[tokio::test]
async fn each_user_receives_only_their_own_notifications() {
    let app = spawn_app().await;
    let (alice, bob, carol, erin) = (user("alice"), user("bob"), user("carol"), user("erin"));
    // Bob's token spells his name in capitals: rooms ignore case, as the
    // rest of the service does.
    let bob_client = SocketClient::connected(&app, &bob.to_uppercase()).await;
    let alice_client = SocketClient::connected(&app, &alice).await;
    let carol_client = SocketClient::connected(&app, &carol).await;

    let order = paid_order(&app, &alice, &bob).await;
    let received = bob_client.wait_notifications(1).await;
    let (event_order, notification) = (&received[0]["order"], &received[0]["notification"]);
    assert_eq!(event_order["orderId"], order["orderId"]);
    assert_eq!(event_order["status"], "PROCESSING");
    assert_eq!(notification["userTo"], bob.as_str());
    assert_eq!(notification["senderUsername"], alice.as_str());
    assert_eq!(notification["message"], "placed an order for your gig.");
    assert_eq!(notification["orderId"], order["orderId"]);
    assert_eq!(notification["isRead"], false);
    let stored = app.notifications(&bob, &bob).await.body["notifications"][0].clone();
    assert_eq!(
        notification, &stored,
        "the event carries the stored notification"
    );

    // Bob's event has been delivered. Had it also gone to Alice or Carol,
    // it would sit in their sockets ahead of anything emitted later; so give
    // each a notification of their own now and look at all they got.
    let for_alice = paid_order(&app, &erin, &alice).await;
    let for_carol = paid_order(&app, &erin, &carol).await;
    for (client, own) in [(&alice_client, &for_alice), (&carol_client, &for_carol)] {
        let got = client.wait_notifications(1).await;
        assert_eq!(got.len(), 1, "{got:#?}");
        assert_eq!(got[0]["order"]["orderId"], own["orderId"]);
        assert_eq!(
            client.of_type("raw").len(),
            1,
            "nothing else arrived: {:#?}",
            client.lines()
        );
    }
    assert_eq!(
        bob_client.notifications().len(),
        1,
        "nor did theirs reach Bob"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn an_order_lifecycle_reaches_each_party_in_order() {
    let app = spawn_app().await;
    let (buyer, seller) = (user("buyer"), user("seller"));
    let buyer_client = SocketClient::connected(&app, &buyer).await;
    let seller_client = SocketClient::connected(&app, &seller).await;

    let order = app.new_order(&oid(), &buyer, &seller, 2500.0).await;
    let id = order["orderId"].as_str().unwrap().to_string();
    app.pay(&buyer, &order).await;
    assert_eq!(app.deliver(&seller, &id).await.status, StatusCode::OK);
    assert_eq!(app.approve(&buyer, &id).await.status, StatusCode::OK);

    let to_seller = seller_client.wait_notifications(2).await;
    let summary = |events: &[Value]| -> Vec<(String, String, bool)> {
        events
            .iter()
            .map(|e| {
                (
                    e["order"]["status"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    e["notification"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    e["notification"]["isRead"].as_bool().unwrap_or_default(),
                )
            })
            .collect()
    };
    assert_eq!(
        summary(&to_seller),
        [
            (
                "PROCESSING".into(),
                "placed an order for your gig.".into(),
                false
            ),
            (
                "COMPLETED".into(),
                "approved your order delivery.".into(),
                false
            ),
        ]
    );
    let to_buyer = buyer_client.wait_notifications(1).await;
    assert_eq!(
        summary(&to_buyer),
        [("DELIVERED".into(), "delivered your order.".into(), false)]
    );
    // Each event carries the order as that change left it.
    let versions: Vec<i64> = to_seller
        .iter()
        .chain(&to_buyer)
        .map(|e| e["order"]["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [2, 4, 3]);

    // Marking one read is emitted too, after the events before it.
    let first = to_seller[0]["notification"]["_id"].as_str().unwrap();
    let marked = mark_as_read(&app, &seller, first).await;
    let to_seller = seller_client.wait_notifications(3).await;
    assert_eq!(to_seller[2]["notification"], marked);
    assert_eq!(to_seller[2]["notification"]["isRead"], true);
    assert_eq!(to_seller[2]["order"]["status"], "COMPLETED");
    // Marking it again changes nothing, so it stages no second emit.
    let again = mark_as_read(&app, &seller, first).await;
    assert_eq!(again, marked);
    let staged = app
        .state
        .outbox
        .records_of(&format!("socket:{id}"))
        .await
        .expect("records");
    assert_eq!(staged.len(), 4, "three changes and one mark-as-read");

    // A client that was away catches up from the REST list, newest first,
    // with the same ids the events carried.
    let listed = app.notifications(&seller, &seller).await.body["notifications"].clone();
    let listed_ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["_id"].as_str().unwrap())
        .collect();
    let emitted_ids: Vec<&str> = to_seller[..2]
        .iter()
        .rev()
        .map(|e| e["notification"]["_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed_ids, emitted_ids);
    assert_eq!(
        seller_client.of_type("raw").len(),
        3,
        "{:#?}",
        seller_client.lines()
    );
    app.shutdown().await;
}

/// Two instances sharing Redis through `redis` (its variables): a client on
/// B receives what A committed, which B's own relay never emits.
async fn a_client_on_b_receives_what_a_committed(redis: Vec<(&'static str, String)>) {
    let a = spawn_app_with(Options {
        extra_env: redis.clone(),
        ..Options::default()
    })
    .await;
    // Same database, same Redis channels (they carry the deployment's prefix).
    let mut b_env = redis;
    b_env.push(("AMQP_EXCHANGE_PREFIX", a.prefix.clone()));
    let b = spawn_app_with(Options {
        extra_env: b_env,
        database: Some(a.db.name().to_string()),
        ..Options::default()
    })
    .await;
    assert!(a.state.realtime.is_shared() && b.state.realtime.is_shared());
    // B's relay leaves every socket record to A's, so what B's client gets
    // can only have come from A through Redis.
    b.state
        .realtime
        .faults()
        .inject(Fault::Unavailable, u32::MAX);

    let (buyer, seller) = (user("buyer"), user("seller"));
    let on_b = SocketClient::connected(&b, &seller).await;
    let on_a = SocketClient::connected(&a, &seller).await;
    let order = paid_order(&a, &buyer, &seller).await;
    for client in [&on_b, &on_a] {
        let got = client.wait_notifications(1).await;
        assert_eq!(got[0]["order"]["orderId"], order["orderId"]);
        assert_eq!(got[0]["notification"]["userTo"], seller.as_str());
    }
    let aggregate = format!("socket:{}", order["orderId"].as_str().unwrap());
    let record = published_record(&a, &aggregate).await;
    assert_eq!(record.attempts, 0, "declining is not a failed attempt");

    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn a_client_on_one_instance_receives_what_another_committed() {
    a_client_on_b_receives_what_a_committed(vec![("REDIS_URL", redis_url())]).await;
}

/// A redis-server of the test's own that speaks only TLS, with a server
/// certificate for 127.0.0.1 signed by a CA made for it (openssl and
/// redis-server from `scripts/deps.sh redis-tls`). Stopped on drop.
struct TlsRedis {
    server: Child,
    dir: PathBuf,
    port: u16,
}

impl TlsRedis {
    async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("redis-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .expect("extensions");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for args in [
            [
                &["req", "-x509"][..],
                &ec,
                &["-keyout", "ca.key", "-out", "ca.pem"],
                &["-days", "1", "-subj", "/CN=order-service test CA"],
            ]
            .concat(),
            [
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=localhost",
                ],
            ]
            .concat(),
            vec![
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "1",
                "-extfile",
                "server.ext",
            ],
        ] {
            run_tool("openssl", &dir, &args);
        }
        // The port is free when chosen but could be taken before the server
        // binds it: then the server exits, and another port is tried. Only
        // the server's own log says that it bound the port: a connection
        // could reach whoever took it.
        for _ in 0..5 {
            let port = free_port();
            let log = format!("redis-{port}.log");
            let mut server = Command::new("redis-server")
                .args([
                    "--port",
                    "0",
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
                .args([
                    "--tls-cert-file",
                    "server.pem",
                    "--tls-key-file",
                    "server.key",
                ])
                .args(["--tls-ca-cert-file", "ca.pem"])
                .args(["--logfile", &log])
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("redis-server is installed by scripts/deps.sh redis-tls");
            for _ in 0..100 {
                if server.try_wait().expect("redis-server status").is_some() {
                    break;
                }
                let ready = std::fs::read_to_string(dir.join(&log))
                    .is_ok_and(|text| text.contains("Ready to accept connections"));
                if ready {
                    return Self { server, dir, port };
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = server.start_kill();
        }
        panic!("the TLS Redis did not start on any of five ports");
    }

    fn ca_file(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.server.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn instances_reach_each_other_through_a_tls_redis() {
    let redis = TlsRedis::start().await;
    // A plain connection to a TLS-only port gets nowhere, so an emit that
    // arrives went through TLS, checked against the CA.
    a_client_on_b_receives_what_a_committed(vec![
        ("REDIS_URL", format!("rediss://127.0.0.1:{}", redis.port)),
        ("REDIS_CA_FILE", redis.ca_file()),
    ])
    .await;
}

#[tokio::test]
async fn a_tls_redis_whose_certificate_is_not_trusted_is_refused_at_start() {
    let redis = TlsRedis::start().await;
    let config = order_service::config::Config::from_lookup(|name| match name {
        "REDIS_URL" => Some(format!("rediss://127.0.0.1:{}", redis.port)),
        _ => None,
    })
    .expect("config");
    // The system's roots do not know the test's CA.
    let auth = std::sync::Arc::new(order_service::http::auth::Auth::new(
        &config.jwt_token,
        &config.gateway_jwt_token,
    ));
    let started =
        order_service::realtime::Realtime::start(auth, config.redis.as_ref(), "untrusted-").await;
    let Err(error) = started else {
        panic!("connected to a server it cannot trust");
    };
    let error = error.to_string();
    assert!(
        error.starts_with("REDIS_URL:") && error.contains("UnknownIssuer"),
        "{error}"
    );
}

#[tokio::test]
async fn a_failed_emit_is_retried_and_a_repeat_is_dropped_by_the_client() {
    let app = spawn_app().await;
    let (buyer, seller) = (user("buyer"), user("seller"));
    let client = SocketClient::connected(&app, &seller).await;

    // The first delivery emits and then fails, as if the process died before
    // marking the record published: the relay must emit it again.
    app.state.realtime.faults().inject(Fault::AfterEmit, 1);
    let order = paid_order(&app, &buyer, &seller).await;
    let aggregate = format!("socket:{}", order["orderId"].as_str().unwrap());
    let lines = client
        .wait_for("the repeat", |lines| {
            lines.iter().any(|l| l["type"] == "duplicate")
        })
        .await;
    let raw: Vec<&Value> = lines.iter().filter(|l| l["type"] == "raw").collect();
    assert_eq!(raw.len(), 2, "the raw stream shows it twice: {lines:#?}");
    assert_eq!(raw[0], raw[1], "the same event both times");
    assert_eq!(raw[0]["event"], "order notification");
    let kept = client.notifications();
    assert_eq!(kept.len(), 1, "the de-duplicated stream shows it once");
    assert_eq!(
        lines.iter().find(|l| l["type"] == "duplicate").unwrap()["id"],
        kept[0]["notification"]["_id"]
    );

    let record = published_record(&app, &aggregate).await;
    assert_eq!(record.attempts, 1, "one failed attempt, then success");
    assert!(
        record
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("after emit")),
        "{:?}",
        record.last_error
    );
    app.shutdown().await;
}

#[tokio::test]
async fn an_emit_that_failed_before_reaching_anyone_is_retried_until_it_does() {
    let app = spawn_app().await;
    let (buyer, seller) = (user("buyer"), user("seller"));
    let client = SocketClient::connected(&app, &seller).await;

    app.state.realtime.faults().inject(Fault::BeforeEmit, 2);
    let order = paid_order(&app, &buyer, &seller).await;
    let aggregate = format!("socket:{}", order["orderId"].as_str().unwrap());
    let got = client.wait_notifications(1).await;
    assert_eq!(got[0]["order"]["orderId"], order["orderId"]);
    let record = published_record(&app, &aggregate).await;
    assert_eq!(record.attempts, 2, "two failed attempts before the emit");
    assert_eq!(
        client.of_type("raw").len(),
        1,
        "nothing had gone out before: {:#?}",
        client.lines()
    );
    app.shutdown().await;
}

#[tokio::test]
async fn emits_wait_out_a_redis_outage_and_the_link_comes_back_by_itself() {
    let upstream = redis_url().trim_start_matches("redis://").to_string();
    let proxy = Proxy::start(&upstream).await;
    let a = spawn_app_with(Options {
        extra_env: vec![("REDIS_URL", format!("redis://{}", proxy.addr))],
        ..Options::default()
    })
    .await;
    let b = spawn_app_with(Options {
        extra_env: vec![
            ("REDIS_URL", redis_url()),
            ("AMQP_EXCHANGE_PREFIX", a.prefix.clone()),
        ],
        database: Some(a.db.name().to_string()),
        ..Options::default()
    })
    .await;
    let (buyer, seller) = (user("buyer"), user("seller"));
    let client = SocketClient::connected(&a, &seller).await;

    // Only A delivers, and A cannot reach Redis: its emits fail and wait.
    b.state
        .realtime
        .faults()
        .inject(Fault::Unavailable, u32::MAX);
    proxy.cut();
    let first = paid_order(&a, &buyer, &seller).await;
    let aggregate = format!("socket:{}", first["orderId"].as_str().unwrap());
    let record = poll_until(
        &format!("a failed attempt to emit {aggregate}"),
        TIMEOUT,
        Duration::from_millis(25),
        || async {
            let records = a.outbox_records(&aggregate).await;
            match records.first() {
                Some(record) if record.attempts >= 1 => Ok(record.clone()),
                _ => Err(format!("{records:?}")),
            }
        },
    )
    .await;
    assert_eq!(record.status, outbox::RecordStatus::Pending);
    assert!(
        client.lines().iter().all(|l| l["type"] != "raw"),
        "a failed publish emits nothing, not even locally"
    );

    proxy.restore();
    let got = client.wait_notifications(1).await;
    assert_eq!(got[0]["order"]["orderId"], first["orderId"]);

    // The reconnected link subscribed again: what B emits reaches A's socket.
    b.state.realtime.faults().clear();
    a.state
        .realtime
        .faults()
        .inject(Fault::Unavailable, u32::MAX);
    let second = paid_order(&a, &buyer, &seller).await;
    let got = client.wait_notifications(2).await;
    assert_eq!(got[1]["order"]["orderId"], second["orderId"]);

    b.shutdown().await;
    a.shutdown().await;
}
