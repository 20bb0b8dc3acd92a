//! The invariant checker: compares the ground truth (what the database
//! committed, what the stand-in peers received, what the simulator applied)
//! and counts every way a run can be wrong. Pure, so that each count is
//! unit-tested on hand-made histories.

use crate::listeners::Heard;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// An AMQP outbox record as the database holds it after the run.
#[derive(Debug, Clone)]
pub struct Committed {
    pub message_id: String,
    pub aggregate_id: String,
    pub seq: i64,
    /// The commit's time (Unix milliseconds).
    pub committed_at_ms: i64,
    /// What the message means to a peer (routing key + type or template +
    /// receiver): two committed records with the same meaning for one order
    /// are one business effect staged twice.
    pub meaning: String,
}

/// What one order was meant to end as, and what it ended as.
#[derive(Debug, Clone)]
pub struct OrderOutcome {
    pub order_id: String,
    pub expected_status: String,
    pub actual_status: Option<String>,
    /// Refunds the order is owed (0 or 1) and those the simulator applied.
    pub refunds_expected: usize,
    pub refunds_applied: usize,
    /// Reviews published for it (each once, however often re-sent) and
    /// whether the order carries it.
    pub review_expected: bool,
    pub review_stored: bool,
}

/// A notification as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoredNotification {
    pub id: String,
    pub order_id: String,
    pub user_to: String,
    pub message: String,
}

/// Everything the checker reads.
#[derive(Debug, Default)]
pub struct GroundTruth {
    pub committed: Vec<Committed>,
    /// Message ids in the order the peers received them, redeliveries included.
    pub received: Vec<String>,
    /// When each message id first arrived (Unix milliseconds).
    pub first_arrivals: HashMap<String, i64>,
    pub orders: Vec<OrderOutcome>,
    pub notifications: Vec<StoredNotification>,
    /// What the Socket.IO listeners received, and the users whose listener
    /// stayed connected throughout.
    pub heard: Vec<Heard>,
    pub steady_listeners: Vec<String>,
    /// Outbox records still pending or parked when the run ended.
    pub undelivered: usize,
}

/// The counts of one run; any non-zero field but `redelivered` fails it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub events_expected: usize,
    pub events_received: usize,
    /// Committed, never received.
    pub lost: usize,
    /// Extra copies of a message id: allowed (at least once), reported.
    pub redelivered: usize,
    /// One business event committed twice under different message ids.
    pub duplicated: usize,
    /// Refunds, notifications or reviews applied more than once.
    pub doubled_effects: usize,
    /// Messages of one order received before an earlier one of the same order.
    pub out_of_order: usize,
    /// Received, never committed.
    pub phantom: usize,
    /// Orders that did not reach their planned end (status, refund or review).
    pub stuck: usize,
    /// Outbox records (any destination) pending or parked at the end; their
    /// AMQP ones are also counted as lost.
    pub undelivered: usize,
    /// The longest any committed message waited for its first receipt, in
    /// milliseconds: how long the fault held events up.
    pub worst_delay_ms: i64,
    /// Notifications for users whose socket stayed up, and how many of them
    /// their user heard.
    pub socket_expected: usize,
    pub socket_heard: usize,
    /// A steady listener never heard a notification meant for it.
    pub socket_lost: usize,
    /// A listener heard another user's notification.
    pub socket_misdirected: usize,
    /// A listener heard a notification the database does not hold.
    pub socket_phantom: usize,
    /// What each stuck order lacks, for the report.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stuck_orders: Vec<String>,
}

impl Counts {
    /// The counts that must be zero.
    pub fn violations(&self) -> usize {
        self.lost
            + self.duplicated
            + self.doubled_effects
            + self.out_of_order
            + self.phantom
            + self.stuck
            + self.socket_lost
            + self.socket_misdirected
            + self.socket_phantom
    }
}

