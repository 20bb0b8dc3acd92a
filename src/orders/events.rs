//! The events each order change causes, as outbox records: the exchanges,
//! routing keys and bodies peers rely on (API.md, "Events out"), and the
//! commands to external systems (refunds).

use super::model::{ExtensionRequest, Order, StrayPayment};
use outbox::NewRecord;
use serde_json::{Value, json};

pub const USER_SELLER: &str = "user-seller";
pub const USER_BUYER: &str = "user-buyer";
pub const ORDER_EMAIL: &str = "order-email";
/// Outbox command that refunds a cancelled paid order through Flutterwave.
pub const REFUND_COMMAND: &str = "flutterwave.refund";

/// The outbox aggregate of the refund of one payment of an order: one
/// still settling holds back neither the order's events nor the refund of
/// another payment.
fn refund_aggregate(order_id: &str, transaction_id: &str) -> String {
    format!("refund:{order_id}:{transaction_id}")
}

/// Exchange names, with the deployment's prefix.
#[derive(Debug, Clone)]
pub struct Exchanges {
    pub seller_updates: String,
    pub buyer_updates: String,
    pub order: String,
    pub review: String,
}

impl Exchanges {
    pub fn new(prefix: &str) -> Self {
        Self {
            seller_updates: format!("{prefix}gigconnect-seller-updates"),
            buyer_updates: format!("{prefix}gigconnect-buyer-updates"),
            order: format!("{prefix}gigconnect-order-exchange"),
            review: format!("{prefix}gigconnect-review"),
        }
    }
}

/// What every record of one request carries besides its body.
#[derive(Debug, Clone)]
pub struct EventContext {
    pub exchanges: Exchanges,
    pub client_url: String,
    pub correlation_id: Option<String>,
    pub traceparent: String,
}

impl EventContext {
    /// `record` with this context's correlation id and `traceparent`.
    pub fn stamp(&self, record: NewRecord) -> NewRecord {
        record
            .with_correlation(self.correlation_id.clone())
            .with_header("traceparent", self.traceparent.clone())
    }
}

/// Collects the records one change of `order` causes.
pub struct Emitter<'a> {
    ctx: &'a EventContext,
    order: &'a Order,
    records: Vec<NewRecord>,
}

impl<'a> Emitter<'a> {
    pub fn new(ctx: &'a EventContext, order: &'a Order) -> Self {
        Self {
            ctx,
            order,
            records: Vec::new(),
        }
    }

    pub fn into_records(self) -> Vec<NewRecord> {
        self.records
    }

    fn push(&mut self, record: NewRecord) {
        self.records.push(self.ctx.stamp(record));
    }

    fn amqp(&mut self, exchange: String, key: &str, body: Value) {
        self.push(NewRecord::amqp(&self.order.order_id, exchange, key, body));
    }

    fn email(&mut self, body: Value) {
        self.amqp(self.ctx.exchanges.order.clone(), ORDER_EMAIL, body);
    }

    fn order_url(&self) -> String {
        format!(
            "{}/orders/{}/activities",
            self.ctx.client_url.trim_end_matches('/'),
            self.order.order_id
        )
    }

    /// AWAITING_PAYMENT -> PROCESSING.
    pub fn paid(&mut self) {
        let o = self.order;
        self.amqp(
            self.ctx.exchanges.seller_updates.clone(),
            USER_SELLER,
            json!({ "type": "create-order", "sellerId": o.seller_id, "ongoingJobs": 1 }),
        );
        for (template, receiver) in [
            ("orderPlaced", &o.seller_email),
            ("orderReceipt", &o.buyer_email),
        ] {
            let body = json!({
                "template": template,
                "orderId": o.order_id,
                "invoiceId": o.invoice_id,
                "orderDue": o.due_date(),
                "amount": o.price,
                "buyerUsername": o.buyer_username.to_lowercase(),
                "sellerUsername": o.seller_username.to_lowercase(),
                "title": o.offer.gig_title,
                "description": o.offer.description,
                "requirements": o.requirements,
                "serviceFee": o.service_fee,
                "total": o.amount_due(),
                "orderUrl": self.order_url(),
                "receiverEmail": receiver,
            });
            self.email(body);
        }
    }

