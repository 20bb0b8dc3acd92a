//! Which aggregates a round takes: those found or handed over, less those rounds in flight hold.

use bson::Document;
use std::collections::{HashMap, HashSet};

/// A round's work: aggregates with a record due, oldest due first.
#[derive(Default)]
pub(super) struct DueAggregates {
    pub(super) aggregates: Vec<DueAggregate>,
}

impl DueAggregates {
    /// The scan's aggregates in the order first seen, which is oldest due first.
    pub(super) fn from_scan(scanned: &[Document]) -> Self {
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut due = DueAggregates::default();
        for doc in scanned {
            let aggregate = doc.get_str("aggregateId").unwrap_or_default();
            let amqp = doc
                .get_document("destination")
                .ok()
                .and_then(|d| d.get_str("kind").ok())
                .is_some_and(|kind| kind == "amqp");
            let i = *index.entry(aggregate).or_insert_with(|| {
                due.aggregates.push(DueAggregate {
                    id: aggregate.to_string(),
                    amqp: false,
                    records: Some(Vec::new()),
                });
                due.aggregates.len() - 1
            });
            due.aggregates[i].amqp |= amqp;
            if let (Ok(id), Some(records)) = (doc.get_str("_id"), &mut due.aggregates[i].records) {
                records.push(id.to_string());
            }
        }
        due
    }

    /// Adds the handed-over aggregates the scan did not find, after its own.
    /// What their records are is unknown until they are read.
    pub(super) fn hand(&mut self, handed: Vec<String>) {
        if handed.is_empty() {
            return;
        }
        let mut known: HashSet<String> = self.aggregates.iter().map(|a| a.id.clone()).collect();
        for id in handed {
            if known.insert(id.clone()) {
                self.aggregates.push(DueAggregate {
                    id,
                    amqp: true,
                    records: None,
                });
            }
        }
    }

    pub(super) fn has_amqp(&self) -> bool {
        self.aggregates.iter().any(|a| a.amqp)
    }

    /// Leaves out the aggregates that a round in flight (`busy`) holds, and
    /// says what they held.
    pub(super) fn skip(&mut self, busy: &[&Busy]) -> Skipped {
        let mut skipped = Skipped::default();
        self.aggregates.retain(|a| {
            let Some(holder) = busy.iter().find(|b| b.aggregates.contains(&a.id)) else {
                return true;
            };
            // A handed-over aggregate was committed after `busy` was read.
            let unread = a
                .records
                .as_ref()
                .is_none_or(|records| records.iter().any(|r| !holder.records.contains(r)));
            skipped.any = true;
            skipped.unread |= unread;
            false
        });
        skipped
    }
}

/// The due aggregates a round left to the rounds still in flight.
#[derive(Default)]
pub(super) struct Skipped {
    any: bool,
    /// One has a due record that no round in flight read, so it needs
    /// another round.
    unread: bool,
}

impl Skipped {
    /// Whether another round follows as soon as a round in flight ends.
    /// While a backlog is swept (`sweeping`), a window can hold nothing but
    /// records that rounds in flight read (a batch committed at one instant
    /// is scanned twice): the next window waits for them, not for a poll.
    /// A window with other work (`other_work`) goes on at once, and the
    /// rounds in flight run on beside it.
    pub(super) fn defers(&self, sweeping: bool, other_work: bool) -> bool {
        self.unread || (self.any && sweeping && !other_work)
    }
}

pub(super) struct DueAggregate {
    pub(super) id: String,
    /// One of its due records goes to the broker (or, handed over, may).
    pub(super) amqp: bool,
    /// The ids of its due records that the scan saw; `None` when handed over.
    pub(super) records: Option<Vec<String>>,
}

/// What a round in flight holds: the aggregates it will release and the
/// records it read, to deliver and mark published (until then they look
/// pending).
pub(super) struct Busy {
    pub(super) aggregates: HashSet<String>,
    pub(super) records: HashSet<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{DateTime, doc};

    #[test]
    fn aggregates_of_rounds_in_flight_are_skipped_and_deferred_only_for_records_they_did_not_read()
    {
        let record = |id: &str, aggregate: &str| {
            doc! {
                "_id": id,
                "aggregateId": aggregate,
                "destination": { "kind": "amqp" },
                "nextAttemptAt": DateTime::from_millis(1),
            }
        };
        let scan = [record("r1", "a"), record("r2", "b"), record("r3", "a")];
        let holding = |aggregate: &str, records: &[&str]| Busy {
            aggregates: HashSet::from([aggregate.to_string()]),
            records: records.iter().map(|r| r.to_string()).collect(),
        };
        let busy = |records: &[&str]| holding("a", records);
        let ids = |due: &DueAggregates| {
            due.aggregates
                .iter()
                .map(|a| a.id.clone())
                .collect::<Vec<_>>()
        };

        let mut due = DueAggregates::from_scan(&scan);
        assert_eq!(
            due.aggregates[0].records,
            Some(vec!["r1".to_string(), "r3".to_string()])
        );
        // Every due record of `a` is in flight: nothing to come back for
        // (unless a sweep goes on past it).
        let skipped = due.skip(&[&busy(&["r1", "r3"])]);
        assert!(skipped.any && !skipped.unread);
        assert_eq!(ids(&due), ["b"]);

        // `r3` came after the round that read `r1`.
        let mut due = DueAggregates::from_scan(&scan);
        assert!(due.skip(&[&busy(&["r1"])]).unread);
        assert_eq!(ids(&due), ["b"]);

        // Two rounds in flight: each aggregate's records are checked
        // against the round that holds it, not against the other's.
        let mut due = DueAggregates::from_scan(&scan);
        let (b, a) = (holding("b", &["r2"]), busy(&["r1", "r3"]));
        let skipped = due.skip(&[&b, &a]);
        assert!(skipped.any && !skipped.unread);
        assert!(ids(&due).is_empty());
        let mut due = DueAggregates::from_scan(&scan);
        let (b, a) = (holding("b", &["r1", "r3"]), busy(&["r2"]));
        assert!(due.skip(&[&b, &a]).unread);

        let mut due = DueAggregates::from_scan(&scan);
        let skipped = due.skip(&[]);
        assert!(!skipped.any && !skipped.unread);
        assert_eq!(ids(&due), ["a", "b"]);

        // Handed over after the scan: only the new aggregate is added, and
        // as one that may go to the broker.
        let mut due = DueAggregates::from_scan(&scan[1..2]);
        due.hand(vec!["b".into(), "a".into(), "a".into()]);
        assert_eq!(ids(&due), ["b", "a"]);
        assert!(due.aggregates[1].amqp && due.aggregates[1].records.is_none());
        // Its records are unknown, so one in flight is come back for.
        assert!(due.skip(&[&busy(&["r1", "r3"])]).unread);
        assert_eq!(ids(&due), ["b"]);
    }

    #[test]
    fn a_sweep_waits_for_rounds_in_flight_only_when_its_window_held_nothing_else() {
        let in_flight = Skipped {
            any: true,
            unread: false,
        };
        assert!(
            in_flight.defers(true, false),
            "waits for the rounds in flight, not a poll"
        );
        assert!(
            !in_flight.defers(true, true),
            "other work goes on beside it"
        );
        assert!(!in_flight.defers(false, false), "no backlog behind it");
        let unread = Skipped {
            any: true,
            unread: true,
        };
        assert!(unread.defers(false, true), "its new records need a round");
        assert!(!Skipped::default().defers(true, false));
    }
}
