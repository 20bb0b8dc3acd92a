//! The floor of the design the outbox did not take (rows 1d and 1e): the
//! outbox as a log read in commit order through the change stream, each
//! record published with a confirm, and one cursor write (the stream's
//! resume token, off the publishing path) per batch instead of a mark per
//! record. It is that design's happy path only (no failures, no leases,
//! one reader), so it bounds what that design could reach on the same
//! server.

use crate::BoxError;
use crate::harness::{Bench, Confirms, Pipeline, Tap, confirm_channel, lock};
use crate::phases::{Meter, Throughput, latencies, produce_until, stage_backlog};
use crate::sys::Watched;
use bson::{Document, doc};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use lapin::options::BasicPublishOptions;
use lapin::{Channel, Confirmation};
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::{ChangeStreamEvent, ResumeToken};
use mongodb::{Collection, Database};
use outbox::store::OutboxConfig;
use outbox::{Destination, OutboxRecord};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// At most one cursor write per this interval while records flow, and one
/// at the end: the log design's whole per-batch database cost.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Longest a follower may take (every phase is far shorter).
const FOLLOW_LIMIT: Duration = Duration::from_secs(300);

/// Records read ahead of the publisher: two of the stream's batches.
const READ_AHEAD: usize = 2 * STREAM_BATCH;
const STREAM_BATCH: usize = 1000;

/// What one follower did.
pub struct Followed {
    pub confirms: Arc<Confirms>,
    /// Cursor writes, for the report (records per cursor write).
    pub checkpoints: u64,
}

/// Rows 1d and 1e: the result and how many records shared each cursor write.
pub struct LogFloor {
    pub throughput: Throughput,
    pub records_per_checkpoint: f64,
    /// From resuming the stream to the first confirm (1e only).
    pub to_first: Duration,
    /// Commit → confirm under load (1d only).
    pub latencies: Vec<Duration>,
    pub lost: u64,
    pub out_of_order: u64,
}

async fn inserts(
    records: &Collection<Document>,
    after: Option<ResumeToken>,
) -> Result<ChangeStream<ChangeStreamEvent<Document>>, BoxError> {
    Ok(records
        .watch()
        .pipeline([doc! { "$match": { "operationType": "insert" } }])
        .batch_size(STREAM_BATCH as u32)
        .max_await_time(Duration::from_millis(100))
        .resume_after(after)
        .await?)
}

async fn checkpoint(cursor: &Collection<Document>, token: &ResumeToken) -> Result<(), BoxError> {
    cursor
        .update_one(
            doc! { "_id": "log" },
            doc! { "$set": { "resumeToken": bson::to_bson(token)? } },
        )
        .upsert(true)
        .await?;
    Ok(())
}