pub fn check(truth: &GroundTruth) -> Counts {
    let committed: HashMap<&str, &Committed> = truth
        .committed
        .iter()
        .map(|c| (c.message_id.as_str(), c))
        .collect();

    let mut first_seen: HashSet<&str> = HashSet::new();
    let mut redelivered = 0;
    let mut phantom = 0;
    let mut out_of_order = 0;
    // The highest seq of each order received so far.
    let mut high_water: HashMap<&str, i64> = HashMap::new();
    for id in &truth.received {
        if !first_seen.insert(id.as_str()) {
            redelivered += 1;
            continue;
        }
        let Some(record) = committed.get(id.as_str()) else {
            phantom += 1;
            continue;
        };
        let high = high_water.entry(record.aggregate_id.as_str()).or_insert(0);
        if record.seq < *high {
            out_of_order += 1;
        } else {
            *high = record.seq;
        }
    }
    let events_received = first_seen.len() - phantom;
    let lost = truth
        .committed
        .iter()
        .filter(|c| !first_seen.contains(c.message_id.as_str()))
        .count();

    let mut meanings: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for c in &truth.committed {
        *meanings
            .entry((c.aggregate_id.as_str(), c.meaning.as_str()))
            .or_default() += 1;
    }
    let duplicated = meanings.values().map(|n| n.saturating_sub(1)).sum();

    let mut notified: HashMap<(&str, &str, &str), usize> = HashMap::new();
    for n in &truth.notifications {
        *notified
            .entry((&n.order_id, &n.user_to, &n.message))
            .or_default() += 1;
    }
    let doubled_notifications: usize = notified.values().map(|n| n.saturating_sub(1)).sum();
    let doubled_refunds: usize = truth
        .orders
        .iter()
        .map(|o| o.refunds_applied.saturating_sub(o.refunds_expected.max(1)))
        .sum();

    let stuck_orders: Vec<String> = truth.orders.iter().filter_map(stuck_reason).collect();

    let worst_delay_ms = truth
        .committed
        .iter()
        .filter_map(|c| Some(truth.first_arrivals.get(&c.message_id)? - c.committed_at_ms))
        .max()
        .unwrap_or(0)
        .max(0);
    let sockets = check_sockets(truth);
    Counts {
        worst_delay_ms,
        socket_expected: sockets.expected,
        socket_heard: sockets.heard,
        socket_lost: sockets.lost,
        socket_misdirected: sockets.misdirected,
        socket_phantom: sockets.phantom,
        events_expected: truth.committed.len(),
        events_received,
        lost,
        redelivered,
        duplicated,
        doubled_effects: doubled_notifications + doubled_refunds,
        out_of_order,
        phantom,
        stuck: stuck_orders.len(),
        undelivered: truth.undelivered,
        stuck_orders,
    }
}

#[derive(Default)]
struct SocketCounts {
    expected: usize,
    heard: usize,
    lost: usize,
    misdirected: usize,
    phantom: usize,
}

fn check_sockets(truth: &GroundTruth) -> SocketCounts {
    let stored: HashMap<&str, &StoredNotification> = truth
        .notifications
        .iter()
        .map(|n| (n.id.as_str(), n))
        .collect();
    let mut counts = SocketCounts::default();
    let mut rightly_heard: HashSet<&str> = HashSet::new();
    for h in &truth.heard {
        match stored.get(h.notification_id.as_str()) {
            None => counts.phantom += 1,
            Some(n) if !n.user_to.eq_ignore_ascii_case(&h.listener) => counts.misdirected += 1,
            Some(n) => {
                rightly_heard.insert(n.id.as_str());
            }
        }
    }
    let steady: HashSet<String> = truth
        .steady_listeners
        .iter()
        .map(|u| u.to_lowercase())
        .collect();
    for n in &truth.notifications {
        if steady.contains(&n.user_to.to_lowercase()) {
            counts.expected += 1;
            if rightly_heard.contains(n.id.as_str()) {
                counts.heard += 1;
            } else {
                counts.lost += 1;
            }
        }
    }
    counts
}

