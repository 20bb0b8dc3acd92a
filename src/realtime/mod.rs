//! Realtime notifications over Socket.IO, on the service's own port at
//! `/socket.io/`.
//!
//! - [`handshake`]: the client authenticates with the user JWT
//!   (`auth: {token}`) and joins its user's room (the lower-cased username);
//! - [`records`]: the outbox records that carry an `order notification`,
//!   staged in the transaction that stores the notification;
//! - [`emitter`]: the relay's handler for those records, which emits them;
//! - `adapter`: in-memory when alone, Redis pub/sub (`REDIS_URL`) when
//!   several instances must reach each other's sockets;
//! - `redis`: the adapter's Redis link, which reconnects and resubscribes.
//!
//! Delivery is at least once (a record may be emitted again after a failure
//! the relay cannot tell apart from a lost emit); clients drop repeats by
//! the notification's `_id` and read state (see docs/realtime.md).

pub(crate) mod adapter;
pub mod emitter;
pub mod handshake;
pub mod records;
mod redis;

use crate::config::RedisSettings;
use crate::http::auth::Auth;
use adapter::{Io, Layer};
use axum::Router;
use emitter::{EmitFaults, SocketEmitter};
use handshake::{authenticate, on_connect};
use socketioxide::SocketIo;
use socketioxide::handler::ConnectHandler;
use socketioxide_redis::{RedisAdapterConfig, RedisAdapterCtr};
use std::sync::Arc;
use std::time::Duration;

/// How long start-up waits for Redis before giving up.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RealtimeError {
    #[error("REDIS_URL: {0}")]
    Redis(String),
    #[error("REDIS_CA_FILE {path}: {reason}")]
    RedisCa { path: String, reason: String },
}

/// The Socket.IO server of this instance: the layer for the router, the
/// handle the emitter uses, and the fault switch the tests arm.
#[derive(Clone)]
pub struct Realtime {
    io: Io,
    layer: Layer,
    faults: EmitFaults,
}

impl Realtime {
    /// Builds the server; with `redis`, connects to Redis and subscribes
    /// to the adapter's channels, named after `channel_prefix` so that
    /// deployments sharing one Redis stay apart.
    pub async fn start(
        auth: Arc<Auth>,
        redis: Option<&RedisSettings>,
        channel_prefix: &str,
    ) -> Result<Self, RealtimeError> {
        let (io, layer) = match redis {
            None => {
                let (layer, io) = SocketIo::builder().with_state(auth).build_layer();
                io.ns("/", on_connect.with(authenticate));
                (Io::Local(io), Layer::Local(layer))
            }
            Some(settings) => {
                let ca = match &settings.ca_file {
                    None => None,
                    Some(path) => Some(read_ca(path)?),
                };
                let driver = tokio::time::timeout(
                    REDIS_CONNECT_TIMEOUT,
                    redis::ReconnectingDriver::connect(&resp3(settings.url.expose()), ca),
                )
                .await
                .map_err(|_| RealtimeError::Redis("timed out connecting".into()))?
                .map_err(|e| RealtimeError::Redis(e.to_string()))?;
                let config =
                    RedisAdapterConfig::new().with_prefix(format!("{channel_prefix}socket.io"));
                let ctr = RedisAdapterCtr::new_with_driver(driver, config);
                let (layer, io) = SocketIo::builder()
                    .with_state(auth)
                    .with_adapter::<adapter::Redis>(ctr)
                    .build_layer();
                // Subscribes to the adapter's channels before serving.
                io.ns("/", on_connect.with(authenticate))
                    .await
                    .map_err(|e| RealtimeError::Redis(e.to_string()))?;
                (Io::Redis(io), Layer::Redis(layer))
            }
        };
        Ok(Self {
            io,
            layer,
            faults: EmitFaults::default(),
        })
    }

    /// The outbox handler to register under `Destination::SOCKET_HANDLER`.
    pub fn emitter(&self) -> SocketEmitter {
        SocketEmitter::new(self.io.clone(), self.faults.clone())
    }

    /// Failure injection for tests and the chaos suite; inert unless armed.
    pub fn faults(&self) -> &EmitFaults {
        &self.faults
    }

    /// Whether emits travel through Redis to the other instances.
    pub fn is_shared(&self) -> bool {
        matches!(self.io, Io::Redis(_))
    }

    /// Serves `/socket.io/` in front of `router`.
    pub fn attach<S>(&self, router: Router<S>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        self.layer.attach(router)
    }

    /// Disconnects this instance's sockets, so that long-polling requests end
    /// and the HTTP server can drain; clients reconnect to another instance.
    pub async fn close(&self) {
        self.io.close().await;
    }
}

/// The Redis driver speaks RESP3 (pushed pub/sub messages on the same
/// connection); ask for it unless the URL already chooses.
/// The PEM file of a private CA; one without a certificate would only
/// show later as an untrusted server, so it is named here.
fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, RealtimeError> {
    let error = |reason: String| RealtimeError::RedisCa {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(error("holds no PEM certificate".into()));
    }
    Ok(pem)
}

fn resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

#[cfg(test)]
mod tests {
    use super::{read_ca, resp3};

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = std::env::temp_dir().join(format!("ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate").expect("write");
        let error = read_ca(&empty).unwrap_err().to_string();
        assert!(error.contains("holds no PEM certificate"), "{error}");
        let missing = read_ca(&dir.join("missing.pem")).unwrap_err().to_string();
        assert!(missing.starts_with("REDIS_CA_FILE"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn resp3_is_requested_unless_chosen() {
        assert_eq!(
            resp3("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379?protocol=resp3"
        );
        assert_eq!(resp3("redis://h/0?db=1"), "redis://h/0?db=1&protocol=resp3");
        assert_eq!(
            resp3("redis://h?protocol=resp2"),
            "redis://h?protocol=resp2"
        );
    }
}
