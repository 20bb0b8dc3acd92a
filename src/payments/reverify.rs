//! The re-verification command staged by the webhook receiver (and by the
//! reconciliation sweep): asks Flutterwave about the transaction and, if it
//! pays the order, drives the same transition as PUT verify. The webhook's
//! own payload is never trusted.

use super::flutterwave::{Flutterwave, ProviderError};
use super::verification;
use crate::orders::commands::Actor;
use crate::orders::model::OrderStatus;
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
        if order.status != OrderStatus::AwaitingPayment {
            if order.flutterwave.transaction_id.as_deref() != Some(command.transaction_id.as_str())
            {
                tracing::warn!(order_id = %order.order_id, transaction_id = %command.transaction_id, "payment event for an order that is no longer awaiting payment");
            }
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
        let payment =
            verification::check(&order, &transaction).map_err(DeliveryError::Permanent)?;
        let actor = Actor {
            username: order.buyer_username.clone(),
            correlation_id: record.correlation_id.clone(),
            traceparent: record
                .headers
                .get("traceparent")
                .cloned()
                .unwrap_or_default(),
        };
        match self
            .orders
            .record_payment(&actor, &order.order_id, payment)
            .await
        {
            Ok(_) => Ok(()),
            // Another path (verify route, sweep) got there first: nothing left to do.
            Err(OrderError::Refused(_)) => Ok(()),
            Err(e) => Err(DeliveryError::Transient(e.to_string())),
        }
    }
}

impl Handler for ReverifyHandler {
    fn handle<'a>(&'a self, record: &'a OutboxRecord) -> HandlerFuture<'a> {
        Box::pin(self.run(record))
    }
}
