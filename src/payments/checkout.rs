//! Hosted checkout: one Flutterwave payment link per order at a time, asked
//! for once and reused while its page takes payments (its
//! `session_duration`); after that a new one is asked for, with the same
//! `tx_ref`. Concurrent requests for a link race for a short claim on the
//! order; the winner calls Flutterwave, the others wait for the link it
//! stores. With several instances the claim lives in the database, so it
//! holds across them.

use super::flutterwave::{Customer, Customizations, Flutterwave, PaymentLinkRequest};
use super::provider_error;
use crate::orders::commands::Actor;
use crate::orders::model::Order;
use crate::orders::{OrderError, Orders};
use std::time::Duration;

/// How long a claim holds if its owner dies before storing the link.
const CLAIM_HOLD_SECS: i64 = 30;
/// How long a losing request waits for the winner's link.
const WAIT_FOR_LINK: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct Checkout {
    flutterwave: Flutterwave,
    orders: Orders,
    client_url: String,
    /// How long a page takes payments, in Flutterwave's unit.
    session_minutes: u32,
}

impl Checkout {
    pub fn new(
        flutterwave: Flutterwave,
        orders: Orders,
        client_url: String,
        session_minutes: u32,
    ) -> Self {
        Self {
            flutterwave,
            orders,
            client_url,
            session_minutes,
        }
    }

    /// The order's payment link, created on first request.
    pub async fn link(&self, actor: &Actor, order_id: &str) -> Result<String, OrderError> {
        let token = uuid::Uuid::new_v4().to_string();
        let deadline = tokio::time::Instant::now() + WAIT_FOR_LINK;
        loop {
            let order = self
                .orders
                .claim_checkout(
                    actor,
                    order_id,
                    &token,
                    chrono::Duration::seconds(CLAIM_HOLD_SECS),
                )
                .await?;
            if let Some(link) = order.flutterwave.live_checkout_link(chrono::Utc::now()) {
                return Ok(link.to_string());
            }
            if order
                .flutterwave
                .checkout_claim
                .as_ref()
                .is_some_and(|c| c.token == token)
            {
                let created = self.create(actor, &order).await;
                if created.is_err() {
                    let _ = self
                        .orders
                        .release_checkout_claim(actor, order_id, &token)
                        .await;
                }
                return created;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(OrderError::ProviderUnavailable {
                    retry_after: Duration::from_secs(2),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn create(&self, actor: &Actor, order: &Order) -> Result<String, OrderError> {
        let request = PaymentLinkRequest {
            tx_ref: order.flutterwave.tx_ref.clone(),
            amount: order.amount_due(),
            currency: order.currency.clone(),
            redirect_url: format!(
                "{}/orders/{}/payment",
                self.client_url.trim_end_matches('/'),
                order.order_id
            ),
            customer: Customer {
                email: order.buyer_email.clone(),
                name: order.buyer_username.clone(),
            },
            customizations: Customizations {
                title: order.offer.gig_title.clone(),
            },
            // The reconciliation sweep stops watching when the page stops
            // taking payments; without a session the page might outlive it.
            session_duration: self.session_minutes,
        };
        // The session starts when Flutterwave makes the page, a little
        // before the answer comes: counted from before the call, the stored
        // end is never later than the real one.
        let asked_at = chrono::Utc::now();
        let link = self
            .flutterwave
            .create_payment_link(&request)
            .await
            .map_err(provider_error)?;
        let expires_at = asked_at + chrono::Duration::minutes(i64::from(self.session_minutes));
        let stored = self
            .orders
            .store_checkout_link(actor, &order.order_id, &link, expires_at)
            .await?;
        Ok(stored.flutterwave.checkout_link.unwrap_or(link))
    }
}
