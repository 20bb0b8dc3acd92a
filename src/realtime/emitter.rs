//! Delivery of socket records: the relay hands each `Destination::Socket`
//! record to [`SocketEmitter`], which emits it to its room. With the Redis
//! adapter the emit also reaches the room's sockets on every other instance.

use super::adapter::Io;
use super::records::NotificationPayload;
use outbox::handler::HandlerFuture;
use outbox::{DeliveryError, Destination, Handler, OutboxRecord};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The outbox handler registered under [`Destination::SOCKET_HANDLER`].
#[derive(Clone)]
pub struct SocketEmitter {
    io: Io,
    faults: EmitFaults,
}

impl SocketEmitter {
    pub(crate) fn new(io: Io, faults: EmitFaults) -> Self {
        Self { io, faults }
    }

    async fn emit(&self, record: &OutboxRecord) -> Result<(), DeliveryError> {
        let Destination::Socket { room, event } = &record.destination else {
            return Err(DeliveryError::Permanent(format!(
                "not a socket record: {}",
                record.destination.label()
            )));
        };
        // The payload was written by this service; one it cannot read will
        // never become readable, so an operator has to look at it.
        let payload: NotificationPayload = serde_json::from_str(&record.payload)
            .map_err(|e| DeliveryError::Permanent(format!("unreadable socket payload: {e}")))?;
        if self.faults.take(Fault::Unavailable) {
            return Err(DeliveryError::Unavailable {
                reason: "injected: this instance does not emit".into(),
                retry_after: Duration::from_millis(50),
            });
        }
        if self.faults.take(Fault::BeforeEmit) {
            return Err(DeliveryError::Transient(
                "injected fault before emit".into(),
            ));
        }
        self.io
            .emit(room, event, &(payload.order, payload.notification))
            .await?;
        if self.faults.take(Fault::AfterEmit) {
            return Err(DeliveryError::Transient("injected fault after emit".into()));
        }
        Ok(())
    }
}

impl Handler for SocketEmitter {
    fn handle<'a>(&'a self, record: &'a OutboxRecord) -> HandlerFuture<'a> {
        Box::pin(self.emit(record))
    }
}

/// Where an injected failure strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing is emitted and the delivery fails: the relay retries.
    BeforeEmit,
    /// The emit happens, then the delivery fails as if the process had died
    /// before marking the record published: the relay emits it again, which
    /// is the duplicate clients must drop.
    AfterEmit,
    /// This instance declines to emit, without counting an attempt against
    /// the record, and asks for a quick retry: another instance's relay
    /// takes the record (how a test proves that an emit crossed instances).
    Unavailable,
}

/// Failure injection for the integration tests and the chaos suite: both
/// need to make a real delivery fail at a chosen point. Inert unless armed.
#[derive(Clone, Default)]
pub struct EmitFaults {
    before: Arc<AtomicU32>,
    after: Arc<AtomicU32>,
    unavailable: Arc<AtomicU32>,
}

impl EmitFaults {
    /// Makes the next `times` deliveries fail at `fault` (`u32::MAX`: until cleared).
    pub fn inject(&self, fault: Fault, times: u32) {
        self.counter(fault).store(times, Ordering::SeqCst);
    }

    pub fn clear(&self) {
        self.before.store(0, Ordering::SeqCst);
        self.after.store(0, Ordering::SeqCst);
        self.unavailable.store(0, Ordering::SeqCst);
    }

    /// Whether this delivery fails at `fault`; uses up one armed failure.
    fn take(&self, fault: Fault) -> bool {
        self.counter(fault)
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| match left {
                0 => None,
                u32::MAX => Some(u32::MAX),
                n => Some(n - 1),
            })
            .is_ok()
    }

    fn counter(&self, fault: Fault) -> &AtomicU32 {
        match fault {
            Fault::BeforeEmit => &self.before,
            Fault::AfterEmit => &self.after,
            Fault::Unavailable => &self.unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_used_up_unless_permanent() {
        let faults = EmitFaults::default();
        assert!(!faults.take(Fault::BeforeEmit));
        faults.inject(Fault::AfterEmit, 2);
        assert!(!faults.take(Fault::BeforeEmit));
        assert!(faults.take(Fault::AfterEmit));
        assert!(faults.take(Fault::AfterEmit));
        assert!(!faults.take(Fault::AfterEmit));
        faults.inject(Fault::BeforeEmit, u32::MAX);
        for _ in 0..5 {
            assert!(faults.take(Fault::BeforeEmit));
        }
        faults.clear();
        assert!(!faults.take(Fault::BeforeEmit));
    }
}
