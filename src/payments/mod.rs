//! Payments through Flutterwave: the client, the rules a transaction must
//! meet to pay an order, and the refund command run by the outbox relay.

pub mod checkout;
pub mod flutterwave;
pub mod reconcile;
pub mod refund;
pub mod resilience;
pub mod reverify;
pub mod settle;
pub mod verification;

use crate::orders::commands::Actor;
use crate::orders::model::{Order, OrderStatus, Party, RefundStatus};
use crate::orders::state_machine::{Action, Refused};
use crate::orders::{OrderError, Orders};
use flutterwave::{Flutterwave, ProviderError};
use settle::Settled;

#[derive(Clone)]
pub struct Payments {
    flutterwave: Flutterwave,
    orders: Orders,
}

impl Payments {
    pub fn new(flutterwave: Flutterwave, orders: Orders) -> Self {
        Self {
            flutterwave,
            orders,
        }
    }

    pub fn flutterwave(&self) -> &Flutterwave {
        &self.flutterwave
    }

    /// PUT verify: asks Flutterwave about `transaction_id` and, if it pays
    /// the order behind `tx_ref`, moves it to PROCESSING. Never trusts the
    /// caller's figures: amount and currency come from the provider and the
    /// stored order.
    pub async fn verify(
        &self,
        actor: &Actor,
        transaction_id: &str,
        tx_ref: &str,
    ) -> Result<Order, OrderError> {
        if transaction_id.is_empty()
            || !transaction_id.chars().all(|c| c.is_ascii_digit())
            || transaction_id.len() > 20
        {
            return Err(OrderError::Invalid(
                "transactionId must be a Flutterwave transaction number".into(),
            ));
        }
        let order = self
            .orders
            .by_tx_ref(tx_ref)
            .await?
            .ok_or(OrderError::NotFound)?;
        match order.party_of(&actor.username) {
            Some(Party::Buyer) => {}
            Some(Party::Seller) => {
                return Err(OrderError::Forbidden("only the buyer can verify a payment"));
            }
            None => return Err(OrderError::Forbidden("you are not a party to this order")),
        }
        // The order's own payment, asked about again.
        if order.status != OrderStatus::AwaitingPayment && order.paid_with(transaction_id) {
            return Ok(order);
        }
        let Some(transaction) = self
            .flutterwave
            .verify(transaction_id)
            .await
            .map_err(provider_error)?
        else {
            return Err(match order.status {
                OrderStatus::AwaitingPayment => {
                    OrderError::PaymentRejected("Flutterwave knows no such transaction".into())
                }
                from => Refused::NotAllowed {
                    action: Action::Pay.verb(),
                    from,
                }
                .into(),
            });
        };
        match settle::settle(&self.orders, actor, &order, &transaction).await? {
            Settled::Paid(order) => Ok(order),
            Settled::Refunding(order) => {
                let refund = order.refund_for(Some(transaction_id)).map(|r| r.status);
                let fate = match refund {
                    Some(RefundStatus::Completed) => "was refunded in full",
                    Some(RefundStatus::Failed) => {
                        "could not be refunded automatically; support will refund it"
                    }
                    _ => "will be refunded in full",
                };
                Err(OrderError::Conflict(format!(
                    "cannot pay an order that is {}; this payment {fate}",
                    order.status
                )))
            }
        }
    }
}

pub fn provider_error(error: ProviderError) -> OrderError {
    match error {
        ProviderError::Unavailable { retry_after, .. } => {
            OrderError::ProviderUnavailable { retry_after }
        }
        // Both callers (verify, checkout) are safe to repeat: verify is a
        // read, and checkout reuses or re-asks for the link under its claim.
        ProviderError::Timeout => OrderError::ProviderUnavailable {
            retry_after: std::time::Duration::from_secs(1),
        },
        other => OrderError::Provider(other.to_string()),
    }
}
