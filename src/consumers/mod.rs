//! Consumers of events other services publish. Each reads one durable queue
//! over the shared [`outbox::Broker`] connection, applies every message
//! once (the inbox entry is written in the transaction of its effect), and
//! moves what it cannot apply to a retry queue or a dead-letter queue
//! instead of letting it block the queue.
//!
//! - [`queues`]: the main / retry / dead-letter queues of one consumer;
//! - [`republish`]: confirmed copies to the retry queue or the DLQ;
//! - [`review_message`]: the review message on the wire;
//! - [`review`]: the review consumer;
//! - [`redrive`]: operator tools for a DLQ;
//! - `supervisor`: the consume loop that reconnects with backoff.

pub mod queues;
pub mod redrive;
pub mod republish;
pub mod review;
pub mod review_message;
mod supervisor;
