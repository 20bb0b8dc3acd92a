//! Wake-ups and hand-overs: how the writing process tells its relay that records wait.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

/// Most aggregates held for the next round; more turn into a scan.
const HANDED_MAX: usize = 4096;

/// Lets the writing process wake its relay right after a commit.
#[derive(Clone, Default)]
pub struct Waker(Arc<Wakeups>);

#[derive(Default)]
struct Wakeups {
    notify: Notify,
    /// A wake-up since the last round began asked for a scan.
    scan: AtomicBool,
    /// Aggregates handed over since the last round began.
    handed: std::sync::Mutex<Handed>,
}

/// Handed-over aggregates, each once, in the order first handed: a busy
/// order handed over on every change counts once toward the bound.
#[derive(Default)]
struct Handed {
    order: Vec<String>,
    seen: HashSet<String>,
}

impl Waker {
    /// Something may be due: the next round scans for it.
    pub fn wake(&self) {
        self.0.scan.store(true, Ordering::Release);
        self.0.notify.notify_one();
    }

    /// Records of these aggregates were just committed: the next round
    /// claims them without scanning, one database round trip less between
    /// the commit and the confirm. Their records are still read under the
    /// lease, so a stale hand-over costs a claim and nothing else.
    pub fn hand<I>(&self, aggregates: I)
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let mut handed = self.0.handed.lock().unwrap_or_else(|e| e.into_inner());
        for aggregate in aggregates {
            let aggregate = aggregate.into();
            if handed.seen.insert(aggregate.clone()) {
                handed.order.push(aggregate);
            }
        }
        // Nobody takes them while the broker is down: past a bound, a scan
        // finds them as well, and memory stays flat.
        if handed.order.len() > HANDED_MAX {
            *handed = Handed::default();
            self.0.scan.store(true, Ordering::Release);
        }
        drop(handed);
        self.0.notify.notify_one();
    }

    /// What the next round is asked for: a scan, and the aggregates handed over.
    pub(super) fn take(&self) -> (bool, Vec<String>) {
        let handed = std::mem::take(&mut *self.0.handed.lock().unwrap_or_else(|e| e.into_inner()));
        (self.0.scan.swap(false, Ordering::AcqRel), handed.order)
    }

    pub(super) async fn woken(&self) {
        self.0.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waker_hands_over_aggregates_once_and_a_flood_of_them_becomes_a_scan() {
        let waker = Waker::default();
        assert_eq!(waker.take(), (false, Vec::<String>::new()));
        waker.hand(["a", "b"]);
        waker.hand(["a"]);
        assert_eq!(
            waker.take(),
            (false, vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(waker.take(), (false, Vec::<String>::new()));
        // One aggregate handed over again and again is one, not a flood.
        waker.hand(std::iter::repeat_n("busy", HANDED_MAX + 1));
        assert_eq!(waker.take(), (false, vec!["busy".to_string()]));
        // Taken, it can be handed over again.
        waker.hand(["a"]);
        assert_eq!(waker.take(), (false, vec!["a".to_string()]));
        waker.wake();
        waker.hand(["c"]);
        assert_eq!(waker.take(), (true, vec!["c".to_string()]));
        waker.hand((0..=HANDED_MAX).map(|i| i.to_string()));
        assert_eq!(waker.take(), (true, Vec::<String>::new()));
    }
}
