//! Per-aggregate leases, so that several relays share one outbox and each
//! aggregate has at most one deliverer at a time; a crashed holder's lease
//! simply runs out.
//!
//! A relay round claims and releases all its aggregates together, in a
//! constant number of commands however many there are. None of these
//! writes is a retryable write: each is idempotent or checked afterwards,
//! and the server would otherwise keep a retry record for every one (on
//! the Python SecantusDB that bookkeeping costs more than the write).

use crate::error::{Error, Result};
use crate::transaction::DUPLICATE_KEY;
use bson::{Bson, DateTime, Document, doc};
use futures::TryStreamExt;
use futures::future::try_join_all;
use mongodb::{Collection, Database};
use std::collections::HashSet;
use std::time::Duration;

/// Most ids one `$in` carries. The Python SecantusDB matches an `$in` by
/// walking its list for every candidate, so one long list costs the square
/// of its length; several short ones in parallel stay linear.
pub const IN_CHUNK: usize = 64;

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
        Ok(!self
            .acquire_many(&[aggregate.to_string()])
            .await?
            .is_empty())
    }

    /// Takes the leases on those of `aggregates` that are free, expired or
    /// already this owner's; returns them in the order given. Others' live
    /// leases are left alone.
    ///
    /// One unordered insert claims every free aggregate; the server refuses
    /// a held one as a duplicate `_id`. Only when some were refused do two
    /// more commands take over those that have expired.
    pub async fn acquire_many(&self, aggregates: &[String]) -> Result<Vec<String>> {
        if aggregates.is_empty() {
            return Ok(Vec::new());
        }
        let now = DateTime::now();
        let until = DateTime::from_millis(now.timestamp_millis() + self.length.as_millis() as i64);
        let documents: Vec<Document> = aggregates
            .iter()
            .map(|aggregate| doc! { "_id": aggregate, "owner": &self.owner, "leaseUntil": until })
            .collect();
        let reply = self
            .database()
            .run_command(doc! {
                "insert": self.collection.name(),
                "documents": documents,
                "ordered": false,
            })
            .await?;
        let refused = refused_as_duplicates(&reply)?;
        if refused.is_empty() {
            return Ok(aggregates.to_vec());
        }
        let held: Vec<&String> = refused.iter().filter_map(|&i| aggregates.get(i)).collect();
        let mut taken: HashSet<&str> = aggregates.iter().map(String::as_str).collect();
        for aggregate in &held {
            taken.remove(aggregate.as_str());
        }
        for aggregate in self.take_over(&held, now, until).await? {
            if let Some(original) = held.iter().find(|a| **a == &aggregate) {
                taken.insert(original.as_str());
            }
        }
        Ok(aggregates
            .iter()
            .filter(|a| taken.contains(a.as_str()))
            .cloned()
            .collect())
    }

    /// Of the `held` aggregates, takes those whose lease has run out or is
    /// this owner's already (a round that could not release it); returns them.
    async fn take_over(
        &self,
        held: &[&String],
        now: DateTime,
        until: DateTime,
    ) -> Result<Vec<String>> {
        let updates = held.chunks(IN_CHUNK).map(|chunk| {
            self.collection
                .update_many(
                    doc! {
                        "_id": { "$in": chunk },
                        "$or": [ { "leaseUntil": { "$lt": now } }, { "owner": &self.owner } ],
                    },
                    doc! { "$set": { "owner": &self.owner, "leaseUntil": until } },
                )
                .into_future()
        });
        let modified: u64 = try_join_all(updates)
            .await?
            .iter()
            .map(|r| r.modified_count)
            .sum();
        if modified == 0 {
            return Ok(Vec::new());
        }
        // Which ones: an expired lease may just have gone to another relay
        // taking over at the same moment. `until` marks this very claim.
        let finds = held.chunks(IN_CHUNK).map(|chunk| async move {
            self.collection
                .find(doc! { "_id": { "$in": chunk }, "owner": &self.owner, "leaseUntil": until })
                .projection(doc! { "_id": 1 })
                .await?
                .try_collect::<Vec<Document>>()
                .await
        });
        Ok(try_join_all(finds)
            .await?
            .into_iter()
            .flatten()
            .filter_map(|d| d.get_str("_id").ok().map(String::from))
            .collect())
    }

    pub async fn release(&self, aggregate: &str) -> Result<()> {
        self.release_many(&[aggregate.to_string()]).await
    }

    /// Gives up this owner's leases on `aggregates` (others' are untouched).
    pub async fn release_many(&self, aggregates: &[String]) -> Result<()> {
        let deletes = aggregates.chunks(IN_CHUNK).map(|chunk| {
            self.collection
                .delete_many(doc! { "_id": { "$in": chunk }, "owner": &self.owner })
                .into_future()
        });
        try_join_all(deletes).await?;
        Ok(())
    }

    fn database(&self) -> Database {
        self.collection
            .client()
            .database(&self.collection.namespace().db)
    }
}

/// Positions of the documents an unordered insert refused as duplicates;
/// any other write error is an error.
fn refused_as_duplicates(reply: &Document) -> Result<Vec<usize>> {
    let Ok(errors) = reply.get_array("writeErrors") else {
        return Ok(Vec::new());
    };
    let mut refused = Vec::with_capacity(errors.len());
    for error in errors {
        let error = error
            .as_document()
            .ok_or_else(|| Error::Lease(format!("malformed write error: {error}")))?;
        let code = error.get("code").and_then(as_i64).unwrap_or_default();
        let index = error.get("index").and_then(as_i64);
        match index {
            Some(index) if code == i64::from(DUPLICATE_KEY) => refused.push(index as usize),
            _ => {
                return Err(Error::Lease(
                    error.get_str("errmsg").unwrap_or("write error").to_string(),
                ));
            }
        }
    }
    Ok(refused)
}

fn as_i64(value: &Bson) -> Option<i64> {
    match value {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        Bson::Double(v) => Some(*v as i64),
        _ => None,
    }
}
