//! Reviews the buyer or the seller left on an order (they arrive from the
//! review service): stored on the order with a notification for the other
//! party, in the same transaction as the inbox entry of the message that
//! carried them, so a redelivered message has no second effect.

use super::commands::{Actor, Change, Decision, InboxGuard, Orders};
use super::error::OrderError;
use super::model::{Notification, Party, Review};
use chrono::{DateTime, Utc};
use outbox::Inbox;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Name of the review consumer in the inbox.
pub const REVIEW_CONSUMER: &str = "order-review";

/// Who wrote the review; the other party is notified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reviewer {
    Buyer,
    Seller,
}

impl Reviewer {
    /// The `type` of the message that carries such a review.
    pub fn message_type(self) -> &'static str {
        match self {
            Reviewer::Buyer => "buyer-review",
            Reviewer::Seller => "seller-review",
        }
    }

    fn party(self) -> Party {
        match self {
            Reviewer::Buyer => Party::Buyer,
            Reviewer::Seller => Party::Seller,
        }
    }
}

/// A review as the review service sent it, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReview {
    pub reviewer: Reviewer,
    pub order_id: String,
    /// 1 to 5.
    pub rating: i32,
    pub review: String,
    /// When the reviewer wrote it; the time of applying when the message has none.
    pub created_at: Option<DateTime<Utc>>,
}

/// What applying a review did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewOutcome {
    /// Stored, and the other party notified.
    Applied,
    /// This message was applied before (the inbox knew it): nothing done.
    Duplicate,
    /// The order already holds the same rating and text (the producer sent it
    /// again under a new message id): recorded in the inbox, nothing else.
    Unchanged,
}

impl Orders {
    /// Applies `review` once per `message_id`. Fails with
    /// [`OrderError::NotFound`] while the order does not exist (the review may
    /// overtake the order's creation), and then writes no inbox entry, so a
    /// later try can still apply it. The records it causes carry the
    /// consumed message's `traceparent` and correlation id.
    pub async fn apply_review(
        &self,
        inbox: &Inbox,
        message_id: &str,
        review: NewReview,
        traceparent: &str,
        correlation_id: Option<String>,
    ) -> Result<ReviewOutcome, OrderError> {
        let guard = InboxGuard {
            inbox: inbox.clone(),
            consumer: REVIEW_CONSUMER,
            message_id: message_id.to_string(),
            details: bson::doc! {
                "orderId": &review.order_id,
                "type": review.reviewer.message_type(),
            },
        };
        let actor = Actor {
            username: String::new(),
            correlation_id,
            traceparent: traceparent.to_string(),
        };
        // The decision runs once per transaction attempt; the last one counts.
        let unchanged = Arc::new(AtomicBool::new(false));
        let seen = unchanged.clone();
        let order_id = review.order_id.clone();
        let applied = self
            .change_guarded(&order_id, &actor, Some(guard), move |order, _, now| {
                let stored = match review.reviewer {
                    Reviewer::Buyer => &order.buyer_review,
                    Reviewer::Seller => &order.seller_review,
                };
                let same = stored
                    .as_ref()
                    .is_some_and(|s| s.rating == review.rating && s.review == review.review);
                seen.store(same, Ordering::Relaxed);
                if same {
                    return Ok(Decision::Unchanged);
                }
                let created = review.created_at.unwrap_or(now).to_rfc3339();
                let stored = Some(Review {
                    rating: review.rating,
                    review: review.review.clone(),
                    created: created.clone(),
                });
                let mut next = order.clone();
                match review.reviewer {
                    Reviewer::Buyer => {
                        next.buyer_review = stored;
                        next.events.buyer_review = Some(created);
                    }
                    Reviewer::Seller => {
                        next.seller_review = stored;
                        next.events.seller_review = Some(created);
                    }
                }
                let note = Notification::to_other_party(
                    &next,
                    review.reviewer.party(),
                    &format!("left you a {} star review", review.rating),
                    now,
                );
                Ok(Decision::from(Change {
                    order: next,
                    notifications: vec![note],
                    // API.md lists no outgoing event for a review.
                    records: vec![],
                }))
            })
            .await?;
        Ok(match applied {
            None => ReviewOutcome::Duplicate,
            Some(_) if unchanged.load(Ordering::Relaxed) => ReviewOutcome::Unchanged,
            Some(_) => ReviewOutcome::Applied,
        })
    }
}
