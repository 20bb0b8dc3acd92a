//! The fault catalogue: what each fault does to the stack while the
//! workload runs, and for how long. Each one is injected a moment after
//! the workload starts and healed after a bounded time.

use crate::infra::proxy::ProxyMode;
use crate::instance::Instance;
use crate::stack::Stack;
use flutterwave_sim::Faults;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No fault: the same workload and checks, as a reference.
    Baseline,
    BrokerKilled,
    BrokerStopped,
    BrokerUnreachable,
    ConnectionsReset,
    DatabaseKilled,
    InstanceDiesAfterCommit,
    RelayDiesBeforeMark,
    ConsumerDiesBeforeAck,
    Flutterwave5xx,
    Flutterwave429,
    RefundResponseDropped,
    WebhookTimesTen,
    ElasticsearchDown,
    DatabaseSlow,
    BrokerDiskAlarm,
}

pub const ALL: [Fault; 16] = [
    Fault::Baseline,
    Fault::BrokerKilled,
    Fault::BrokerStopped,
    Fault::BrokerUnreachable,
    Fault::ConnectionsReset,
    Fault::DatabaseKilled,
    Fault::InstanceDiesAfterCommit,
    Fault::RelayDiesBeforeMark,
    Fault::ConsumerDiesBeforeAck,
    Fault::Flutterwave5xx,
    Fault::Flutterwave429,
    Fault::RefundResponseDropped,
    Fault::WebhookTimesTen,
    Fault::ElasticsearchDown,
    Fault::DatabaseSlow,
    Fault::BrokerDiskAlarm,
];

/// The subset `.ci/run` runs (`chaos run --short`): one fault of each
/// kind of part (broker, network, process, consumer, provider, webhook).
pub const SHORT: [Fault; 7] = [
    Fault::BrokerKilled,
    Fault::ConnectionsReset,
    Fault::InstanceDiesAfterCommit,
    Fault::RelayDiesBeforeMark,
    Fault::ConsumerDiesBeforeAck,
    Fault::RefundResponseDropped,
    Fault::WebhookTimesTen,
];

