//! Stored documents: orders (the old schema's fields plus `version`,
//! payment and refund state) and notifications. Field names are the old
//! service's, so the gateway and clients read the same JSON.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    AwaitingPayment,
    Processing,
    Delivered,
    Completed,
    Cancelled,
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OrderStatus::AwaitingPayment => "AWAITING_PAYMENT",
            OrderStatus::Processing => "PROCESSING",
            OrderStatus::Delivered => "DELIVERED",
            OrderStatus::Completed => "COMPLETED",
            OrderStatus::Cancelled => "CANCELLED",
        })
    }
}

/// The bounds documented below hold for every stored offer: creation
/// checks them (`orders::validation`), and an extension only adds days.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Offer {
    #[schema(min_length = 1, max_length = 512)]
    pub gig_title: String,
    #[schema(exclusive_minimum = 0, maximum = 100_000_000)]
    pub price: f64,
    #[schema(min_length = 1, max_length = 5000)]
    pub description: String,
    /// 1 to 3650 when the order is created; approved extensions add to it.
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "super::validation::integral")]
    pub delivery_in_days: i64,
    #[schema(min_length = 1, max_length = 64)]
    pub old_delivery_date: String,
    #[serde(default)]
    #[schema(max_length = 64)]
    pub new_delivery_date: Option<String>,
    pub accepted: bool,
    pub cancelled: bool,
    #[serde(default)]
    #[schema(max_length = 5000)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveredWork {
    pub message: String,
    pub file: Option<String>,
    pub file_type: Option<String>,
    pub file_size: Option<i64>,
    pub file_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionRequest {
    pub original_date: String,
    pub new_date: String,
    pub days: i64,
    pub reason: String,
}

/// Milestones shown on the order's activity page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderEvents {
    pub place_order: Option<String>,
    pub requirements: Option<String>,
    pub order_started: Option<String>,
    pub delivery_date_update: Option<String>,
    pub order_delivered: Option<String>,
    pub buyer_review: Option<String>,
    pub seller_review: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Review {
    pub rating: i32,
    pub review: String,
    pub created: String,
}

/// The Flutterwave side of an order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Payment {
    pub tx_ref: String,
    pub transaction_id: Option<String>,
    pub gateway_status: Option<String>,
    pub payment_method: Option<String>,
    pub fee: Option<f64>,
    pub amount_paid: Option<f64>,
    pub paid_at: Option<String>,
    /// The hosted payment link, asked for once and reused while its page
    /// takes payments.
    pub checkout_link: Option<String>,
    /// When the link was created; reconciliation counts from it.
    #[serde(default)]
    pub checkout_at: Option<DateTime<Utc>>,
    /// When the link's page stops taking payments (its `session_duration`);
    /// none for links made before sessions were sent, which are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkout_expires_at: Option<DateTime<Utc>>,
    /// Who is asking Flutterwave for the link right now, so that concurrent
    /// first requests make one provider call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkout_claim: Option<CheckoutClaim>,
}

impl Payment {
    /// The checkout link, while its page still takes payments at `now`.
    pub fn live_checkout_link(&self, now: DateTime<Utc>) -> Option<&str> {
        self.checkout_link
            .as_deref()
            .filter(|_| self.checkout_expires_at.is_none_or(|end| end > now))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckoutClaim {
    pub token: String,
    pub until: DateTime<Utc>,
}

/// `pending`: owed and not yet asked for, or asked for and not settled at
/// Flutterwave (then `flutterwaveRefundId` is set and it is looked up
/// again until it settles); `completed`: settled, and stays so; `failed`:
/// refused or reported failed by Flutterwave, left to an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum RefundStatus {
    Pending,
    Completed,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Refund {
    pub status: RefundStatus,
    pub amount: f64,
    pub flutterwave_refund_id: Option<String>,
    pub attempts: i32,
}

impl Refund {
    /// Whether `outcome` may replace this refund: a completed refund stays
    /// completed, whatever a later, overlapping attempt reports.
    pub fn may_become(&self, outcome: &Refund) -> bool {
        self != outcome && self.status != RefundStatus::Completed
    }
}

/// A payment the order could not take: made after it was cancelled, or a
/// second payment of an order already paid. It is refunded in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StrayPayment {
    pub transaction_id: String,
    pub amount: f64,
    pub currency: String,
    pub refund: Refund,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    /// UUIDv7: sorts by creation time, which pagination relies on.
    #[serde(rename = "_id")]
    pub id: String,
    pub offer: Offer,
    pub gig_id: String,
    pub seller_id: String,
    pub seller_username: String,
    pub seller_image: String,
    pub seller_email: String,
    pub gig_cover_image: String,
    pub gig_main_title: String,
    pub gig_basic_title: String,
    pub gig_basic_description: String,
    pub buyer_id: String,
    pub buyer_username: String,
    pub buyer_email: String,
    pub buyer_image: String,
    pub status: OrderStatus,
    pub order_id: String,
    pub invoice_id: String,
    pub quantity: i64,
    pub price: f64,
    pub service_fee: f64,
    pub currency: String,
    pub requirements: String,
    pub approved: bool,
    pub delivered: bool,
    pub cancelled: bool,
    pub approved_at: Option<String>,
    pub delivered_work: Vec<DeliveredWork>,
    pub request_extension: Option<ExtensionRequest>,
    pub date_ordered: String,
    pub events: OrderEvents,
    pub buyer_review: Option<Review>,
    pub seller_review: Option<Review>,
    pub flutterwave: Payment,
    pub refund: Option<Refund>,
    /// Payments the order could not take, each refunded in full; absent
    /// while there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stray_payments: Vec<StrayPayment>,
    /// Bumped by every change; a write succeeds only on the version it read.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Which side of an order a user is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    Buyer,
    Seller,
}

impl Order {
    /// The refund of the stray payment `stray` names, or the order's own
    /// (its cancellation's) when `None`.
    pub fn refund_for(&self, stray: Option<&str>) -> Option<&Refund> {
        match stray {
            None => self.refund.as_ref(),
            Some(transaction) => self
                .stray_payments
                .iter()
                .find(|s| s.transaction_id == transaction)
                .map(|s| &s.refund),
        }
    }

