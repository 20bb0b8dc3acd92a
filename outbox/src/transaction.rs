//! Bounded, jittered retry of whole MongoDB transactions.
//!
//! The driver's `and_run` retries for up to two minutes; a request handler
//! wants a small bound and a clear conflict instead, so the loop is ours.

use futures::future::BoxFuture;
use mongodb::error::{
    Error as MongoError, ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT,
    WriteFailure,
};
use mongodb::options::{Acknowledgment, ReadConcern, WriteConcern};
use mongodb::{Client, ClientSession};
use rand::Rng;
use std::time::Duration;

/// Server code for a write conflict between two transactions.
const WRITE_CONFLICT: i32 = 112;
/// Server code for a unique index violation.
pub(crate) const DUPLICATE_KEY: i32 = 11000;

/// How often and how patiently a transaction is retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total tries of the whole transaction, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(250),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: a random delay up to the capped exponential bound, so that
    /// conflicting writers spread out instead of colliding again in step.
    fn delay(&self, attempt: u32) -> Duration {
        let cap = self
            .base_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_delay);
        let millis = cap.as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }
}

/// Errors that a transaction body can return; the loop asks them whether a
/// retry of the whole transaction may succeed.
pub trait TransactionError: From<MongoError> {
    fn is_transient(&self) -> bool;
}

/// Whether a driver error means "run the whole transaction again".
pub fn is_transient(error: &MongoError) -> bool {
    error.contains_label(TRANSIENT_TRANSACTION_ERROR)
        || server_code(error) == Some(WRITE_CONFLICT)
        || matches!(
            error.kind.as_ref(),
            ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. }
        )
}

/// Whether a driver error is a duplicate key (unique index) violation.
pub fn is_duplicate_key(error: &MongoError) -> bool {
    server_code(error) == Some(DUPLICATE_KEY)
}

/// The server's error code, wherever the driver put it.
pub fn server_code(error: &MongoError) -> Option<i32> {
    match error.kind.as_ref() {
        ErrorKind::Command(e) => Some(e.code),
        ErrorKind::Write(WriteFailure::WriteError(e)) => Some(e.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(e)) => Some(e.code),
        ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()
            .and_then(|errors| errors.first().map(|w| w.code))
            .or_else(|| e.write_concern_error.as_ref().map(|w| w.code)),
        _ => None,
    }
}

/// Runs `body` inside a majority-acknowledged, snapshot-read transaction and
/// commits it, retrying transient failures up to the policy's bound.
pub async fn run<T, E, F>(client: &Client, policy: &RetryPolicy, mut body: F) -> Result<T, E>
where
    E: TransactionError,
    F: for<'s> FnMut(&'s mut ClientSession) -> BoxFuture<'s, Result<T, E>>,
{
    let mut session = client.start_session().await?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        session
            .start_transaction()
            .read_concern(ReadConcern::snapshot())
            .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
            .await?;
        let outcome = body(&mut session).await;
        let error = match outcome {
            Ok(value) => match commit(&mut session).await {
                Ok(()) => return Ok(value),
                Err(e) => E::from(e),
            },
            Err(e) => {
                // Abort errors are not interesting: the server aborts an idle
                // transaction by itself, and the original error is what we report.
                let _ = session.abort_transaction().await;
                e
            }
        };
        if !error.is_transient() || attempt >= policy.max_attempts {
            return Err(error);
        }
        tracing::debug!(attempt, "transaction conflict, retrying");
        tokio::time::sleep(policy.delay(attempt)).await;
    }
}

/// Commits, retrying only the commit when its outcome is unknown (the
/// driver's advice for `UnknownTransactionCommitResult`).
async fn commit(session: &mut ClientSession) -> Result<(), MongoError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match session.commit_transaction().await {
            Ok(()) => return Ok(()),
            Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && tries < 3 => {
                continue;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_is_capped() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
        };
        for attempt in 1..20 {
            assert!(policy.delay(attempt) <= Duration::from_millis(40));
        }
    }
}
