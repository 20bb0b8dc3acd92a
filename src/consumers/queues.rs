//! The queues of one consumer: the main queue bound to the producer's
//! exchange, a retry queue that hands messages back after a delay, and a
//! dead-letter queue (DLQ) where an operator finds what could not be applied.

use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use outbox::{ExchangeSpec, QueueSpec};

/// Names of the queues around one exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSet {
    /// The producer's fanout exchange.
    pub exchange: String,
    /// Bound to `exchange`; the consumer reads it.
    pub main: String,
    /// `{main}.retry`: no consumer. Each message carries its own expiry
    /// (the retry delay) and then dead-letters back to `main`.
    pub retry: String,
    /// `{main}.dlq`: no consumer; left for an operator.
    pub dlq: String,
}

impl QueueSet {
    pub fn new(exchange: impl Into<String>, main: impl Into<String>) -> Self {
        let main = main.into();
        Self {
            exchange: exchange.into(),
            retry: format!("{main}.retry"),
            dlq: format!("{main}.dlq"),
            main,
        }
    }

    /// The exchange, durable fanout as its producer declares it.
    pub fn exchange_spec(&self) -> ExchangeSpec {
        ExchangeSpec {
            name: self.exchange.clone(),
            kind: ExchangeKind::Fanout,
        }
    }

    /// Durable queues with their dead-letter routes.
    ///
    /// The retry delay is a per-message expiry, not an `x-message-ttl` queue
    /// argument: a declared argument can never change (RabbitMQ refuses the
    /// re-declaration), and a refused declaration would take the shared
    /// connection, and with it event publishing, down on the next deploy
    /// that changes `REVIEW_RETRY_DELAY_MS`.
    pub fn queue_specs(&self) -> Vec<QueueSpec> {
        vec![
            QueueSpec {
                name: self.main.clone(),
                // A message rejected without requeue (by an operator, or a
                // future delivery limit) lands in the DLQ, not nowhere.
                arguments: dead_letter_to(&self.dlq),
                bindings: vec![(self.exchange.clone(), String::new())],
            },
            QueueSpec {
                name: self.retry.clone(),
                arguments: dead_letter_to(&self.main),
                bindings: vec![],
            },
            QueueSpec {
                name: self.dlq.clone(),
                arguments: FieldTable::default(),
                bindings: vec![],
            },
        ]
    }

    /// Declares the exchange and the queues on `channel` (idempotent). The
    /// broker declares them on every connect too; a consumer repeats it on
    /// every (re)subscription so that a queue deleted while the connection
    /// stayed up comes back without a reconnect.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let topology = outbox::Topology {
            exchanges: vec![self.exchange_spec()],
            queues: self.queue_specs(),
        };
        outbox::broker::declare_on(channel, &topology).await
    }
}

/// Arguments that dead-letter through the default exchange straight to `queue`.
fn dead_letter_to(queue: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(queue.into()),
    );
    arguments
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_and_dead_letter_queues_are_named_after_the_main_queue() {
        let set = QueueSet::new("p-gigconnect-review", "p-order-review-queue");
        assert_eq!(set.retry, "p-order-review-queue.retry");
        assert_eq!(set.dlq, "p-order-review-queue.dlq");
        let specs = set.queue_specs();
        assert_eq!(
            specs[0].bindings,
            vec![("p-gigconnect-review".to_string(), String::new())]
        );
        let route = |spec: &QueueSpec| {
            spec.arguments
                .inner()
                .get("x-dead-letter-routing-key")
                .cloned()
        };
        assert_eq!(
            route(&specs[0]),
            Some(AMQPValue::LongString("p-order-review-queue.dlq".into()))
        );
        assert_eq!(
            route(&specs[1]),
            Some(AMQPValue::LongString("p-order-review-queue".into()))
        );
        assert_eq!(route(&specs[2]), None);
    }
}
