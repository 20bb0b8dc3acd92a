//! One look at the dependencies, shared by `/health/ready` and `/metrics`:
//! both say the same of them, and every look refreshes the gauges it read.

use crate::http::AppState;
use bson::doc;
use outbox::OutboxStats;
use std::time::Duration;

/// How long each database question may take before it counts as no answer.
const TIMEOUT: Duration = Duration::from_secs(2);

pub struct Probe {
    /// MongoDB answered a ping.
    pub mongo: bool,
    /// The broker connection is up (the cached flag; a probe opens nothing).
    pub rabbitmq: bool,
    /// The outbox backlog, if the database answered in time.
    pub outbox: Option<OutboxStats>,
}

/// Pings MongoDB and reads the outbox backlog at once, then sets
/// `dependency_up`, the breaker gauge and (when read) the outbox gauges
/// from what it saw. Up means the ping answered: a backlog slow to count
/// says nothing of whether orders can commit.
pub async fn probe(state: &AppState) -> Probe {
    let (ping, stats) = tokio::join!(
        tokio::time::timeout(TIMEOUT, state.db.run_command(doc! { "ping": 1 })),
        tokio::time::timeout(TIMEOUT, state.outbox.stats()),
    );
    let probe = Probe {
        mongo: ping.is_ok_and(|r| r.is_ok()),
        rabbitmq: state.broker.is_connected(),
        outbox: stats.ok().and_then(Result::ok),
    };
    let f = state.metrics.families();
    f.dependency_up
        .with_label_values(&["mongo"])
        .set(i64::from(probe.mongo));
    f.dependency_up
        .with_label_values(&["rabbitmq"])
        .set(i64::from(probe.rabbitmq));
    f.flutterwave_breaker_state
        .set(state.payments.flutterwave().breaker_code());
    if let Some(stats) = &probe.outbox {
        state.metrics.set_outbox(stats);
    }
    probe
}
