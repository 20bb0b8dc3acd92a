//! The outbox collections: staging inside a caller's transaction, schema,
//! parked records (listing and replay) and backlog statistics.

use crate::error::{Error, Result};
use crate::lease::IN_CHUNK;
use crate::record::{NewRecord, OutboxRecord, RecordStatus};
use bson::{DateTime, Document, doc};
use futures::TryStreamExt;
use futures::future::try_join_all;
use mongodb::options::{FindOneAndUpdateOptions, IndexOptions, ReturnDocument};
use mongodb::{ClientSession, Collection, Database, IndexModel};
use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::time::Duration;

/// Set on a record once it waits on purpose (`DeliveryError::NotYet`) and
/// kept through failed look-ups, cleared when it is parked or published; [`Outbox::stats`]
/// counts pending ones apart and leaves them out of the oldest pending age.
pub const DEFERRED: &str = "deferred";

/// Server code for "collection already exists".
const NAMESPACE_EXISTS: i32 = 48;

/// Names and retention of the outbox collections.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// Records awaiting or past delivery.
    pub records: String,
    /// One counter per aggregate, giving each record its `seq`.
    pub sequences: String,
    /// One lease per aggregate being delivered.
    pub leases: String,
    /// How long published records are kept (TTL on `publishedAt`).
    pub retention: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            records: "outbox".into(),
            sequences: "outbox_sequences".into(),
            leases: "outbox_leases".into(),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Backlog figures for metrics and readiness.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboxStats {
    pub pending: u64,
    pub parked: u64,
    /// Age of the oldest pending record not waiting on purpose, zero when
    /// none is pending.
    pub oldest_pending_age: Duration,
    /// Pending records waiting on purpose (marked [`DEFERRED`]).
    pub deferred: u64,
    /// Age of the oldest of them, zero when none waits: something that has
    /// waited for days may need a person even though nothing failed.
    pub oldest_deferred_age: Duration,
}

/// Handle on the outbox collections of one database.
#[derive(Clone)]
pub struct Outbox {
    pub(crate) records: Collection<OutboxRecord>,
    sequences: Collection<Document>,
    pub(crate) leases: Collection<Document>,
    config: OutboxConfig,
}

impl Outbox {
    pub fn new(db: &Database) -> Self {
        Self::with_config(db, OutboxConfig::default())
    }

    pub fn with_config(db: &Database, config: OutboxConfig) -> Self {
        Self {
            records: db.collection(&config.records),
            sequences: db.collection(&config.sequences),
            leases: db.collection(&config.leases),
            config,
        }
    }

