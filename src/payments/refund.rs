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
use std::time::Duration;

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

impl RefundCommand {
    /// The stray payment this command refunds; `None` for the order's own.
    /// A stray command always names its transaction: `run` refuses one
    /// without it before anything asks.
    fn stray_transaction(&self) -> Option<&str> {
        self.transaction_id.as_deref().filter(|_| self.stray)
    }
}

pub struct RefundHandler {
    flutterwave: Flutterwave,
    orders: Orders,
    /// How long a refund still settling at Flutterwave waits for its next look-up.
    recheck: Duration,
}

impl RefundHandler {
    pub fn new(flutterwave: Flutterwave, orders: Orders, recheck: Duration) -> Self {
        Self {
            flutterwave,
            orders,
            recheck,
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
        let refunds = self.refunds_of(transaction_id).await?;
        // Taken and pending when last looked at, failed since: that ends
        // here, for an operator. A replay finds it recorded failed and
        // asks for a new refund.
        if let Some(failed) = self.failed_since(&command, &refunds).await? {
            self.save(
                &command,
                RefundStatus::Failed,
                Some(failed.clone()),
                attempts,
            )
            .await?;
            return Err(DeliveryError::Permanent(format!(
                "Flutterwave reports refund {failed} failed"
            )));
        }
        let refund = match applied(&refunds, command.amount) {
            Some(existing) => existing.clone(),
            None => match self
                .flutterwave
                .refund(transaction_id, command.amount, reason(&command))
                .await
            {
                Ok(refund) => refund,
                // An earlier attempt, stopped while Flutterwave was slow,
                // may have landed since the look-up: then that is why.
                Err(ProviderError::Rejected(reason)) => {
                    let again = self.refunds_of(transaction_id).await?;
                    match applied(&again, command.amount) {
                        Some(existing) => existing.clone(),
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
        let id = Some(refund.id.to_string());
        match refund.status.as_str() {
            "completed" => {
                self.save(&command, RefundStatus::Completed, id, attempts)
                    .await
            }
            // A fresh refund's answer (the look-up skips failed ones).
            "failed" => {
                self.save(&command, RefundStatus::Failed, id, attempts)
                    .await?;
                Err(DeliveryError::Permanent(format!(
                    "Flutterwave reports refund {} failed",
                    refund.id
                )))
            }
            // Taken, not settled (pending, or a state we do not know):
            // the order says so, and each later look-up finds this refund
            // (so none is sent twice) until it has settled.
            other => {
                self.save(&command, RefundStatus::Pending, id, attempts)
                    .await?;
                Err(DeliveryError::NotYet {
                    reason: format!("refund {} is {other} at Flutterwave", refund.id),
                    retry_after: self.recheck,
                })
            }
        }
    }

    /// The refunds Flutterwave holds for the transaction, in any state.
    async fn refunds_of(&self, transaction_id: &str) -> Result<Vec<RefundRecord>, DeliveryError> {
        Ok(self
            .flutterwave
            .refunds_for(transaction_id)
            .await
            .map_err(delivery_error)?
            .into_iter()
            // The list is asked for by transaction; an answer about another
            // one must not count as this one's refund.
            .filter(|r| r.tx_id.is_none_or(|id| id.to_string() == transaction_id))
            .collect())
    }

    /// The id of the refund this command recorded as pending, if
    /// Flutterwave now reports it failed.
    async fn failed_since(
        &self,
        command: &RefundCommand,
        refunds: &[RefundRecord],
    ) -> Result<Option<String>, DeliveryError> {
        // The order is read only when there is a failed refund to match.
        if !refunds.iter().any(|r| r.status == "failed") {
            return Ok(None);
        }
        let order = self
            .orders
            .repository()
            .by_order_id(&command.order_id)
            .await
            .map_err(|e| DeliveryError::Transient(e.to_string()))?;
        let stored = order.and_then(|order| order.refund_for(command.stray_transaction()).cloned());
        Ok(stored
            .filter(|r| r.status == RefundStatus::Pending)
            .and_then(|r| r.flutterwave_refund_id)
            .filter(|id| {
                refunds
                    .iter()
                    .any(|r| &r.id.to_string() == id && r.status == "failed")
            }))
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
        self.orders
            .record_refund(&command.order_id, command.stray_transaction(), refund)
            .await
            .map(|_| ())
            .map_err(|e| DeliveryError::Transient(e.to_string()))
    }
}

/// A refund of `amount` Flutterwave applied or is applying, if any; a
/// failed one took nothing back and does not count.
fn applied(refunds: &[RefundRecord], amount: f64) -> Option<&RefundRecord> {
    refunds
        .iter()
        .find(|r| r.status != "failed" && (r.amount_refunded - amount).abs() < 0.005)
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
