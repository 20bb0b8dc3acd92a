//! Transactional outbox and inbox on MongoDB, relayed to RabbitMQ.
//!
//! The crate knows nothing about the business it serves. A caller:
//! 1. opens a transaction with [`transaction::run`], writes its own documents and
//!    stages outgoing effects with [`Outbox::stage`] in the same session, and
//!    guards consumed messages with [`Inbox::record`] in the same session;
//! 2. runs a [`Relay`], which delivers staged records after the commit: AMQP
//!    messages through a [`Broker`] with publisher confirms, and named
//!    destinations (commands, socket emits) through registered [`Handler`]s.
//!
//! Layout:
//! - [`record`]: the stored record and what a caller stages;
//! - [`store`]: staging, schema, parked records (listing, replay), statistics;
//! - [`relay`]: the delivery loop (leases per aggregate, ordering, backoff, parking);
//! - [`lease`]: per-aggregate leases shared by several relay instances;
//! - [`broker`]: one supervised AMQP connection with topology re-declared on reconnect;
//! - [`publisher`]: AMQP publishes with confirms and timeouts;
//! - [`handler`]: the trait for non-AMQP destinations;
//! - [`inbox`]: idempotent consumption;
//! - [`transaction`]: bounded retry of MongoDB transactions.

pub mod broker;
pub mod error;
pub mod handler;
pub mod inbox;
pub mod lease;
pub mod publisher;
pub mod record;
pub mod relay;
pub mod store;
pub mod transaction;

pub use broker::{Broker, BrokerConfig, ExchangeSpec, QueueSpec, Topology};
pub use error::{Error, Result};
pub use handler::{DeliveryError, Handler};
pub use inbox::Inbox;
pub use record::{Destination, NewRecord, OutboxRecord, RecordStatus};
pub use relay::{Relay, RelayConfig, RelayHandle};
pub use store::{Outbox, OutboxStats};
