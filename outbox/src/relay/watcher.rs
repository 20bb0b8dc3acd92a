//! Wake-ups from the outbox change stream, for inserts by any instance.

use super::Waker;
use crate::store::Outbox;
use bson::doc;
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Change events asked for per `getMore`; a watcher handed a full batch is
/// behind and starts over at the present.
const CHANGE_BATCH: usize = 1024;

/// Turns outbox inserts (from any instance) into wake-ups. If the server
/// cannot open a change stream, polling alone carries on.
///
/// One round covers every insert committed before its scan, so the events
/// already in hand are taken together, and the watcher pauses for
/// `coalesce` before it wakes the relay and asks for more: inserts pile up
/// meanwhile and come back in one `getMore` instead of one each. If a scan
/// from the oldest due record began during the pause (a local commit woke
/// the relay, as it does for every commit of this process), the wake-up is
/// not needed and is not given.
///
/// Old events are worth nothing once a wake-up is given, and the server
/// pays for every one it replays: a watcher a whole batch behind opens a
/// new stream at the present, and while the relay waits out a broker
/// outage (when it ignores wake-ups) the watcher closes its stream and
/// opens a new one afterwards.
pub(super) async fn watch_inserts(
    outbox: Outbox,
    waker: Waker,
    coalesce: Duration,
    mut outage: watch::Receiver<bool>,
    full_scans: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    // Opening first and then waking leaves no insert uncovered: the round
    // woken starts after the stream does.
    let mut wake_when_open = false;
    while !cancel.is_cancelled() {
        if *outage.borrow_and_update() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                over = outage.wait_for(|down| !down) => if over.is_err() { return },
            }
            wake_when_open = true;
        }
        let stream = outbox
            .records
            .watch()
            .pipeline([doc! { "$match": { "operationType": "insert" } }])
            .batch_size(CHANGE_BATCH as u32)
            .await;
        match stream {
            Ok(stream) => {
                if std::mem::take(&mut wake_when_open) {
                    waker.wake();
                }
                let mut batches = stream.ready_chunks(CHANGE_BATCH);
                let behind = loop {
                    let batch = tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = outage.changed() => break true,
                        batch = batches.next() => batch,
                    };
                    let Some(events) = batch else { break false };
                    if events.len() >= CHANGE_BATCH {
                        break true;
                    }
                    if let Some(Err(e)) = events.into_iter().find(|e| e.is_err()) {
                        tracing::debug!(error = %e, "outbox change stream ended");
                        break false;
                    }
                    let scans = full_scans.load(Ordering::Acquire);
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(coalesce) => {}
                    }
                    if full_scans.load(Ordering::Acquire) == scans {
                        waker.wake();
                    }
                };
                wake_when_open = true;
                // Behind, or resting for an outage: a fresh stream at once
                // (after the outage, if there is one). Ended: as below.
                if behind {
                    continue;
                }
            }
            Err(e) => tracing::debug!(error = %e, "outbox change stream unavailable; polling"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
