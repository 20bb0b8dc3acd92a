//! The two ways the Socket.IO server runs: alone (in-memory adapter) or as
//! one of several instances sharing rooms through Redis pub/sub
//! (socketioxide-redis). The adapter is a type parameter of socketioxide's
//! handles, so each handle here is an enum over the two.

use axum::Router;
use outbox::DeliveryError;
use serde::Serialize;
use socketioxide::adapter::{Emitter, LocalAdapter};
use socketioxide::layer::SocketIoLayer;
use socketioxide::{BroadcastError, SocketIo};
use socketioxide_redis::CustomRedisAdapter;

/// The Redis adapter on this crate's reconnecting driver.
pub(crate) type Redis = CustomRedisAdapter<Emitter, super::redis::ReconnectingDriver>;

/// The server handle, used to emit and to close.
#[derive(Clone)]
pub(crate) enum Io {
    Local(SocketIo<LocalAdapter>),
    Redis(SocketIo<Redis>),
}

/// The tower layer that answers `/socket.io/` on the service's port.
#[derive(Clone)]
pub(crate) enum Layer {
    Local(SocketIoLayer<LocalAdapter>),
    Redis(SocketIoLayer<Redis>),
}

impl Io {
    /// Emits `event` with `args` (a tuple: one Socket.IO argument per
    /// element) to every socket in `room`, on every instance.
    pub(crate) async fn emit<T: Serialize + ?Sized>(
        &self,
        room: &str,
        event: &str,
        args: &T,
    ) -> Result<(), DeliveryError> {
        let result = match self {
            Io::Local(io) => match io.of("/") {
                Some(ns) => ns.to(room.to_owned()).emit(event, args).await,
                None => return Err(no_namespace()),
            },
            Io::Redis(io) => match io.of("/") {
                Some(ns) => ns.to(room.to_owned()).emit(event, args).await,
                None => return Err(no_namespace()),
            },
        };
        result.map_err(|error| match error {
            // The arguments come from a stored record: serializing them will
            // fail the same way every time.
            BroadcastError::Serialize(e) => DeliveryError::Permanent(e.to_string()),
            // Redis unreachable, or a local socket closed or full: retrying
            // may succeed, and clients drop what they already received.
            other => DeliveryError::Transient(other.to_string()),
        })
    }

    /// Disconnects every socket of this instance (they reconnect elsewhere).
    pub(crate) async fn close(&self) {
        match self {
            Io::Local(io) => io.close().await,
            Io::Redis(io) => io.close().await,
        }
    }
}

impl Layer {
    pub(crate) fn attach<S>(&self, router: Router<S>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        match self {
            Layer::Local(layer) => router.layer(layer.clone()),
            Layer::Redis(layer) => router.layer(layer.clone()),
        }
    }
}

fn no_namespace() -> DeliveryError {
    DeliveryError::Transient("the default namespace is not registered yet".into())
}
