//! The running loop: when rounds start, the rounds in flight, and waiting out a broker outage.

use super::due::Busy;
use super::{Claimed, Relay, RoundOutcome};
use crate::broker::Broker;
use crate::error::Result;
use backon::{BackoffBuilder, ExponentialBuilder};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::{self, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

/// While the broker is unreachable, a round (for work that does not need
/// it) runs at most this often; in between the relay only reconnects.
const OUTAGE_ROUND: Duration = Duration::from_secs(5);

/// Without a backlog, a round starts beside one in flight only once that
/// one has delivered (it only marks and releases then), or has run this
/// long: far above a round's usual time under load (a few milliseconds),
/// far below a destination's timeouts.
const OVERLAP_AFTER: Duration = Duration::from_millis(50);

pub(super) async fn run_loop(relay: Arc<Relay>, cancel: CancellationToken) {
    // Waits between rounds while a destination is unavailable grow up to a
    // few seconds, so an outage costs little and recovery is noticed quickly.
    let outage_backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build()
    };
    // A reconnect attempt costs the database nothing, so while the broker
    // is down they come often enough to notice its return within a second.
    let reconnect_backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(1))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut outage = outage_backoff();
    let mut reconnect = reconnect_backoff();
    let mut reconnects = relay.broker.as_ref().map(Broker::reconnects);
    // When a round last found the broker unreachable.
    let mut broker_down: Option<Instant> = None;
    // Rounds delivering, marking and releasing in their own tasks while
    // the next round scans, claims and reads, so neither waits for the
    // other's round trips.
    let mut in_flight = InFlightRounds::default();
    // A round left due records to rounds in flight: the next one runs as
    // soon as one of those ends, not after a poll, and meanwhile the loop
    // is free for other work.
    let mut follow = false;
    // The last round left due records behind (a full scan, a sweep, or an
    // aggregate beyond `per_aggregate`).
    let mut backlog = false;
    // Whether the next round scans whatever the wake-ups ask: it does
    // unless the last wait ended on a wake-up, and at least once per
    // `poll_interval` however often hand-overs wake the relay (only a scan
    // finds retries that came due, records of aggregates another instance
    // held, and expired leases).
    let mut scan_next = true;
    let mut last_scan = Instant::now();
    let mut pause = relay.config.poll_interval;
    while !cancel.is_cancelled() {
        if let Some(since) = broker_down {
            // Reconnect before scanning: while the broker is down a scan
            // only finds records that cannot go, and commits are no reason
            // to look again.
            let back = match &relay.broker {
                Some(broker) => broker.publish_channel().await.is_ok(),
                None => false,
            };
            if back {
                tracing::info!("broker reachable again; relaying the backlog");
                broker_down = None;
                relay.outage.send_replace(false);
                reconnect = reconnect_backoff();
            } else if since.elapsed() < OUTAGE_ROUND {
                let pause = reconnect.next().unwrap_or(Duration::from_secs(1));
                if wait_for_broker(&cancel, reconnects.as_mut(), pause).await {
                    break;
                }
                continue;
            }
        }
        in_flight.settle_done();
        // Room comes first: a round that claimed and read, then waited for
        // room, would hold its aggregates' leases idle meanwhile (and past
        // half their time, deliver nothing). And a round beside others in
        // flight pays off on a backlog, or to get past a slow one; under a
        // steady load it only splits the next batch, and the database does
        // each round's fixed work (claim, mark, release) more often, so
        // then the next round waits for the one in flight to deliver, and
        // the hand-overs gather meanwhile.
        let full = in_flight.len() >= relay.config.rounds_in_flight.max(1);
        let youngest = in_flight.youngest();
        let overlap_in = wait_to_overlap(backlog, youngest.as_ref().map(Youngest::progress));
        if full || overlap_in.is_some() {
            let mut delivered = youngest.map(|y| y.delivered);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = in_flight.settle_next() => {}
                _ = tokio::time::sleep(overlap_in.unwrap_or_default()), if !full => {}
                // A round whose task ended without delivering (a panic)
                // drops its sender: `settle_next` takes it, rather than a
                // branch that would end at once on every turn until then.
                _ = async {
                    let ended = match delivered.as_mut() {
                        Some(d) => d.wait_for(|d| *d).await.is_err(),
                        None => true,
                    };
                    if ended {
                        std::future::pending::<()>().await;
                    }
                }, if !full && delivered.is_some() => {}
            }
            continue;
        }
        let (asked, handed) = relay.waker.take();
        let scan = std::mem::replace(&mut scan_next, true) || asked;
        // Otherwise the wake-up was for aggregates an earlier round took,
        // and the wait goes on as it was.
        if scan || !handed.is_empty() {
            if scan {
                last_scan = Instant::now();
            }
            let round = match relay.round(&in_flight.busy(), scan, handed).await {
                Ok((mut round, claimed)) => {
                    follow |= round.deferred;
                    backlog = round.more;
                    let started = claimed.is_some();
                    if let Some(claimed) = claimed {
                        in_flight.start(relay.clone(), claimed);
                    }
                    round.add(in_flight.take_settled());
                    Ok((round, started))
                }
                Err(e) => {
                    backlog = false;
                    Err(e)
                }
            };
            pause = match round {
                Ok((round, _)) if round.broker_unavailable => {
                    broker_down = Some(Instant::now());
                    relay.outage.send_replace(true);
                    let pause = reconnect.next().unwrap_or(Duration::from_secs(1));
                    if wait_for_broker(&cancel, reconnects.as_mut(), pause).await {
                        break;
                    }
                    continue;
                }
                // Work left behind: at once. Otherwise a commit made during
                // the round has already left its wake-up, and the wait ends
                // at once.
                Ok((round, started)) if (started || round.progressed()) && round.more => {
                    outage = outage_backoff();
                    continue;
                }
                Ok((round, started)) if started || round.progressed() => {
                    outage = outage_backoff();
                    relay.config.poll_interval
                }
                Ok((round, _)) if round.waiting => outage.next().unwrap_or(Duration::from_secs(5)),
                Ok(_) => {
                    outage = outage_backoff();
                    relay.config.poll_interval
                }
                Err(e) => {
                    tracing::warn!(error = %e, "relay round failed");
                    outage.next().unwrap_or(Duration::from_secs(5))
                }
            };
        }
        if follow && in_flight.is_empty() {
            follow = false;
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = relay.waker.woken() => {
                scan_next = last_scan.elapsed() >= relay.config.poll_interval;
            }
            _ = in_flight.settle_next(), if follow => follow = false,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    in_flight.settle_all().await;
    tracing::info!("relay stopped");
}

