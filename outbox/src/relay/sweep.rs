//! The window of `nextAttemptAt` that the next scan of a large backlog covers.

use bson::Document;

/// A window of the scan's index, `[from, from + span]` in `nextAttemptAt`.
///
/// Scanning from the oldest due record with a limit is cheap on MongoDB,
/// which walks the index and stops; the Python SecantusDB first fetches
/// every record the filter matches, so each scan of a large backlog costs
/// the whole backlog. A bounded window costs only what lies in it. A
/// backlog is therefore worked through window by window (keyset
/// pagination), and once the window reaches the present the next scan
/// starts from the oldest again, picking up whatever a window passed by
/// (aggregates another relay held, records committed late).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sweep {
    pub(super) from: i64,
    pub(super) span: i64,
}

/// Where the next scan starts, given what this one (over `current`, up to
/// `to`) returned, in `nextAttemptAt` order.
pub(super) fn next_sweep(
    current: Option<Sweep>,
    scanned: &[Document],
    limit: i64,
    to: i64,
    now: i64,
) -> Option<Sweep> {
    let at = |doc: Option<&Document>| {
        doc.and_then(|d| d.get_datetime("nextAttemptAt").ok())
            .map(|t| t.timestamp_millis())
    };
    if (scanned.len() as i64) >= limit {
        // Full: more lies behind the last record. Go on from it with a
        // window that held about this much.
        let (first, last) = (at(scanned.first())?, at(scanned.last())?);
        let from = match current {
            // A whole window at one instant that did not leave: step past
            // it; the next sweep comes back for what is left there.
            Some(window) if last <= window.from => window.from + 1,
            _ => last,
        };
        return Some(Sweep {
            from,
            span: (last - first).max(1),
        });
    }
    match current {
        // Short of the present: on, with a wider window.
        Some(window) if to < now => Some(Sweep {
            from: to,
            span: window.span.saturating_mul(2),
        }),
        // The present is reached: the next scan starts from the oldest.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{DateTime, doc};

    fn scanned(at: &[i64]) -> Vec<Document> {
        at.iter()
            .map(|t| doc! { "aggregateId": "a", "nextAttemptAt": DateTime::from_millis(*t) })
            .collect()
    }

    #[test]
    fn a_scan_short_of_its_limit_from_the_oldest_starts_no_sweep() {
        assert_eq!(next_sweep(None, &scanned(&[1, 2]), 3, 100, 100), None);
        assert_eq!(next_sweep(None, &[], 3, 100, 100), None);
    }

    #[test]
    fn a_full_scan_goes_on_from_its_last_record_with_the_span_it_covered() {
        assert_eq!(
            next_sweep(None, &scanned(&[10, 15, 30]), 3, 100, 100),
            Some(Sweep { from: 30, span: 20 })
        );
        let window = Some(Sweep { from: 30, span: 20 });
        assert_eq!(
            next_sweep(window, &scanned(&[30, 31, 34]), 3, 50, 100),
            Some(Sweep { from: 34, span: 4 })
        );
    }

    #[test]
    fn a_window_short_of_its_limit_widens_until_the_present_then_starts_over() {
        let window = Some(Sweep { from: 30, span: 20 });
        assert_eq!(
            next_sweep(window, &scanned(&[40]), 3, 50, 100),
            Some(Sweep { from: 50, span: 40 })
        );
        assert_eq!(
            next_sweep(window, &[], 3, 50, 100),
            Some(Sweep { from: 50, span: 40 })
        );
        assert_eq!(next_sweep(window, &scanned(&[40]), 3, 100, 100), None);
    }

    #[test]
    fn a_full_window_at_one_instant_is_stepped_past() {
        let window = Some(Sweep { from: 30, span: 1 });
        assert_eq!(
            next_sweep(window, &scanned(&[30, 30, 30]), 3, 31, 100),
            Some(Sweep { from: 31, span: 1 })
        );
        // From the oldest, the same happens one scan later.
        assert_eq!(
            next_sweep(None, &scanned(&[30, 30, 30]), 3, 100, 100),
            Some(Sweep { from: 30, span: 1 })
        );
    }
}
