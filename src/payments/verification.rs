//! What a Flutterwave transaction must show to pay an order. Pure.

use super::flutterwave::Transaction;
use crate::orders::commands::ConfirmedPayment;
use crate::orders::model::{Order, Refund, RefundStatus, StrayPayment};

/// Amounts are compared to the minor unit; float noise below it is ignored.
const TOLERANCE: f64 = 0.005;

/// Checks `transaction` against the stored `order`; the error says why not.
pub fn check(order: &Order, transaction: &Transaction) -> Result<ConfirmedPayment, String> {
    took_money_for(order, transaction)?;
    if !transaction.currency.eq_ignore_ascii_case(&order.currency) {
        return Err(format!(
            "currency {} does not match the order's {}",
            transaction.currency, order.currency
        ));
    }
    let due = order.amount_due();
    if transaction.amount + TOLERANCE < due {
        return Err(format!(
            "amount {} is less than the {} due",
            transaction.amount, due
        ));
    }
    Ok(ConfirmedPayment {
        transaction_id: transaction.id.to_string(),
        gateway_status: transaction.status.clone(),
        payment_method: transaction
            .payment_type
            .clone()
            .unwrap_or_else(|| "unknown".into()),
        fee: transaction.app_fee.unwrap_or_default(),
        amount: transaction.amount,
    })
}

/// Checks a `transaction` of an order that can no longer take it (paid by
/// another transaction, or cancelled): it is owed back in full if it is a
/// successful payment of this order.
pub fn stray(order: &Order, transaction: &Transaction) -> Result<StrayPayment, String> {
    took_money_for(order, transaction)?;
    Ok(StrayPayment {
        transaction_id: transaction.id.to_string(),
        amount: transaction.amount,
        currency: transaction.currency.clone(),
        refund: Refund {
            status: RefundStatus::Pending,
            amount: transaction.amount,
            flutterwave_refund_id: None,
            attempts: 0,
        },
    })
}

/// Whether `transaction` is a successful payment made for `order`.
fn took_money_for(order: &Order, transaction: &Transaction) -> Result<(), String> {
    if transaction.status != "successful" {
        return Err(format!("transaction status is {}", transaction.status));
    }
    if transaction.tx_ref != order.flutterwave.tx_ref {
        return Err("transaction reference does not match the order".into());
    }
    Ok(())
}