/// What a round in flight holds: the next rounds leave it alone meanwhile.
struct InFlight {
    busy: Busy,
    started: Instant,
    /// Set once its publishes have their outcomes.
    delivered: watch::Receiver<bool>,
}

/// The youngest round in flight, for the decision to start another.
struct Youngest {
    age: Duration,
    delivered: watch::Receiver<bool>,
}

impl Youngest {
    fn progress(&self) -> (Duration, bool) {
        (self.age, *self.delivered.borrow())
    }
}

/// The loop's rounds in flight, each a [`Relay::complete`] in a task of its
/// own. A round is kept until it is settled: forgetting it would let a
/// later round claim its aggregates (their leases are this instance's own)
/// and send their records again. Ends come from the tasks themselves, so a
/// round that panics is settled like one that failed, and a round counts
/// as ended only once its outcome can be taken.
#[derive(Default)]
struct InFlightRounds {
    tasks: JoinSet<Result<RoundOutcome>>,
    rounds: HashMap<task::Id, InFlight>,
    /// What the rounds settled since the last [`Self::take_settled`] did.
    settled: RoundOutcome,
}

impl InFlightRounds {
    fn busy(&self) -> Vec<&Busy> {
        self.rounds.values().map(|r| &r.busy).collect()
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The youngest round in flight, if one is in flight.
    fn youngest(&self) -> Option<Youngest> {
        self.rounds
            .values()
            .max_by_key(|r| r.started)
            .map(|r| Youngest {
                age: r.started.elapsed(),
                delivered: r.delivered.clone(),
            })
    }

    fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Starts a round in a task of its own. The loop made room before the
    /// round claimed anything, waiting for whichever round ended first, so
    /// one held up by a slow destination does not hold up the others.
    fn start(&mut self, relay: Arc<Relay>, claimed: Claimed) {
        let busy = Busy {
            aggregates: claimed.claimed.iter().cloned().collect(),
            records: claimed
                .pending
                .iter()
                .flatten()
                .map(|r| r.message_id.clone())
                .collect(),
        };
        let (delivered_tx, delivered) = watch::channel(false);
        let id = self
            .tasks
            .spawn(async move { relay.complete(claimed, delivered_tx).await })
            .id();
        let started = Instant::now();
        self.rounds.insert(
            id,
            InFlight {
                busy,
                started,
                delivered,
            },
        );
    }

    /// Until a round in flight ends, and settles it; at once if none is in
    /// flight. Cancel safe: a round that ends meanwhile is settled later.
    async fn settle_next(&mut self) {
        if let Some(ended) = self.tasks.join_next_with_id().await {
            self.settle(ended);
        }
    }

    fn settle_done(&mut self) {
        while let Some(ended) = self.tasks.try_join_next_with_id() {
            self.settle(ended);
        }
    }

    async fn settle_all(&mut self) {
        while let Some(ended) = self.tasks.join_next_with_id().await {
            self.settle(ended);
        }
    }

    /// Adds what an ended round did, or, if it failed, a wait before the
    /// next round; its records stay pending and go again (at least once).
    fn settle(&mut self, ended: std::result::Result<(task::Id, Result<RoundOutcome>), JoinError>) {
        let (id, outcome) = match ended {
            Ok((id, outcome)) => (id, outcome.map_err(|e| e.to_string())),
            Err(e) => (e.id(), Err(e.to_string())),
        };
        self.rounds.remove(&id);
        match outcome {
            Ok(outcome) => self.settled.add(outcome),
            Err(failed) => {
                tracing::warn!(error = %failed, "delivering, marking or releasing a round failed");
                self.settled.waiting = true;
            }
        }
    }

    fn take_settled(&mut self) -> RoundOutcome {
        std::mem::take(&mut self.settled)
    }
}

/// How much longer the next round waits for the rounds in flight before
/// it starts beside them, given whether the last round left work behind,
/// and how long the youngest round in flight has run and whether it has
/// delivered.
fn wait_to_overlap(backlog: bool, youngest: Option<(Duration, bool)>) -> Option<Duration> {
    if backlog {
        return None;
    }
    match youngest {
        Some((_, true)) | None => None,
        Some((age, false)) => OVERLAP_AFTER.checked_sub(age),
    }
}

/// Waits `pause`, or less if someone else reconnects the broker; local
/// commits do not end it. Returns whether the relay was cancelled.
async fn wait_for_broker(
    cancel: &CancellationToken,
    reconnects: Option<&mut watch::Receiver<u64>>,
    pause: Duration,
) -> bool {
    let reconnected = async {
        let changed = match reconnects {
            Some(rx) => rx.changed().await.is_ok(),
            None => false,
        };
        // No broker, or one that is gone: only the timer ends the wait.
        if !changed {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = reconnected => false,
        _ = tokio::time::sleep(pause) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_starts_beside_one_in_flight_only_on_a_backlog_or_once_that_one_delivered_or_is_slow()
    {
        let ms = Duration::from_millis;
        assert_eq!(wait_to_overlap(false, None), None, "nothing in flight");
        assert_eq!(
            wait_to_overlap(true, Some((ms(1), false))),
            None,
            "a backlog"
        );
        assert_eq!(
            wait_to_overlap(false, Some((ms(10), false))),
            Some(OVERLAP_AFTER - ms(10)),
            "a steady load waits for the round in flight to deliver"
        );
        assert_eq!(
            wait_to_overlap(false, Some((ms(10), true))),
            None,
            "it only marks and releases now"
        );
        assert_eq!(
            wait_to_overlap(false, Some((OVERLAP_AFTER + ms(1), false))),
            None,
            "a slow round is overtaken"
        );
    }
}