    /// As [`Order::refund_for`], to change it.
    pub fn refund_for_mut(&mut self, stray: Option<&str>) -> Option<&mut Refund> {
        match stray {
            None => self.refund.as_mut(),
            Some(transaction) => self
                .stray_payments
                .iter_mut()
                .find(|s| s.transaction_id == transaction)
                .map(|s| &mut s.refund),
        }
    }

    /// Whether `transaction_id` is the payment the order was paid with.
    pub fn paid_with(&self, transaction_id: &str) -> bool {
        self.flutterwave.transaction_id.as_deref() == Some(transaction_id)
    }

    /// The caller's side, comparing usernames case-insensitively; `None` for strangers.
    pub fn party_of(&self, username: &str) -> Option<Party> {
        if self.buyer_username.eq_ignore_ascii_case(username) {
            Some(Party::Buyer)
        } else if self.seller_username.eq_ignore_ascii_case(username) {
            Some(Party::Seller)
        } else {
            None
        }
    }

    /// What the buyer must pay: price plus the stored fee.
    pub fn amount_due(&self) -> f64 {
        super::fees::total(self.price, self.service_fee)
    }

    /// The delivery date currently agreed.
    pub fn due_date(&self) -> &str {
        self.offer
            .new_delivery_date
            .as_deref()
            .filter(|d| !d.is_empty())
            .unwrap_or(&self.offer.old_delivery_date)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// UUIDv7, so the newest sorts last and clients can drop duplicates by it.
    #[serde(rename = "_id")]
    pub id: String,
    pub user_to: String,
    pub sender_username: String,
    pub sender_picture: String,
    pub receiver_username: String,
    pub receiver_picture: String,
    pub is_read: bool,
    pub message: String,
    pub order_id: String,
    pub created_at: DateTime<Utc>,
}

impl Notification {
    /// A notification from one party of `order` to the other.
    pub fn to_other_party(order: &Order, from: Party, message: &str, now: DateTime<Utc>) -> Self {
        let (sender, sender_picture, receiver, receiver_picture) = match from {
            Party::Buyer => (
                &order.buyer_username,
                &order.buyer_image,
                &order.seller_username,
                &order.seller_image,
            ),
            Party::Seller => (
                &order.seller_username,
                &order.seller_image,
                &order.buyer_username,
                &order.buyer_image,
            ),
        };
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            user_to: receiver.clone(),
            sender_username: sender.clone(),
            sender_picture: sender_picture.clone(),
            receiver_username: receiver.clone(),
            receiver_picture: receiver_picture.clone(),
            is_read: false,
            message: message.to_string(),
            order_id: order.order_id.clone(),
            created_at: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkout_link_is_live_until_its_page_ends() {
        let now = Utc::now();
        let mut payment = Payment {
            checkout_link: Some("https://pay/1".into()),
            ..Payment::default()
        };
        assert_eq!(
            payment.live_checkout_link(now),
            Some("https://pay/1"),
            "no end known: kept"
        );
        payment.checkout_expires_at = Some(now + chrono::Duration::minutes(1));
        assert_eq!(payment.live_checkout_link(now), Some("https://pay/1"));
        payment.checkout_expires_at = Some(now);
        assert_eq!(payment.live_checkout_link(now), None, "ended");
        assert_eq!(Payment::default().live_checkout_link(now), None);
    }

    fn refund(status: RefundStatus, id: Option<&str>) -> Refund {
        Refund {
            status,
            amount: 95.0,
            flutterwave_refund_id: id.map(String::from),
            attempts: 1,
        }
    }

    #[test]
    fn a_completed_refund_stays_completed() {
        let pending = refund(RefundStatus::Pending, None);
        let completed = refund(RefundStatus::Completed, Some("7"));
        let failed = refund(RefundStatus::Failed, None);
        assert!(pending.may_become(&completed));
        assert!(pending.may_become(&failed));
        assert!(failed.may_become(&completed));
        // An overlapping attempt that was refused must not undo it.
        assert!(!completed.may_become(&failed));
        assert!(!completed.may_become(&refund(RefundStatus::Completed, Some("8"))));
        assert!(!pending.may_become(&pending.clone()));
    }
}
