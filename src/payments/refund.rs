//! The refund command, run by the outbox relay after a paid order is
//! cancelled, or for a payment the order could not take (a stray payment,
//! refunded in full). Runs exactly once: Flutterwave has no idempotency
//! key, so before every attempt we ask whether a refund of the transaction
//! was already applied (a previous attempt may have timed out after
//! Flutterwave applied it), and the relay never runs it in two instances
//! at once.

use super::flutterwave::{Flutterwave, ProviderError, RefundRecord};
use crate::orders::Orders;
use crate::orders::model::{Refund, RefundStatus};
use outbox::handler::HandlerFuture;
use outbox::{DeliveryError, Handler, OutboxRecord};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefundCommand {
    order_id: String,
    transaction_id: Option<String>,
    amount: f64,
    /// Refunds a stray payment rather than the order's own.
    #[serde(default)]
    stray: bool,
}

pub struct RefundHandler {
    flutterwave: Flutterwave,
    orders: Orders,
}

impl RefundHandler {
    pub fn new(flutterwave: Flutterwave, orders: Orders) -> Self {
        Self {
            flutterwave,
            orders,
        }
    }

    async fn run(&self, record: &OutboxRecord) -> Result<(), DeliveryError> {
        let command: RefundCommand = serde_json::from_str(&record.payload)
            .map_err(|e| DeliveryError::Permanent(format!("malformed refund command: {e}")))?;
        let Some(transaction_id) = command.transaction_id.as_deref() else {
            return Err(DeliveryError::Permanent(
                "paid order has no transaction id".into(),
            ));
        };
        let attempts = record.attempts + 1;
        let refund = match self.applied(transaction_id, command.amount).await? {
            Some(existing) => existing,
            None => match self
                .flutterwave
                .refund(transaction_id, command.amount, reason(&command))
                .await
            {
                Ok(refund) => refund,
                // An earlier attempt, stopped while Flutterwave was slow,
                // may have landed since the look-up: then that is why.
                Err(ProviderError::Rejected(reason)) => {
                    match self.applied(transaction_id, command.amount).await? {
                        Some(existing) => existing,
                        None => {
                            self.save(&command, RefundStatus::Failed, None, attempts)
                                .await?;
                            return Err(DeliveryError::Permanent(format!(
                                "refund refused: {reason}"
                            )));
                        }
                    }
                }
                Err(e) => return Err(delivery_error(e)),
            },
        };
        if refund.status == "pending" {
            // Flutterwave took the refund but has not settled it: the
            // order says so, and the next attempt's look-up finds this
            // refund (never a second one) and records how it ended.
            self.save(
                &command,
                RefundStatus::Pending,
                Some(refund.id.to_string()),
                attempts,
            )
            .await?;
            return Err(DeliveryError::Transient(format!(
                "refund {} is pending at Flutterwave",
                refund.id
            )));
        }
        self.save(
            &command,
            RefundStatus::Completed,
            Some(refund.id.to_string()),
            attempts,
        )
        .await
    }

    /// A refund of `amount` Flutterwave already applied (or is applying)
    /// to the transaction, if any.
    async fn applied(
        &self,
        transaction_id: &str,
        amount: f64,
    ) -> Result<Option<RefundRecord>, DeliveryError> {
        Ok(self
            .flutterwave
            .refunds_for(transaction_id)
            .await
            .map_err(delivery_error)?
            .into_iter()
            // The list is asked for by transaction; an answer about another
            // one must not count as this one's refund.
            .filter(|r| r.tx_id.is_none_or(|id| id.to_string() == transaction_id))
            .find(|r| r.status != "failed" && (r.amount_refunded - amount).abs() < 0.005))
    }

    async fn save(
        &self,
        command: &RefundCommand,
        status: RefundStatus,
        id: Option<String>,
        attempts: i32,
    ) -> Result<(), DeliveryError> {
        let refund = Refund {
            status,
            amount: command.amount,
            flutterwave_refund_id: id,
            attempts,
        };
        let stray = command
            .stray
            .then(|| command.transaction_id.clone())
            .flatten();
        self.orders
            .record_refund(&command.order_id, stray, refund)
            .await
            .map(|_| ())
            .map_err(|e| DeliveryError::Transient(e.to_string()))
    }
}

fn reason(command: &RefundCommand) -> &'static str {
    if command.stray {
        "payment the order could not take"
    } else {
        "order cancelled"
    }
}

fn delivery_error(error: ProviderError) -> DeliveryError {
    match error {
        ProviderError::Unavailable {
            reason,
            retry_after,
        } => DeliveryError::Unavailable {
            reason,
            retry_after,
        },
        other => DeliveryError::Transient(other.to_string()),
    }
}

impl Handler for RefundHandler {
    fn handle<'a>(&'a self, record: &'a OutboxRecord) -> HandlerFuture<'a> {
        Box::pin(self.run(record))
    }
}
