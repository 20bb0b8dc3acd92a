//! Applies a transaction Flutterwave confirmed to its order: it pays an
//! order awaiting payment; an order that can no longer take it (cancelled,
//! or paid by another transaction) refunds it in full. Shared by PUT verify,
//! the webhook's re-verification command and the reconciliation sweep, so
//! a payment any of them sees is never silently kept.

use super::flutterwave::Transaction;
use super::verification;
use crate::orders::commands::Actor;
use crate::orders::model::{Order, OrderStatus};
use crate::orders::state_machine::{Action, Refused};
use crate::orders::{OrderError, Orders};

/// What a confirmed transaction did to its order.
#[derive(Debug)]
pub enum Settled {
    /// The order is paid by this transaction (now or before).
    Paid(Order),
    /// The order could not take it; a full refund is staged.
    Refunding(Order),
}

/// Pays `order` with `transaction`, or stages its refund. A transaction
/// that pays nothing (not successful, another order's, too small for an
/// order awaiting payment) is refused: `PaymentRejected` while the order
/// awaits payment, `Refused` once it does not.
pub async fn settle(
    orders: &Orders,
    actor: &Actor,
    order: &Order,
    transaction: &Transaction,
) -> Result<Settled, OrderError> {
    let id = transaction.id.to_string();
    if order.paid_with(&id) {
        return Ok(Settled::Paid(order.clone()));
    }
    if order.status == OrderStatus::AwaitingPayment {
        let payment =
            verification::check(order, transaction).map_err(OrderError::PaymentRejected)?;
        match orders.record_payment(actor, &order.order_id, payment).await {
            Ok(paid) => return Ok(Settled::Paid(paid)),
            // Paid or cancelled since it was read: then it cannot take
            // this one either, unless this one is what paid it.
            Err(OrderError::Refused(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let Ok(stray) = verification::stray(order, transaction) else {
        return Err(Refused::NotAllowed {
            action: Action::Pay.verb(),
            from: order.status,
        }
        .into());
    };
    let now = orders
        .record_stray_payment(actor, &order.order_id, stray)
        .await?;
    if now.paid_with(&id) {
        Ok(Settled::Paid(now))
    } else {
        Ok(Settled::Refunding(now))
    }
}
