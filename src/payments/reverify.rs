//! The re-verification command staged by the webhook receiver: asks
//! Flutterwave about the transaction and settles it as PUT verify does: it
//! pays the order, or, if the order can no longer take it, is refunded in
//! full. The webhook's own payload is never trusted.

use super::flutterwave::{Flutterwave, ProviderError};
use super::settle::settle;
use crate::orders::commands::Actor;
use crate::orders::{OrderError, Orders};
use outbox::handler::HandlerFuture;
use outbox::{DeliveryError, Handler, OutboxRecord};
use serde::Deserialize;

pub const VERIFY_COMMAND: &str = "flutterwave.verify-payment";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerifyCommand {
    transaction_id: String,
    tx_ref: String,
}

pub struct ReverifyHandler {
    flutterwave: Flutterwave,
    orders: Orders,
}

impl ReverifyHandler {
    pub fn new(flutterwave: Flutterwave, orders: Orders) -> Self {
        Self {
            flutterwave,
            orders,
        }
    }

    async fn run(&self, record: &OutboxRecord) -> Result<(), DeliveryError> {
        let command: VerifyCommand = serde_json::from_str(&record.payload)
            .map_err(|e| DeliveryError::Permanent(format!("malformed command: {e}")))?;
        let order = self
            .orders
            .by_tx_ref(&command.tx_ref)
            .await
            .map_err(|e| DeliveryError::Transient(e.to_string()))?
            // Parked for inspection: an operator can replay it once the order exists.
            .ok_or_else(|| {
                DeliveryError::Permanent(format!("no order has tx_ref {}", command.tx_ref))
            })?;
        // The order's own payment, announced again.
        if order.paid_with(&command.transaction_id) {
            return Ok(());
        }
        let transaction = match self.flutterwave.verify(&command.transaction_id).await {
            Ok(Some(transaction)) => transaction,
            Ok(None) => {
                return Err(DeliveryError::Permanent(
                    "Flutterwave knows no such transaction".into(),
                ));
            }
            Err(ProviderError::Unavailable {
                reason,
                retry_after,
            }) => {
                return Err(DeliveryError::Unavailable {
                    reason,
                    retry_after,
                });
            }
            Err(e) => return Err(DeliveryError::Transient(e.to_string())),
        };
        // A declined or abandoned payment took no money: nothing to do,
        // and nothing for an operator either.
        if transaction.status != "successful" {
            tracing::info!(order_id = %order.order_id, transaction_id = %command.transaction_id, status = %transaction.status, "payment event for a payment that did not succeed");
            return Ok(());
        }
        let actor = Actor {
            username: order.buyer_username.clone(),
            correlation_id: record.correlation_id.clone(),
            traceparent: record
                .headers
                .get("traceparent")
                .cloned()
                .unwrap_or_default(),
        };
        match settle(&self.orders, &actor, &order, &transaction).await {
            Ok(_) => Ok(()),
            // Money taken that pays nothing we can tell (too little, another
            // order's reference): an operator decides, from the parked record.
            Err(e @ (OrderError::PaymentRejected(_) | OrderError::Refused(_))) => {
                Err(DeliveryError::Permanent(e.to_string()))
            }
            Err(e) => Err(DeliveryError::Transient(e.to_string())),
        }
    }
}

impl Handler for ReverifyHandler {
    fn handle<'a>(&'a self, record: &'a OutboxRecord) -> HandlerFuture<'a> {
        Box::pin(self.run(record))
    }
}
