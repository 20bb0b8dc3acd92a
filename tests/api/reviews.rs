//! The review consumer against the real broker and database: reviews are
//! published to the test's own prefixed `gigconnect-review` exchange, as the
//! review service would, and the tests watch the orders, notifications,
//! inbox and the retry and dead-letter queues.

use crate::helpers::*;
use bson::{Document, doc};
use futures::StreamExt;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use order_service::consumers::queues::QueueSet;
use order_service::consumers::{redrive, republish, review};
use order_service::orders::Order;
use serde_json::{Value, json};
use std::time::Duration;

/// How long a test waits for the consumer to get somewhere, unless it says
/// otherwise, and how often it looks again.
const TIMEOUT: Duration = Duration::from_secs(30);
const EVERY: Duration = Duration::from_millis(50);

/// A review service stand-in: publishes to the review exchange with
/// confirms, and reads the queues around it.
struct ReviewService {
    connection: Connection,
    channel: Channel,
    queues: QueueSet,
}

impl ReviewService {
    /// Connects directly to the broker (never through a test's proxy) and
    /// waits until the app consumes, so nothing is published to an exchange
    /// with no queue bound yet.
    async fn start(app: &TestApp) -> Self {
        let connection = Connection::connect(&amqp_uri(), ConnectionProperties::default())
            .await
            .expect("amqp");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let service = Self {
            connection,
            channel,
            queues: review::queues(&app.prefix),
        };
        let main = service.queues.main.clone();
        poll_until(
            "the app to consume the review queue",
            TIMEOUT,
            EVERY,
            || {
                let service = &service;
                let main = main.clone();
                async move { service.consumers(&main).await >= 1 }
            },
        )
        .await;
        service
    }

    async fn publish(&self, body: &[u8], message_id: Option<&str>) {
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        if let Some(id) = message_id {
            props = props.with_message_id(id.into());
        }
        self.send(body, props).await;
    }

    async fn send(&self, body: &[u8], props: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                self.queues.exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("publish");
        assert!(confirm.await.expect("confirm").is_ack());
    }

    async fn publish_json(&self, body: &Value, message_id: Option<&str>) {
        self.publish(&serde_json::to_vec(body).expect("json"), message_id)
            .await;
    }

    /// A passive declare on a fresh channel: a missing queue closes the
    /// channel it is asked on.
    async fn inspect(&self, queue: &str) -> Option<lapin::Queue> {
        let channel = self.connection.create_channel().await.ok()?;
        let queue = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .ok();
        let _ = channel.close(200, "inspected".into()).await;
        queue
    }

    async fn consumers(&self, queue: &str) -> u32 {
        self.inspect(queue)
            .await
            .map(|q| q.consumer_count())
            .unwrap_or(0)
    }

    async fn depth(&self, queue: &str) -> u32 {
        self.inspect(queue)
            .await
            .map(|q| q.message_count())
            .unwrap_or(0)
    }