    /// Creates the collections and indexes. Transactions cannot create
    /// collections implicitly on every server, so this runs at start-up.
    pub async fn ensure_schema(&self) -> Result<()> {
        let db = self
            .records
            .client()
            .database(self.records.namespace().db.as_str());
        for name in [
            &self.config.records,
            &self.config.sequences,
            &self.config.leases,
        ] {
            create_collection(&db, name).await?;
        }
        let indexes = [
            // The relay's scan: due pending records, oldest first.
            IndexModel::builder()
                .keys(doc! { "status": 1, "nextAttemptAt": 1 })
                .build(),
            // Records waiting on purpose, for `stats`. Sparse on the mark
            // alone, as only records that ever waited carry it: a compound
            // sparse index would take every record, which has `createdAt`.
            // The few it holds are sorted by age in memory.
            IndexModel::builder()
                .keys(doc! { DEFERRED: 1 })
                .options(IndexOptions::builder().sparse(true).build())
                .build(),
            // Per-aggregate delivery in order; unique so a seq is never reused.
            IndexModel::builder()
                .keys(doc! { "aggregateId": 1, "seq": 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
            // Retention: only published records carry `publishedAt`, so
            // pending and parked ones are never expired.
            IndexModel::builder()
                .keys(doc! { "publishedAt": 1 })
                .options(
                    IndexOptions::builder()
                        .expire_after(self.config.retention)
                        .build(),
                )
                .build(),
        ];
        self.records.create_indexes(indexes).await?;
        // Leases of a crashed instance are released by expiry anyway; the TTL
        // only keeps the collection small.
        self.leases
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "leaseUntil": 1 })
                    .options(
                        IndexOptions::builder()
                            .expire_after(Duration::from_secs(3600))
                            .build(),
                    )
                    .build(),
            )
            .await?;
        Ok(())
    }

    /// Stages records inside the caller's transaction; returns their message
    /// ids in the order given. Records of one aggregate get consecutive `seq`s.
    pub async fn stage(
        &self,
        session: &mut ClientSession,
        records: Vec<NewRecord>,
    ) -> Result<Vec<String>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        for record in &records {
            *counts.entry(record.aggregate_id.as_str()).or_default() += 1;
        }
        let mut next_seq: BTreeMap<String, i64> = BTreeMap::new();
        for (aggregate, count) in counts {
            let counter = self
                .sequences
                .find_one_and_update(doc! { "_id": aggregate }, doc! { "$inc": { "seq": count } })
                .with_options(
                    FindOneAndUpdateOptions::builder()
                        .upsert(true)
                        .return_document(ReturnDocument::After)
                        .build(),
                )
                .session(&mut *session)
                .await?
                .ok_or_else(|| Error::NotFound(format!("sequence of {aggregate}")))?;
            let last = counter
                .get_i64("seq")
                .or_else(|_| counter.get_i32("seq").map(i64::from))
                .map_err(|e| Error::NotFound(e.to_string()))?;
            next_seq.insert(aggregate.to_string(), last - count + 1);
        }
        let now = DateTime::now();
        let mut ids = Vec::with_capacity(records.len());
        let mut docs = Vec::with_capacity(records.len());
        for record in records {
            let seq = next_seq
                .get_mut(&record.aggregate_id)
                .ok_or_else(|| Error::NotFound(record.aggregate_id.clone()))?;
            let message_id = uuid::Uuid::now_v7().to_string();
            ids.push(message_id.clone());
            docs.push(OutboxRecord {
                message_id,
                aggregate_id: record.aggregate_id,
                seq: *seq,
                destination: record.destination,
                payload: serde_json::to_string(&record.payload)?,
                headers: record.headers,
                correlation_id: record.correlation_id,
                status: RecordStatus::Pending,
                attempts: 0,
                next_attempt_at: now,
                last_error: None,
                created_at: now,
                published_at: None,
                parked_at: None,
            });
            *seq += 1;
        }
        self.records
            .insert_many(docs)
            .session(&mut *session)
            .await?;
        Ok(ids)
    }

    /// Marks confirmed records published, in a few parallel writes. Only
    /// pending records change, so marking twice keeps the first `publishedAt`.
    pub async fn mark_published(&self, ids: &[String]) -> Result<()> {
        let at = DateTime::now();
        let updates = ids.chunks(IN_CHUNK).map(|chunk| {
            self.records
                .update_many(
                    doc! { "_id": { "$in": chunk }, "status": "pending" },
                    // The mark goes too: the stats read marked records
                    // through a sparse index, which should hold only those
                    // still waiting.
                    doc! {
                        "$set": { "status": "published", "publishedAt": at },
                        "$unset": { DEFERRED: "" },
                    },
                )
                .into_future()
        });
        try_join_all(updates).await?;
        Ok(())
    }

    /// Parked records, oldest first.
    pub async fn parked(&self, limit: i64) -> Result<Vec<OutboxRecord>> {
        let cursor = self
            .records
            .find(doc! { "status": "parked" })
            .sort(doc! { "_id": 1 })
            .limit(limit)
            .await?;
        Ok(cursor.try_collect().await?)
    }

    /// Every record of one aggregate, in delivery order.
    pub async fn records_of(&self, aggregate_id: &str) -> Result<Vec<OutboxRecord>> {
        let cursor = self
            .records
            .find(doc! { "aggregateId": aggregate_id })
            .sort(doc! { "seq": 1 })
            .await?;
        Ok(cursor.try_collect().await?)
    }

    /// Puts one parked record back in line with fresh attempts.
    pub async fn replay(&self, message_id: &str) -> Result<()> {
        let result = self
            .records
            .update_one(
                doc! { "_id": message_id, "status": "parked" },
                replay_update(),
            )
            .await?;
        if result.matched_count == 0 {
            return Err(Error::NotFound(message_id.to_string()));
        }
        Ok(())
    }

    /// Puts every parked record back in line; returns how many.
    pub async fn replay_all(&self) -> Result<u64> {
        let result = self
            .records
            .update_many(doc! { "status": "parked" }, replay_update())
            .await?;
        Ok(result.modified_count)
    }

    /// Backlog figures, read in one round of concurrent queries: a scrape
    /// or a readiness probe waits for the slowest, not for their sum.
    pub async fn stats(&self) -> Result<OutboxStats> {
        let waiting = doc! { DEFERRED: true, "status": "pending" };
        // Only the few records that waited carry the mark: its own index.
        let by_mark = doc! { DEFERRED: 1 };
        let (pending, parked, oldest, deferred, oldest_deferred) = futures::try_join!(
            self.records
                .count_documents(doc! { "status": "pending" })
                .into_future(),
            self.records
                .count_documents(doc! { "status": "parked" })
                .into_future(),
            // A record waiting on purpose (`NotYet`) is not late: left out,
            // so that a refund settling for days does not read as a stuck
            // outbox.
            self.records
                .find_one(doc! { "status": "pending", DEFERRED: { "$ne": true } })
                .sort(doc! { "status": 1, "nextAttemptAt": 1 })
                .into_future(),
            self.records
                .count_documents(waiting.clone())
                .hint(mongodb::options::Hint::Keys(by_mark.clone()))
                .into_future(),
            self.records
                .find_one(waiting)
                .sort(doc! { "createdAt": 1 })
                .hint(mongodb::options::Hint::Keys(by_mark))
                .into_future(),
        )?;
        let age = |r: Option<OutboxRecord>| {
            r.map(|r| {
                let age = DateTime::now().timestamp_millis() - r.created_at.timestamp_millis();
                Duration::from_millis(age.max(0) as u64)
            })
            .unwrap_or_default()
        };
        Ok(OutboxStats {
            pending,
            parked,
            oldest_pending_age: age(oldest),
            deferred,
            oldest_deferred_age: age(oldest_deferred),
        })
    }
}

fn replay_update() -> Document {
    doc! {
        "$set": { "status": "pending", "attempts": 0, "nextAttemptAt": DateTime::now() },
        "$unset": { "parkedAt": "" },
    }
}

/// Creates a collection unless it exists.
pub async fn create_collection(db: &Database, name: &str) -> Result<()> {
    match db.create_collection(name).await {
        Ok(()) => Ok(()),
        Err(e) if crate::transaction::server_code(&e) == Some(NAMESPACE_EXISTS) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