/// Reads the stream in its own task, so that the next batch is fetched
/// while this one is published: each record with the resume token of its
/// event.
fn read_ahead(
    mut stream: ChangeStream<ChangeStreamEvent<Document>>,
    ahead: usize,
) -> mpsc::Receiver<Result<(OutboxRecord, ResumeToken), BoxError>> {
    let (tx, rx) = mpsc::channel(ahead);
    tokio::spawn(async move {
        loop {
            // Stops when the follower is done, not at the next insert:
            // an idle stream would go on asking the server for more.
            let next = tokio::select! {
                _ = tx.closed() => return,
                next = stream.next() => next,
            };
            let read = next
                .ok_or_else(|| BoxError::from("the change stream ended"))
                .and_then(|event| {
                    let event = event?;
                    let document = event
                        .full_document
                        .ok_or("an insert without its document")?;
                    Ok((bson::from_document(document)?, event.id))
                });
            let failed = read.is_err();
            if tx.send(read).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// Publishes every record inserted into the stream, `window` unconfirmed
/// at a time, in stream order; writes the resume token of the last
/// confirmed record at most every [`CHECKPOINT_EVERY`]. Stops once
/// `target` is set and that many are confirmed.
async fn follow_all(
    stream: ChangeStream<ChangeStreamEvent<Document>>,
    channel: Channel,
    cursor: Collection<Document>,
    window: usize,
    mut target: watch::Receiver<Option<u64>>,
) -> Result<Followed, BoxError> {
    let mut events = read_ahead(stream, READ_AHEAD);
    let confirms = Arc::new(Confirms::default());
    let mut in_flight = FuturesOrdered::new();
    let (mut confirmed, mut checkpoints) = (0u64, 0u64);
    let mut unsaved: Option<ResumeToken> = None;
    // One cursor write at a time, off the publishing path, so that a newer
    // token is never overwritten by an older one.
    let mut saving: Option<JoinHandle<Result<(), BoxError>>> = None;
    let mut saved_at = Instant::now();
    loop {
        let wanted = *target.borrow();
        if wanted.is_some_and(|t| confirmed >= t) && in_flight.is_empty() {
            break;
        }
        // Nothing past the target: records beyond it are not this phase's.
        let room = in_flight.len() < window
            && wanted.is_none_or(|t| confirmed + (in_flight.len() as u64) < t);
        tokio::select! {
            read = events.recv(), if room => {
                let (record, token) = read.ok_or("the change stream reader stopped")??;
                let Destination::Amqp { exchange, routing_key } = &record.destination else {
                    return Err("the log floor publishes AMQP records only".into());
                };
                let confirm = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        routing_key.as_str().into(),
                        BasicPublishOptions::default(),
                        record.payload.as_bytes(),
                        outbox::publisher::properties(&record),
                    )
                    .await?;
                in_flight.push_back(async move { (confirm.await, record.message_id, token) });
            }
            Some((confirmation, id, token)) = in_flight.next(), if !in_flight.is_empty() => {
                if let Confirmation::Nack(_) = confirmation? {
                    return Err(format!("the broker nacked {id}").into());
                }
                confirms.note(&id);
                confirmed += 1;
                unsaved = Some(token);
                if saving.as_ref().is_some_and(JoinHandle::is_finished)
                    && let Some(done) = saving.take()
                {
                    done.await??;
                }
                if saving.is_none()
                    && saved_at.elapsed() >= CHECKPOINT_EVERY
                    && let Some(token) = unsaved.take()
                {
                    let cursor = cursor.clone();
                    saving = Some(tokio::spawn(async move { checkpoint(&cursor, &token).await }));
                    checkpoints += 1;
                    saved_at = Instant::now();
                }
            }
            changed = target.changed() => changed?,
        }
    }
    if let Some(done) = saving {
        done.await??;
    }
    if let Some(token) = unsaved {
        checkpoint(&cursor, &token).await?;
        checkpoints += 1;
    }
    Ok(Followed {
        confirms,
        checkpoints,
    })
}

/// [`follow_all`], given up after [`FOLLOW_LIMIT`] rather than waiting
/// for ever for a record the stream does not show.
async fn follow(
    stream: ChangeStream<ChangeStreamEvent<Document>>,
    channel: Channel,
    cursor: Collection<Document>,
    window: usize,
    target: watch::Receiver<Option<u64>>,
) -> Result<Followed, BoxError> {
    tokio::time::timeout(
        FOLLOW_LIMIT,
        follow_all(stream, channel, cursor, window, target),
    )
    .await
    .map_err(|_| format!("the log floor did not confirm every record within {FOLLOW_LIMIT:?}"))?
}

fn collections(db: &Database) -> (Collection<Document>, Collection<Document>) {
    (
        db.collection(&OutboxConfig::default().records),
        db.collection("outbox_cursor"),
    )
}

/// What the tap says about `expected` records: (lost, out of order).
async fn delivered(tap: Tap, expected: usize) -> (u64, u64) {
    tap.wait_for(expected, Duration::from_secs(60)).await;
    let lost = expected.saturating_sub(tap.distinct()) as u64;
    let out_of_order = lock(&tap.state).out_of_order;
    tap.stop().await;
    (lost, out_of_order)
}

/// Row 1d: the producers of row 1 commit while one follower publishes
/// what the change stream shows them; committed and confirmed per second,
/// from the first commit to the last confirm.
pub async fn commit_and_follow(bench: &Bench, watched: &Watched) -> Result<LogFloor, BoxError> {
    let (db, outbox) = bench.database("log_commit").await?;
    let (records, cursor) = collections(&db);
    let pipeline = Pipeline::without_relay(db.collection("orders"), outbox);
    let tap = Tap::start(bench, "log").await?;
    let (connection, channel) = confirm_channel(bench).await?;
    // Opened before the first commit, so it sees every one.
    let stream = inserts(&records, None).await?;
    let (target, until) = watch::channel(None);
    let follower = tokio::spawn(follow(stream, channel, cursor, bench.args.window, until));
    let meter = Meter::begin(bench, watched);
    let started = Instant::now();
    let committed = produce_until(bench, &pipeline, "log", started + bench.args.seconds).await;
    // Stops the follower even when producing failed.
    target.send_replace(Some(committed.as_ref().map_or(0, |c| c.len() as u64)));
    let followed = follower.await??;
    let committed = committed?;
    let count = committed.len() as u64;
    let last = followed.confirms.span().map_or(started, |(_, last)| last);
    let usage = meter.end(bench, count);
    let _ = connection.close(200, "done".into()).await;
    let (lost, out_of_order) = delivered(tap, committed.len()).await;
    Ok(LogFloor {
        latencies: latencies(&committed, &followed.confirms),
        throughput: Throughput {
            count,
            elapsed: last.duration_since(started),
            usage,
        },
        records_per_checkpoint: count as f64 / followed.checkpoints.max(1) as f64,
        to_first: Duration::ZERO,
        lost,
        out_of_order,
    })
}

/// Row 1e: `--records` staged as for the drain (the broker reachable but
/// nobody reading), then published from the stream, resumed from before
/// the first of them; records per second from the first confirm to the
/// last, as in the drain.
pub async fn backlog(bench: &Bench, watched: &Watched) -> Result<LogFloor, BoxError> {
    let (db, outbox) = bench.database("log_backlog").await?;
    let (records, cursor) = collections(&db);
    let tap = Tap::start(bench, "logb").await?;
    let start = inserts(&records, None)
        .await?
        .resume_token()
        .ok_or("the server gave the change stream no resume token")?;
    stage_backlog(bench, &outbox, "logb").await?;
    let (connection, channel) = confirm_channel(bench).await?;
    let total = bench.args.records as u64;
    let meter = Meter::begin(bench, watched);
    let resumed = Instant::now();
    let stream = inserts(&records, Some(start)).await?;
    let (_target, until) = watch::channel(Some(total));
    let followed = follow(stream, channel, cursor, bench.args.window, until).await?;
    let usage = meter.end(bench, total);
    let (first, last) = followed
        .confirms
        .span()
        .ok_or("the log floor confirmed nothing")?;
    let _ = connection.close(200, "done".into()).await;
    let (lost, out_of_order) = delivered(tap, bench.args.records).await;
    Ok(LogFloor {
        throughput: Throughput {
            count: total,
            elapsed: last.duration_since(first),
            usage,
        },
        records_per_checkpoint: total as f64 / followed.checkpoints.max(1) as f64,
        to_first: first.duration_since(resumed),
        latencies: Vec::new(),
        lost,
        out_of_order,
    })
}