    /// -> CANCELLED; `refund` is the amount owed back, if the order was paid.
    pub fn cancelled(&mut self, refund: Option<f64>) {
        let o = self.order;
        self.amqp(
            self.ctx.exchanges.seller_updates.clone(),
            USER_SELLER,
            json!({ "type": "cancel-order", "sellerId": o.seller_id }),
        );
        self.amqp(
            self.ctx.exchanges.buyer_updates.clone(),
            USER_BUYER,
            json!({ "type": "cancel-order", "buyerId": o.buyer_id, "purchasedGigs": o.gig_id }),
        );
        if let Some(amount) = refund {
            let paid_with = o.flutterwave.transaction_id.as_deref().unwrap_or_default();
            self.refund(
                paid_with,
                json!({
                    "orderId": o.order_id,
                    "transactionId": o.flutterwave.transaction_id,
                    "amount": amount,
                    "currency": o.currency,
                }),
            );
        }
    }

    /// A payment the order could not take: refunded in full, by the same
    /// command as a cancellation's refund.
    pub fn stray_payment(&mut self, stray: &StrayPayment) {
        self.refund(
            &stray.transaction_id,
            json!({
                "orderId": self.order.order_id,
                "transactionId": stray.transaction_id,
                "amount": stray.amount,
                "currency": stray.currency,
                "stray": true,
            }),
        );
    }

    /// Each refund forms its own aggregate: one still settling at
    /// Flutterwave (looked at again for as long as it takes) holds nothing
    /// else back, as the relay stops an aggregate at its first undelivered
    /// record.
    fn refund(&mut self, transaction_id: &str, body: Value) {
        let aggregate = refund_aggregate(&self.order.order_id, transaction_id);
        self.push(NewRecord::command(&aggregate, REFUND_COMMAND, body));
    }

    pub fn extension_requested(&mut self, request: &ExtensionRequest) {
        let o = self.order;
        let body = json!({
            "template": "orderExtension",
            "buyerUsername": o.buyer_username.to_lowercase(),
            "sellerUsername": o.seller_username.to_lowercase(),
            "originalDate": request.original_date,
            "newDate": request.new_date,
            "reason": request.reason,
            "orderUrl": self.order_url(),
            "receiverEmail": o.buyer_email,
        });
        self.email(body);
    }

    pub fn extension_decided(&mut self, approved: bool) {
        let o = self.order;
        let (subject, header, kind, message) = if approved {
            (
                "Congratulations: Your extension request was approved",
                "Request Accepted",
                "Accepted",
                "You can continue working on the order.",
            )
        } else {
            (
                "Sorry: Your extension request was rejected",
                "Request Rejected",
                "Rejected",
                "You can contact the buyer for more information.",
            )
        };
        let body = json!({
            "template": "orderExtensionApproval",
            "subject": subject,
            "header": header,
            "type": kind,
            "message": message,
            "buyerUsername": o.buyer_username.to_lowercase(),
            "sellerUsername": o.seller_username.to_lowercase(),
            "orderUrl": self.order_url(),
            "receiverEmail": o.seller_email,
        });
        self.email(body);
    }

    pub fn delivered(&mut self, message: &str) {
        let o = self.order;
        let body = json!({
            "template": "orderDelivered",
            "orderId": o.order_id,
            "buyerUsername": o.buyer_username.to_lowercase(),
            "sellerUsername": o.seller_username.to_lowercase(),
            "title": o.offer.gig_title,
            "description": message,
            "orderUrl": self.order_url(),
            "receiverEmail": o.buyer_email,
        });
        self.email(body);
    }

    /// DELIVERED -> COMPLETED; figures from the stored order only.
    pub fn completed(&mut self, recent_delivery: &str) {
        let o = self.order;
        self.amqp(
            self.ctx.exchanges.seller_updates.clone(),
            USER_SELLER,
            json!({
                "type": "approve-order",
                "sellerId": o.seller_id,
                "buyerId": o.buyer_id,
                "ongoingJobs": -1,
                "completedJobs": 1,
                "totalEarnings": o.price,
                "recentDelivery": recent_delivery,
            }),
        );
        self.amqp(
            self.ctx.exchanges.buyer_updates.clone(),
            USER_BUYER,
            json!({ "type": "purchased-gigs", "buyerId": o.buyer_id, "purchasedGigs": o.gig_id }),
        );
    }
}
