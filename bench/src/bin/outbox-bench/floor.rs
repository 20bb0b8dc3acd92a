//! The database's floor: what any outbox that keeps a state per record must
//! ask of the database (commit the record, read it once, mark it published
//! once), timed with no broker, no leases and no relay. No relay can beat
//! these rates on the same server, so the end-to-end and drain rates are
//! also held against them.

use crate::BoxError;
use crate::harness::{Bench, Pipeline};
use crate::phases::{Meter, Throughput, produce_until, stage_backlog};
use crate::sys::Watched;
use bson::{DateTime, Document, doc};
use futures::TryStreamExt;
use futures::future::try_join_all;
use mongodb::Collection;
use outbox::Outbox;
use outbox::lease::IN_CHUNK;
use outbox::store::OutboxConfig;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Reads due records oldest first, `scan_limit` at a time (the relay's
/// scan, but whole records, as a relay needs them to publish), and marks
/// each batch published with the relay's own write, until a read finds
/// nothing due. How many were marked. Under load few records are pending
/// at a time, so the scan stays small.
async fn read_and_mark(
    records: &Collection<Document>,
    outbox: &Outbox,
    scan_limit: i64,
) -> Result<u64, BoxError> {
    let mut marked = 0;
    loop {
        let due: Vec<Document> = records
            .find(doc! { "status": "pending", "nextAttemptAt": { "$lte": DateTime::now() } })
            .sort(doc! { "status": 1, "nextAttemptAt": 1 })
            .limit(scan_limit)
            .batch_size(scan_limit.clamp(1, u32::MAX.into()) as u32)
            .await?
            .try_collect()
            .await?;
        if due.is_empty() {
            return Ok(marked);
        }
        let ids: Vec<String> = due
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
            .collect();
        outbox.mark_published(&ids).await?;
        marked += ids.len() as u64;
    }
}

fn scan_limit(bench: &Bench) -> i64 {
    bench.relay_config("floor").scan_limit
}

/// Row 1b: the producers of row 1 commit while one loop reads and marks
/// what they committed; records committed and marked per second, from the
/// first commit to the last mark.
pub async fn commit_and_mark(bench: &Bench, watched: &Watched) -> Result<Throughput, BoxError> {
    let (db, outbox) = bench.database("floor_commit").await?;
    let records = db.collection::<Document>(&OutboxConfig::default().records);
    let pipeline = Pipeline::without_relay(db.collection("orders"), outbox.clone());
    let producing = Arc::new(AtomicBool::new(true));
    let limit = scan_limit(bench);
    let meter = Meter::begin(bench, watched);
    let started = Instant::now();
    let marker = {
        let producing = producing.clone();
        tokio::spawn(async move {
            let mut marked = 0;
            loop {
                // Read before the pass: once the producers are done, one
                // more pass sees every commit.
                let last_pass = !producing.load(Ordering::Acquire);
                let n = read_and_mark(&records, &outbox, limit).await?;
                marked += n;
                if last_pass {
                    return Ok::<_, BoxError>(marked);
                }
                if n == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    let committed = produce_until(bench, &pipeline, "floor", started + bench.args.seconds).await;
    producing.store(false, Ordering::Release);
    let marked = marker.await??;
    let elapsed = started.elapsed();
    let committed = committed?.len() as u64;
    if marked != committed {
        return Err(format!("floor: {committed} committed but {marked} marked").into());
    }
    Ok(Throughput {
        count: marked,
        elapsed,
        usage: meter.end(bench, marked),
    })
}

/// Row 1c: `--records` staged as for the drain, then read and marked a
/// round at a time; records per second. The floor is told which
/// aggregates hold the backlog, so it needs no scan: each round reads the
/// pending records of as many aggregates as a relay round holds
/// (`--scan-limit` records) with the relay's own query, and marks them.
pub async fn backlog(bench: &Bench, watched: &Watched) -> Result<Throughput, BoxError> {
    let (db, outbox) = bench.database("floor_backlog").await?;
    let records = db.collection::<Document>(&OutboxConfig::default().records);
    let backlog = stage_backlog(bench, &outbox, "floor").await?;
    let per_round = (scan_limit(bench).max(1) as usize / bench.args.drain_per_aggregate).max(1);
    let meter = Meter::begin(bench, watched);
    let started = Instant::now();
    let mut marked = 0;
    for round in backlog.aggregates.chunks(per_round) {
        let reads = round.chunks(IN_CHUNK).map(|chunk| {
            let records = records.clone();
            async move {
                records
                    .find(doc! { "aggregateId": { "$in": chunk }, "status": "pending" })
                    .sort(doc! { "aggregateId": 1, "seq": 1 })
                    .await?
                    .try_collect::<Vec<Document>>()
                    .await
            }
        });
        let ids: Vec<String> = try_join_all(reads)
            .await?
            .iter()
            .flatten()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
            .collect();
        outbox.mark_published(&ids).await?;
        marked += ids.len() as u64;
    }
    let elapsed = started.elapsed();
    if marked != bench.args.records as u64 {
        return Err(format!("floor: {} staged but {marked} marked", bench.args.records).into());
    }
    Ok(Throughput {
        count: marked,
        elapsed,
        usage: meter.end(bench, marked),
    })
}
