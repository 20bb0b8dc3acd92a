//! The invariant checker: compares the ground truth (what the database
//! committed, what the stand-in peers received, what the simulator applied)
//! and counts every way a run can be wrong. Pure, so that each count is
//! unit-tested on hand-made histories.

use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// An AMQP outbox record as the database holds it after the run.
#[derive(Debug, Clone)]
pub struct Committed {
    pub message_id: String,
    pub aggregate_id: String,
    pub seq: i64,
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

/// Everything the checker reads.
#[derive(Debug, Default)]
pub struct GroundTruth {
    pub committed: Vec<Committed>,
    /// Message ids in the order the peers received them, redeliveries included.
    pub received: Vec<String>,
    pub orders: Vec<OrderOutcome>,
    /// Notifications per (order, recipient, text), from the database.
    pub notifications: Vec<(String, String, String)>,
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

    let mut notified: HashMap<&(String, String, String), usize> = HashMap::new();
    for n in &truth.notifications {
        *notified.entry(n).or_default() += 1;
    }
    let doubled_notifications: usize = notified.values().map(|n| n.saturating_sub(1)).sum();
    let doubled_refunds: usize = truth
        .orders
        .iter()
        .map(|o| o.refunds_applied.saturating_sub(o.refunds_expected.max(1)))
        .sum();

    let stuck_orders: Vec<String> = truth.orders.iter().filter_map(stuck_reason).collect();

    Counts {
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
        let note = ("A".to_string(), "bob".to_string(), "paid".to_string());
        truth.notifications = vec![note.clone(), note];
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