    /// Takes `n` messages out of the DLQ, waiting for them to arrive.
    async fn take_dead_letters(&self, n: usize) -> Vec<lapin::message::Delivery> {
        let mut taken = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while taken.len() < n {
            match self
                .channel
                .basic_get(
                    self.queues.dlq.as_str().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .expect("basic.get")
            {
                Some(message) => taken.push(message.delivery),
                None => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "only {} of {n} messages reached the DLQ",
                        taken.len()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        taken
    }

    /// Removes the test's queues and exchange from the shared broker.
    async fn remove(self) {
        for queue in [&self.queues.main, &self.queues.retry, &self.queues.dlq] {
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = self
            .channel
            .exchange_delete(
                self.queues.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = self.connection.close(200, "done".into()).await;
    }
}

fn review_body(kind: &str, order_id: &str, rating: i64, text: &str) -> Value {
    json!({
        "type": kind, "orderId": order_id, "rating": rating, "review": text,
        "createdAt": "2026-11-20T10:00:00.000Z", "gigId": "gig-1", "reviewerId": "r-1"
    })
}

async fn order(app: &TestApp, order_id: &str) -> Order {
    app.state
        .orders
        .repository()
        .by_order_id(order_id)
        .await
        .expect("read")
        .expect("order exists")
}

async fn notifications(app: &TestApp, filter: Document) -> Vec<Document> {
    use futures::TryStreamExt;
    app.db
        .collection::<Document>("notifications")
        .find(filter)
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("notifications")
}

async fn inbox_entries(app: &TestApp) -> u64 {
    app.db
        .collection::<Document>("inbox")
        .count_documents(doc! { "consumer": "order-review" })
        .await
        .expect("count")
}

fn header(delivery: &lapin::message::Delivery, name: &str) -> Option<String> {
    republish::header_text(&delivery.properties, name)
}

fn id(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

fn env(pairs: &[(&'static str, &str)]) -> Options {
    Options {
        extra_env: pairs.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        ..Options::default()
    }
}

#[tokio::test]
async fn the_same_review_delivered_five_times_is_applied_once() {
    // One delivery at a time: once the last message published is applied,
    // every message before it has been settled.
    let app = spawn_app_with(env(&[("REVIEW_PREFETCH", "1")])).await;
    let (order_id, last_id) = (id("dup"), id("last"));
    app.new_order(&order_id, "ann", "sol", 50.0).await;
    app.new_order(&last_id, "ann", "sol", 50.0).await;
    let service = ReviewService::start(&app).await;

    let buyer = review_body("buyer-review", &order_id, 5, "Fast and clean");
    for _ in 0..5 {
        service.publish_json(&buyer, Some("review-msg-1")).await;
    }
    // No message_id: the same body is the same message.
    let seller = serde_json::to_vec(&review_body("seller-review", &order_id, 4, "Clear brief"))
        .expect("json");
    for _ in 0..5 {
        service.publish(&seller, None).await;
    }
    // The producer sending the same review under a new id changes nothing either.
    service.publish_json(&buyer, Some("review-msg-2")).await;
    service
        .publish_json(
            &review_body("buyer-review", &last_id, 3, "ok"),
            Some("review-last"),
        )
        .await;
    poll_until("the last review", TIMEOUT, EVERY, || async {
        order(&app, &last_id).await.buyer_review.is_some()
    })
    .await;

    let stored = order(&app, &order_id).await;
    let buyer_review = stored.buyer_review.expect("buyer review");
    assert_eq!(
        (buyer_review.rating, buyer_review.review.as_str()),
        (5, "Fast and clean")
    );
    assert_eq!(buyer_review.created, "2026-11-20T10:00:00+00:00");
    assert_eq!(
        stored.events.buyer_review.as_deref(),
        Some("2026-11-20T10:00:00+00:00")
    );
    assert_eq!(stored.seller_review.expect("seller review").rating, 4);
    assert!(stored.events.seller_review.is_some());
    assert_eq!(stored.version, 3, "created, then one change per review");

    let notes = notifications(&app, doc! { "orderId": &order_id }).await;
    assert_eq!(notes.len(), 2, "one notification per review: {notes:?}");
    let to = |user: &str| {
        notes
            .iter()
            .find(|n| n.get_str("userTo") == Ok(user))
            .cloned()
            .expect("notification")
    };
    assert_eq!(to("sol").get_str("message"), Ok("left you a 5 star review"));
    assert_eq!(to("sol").get_str("senderUsername"), Ok("ann"));
    assert_eq!(to("ann").get_str("message"), Ok("left you a 4 star review"));
    // review-msg-1, the body hash, review-msg-2 and review-last.
    assert_eq!(inbox_entries(&app).await, 4);
    let inbox = outbox::Inbox::new(&app.db, Duration::from_secs(3600));
    assert!(
        inbox
            .contains("order-review", "review-msg-1")
            .await
            .expect("inbox")
    );
    assert_eq!(service.depth(&service.queues.dlq).await, 0);
    assert_eq!(service.depth(&service.queues.retry).await, 0);
    app.shutdown().await;
    service.remove().await;
}

#[tokio::test]
async fn bad_json_is_dead_lettered_and_the_reviews_behind_it_are_applied() {
    let app = spawn_app_with(env(&[("REVIEW_PREFETCH", "1")])).await;
    let ids: Vec<String> = (0..3).map(|_| id("behind")).collect();
    for order_id in &ids {
        app.new_order(order_id, "bo", "cy", 20.0).await;
    }
    let service = ReviewService::start(&app).await;

    service
        .publish(b"{\"type\": \"buyer-review\", ", Some("bad-json-1"))
        .await;
    for (i, order_id) in ids.iter().enumerate() {
        let body = review_body("buyer-review", order_id, 5, "Great");
        service
            .publish_json(&body, Some(&format!("good-{i}")))
            .await;
    }
    for order_id in &ids {
        poll_until("the reviews behind the bad one", TIMEOUT, EVERY, || async {
            order(&app, order_id).await.buyer_review.is_some()
        })
        .await;
    }
    let dead = service.take_dead_letters(1).await;
    assert_eq!(
        dead[0].properties.message_id().as_ref().map(|s| s.as_str()),
        Some("bad-json-1")
    );
    assert_eq!(dead[0].data, b"{\"type\": \"buyer-review\", ");
    let reason = header(&dead[0], "x-dead-letter-reason").expect("reason");
    assert!(
        reason.starts_with("malformed: body is not JSON"),
        "{reason}"
    );
    assert!(header(&dead[0], "x-dead-lettered-at").is_some());
    assert_eq!(
        inbox_entries(&app).await,
        3,
        "the bad message is not in the inbox"
    );
    app.shutdown().await;
    service.remove().await;
}

#[tokio::test]
async fn a_rating_out_of_range_and_other_defects_are_dead_lettered() {
    let app = spawn_app().await;
    let order_id = id("rating");
    app.new_order(&order_id, "dee", "eli", 20.0).await;
    let service = ReviewService::start(&app).await;

    service
        .publish_json(
            &review_body("buyer-review", &order_id, 9, "Wow"),
            Some("nine"),
        )
        .await;
    service
        .publish_json(
            &review_body("gig-review", &order_id, 5, "Wow"),
            Some("kind"),
        )
        .await;
    service
        .publish_json(
            &json!({ "type": "seller-review", "rating": 5, "review": "no order" }),
            Some("no-order"),
        )
        .await;
    let dead = service.take_dead_letters(3).await;
    let reason_of = |message_id: &str| {
        dead.iter()
            .find(|d| d.properties.message_id().as_ref().map(|s| s.as_str()) == Some(message_id))
            .and_then(|d| header(d, "x-dead-letter-reason"))
            .expect("dead-lettered with a reason")
    };
    assert_eq!(
        reason_of("nine"),
        "malformed: rating 9 is not an integer from 1 to 5"
    );
    assert!(reason_of("kind").contains("gig-review"));
    assert_eq!(reason_of("no-order"), "malformed: orderId is missing");

    let stored = order(&app, &order_id).await;
    assert!(stored.buyer_review.is_none() && stored.seller_review.is_none());
    assert!(
        notifications(&app, doc! { "orderId": &order_id })
            .await
            .is_empty()
    );
    assert_eq!(inbox_entries(&app).await, 0);
    app.shutdown().await;
    service.remove().await;
}

#[tokio::test]
async fn a_review_for_an_unknown_order_is_retried_then_dead_lettered_and_can_be_redriven() {
    let app = spawn_app_with(env(&[
        ("REVIEW_MAX_RETRIES", "2"),
        ("REVIEW_RETRY_DELAY_MS", "200"),
    ]))
    .await;
    let service = ReviewService::start(&app).await;
    let order_id = id("ghost");
    let body = review_body("seller-review", &order_id, 2, "Never paid");
    service.publish_json(&body, Some("ghost-review")).await;

    // Seen the way an operator sees it (`reviews dlq`): nothing is removed.
    let parked = poll_until(
        "the review to reach the DLQ",
        Duration::from_secs(60),
        EVERY,
        || async {
            let (_, parked) = redrive::peek(&app.state.broker, &service.queues, 10)
                .await
                .expect("peek");
            (!parked.is_empty()).then_some(parked)
        },
    )
    .await;
    assert_eq!(parked.len(), 1);
    let message = &parked[0];
    assert_eq!(message.message_id.as_deref(), Some("ghost-review"));
    assert_eq!(message.retries, 2);
    assert_eq!(
        message.reason.as_deref(),
        Some(format!("gave up after 2 retries: order {order_id} not found").as_str())
    );
    assert_eq!(
        serde_json::from_str::<Value>(&message.body).expect("body"),
        body,
        "the body is kept as it was"
    );
    assert_eq!(
        inbox_entries(&app).await,
        0,
        "a failed try leaves no inbox entry"
    );
    assert_eq!(
        service.depth(&service.queues.dlq).await,
        1,
        "peeking removes nothing"
    );

    // The operator fixes the cause (the order now exists) and re-drives.
    app.new_order(&order_id, "fay", "gus", 30.0).await;
    let args = ["reviews".to_string(), "redrive-dlq".to_string()];
    let code =
        order_service::cli::run(&order_service::cli::Tools::from_state(&app.state), &args).await;
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    poll_until("the re-driven review", TIMEOUT, EVERY, || async {
        order(&app, &order_id).await.seller_review.is_some()
    })
    .await;
    assert_eq!(service.depth(&service.queues.dlq).await, 0);
    let notes = notifications(&app, doc! { "orderId": &order_id, "userTo": "fay" }).await;
    assert_eq!(notes.len(), 1);
    app.shutdown().await;
    service.remove().await;
}

#[tokio::test]
async fn a_review_that_overtakes_its_order_is_applied_once_the_order_exists() {
    let app = spawn_app_with(env(&[
        ("REVIEW_MAX_RETRIES", "100"),
        ("REVIEW_RETRY_DELAY_MS", "1000"),
    ]))
    .await;
    let service = ReviewService::start(&app).await;
    let order_id = id("early");
    service
        .publish_json(
            &review_body("buyer-review", &order_id, 4, "Early"),
            Some("early-1"),
        )
        .await;
    let retry = service.queues.retry.clone();
    poll_until(
        "the review to wait in the retry queue",
        TIMEOUT,
        EVERY,
        || {
            let (service, retry) = (&service, retry.clone());
            async move { service.depth(&retry).await >= 1 }
        },
    )
    .await;
    app.new_order(&order_id, "hal", "ivy", 30.0).await;
    poll_until(
        "the review, once its order exists",
        TIMEOUT,
        EVERY,
        || async { order(&app, &order_id).await.buyer_review.is_some() },
    )
    .await;
    assert_eq!(
        order(&app, &order_id)
            .await
            .buyer_review
            .expect("review")
            .rating,
        4
    );
    assert_eq!(service.depth(&service.queues.dlq).await, 0);
    app.shutdown().await;
    service.remove().await;
}

const ORDERS: usize = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_reviews_are_applied_exactly_once_across_a_broker_outage() {
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let app = spawn_app_with(Options {
        amqp_uri: Some(proxy.amqp_uri()),
        ..Options::default()
    })
    .await;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let order_ids: Vec<String> = (0..ORDERS).map(|i| format!("rv-{run}-{i}")).collect();
    futures::stream::iter(&order_ids)
        .map(|order_id| {
            let (app, run) = (&app, &run);
            async move {
                app.new_order(
                    order_id,
                    &format!("buyer{run}"),
                    &format!("seller{run}"),
                    10.0,
                )
                .await;
            }
        })
        .buffer_unordered(50)
        .collect::<Vec<()>>()
        .await;
    let service = ReviewService::start(&app).await;
    // Buyer reviews of every order, then seller reviews: 500 distinct messages.
    let messages: Vec<(String, Value)> = ["buyer-review", "seller-review"]
        .iter()
        .flat_map(|kind| {
            order_ids.iter().enumerate().map(move |(i, order_id)| {
                let rating = (i % 5 + 1) as i64;
                (
                    format!("{kind}-{order_id}"),
                    review_body(kind, order_id, rating, "Load"),
                )
            })
        })
        .collect();
    let (first, second) = messages.split_at(messages.len() / 2);

    for (message_id, body) in first {
        service.publish_json(body, Some(message_id)).await;
    }
    poll_until(
        "the consumer to be mid-stream",
        Duration::from_secs(60),
        EVERY,
        || async { inbox_entries(&app).await >= 50 },
    )
    .await;
    proxy.cut();
    let at_cut = inbox_entries(&app).await;
    // The rest is published while the consumer is cut off; it waits in the queue.
    for (message_id, body) in second {
        service.publish_json(body, Some(message_id)).await;
    }
    poll_until(
        "the service to notice the outage",
        TIMEOUT,
        EVERY,
        || async { !app.state.broker.is_connected() },
    )
    .await;
    proxy.restore();
    poll_until(
        "all 500 reviews",
        Duration::from_secs(420),
        EVERY,
        || async { inbox_entries(&app).await == messages.len() as u64 },
    )
    .await;
    assert!(at_cut < messages.len() as u64, "the cut came mid-stream");

    let notes = notifications(
        &app,
        doc! { "orderId": { "$regex": format!("^rv-{run}-") } },
    )
    .await;
    assert_eq!(notes.len(), messages.len(), "one notification per review");
    for (i, order_id) in order_ids.iter().enumerate() {
        let stored = order(&app, order_id).await;
        let rating = (i % 5 + 1) as i32;
        assert_eq!(
            stored.buyer_review.map(|r| r.rating),
            Some(rating),
            "{order_id}"
        );
        assert_eq!(
            stored.seller_review.map(|r| r.rating),
            Some(rating),
            "{order_id}"
        );
        assert_eq!(stored.version, 3, "{order_id}: one change per review");
    }
    assert_eq!(service.depth(&service.queues.dlq).await, 0);
    assert_eq!(service.depth(&service.queues.retry).await, 0);
    app.shutdown().await;
    service.remove().await;
}

#[tokio::test]
async fn the_records_a_review_causes_carry_its_trace_and_correlation() {
    use futures::TryStreamExt;
    let app = spawn_app().await;
    let order_id = id("traced");
    app.new_order(&order_id, "tia", "tom", 30.0).await;
    let service = ReviewService::start(&app).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        lapin::types::AMQPValue::LongString(traceparent.into()),
    );
    let body = review_body("buyer-review", &order_id, 5, "Traced");
    service
        .send(
            &serde_json::to_vec(&body).expect("json"),
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id("traced-review".into())
                .with_correlation_id("corr-traced".into())
                .with_headers(headers),
        )
        .await;
    poll_until("the review", TIMEOUT, EVERY, || async {
        order(&app, &order_id).await.buyer_review.is_some()
    })
    .await;
    // The seller's notification, staged with the review in one
    // transaction, goes to the socket with the review's trace.
    let records: Vec<Document> = app
        .db
        .collection::<Document>("outbox")
        .find(doc! { "headers.traceparent": traceparent })
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("records");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        records[0].get_str("correlationId").ok(),
        Some("corr-traced")
    );
    assert_eq!(
        records[0]
            .get_document("destination")
            .and_then(|d| d.get_str("kind")),
        Ok("socket")
    );
}
