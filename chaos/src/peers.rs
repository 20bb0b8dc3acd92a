//! The stand-in peer services: a consumer bound to every exchange the
//! service publishes to (what the seller, buyer and notification services
//! would receive), and the review service's publisher. Both talk to the
//! suite's broker directly, never through the fault proxy: the faults are
//! the service's, and the peers must see everything that got out.

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use order_service::orders::events::{Exchanges, ORDER_EMAIL, USER_BUYER, USER_SELLER};
use outbox::{ExchangeSpec, Topology};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Message ids in arrival order, redeliveries included, with the arrival
/// time (Unix milliseconds).
#[derive(Clone, Default)]
pub struct Received(Arc<Mutex<Vec<(String, i64)>>>);

impl Received {
    pub fn snapshot(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|v| v.iter().map(|(id, _)| id.clone()).collect())
            .unwrap_or_default()
    }

    /// When each message id first arrived.
    pub fn first_arrivals(&self) -> HashMap<String, i64> {
        let mut first = HashMap::new();
        if let Ok(v) = self.0.lock() {
            for (id, at) in v.iter() {
                first.entry(id.clone()).or_insert(*at);
            }
        }
        first
    }

    fn push(&self, id: String) {
        if let Ok(mut v) = self.0.lock() {
            v.push((id, chrono::Utc::now().timestamp_millis()));
        }
    }
}

/// Consumes everything the service publishes under `prefix` into one
/// durable queue, reconnecting whenever the broker goes away, until `stop`.
/// The queue is declared before the first instance starts, so nothing
/// published is missed.
pub async fn start_consumer(
    amqp_url: String,
    prefix: String,
    stop: CancellationToken,
) -> Result<(Received, tokio::task::JoinHandle<()>), lapin::Error> {
    let received = Received::default();
    // The first session runs here so that the queue surely exists on return.
    let connection = Connection::connect(&amqp_url, ConnectionProperties::default()).await?;
    let queue = format!("{prefix}chaos-peers");
    declare(&connection, &prefix, &queue).await?;
    let _ = connection.close(200, "declared".into()).await;
    let sink = received.clone();
    let task = tokio::spawn(async move {
        // One line per outage, not one per reconnect attempt.
        let mut last_error = String::new();
        while !stop.is_cancelled() {
            match consume(&amqp_url, &prefix, &queue, &sink, &stop).await {
                Err(e) if e.to_string() != last_error => {
                    last_error = e.to_string();
                    eprintln!("chaos: peer consumer: {e}; reconnecting");
                }
                Err(_) => {}
                Ok(()) => last_error.clear(),
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
    });
    Ok((received, task))
}

async fn declare(connection: &Connection, prefix: &str, queue: &str) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    let exchanges = Exchanges::new(prefix);
    let topology = Topology {
        exchanges: [
            &exchanges.seller_updates,
            &exchanges.buyer_updates,
            &exchanges.order,
        ]
        .into_iter()
        .map(|name| ExchangeSpec {
            name: name.clone(),
            kind: ExchangeKind::Direct,
        })
        .collect(),
        queues: Vec::new(),
    };
    outbox::broker::declare_on(&channel, &topology).await?;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    for (exchange, key) in [
        (&exchanges.seller_updates, USER_SELLER),
        (&exchanges.buyer_updates, USER_BUYER),
        (&exchanges.order, ORDER_EMAIL),
    ] {
        channel
            .queue_bind(
                queue.into(),
                exchange.as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

async fn consume(
    amqp_url: &str,
    prefix: &str,
    queue: &str,
    sink: &Received,
    stop: &CancellationToken,
) -> Result<(), lapin::Error> {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    declare(&connection, prefix, queue).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(200, BasicQosOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            "chaos-peers".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            next = deliveries.next() => match next {
                Some(delivery) => delivery?,
                None => return Ok(()),
            },
        };
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default();
        // Recorded before the ack: a lost ack means a redelivery, which the
        // checker counts as such, never a loss.
        sink.push(id);
        delivery.ack(BasicAckOptions::default()).await?;
    }
}

/// The review service: publishes review events with a fixed message id,
/// retrying until the broker confirms (the broker may be down mid-fault).
pub struct ReviewPublisher {
    amqp_url: String,
    exchange: String,
}

impl ReviewPublisher {
    pub fn new(amqp_url: String, prefix: &str) -> Self {
        Self {
            amqp_url,
            exchange: Exchanges::new(prefix).review,
        }
    }

    /// Publishes `body` under `message_id`, retrying for up to `within`.
    pub async fn publish(
        &self,
        message_id: &str,
        body: &serde_json::Value,
        within: Duration,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.publish_once(message_id, body).await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(format!("review {message_id} not published: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    async fn publish_once(&self, message_id: &str, body: &serde_json::Value) -> Result<(), String> {
        self.try_publish(message_id, body)
            .await
            .map_err(|e| e.to_string())
            .and_then(|acked| acked.then_some(()).ok_or_else(|| "nacked".to_string()))
    }

    /// Whether the broker acked the publish.
    async fn try_publish(
        &self,
        message_id: &str,
        body: &serde_json::Value,
    ) -> Result<bool, lapin::Error> {
        let connection =
            Connection::connect(&self.amqp_url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Fanout,
                lapin::options::ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let confirm = channel
            .basic_publish(
                self.exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                BasicProperties::default()
                    .with_message_id(message_id.into())
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            )
            .await?
            .await?;
        let _ = connection.close(200, "published".into()).await;
        Ok(confirm.is_ack())
    }
}
