//! One supervised AMQP connection: connected on demand, re-established after
//! a failure, with the topology declared again on every new connection.
//!
//! lapin does not reconnect by itself. Callers ask for a channel when they
//! need one; a dead connection is noticed through its status (heartbeats and
//! I/O errors) or reported with [`Broker::invalidate`], and the next request
//! connects afresh. Backoff between attempts is the caller's, so that a relay
//! and a consumer each wait at their own pace.

use crate::error::{Error, Result};
use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, watch};

/// An exchange the service publishes to or consumes from.
#[derive(Debug, Clone)]
pub struct ExchangeSpec {
    pub name: String,
    pub kind: ExchangeKind,
}

/// A durable queue with its bindings `(exchange, routing key)`.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub name: String,
    pub arguments: FieldTable,
    pub bindings: Vec<(String, String)>,
}

/// What must exist on the broker before anything is published or consumed.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub exchanges: Vec<ExchangeSpec>,
    pub queues: Vec<QueueSpec>,
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `amqp://user:pass@host:port/vhost`; a `heartbeat` query parameter is
    /// added when missing so that a silent peer is noticed.
    pub uri: String,
    /// Shown in the broker's management UI.
    pub connection_name: String,
    pub connect_timeout: Duration,
    pub topology: Topology,
}

#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    config: BrokerConfig,
    live: Mutex<Option<Live>>,
    connected: AtomicBool,
    generation: AtomicU64,
    /// The generation of the newest connection, for whoever waits for the
    /// broker to come back (see [`Broker::reconnects`]).
    reconnected: watch::Sender<u64>,
}

struct Live {
    connection: Arc<Connection>,
    publisher: Channel,
    generation: u64,
}

impl Broker {
    pub fn new(mut config: BrokerConfig) -> Self {
        if !config.uri.contains("heartbeat=") {
            let sep = if config.uri.contains('?') { '&' } else { '?' };
            config.uri = format!("{}{sep}heartbeat=10", config.uri);
        }
        Self {
            inner: Arc::new(Inner {
                config,
                live: Mutex::new(None),
                connected: AtomicBool::new(false),
                generation: AtomicU64::new(0),
                reconnected: watch::Sender::new(0),
            }),
        }
    }

    /// Whether the last known connection is up (cheap; for readiness).
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    /// Changes every time a new connection is established, by whichever
    /// user of this broker asked for it; a relay waiting out an outage
    /// wakes on it instead of polling the broker with work.
    pub fn reconnects(&self) -> watch::Receiver<u64> {
        self.inner.reconnected.subscribe()
    }

    /// Whether the current connection is up right now (asks lapin, not a cache).
    pub async fn connection_alive(&self) -> bool {
        self.inner
            .live
            .lock()
            .await
            .as_ref()
            .is_some_and(|l| l.connection.status().connected())
    }

    /// A live connection and its generation, connecting first if needed.
    /// The generation changes on every reconnect, so a consumer can tell that
    /// its channel belongs to a connection that is gone.
    pub async fn connection(&self) -> Result<(Arc<Connection>, u64)> {
        let mut live = self.inner.live.lock().await;
        let live = self.ensure(&mut live).await?;
        Ok((live.connection.clone(), live.generation))
    }

    /// The shared confirm-mode channel for publishing.
    pub async fn publish_channel(&self) -> Result<Channel> {
        let mut guard = self.inner.live.lock().await;
        let live = self.ensure(&mut guard).await?;
        if !live.publisher.status().connected() {
            // A channel-level error (e.g. a publish to a missing exchange)
            // closes only the channel; the connection is still good.
            live.publisher = confirm_channel(&live.connection).await?;
        }
        Ok(live.publisher.clone())
    }

    /// Drops the current connection so that the next request reconnects.
    pub async fn invalidate(&self) {
        let mut live = self.inner.live.lock().await;
        if let Some(old) = live.take() {
            self.inner.connected.store(false, Ordering::Relaxed);
            // Closing a half-dead connection can hang until its heartbeat
            // fails; nobody needs to wait for it.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    old.connection.close(200, "reconnecting".into()),
                )
                .await;
            });
        }
    }

    /// Closes the connection for shutdown.
    pub async fn close(&self) {
        let mut live = self.inner.live.lock().await;
        if let Some(old) = live.take() {
            self.inner.connected.store(false, Ordering::Relaxed);
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                old.connection.close(200, "shutdown".into()),
            )
            .await;
        }
    }

    async fn ensure<'a>(&self, live: &'a mut Option<Live>) -> Result<&'a mut Live> {
        let healthy = live
            .as_ref()
            .is_some_and(|l| l.connection.status().connected());
        if !healthy {
            *live = None;
            self.inner.connected.store(false, Ordering::Relaxed);
            let fresh = self.connect().await?;
            self.inner.connected.store(true, Ordering::Relaxed);
            self.inner.reconnected.send_replace(fresh.generation);
            *live = Some(fresh);
        }
        live.as_mut()
            .ok_or_else(|| Error::BrokerUnavailable("no connection".into()))
    }

    async fn connect(&self) -> Result<Live> {
        let config = &self.inner.config;
        let properties = ConnectionProperties::default()
            .with_connection_name(config.connection_name.clone().into());
        let connection = tokio::time::timeout(
            config.connect_timeout,
            Connection::connect(&config.uri, properties),
        )
        .await
        .map_err(|_| Error::BrokerUnavailable("connect timed out".into()))?
        .map_err(|e| Error::BrokerUnavailable(e.to_string()))?;
        let connection = Arc::new(connection);
        declare(&connection, &config.topology).await?;
        let publisher = confirm_channel(&connection).await?;
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(generation, name = %config.connection_name, "connected to RabbitMQ");
        Ok(Live {
            connection,
            publisher,
            generation,
        })
    }
}

async fn confirm_channel(connection: &Connection) -> Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Declares exchanges, queues and bindings; all idempotent on the broker.
async fn declare(connection: &Connection, topology: &Topology) -> Result<()> {
    let channel = connection.create_channel().await?;
    declare_on(&channel, topology).await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// Declares `topology` on an open channel (idempotent on the broker); for
/// consumers that re-declare their queues on every subscription.
pub async fn declare_on(
    channel: &Channel,
    topology: &Topology,
) -> std::result::Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for exchange in &topology.exchanges {
        channel
            .exchange_declare(
                exchange.name.as_str().into(),
                exchange.kind.clone(),
                durable,
                FieldTable::default(),
            )
            .await?;
    }
    for queue in &topology.queues {
        channel
            .queue_declare(
                queue.name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                queue.arguments.clone(),
            )
            .await?;
        for (exchange, key) in &queue.bindings {
            channel
                .queue_bind(
                    queue.name.as_str().into(),
                    exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    Ok(())
}