/// Why `o` did not end as planned, if it did not.
fn stuck_reason(o: &OrderOutcome) -> Option<String> {
    let actual = o.actual_status.as_deref().unwrap_or("missing");
    let reason = if actual != o.expected_status {
        format!("status {actual}, planned {}", o.expected_status)
    } else if o.refunds_applied < o.refunds_expected {
        "refund owed, none applied".to_string()
    } else if o.refunds_expected == 0 && o.refunds_applied > 0 {
        "refunded, none owed".to_string()
    } else if o.review_expected && !o.review_stored {
        "review published, not stored".to_string()
    } else {
        return None;
    };
    Some(format!("{}: {reason}", o.order_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, order: &str, seq: i64, meaning: &str) -> Committed {
        Committed {
            message_id: id.into(),
            aggregate_id: order.into(),
            seq,
            committed_at_ms: 1_000 * seq,
            meaning: meaning.into(),
        }
    }

    fn outcome(order: &str, expected: &str, actual: &str) -> OrderOutcome {
        OrderOutcome {
            order_id: order.into(),
            expected_status: expected.into(),
            actual_status: Some(actual.into()),
            refunds_expected: 0,
            refunds_applied: 0,
            review_expected: false,
            review_stored: false,
        }
    }

    fn notification(id: &str, user_to: &str) -> StoredNotification {
        StoredNotification {
            id: id.into(),
            order_id: "A".into(),
            user_to: user_to.into(),
            message: "paid".into(),
        }
    }

    fn heard(listener: &str, id: &str) -> Heard {
        Heard {
            listener: listener.into(),
            notification_id: id.into(),
        }
    }

    #[test]
    fn sockets_count_lost_misdirected_and_phantom_emits() {
        let mut truth = history();
        truth.notifications = vec![
            notification("n1", "bob"),
            notification("n2", "Alice"),
            notification("n3", "carol"),
        ];
        truth.steady_listeners = vec!["bob".into(), "alice".into()];
        truth.heard = vec![
            heard("bob", "n1"),
            heard("bob", "n1"),
            heard("alice", "n1"),
            heard("bob", "zz"),
        ];
        let counts = check(&truth);
        // n1 heard by bob; n2 never heard by steady alice; carol is not steady.
        assert_eq!(counts.socket_expected, 2);
        assert_eq!(counts.socket_heard, 1);
        assert_eq!(counts.socket_lost, 1);
        assert_eq!(counts.socket_misdirected, 1);
        assert_eq!(counts.socket_phantom, 1);
        truth.heard = vec![heard("bob", "n1"), heard("alice", "n2")];
        assert_eq!(check(&truth).violations(), 0);
    }

    fn history() -> GroundTruth {
        GroundTruth {
            committed: vec![
                record("a1", "A", 1, "paid"),
                record("a2", "A", 2, "delivered"),
                record("b1", "B", 1, "paid"),
            ],
            received: vec!["a1".into(), "b1".into(), "a2".into()],
            orders: vec![outcome("A", "COMPLETED", "COMPLETED")],
            ..GroundTruth::default()
        }
    }

    #[test]
    fn a_clean_history_has_no_violation() {
        let counts = check(&history());
        assert_eq!(counts.violations(), 0, "{counts:?}");
        assert_eq!(counts.events_expected, 3);
        assert_eq!(counts.events_received, 3);
    }

    #[test]
    fn the_worst_delay_is_the_longest_wait_for_a_first_receipt() {
        let mut truth = history();
        // a2 was committed at 2 000 ms; b1 at 1 000 ms.
        truth.first_arrivals = [("a2".to_string(), 2_500), ("b1".to_string(), 4_000)]
            .into_iter()
            .collect();
        assert_eq!(check(&truth).worst_delay_ms, 3_000);
    }

    #[test]
    fn redeliveries_are_counted_but_allowed() {
        let mut truth = history();
        truth.received.push("a1".into());
        let counts = check(&truth);
        assert_eq!(counts.redelivered, 1);
        assert_eq!(counts.violations(), 0);
    }

    #[test]
    fn a_message_never_received_is_lost() {
        let mut truth = history();
        truth.received.retain(|id| id != "b1");
        assert_eq!(check(&truth).lost, 1);
    }

    #[test]
    fn a_message_never_committed_is_a_phantom() {
        let mut truth = history();
        truth.received.push("zz".into());
        let counts = check(&truth);
        assert_eq!(counts.phantom, 1);
        assert_eq!(counts.events_received, 3);
    }

    #[test]
    fn a_later_message_of_an_order_first_is_out_of_order() {
        let mut truth = history();
        truth.received = vec!["a2".into(), "a1".into(), "b1".into()];
        assert_eq!(check(&truth).out_of_order, 1);
    }

    #[test]
    fn a_redelivery_of_an_older_message_is_not_a_reordering() {
        let mut truth = history();
        truth.received = vec!["a1".into(), "a2".into(), "a1".into(), "b1".into()];
        let counts = check(&truth);
        assert_eq!(counts.out_of_order, 0);
        assert_eq!(counts.redelivered, 1);
    }

    #[test]
    fn one_event_committed_twice_is_duplicated() {
        let mut truth = history();
        truth.committed.push(record("a3", "A", 3, "paid"));
        truth.received.push("a3".into());
        assert_eq!(check(&truth).duplicated, 1);
    }

    #[test]
    fn a_second_refund_or_notification_is_a_doubled_effect() {
        let mut truth = history();
        truth.orders[0].refunds_expected = 1;
        truth.orders[0].refunds_applied = 2;
        truth.notifications = vec![notification("n1", "bob"), notification("n2", "bob")];
        assert_eq!(check(&truth).doubled_effects, 2);
    }

    #[test]
    fn a_missing_refund_review_or_status_is_stuck() {
        let mut truth = history();
        truth.orders.push(outcome("B", "CANCELLED", "PROCESSING"));
        let mut refund_owed = outcome("C", "CANCELLED", "CANCELLED");
        refund_owed.refunds_expected = 1;
        truth.orders.push(refund_owed);
        let mut review_owed = outcome("D", "COMPLETED", "COMPLETED");
        review_owed.review_expected = true;
        truth.orders.push(review_owed);
        assert_eq!(check(&truth).stuck, 3);
    }
}
