//! The Redis link of the Socket.IO adapter. socketioxide-redis's own driver
//! holds one plain connection: once Redis restarts or the network blips, it
//! stays broken and every emit fails until the process restarts. This
//! driver is the same pub/sub protocol on redis-rs's `ConnectionManager`,
//! which reconnects on its own and subscribes to the adapter's channels
//! again, so an outage costs retries (the relay's) instead of a restart.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, FromRedisValue, PushInfo, PushKind};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// Channel name -> the adapter's receiver for it.
type Handlers = Arc<RwLock<HashMap<String, mpsc::Sender<ChanItem>>>>;

#[derive(Clone)]
pub struct ReconnectingDriver {
    handlers: Handlers,
    conn: ConnectionManager,
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DriverError(#[from] redis::RedisError);

impl ReconnectingDriver {
    /// Connects (start-up fails if Redis cannot be reached: the adapter's
    /// channels must be subscribed before the first socket arrives). A
    /// `rediss://` server is trusted through `ca` (PEM) when given, else
    /// through the system's roots.
    pub async fn connect(url: &str, ca: Option<Vec<u8>>) -> Result<Self, redis::RedisError> {
        if url.starts_with("rediss://") {
            // redis-rs asks rustls for its process-wide provider, and with
            // two compiled in rustls cannot pick; an error here only means
            // one is installed already.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        let client = match ca {
            None => redis::Client::open(url)?,
            Some(root_cert) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )?,
        };
        let handlers: Handlers = Arc::default();
        let sink = handlers.clone();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(move |push: PushInfo| {
                route(push, &sink);
                Ok::<(), std::convert::Infallible>(())
            })
            .set_automatic_resubscription()
            // Fail an emit quickly while Redis is away: the relay retries the
            // record with its own backoff, and a stuck emit holds the
            // order's lease for nothing.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1))
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self { handlers, conn })
    }
}

/// Hands a pub/sub message to the adapter's receiver of its channel.
fn route(push: PushInfo, handlers: &Handlers) {
    if !matches!(push.kind, PushKind::Message | PushKind::SMessage) {
        return;
    }
    let mut data = push.data.into_iter();
    let (Some(channel), Some(message)) = (data.next(), data.next()) else {
        return;
    };
    let (Ok(channel), Ok(message)) = (
        String::from_redis_value(channel),
        Vec::<u8>::from_redis_value(message),
    ) else {
        tracing::warn!("unreadable Redis pub/sub message");
        return;
    };
    let Ok(handlers) = handlers.read() else {
        return;
    };
    if let Some(tx) = handlers.get(&channel)
        && let Err(e) = tx.try_send((channel, message))
    {
        // The adapter reads its channels continuously; a full buffer means
        // this instance is overloaded, and the message is lost for its
        // sockets (their clients catch up from the REST list).
        tracing::warn!(error = %e, "Socket.IO adapter channel full; message dropped");
    }
}

impl Driver for ReconnectingDriver {
    type Error = DriverError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        self.conn
            .clone()
            .publish::<_, _, redis::Value>(chan, val)
            .await?;
        Ok(())
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        // Registered before subscribing, so no message can arrive unrouted.
        let (tx, rx) = mpsc::channel(size);
        if let Ok(mut handlers) = self.handlers.write() {
            handlers.insert(chan.clone(), tx);
        }
        self.conn.clone().subscribe(chan.as_str()).await?;
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        if let Ok(mut handlers) = self.handlers.write() {
            handlers.remove(&chan);
        }
        self.conn.clone().unsubscribe(chan).await?;
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let (_, count): (String, u16) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(chan)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(count)
    }
}
