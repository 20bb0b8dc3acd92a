//! The outbox records that carry a notification to its receiver's sockets.
//!
//! They are staged in the same transaction as the notification itself, so a
//! notification is emitted if and only if it was stored, at least once.

use crate::orders::model::{Notification, Order};
use outbox::{Destination, NewRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The one event the service emits, with the arguments `(order, notification)`.
pub const ORDER_NOTIFICATION: &str = "order notification";

/// The room of a user's sockets. Usernames compare case-insensitively
/// (ASCII, as everywhere else in the service), so the room is the
/// lower-cased name: a token for `Alice` and a notification for `alice`
/// meet in the same room.
pub fn user_room(username: &str) -> String {
    username.trim().to_ascii_lowercase()
}

/// Socket emits of one order form their own aggregate: they reach clients
/// in the order they were committed, yet never wait behind the order's AMQP
/// events while RabbitMQ is away (the relay stops an aggregate at its first
/// undeliverable record).
pub fn aggregate(order_id: &str) -> String {
    format!("socket:{order_id}")
}

/// What a socket record holds: the order as it is after the change, and the
/// notification (whose `_id` lets clients drop duplicates).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotificationPayload {
    pub order: Value,
    pub notification: Value,
}

/// The record that emits `notification` (about `order`) to its `userTo`.
pub fn notification_record(order: Option<&Order>, notification: &Notification) -> NewRecord {
    let payload = serde_json::json!({ "order": order, "notification": notification });
    NewRecord::new(
        aggregate(&notification.order_id),
        Destination::Socket {
            room: user_room(&notification.user_to),
            event: ORDER_NOTIFICATION.to_string(),
        },
        payload,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_ignore_ascii_case_and_padding() {
        assert_eq!(user_room(" Alice "), "alice");
        assert_eq!(user_room("ALICE"), user_room("alice"));
    }

    #[test]
    fn a_missing_order_is_null_in_the_payload() {
        let notification = Notification {
            id: "n-1".into(),
            user_to: "Bob".into(),
            sender_username: "alice".into(),
            sender_picture: String::new(),
            receiver_username: "Bob".into(),
            receiver_picture: String::new(),
            is_read: false,
            message: "hi".into(),
            order_id: "ord-1".into(),
            created_at: chrono::Utc::now(),
        };
        let record = notification_record(None, &notification);
        assert_eq!(record.aggregate_id, "socket:ord-1");
        assert_eq!(
            record.destination,
            Destination::Socket {
                room: "bob".into(),
                event: ORDER_NOTIFICATION.into()
            }
        );
        let payload: NotificationPayload = serde_json::from_value(record.payload).expect("payload");
        assert!(payload.order.is_null());
        assert_eq!(payload.notification["_id"], "n-1");
    }
}
