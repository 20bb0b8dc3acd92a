//! The inbox: a consumed message has its effect once, however often it arrives.
//!
//! The entry is written in the same transaction as the effect it guards, so
//! "recorded" and "applied" can never disagree.

use crate::error::Result;
use crate::store::create_collection;
use crate::transaction::is_duplicate_key;
use bson::{DateTime, Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{ClientSession, Collection, Database, IndexModel};
use std::time::Duration;

#[derive(Clone)]
pub struct Inbox {
    entries: Collection<Document>,
    retention: Duration,
}

impl Inbox {
    /// `retention` must outlast any redelivery window of the producers (the
    /// broker's, Flutterwave's webhook retries): after it, a duplicate would
    /// be applied again.
    pub fn new(db: &Database, retention: Duration) -> Self {
        Self {
            entries: db.collection("inbox"),
            retention,
        }
    }

    pub async fn ensure_schema(&self) -> Result<()> {
        let db = self
            .entries
            .client()
            .database(self.entries.namespace().db.as_str());
        create_collection(&db, "inbox").await?;
        self.entries
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! { "consumer": 1, "messageId": 1 })
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "receivedAt": 1 })
                    .options(IndexOptions::builder().expire_after(self.retention).build())
                    .build(),
            ])
            .await?;
        Ok(())
    }

    /// Records `message_id` for `consumer` inside the caller's transaction.
    /// Returns `false` when it was seen before: the caller then does nothing
    /// and lets the transaction end. A concurrent first delivery shows up as a
    /// write conflict, which the transaction loop retries, and the retry then
    /// finds the entry.
    pub async fn record(
        &self,
        session: &mut ClientSession,
        consumer: &str,
        message_id: &str,
        details: Document,
    ) -> Result<bool> {
        let key = doc! { "consumer": consumer, "messageId": message_id };
        if self
            .entries
            .find_one(key.clone())
            .session(&mut *session)
            .await?
            .is_some()
        {
            return Ok(false);
        }
        let mut entry = key;
        entry.insert("receivedAt", DateTime::now());
        entry.insert("details", details);
        match self.entries.insert_one(entry).session(&mut *session).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether an entry exists (outside any transaction), for checks and tests.
    pub async fn contains(&self, consumer: &str, message_id: &str) -> Result<bool> {
        Ok(self
            .entries
            .find_one(doc! { "consumer": consumer, "messageId": message_id })
            .await?
            .is_some())
    }

    pub async fn count(&self, consumer: &str) -> Result<u64> {
        Ok(self
            .entries
            .count_documents(doc! { "consumer": consumer })
            .await?)
    }
}
