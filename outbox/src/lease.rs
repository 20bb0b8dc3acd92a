//! Per-aggregate leases, so that several relays share one outbox and each
//! aggregate has at most one deliverer at a time; a crashed holder's lease
//! simply runs out.

use crate::error::Result;
use crate::transaction::is_duplicate_key;
use bson::{DateTime, Document, doc};
use mongodb::Collection;
use std::time::Duration;

#[derive(Clone)]
pub struct Leases {
    collection: Collection<Document>,
    owner: String,
    length: Duration,
}

impl Leases {
    pub fn new(collection: Collection<Document>, owner: String, length: Duration) -> Self {
        Self {
            collection,
            owner,
            length,
        }
    }

    pub fn length(&self) -> Duration {
        self.length
    }

    /// Takes the lease on `aggregate` if it is free or expired. Returns false
    /// when another relay holds it.
    pub async fn acquire(&self, aggregate: &str) -> Result<bool> {
        let now = DateTime::now();
        let until = DateTime::from_millis(now.timestamp_millis() + self.length.as_millis() as i64);
        // Matching only a free lease means a held one makes the upsert insert
        // a second document with the same _id, which the server refuses.
        let result = self
            .collection
            .update_one(
                doc! {
                    "_id": aggregate,
                    "$or": [ { "leaseUntil": { "$lt": now } }, { "owner": &self.owner } ],
                },
                doc! { "$set": { "owner": &self.owner, "leaseUntil": until } },
            )
            .upsert(true)
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn release(&self, aggregate: &str) -> Result<()> {
        self.collection
            .delete_one(doc! { "_id": aggregate, "owner": &self.owner })
            .await?;
        Ok(())
    }
}