/// Armed failpoint: the first instance aborts at its 13th commit, mid-workload.
const DIE_AFTER_COMMIT: (&str, &str) = ("order-committed", "12*off->return");
/// Armed failpoint: the first instance's relay aborts with its 2nd batch
/// confirmed by the broker but not yet marked published.
const DIE_BEFORE_MARK: (&str, &str) = ("outbox-before-mark", "1*off->return");
/// Armed failpoint: the first instance aborts after its second review's commit.
const DIE_BEFORE_ACK: (&str, &str) = ("review-before-ack", "1*off->return");

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Baseline => "baseline",
            Fault::BrokerKilled => "broker-killed",
            Fault::BrokerStopped => "broker-stopped",
            Fault::BrokerUnreachable => "broker-unreachable",
            Fault::ConnectionsReset => "connections-reset",
            Fault::DatabaseKilled => "database-killed",
            Fault::InstanceDiesAfterCommit => "instance-dies-after-commit",
            Fault::RelayDiesBeforeMark => "relay-dies-before-mark",
            Fault::ConsumerDiesBeforeAck => "consumer-dies-before-ack",
            Fault::Flutterwave5xx => "flutterwave-5xx",
            Fault::Flutterwave429 => "flutterwave-429",
            Fault::RefundResponseDropped => "refund-response-dropped",
            Fault::WebhookTimesTen => "webhook-x10",
            Fault::ElasticsearchDown => "elasticsearch-down",
            Fault::DatabaseSlow => "database-slow",
            Fault::BrokerDiskAlarm => "broker-disk-alarm",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Fault::Baseline => "no fault",
            Fault::BrokerKilled => "RabbitMQ SIGKILLed, restarted after 3 s",
            Fault::BrokerStopped => "RabbitMQ stopped gracefully, restarted after 3 s",
            Fault::BrokerUnreachable => "broker proxy drops all traffic for 6 s",
            Fault::ConnectionsReset => "broker connections reset (RST) every 700 ms for 6 s",
            Fault::DatabaseKilled => "database SIGKILLed, restarted after 2 s",
            Fault::InstanceDiesAfterCommit => {
                "instance 1 of 3 aborts after a commit, before its publish (failpoint); restarted"
            }
            Fault::RelayDiesBeforeMark => {
                "instance 1 of 2 aborts with published records not yet marked, holding their leases (failpoint); restarted"
            }
            Fault::ConsumerDiesBeforeAck => {
                "instance 1 of 2 aborts after a review's commit, before its ack (failpoint); restarted"
            }
            Fault::Flutterwave5xx => "Flutterwave answers 503 to everything for 6 s",
            Fault::Flutterwave429 => "Flutterwave answers 429 to everything for 6 s",
            Fault::RefundResponseDropped => {
                "the first 3 refunds are applied and their responses withheld"
            }
            Fault::WebhookTimesTen => "every webhook delivered 10 times at once",
            Fault::ElasticsearchDown => "log shipping target refuses connections throughout",
            Fault::DatabaseSlow => "database proxy adds 150 ms per chunk for 8 s",
            Fault::BrokerDiskAlarm => "broker disk alarm raised for 6 s (publishes block)",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        ALL.into_iter().find(|f| f.name() == name)
    }

    /// Instances to run: several where others must take over one's work.
    pub fn instances(self) -> usize {
        match self {
            Fault::InstanceDiesAfterCommit => 3,
            Fault::RelayDiesBeforeMark | Fault::ConsumerDiesBeforeAck => 2,
            _ => 1,
        }
    }

    /// Failpoints armed on the first instance at its start.
    pub fn failpoints(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Fault::InstanceDiesAfterCommit => vec![DIE_AFTER_COMMIT],
            Fault::RelayDiesBeforeMark => vec![DIE_BEFORE_MARK],
            Fault::ConsumerDiesBeforeAck => vec![DIE_BEFORE_ACK],
            _ => Vec::new(),
        }
    }

    /// Copies of each webhook the simulator sends at once.
    pub fn webhook_copies(self) -> usize {
        if self == Fault::WebhookTimesTen {
            10
        } else {
            1
        }
    }

    /// Whether the instances ship logs to an address where nothing listens.
    pub fn elasticsearch_down(self) -> bool {
        self == Fault::ElasticsearchDown
    }

    /// Injects the fault and heals it; returns a note on what happened.
    pub async fn inject(self, stack: &mut Stack, instances: &mut [Instance]) -> String {
        tokio::time::sleep(Duration::from_secs(2)).await;
        match self {
            Fault::Baseline | Fault::WebhookTimesTen | Fault::ElasticsearchDown => String::new(),
            Fault::BrokerKilled => {
                stack.rabbit.kill().await;
                pause(3).await;
                restarted(stack.rabbit.restart().await, "broker")
            }
            Fault::BrokerStopped => {
                let stopped = stack.rabbit.stop_graceful().await;
                pause(3).await;
                let restarted = restarted(stack.rabbit.restart().await, "broker");
                match stopped {
                    Ok(()) => restarted,
                    Err(e) => format!("graceful stop failed: {e}; {restarted}"),
                }
            }
            Fault::BrokerUnreachable => {
                stack.broker_proxy.set_mode(ProxyMode::Blackhole);
                pause(6).await;
                stack.broker_proxy.set_mode(ProxyMode::Pass);
                String::new()
            }
            Fault::ConnectionsReset => {
                let until = tokio::time::Instant::now() + Duration::from_secs(6);
                while tokio::time::Instant::now() < until {
                    stack.broker_proxy.reset_all();
                    tokio::time::sleep(Duration::from_millis(700)).await;
                }
                String::new()
            }
            Fault::DatabaseKilled => {
                stack.mongo.kill().await;
                pause(2).await;
                restarted(stack.mongo.restart().await, "database")
            }
            Fault::InstanceDiesAfterCommit
            | Fault::RelayDiesBeforeMark
            | Fault::ConsumerDiesBeforeAck => {
                let Some(first) = instances.first_mut() else {
                    return "no instance".into();
                };
                if !first.wait_exit(Duration::from_secs(60)).await {
                    return "the failpoint never fired".into();
                }
                pause(2).await;
                match first.spawn(&[]).await {
                    Ok(()) => "instance 1 aborted at the failpoint and was restarted".into(),
                    Err(e) => format!("instance 1 aborted; restart failed: {e}"),
                }
            }
            Fault::Flutterwave5xx | Fault::Flutterwave429 => {
                let status = if self == Fault::Flutterwave5xx {
                    503
                } else {
                    429
                };
                stack.sim.sim().set_faults(Faults {
                    fail_all_status: Some(status),
                    retry_after_secs: Some(1),
                    ..Faults::default()
                });
                pause(6).await;
                stack.sim.sim().set_faults(Faults::default());
                String::new()
            }
            Fault::RefundResponseDropped => {
                // Armed at once: refunds come late in the workload.
                stack.sim.sim().set_faults(Faults {
                    refund_drop_response_next: 3,
                    ..Faults::default()
                });
                String::new()
            }
            Fault::DatabaseSlow => {
                stack
                    .db_proxy
                    .set_mode(ProxyMode::Latency(Duration::from_millis(150)));
                pause(8).await;
                stack.db_proxy.set_mode(ProxyMode::Pass);
                String::new()
            }
            Fault::BrokerDiskAlarm => {
                let raised = stack.rabbit.set_disk_alarm(true).await;
                pause(6).await;
                let cleared = stack.rabbit.set_disk_alarm(false).await;
                match (raised, cleared) {
                    (Ok(()), Ok(())) => String::new(),
                    (r, c) => format!("alarm raise: {r:?}, clear: {c:?}"),
                }
            }
        }
    }
}

async fn pause(seconds: u64) {
    tokio::time::sleep(Duration::from_secs(seconds)).await;
}

fn restarted<E: std::fmt::Display>(result: Result<(), E>, what: &str) -> String {
    match result {
        Ok(()) => String::new(),
        Err(e) => format!("{what} restart failed: {e}"),
    }
}
