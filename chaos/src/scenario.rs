//! One fault, end to end: fresh database and exchange prefix, stand-in
//! peers, service instances, the workload with the fault injected beside
//! it, then recovery and the invariant check.

use crate::checker::{self, Counts};
use crate::faults::Fault;
use crate::instance::Instance;
use crate::listeners::Listeners;
use crate::peers::{self, Received, ReviewPublisher};
use crate::stack::{GATEWAY_SECRET, JWT_SECRET, Stack, WEBHOOK_HASH};
use crate::truth;
use crate::workload::{self, Client};
use flutterwave_sim::CallCounts;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub orders: usize,
    /// The workload starts its orders evenly over this time.
    pub spread: Duration,
    /// How long the system may take to deliver everything once healed.
    pub recovery_limit: Duration,
}

/// The outcome of one fault.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRun {
    pub fault: String,
    pub description: String,
    pub orders: usize,
    pub counts: Counts,
    /// Orders whose workload step gave up (already counted in `stuck` if
    /// the order did not end where planned), with the reason.
    pub workload_failures: Vec<String>,
    /// From the workload's last step until everything committed was
    /// received, nothing was left undelivered and every review was stored;
    /// `None` if that never happened within the limit.
    pub settled_secs: Option<f64>,
    pub duration_secs: f64,
    pub note: String,
    pub passed: bool,
}

pub async fn run(stack: &mut Stack, fault: Fault, settings: Settings) -> FaultRun {
    let started = Instant::now();
    let result = run_inner(stack, fault, settings).await;
    stack.heal().await;
    match result {
        Ok(mut run) => {
            run.duration_secs = started.elapsed().as_secs_f64();
            run
        }
        Err(e) => FaultRun {
            fault: fault.name().into(),
            description: fault.describe().into(),
            orders: settings.orders,
            counts: Counts::default(),
            workload_failures: Vec::new(),
            settled_secs: None,
            duration_secs: started.elapsed().as_secs_f64(),
            note: format!("could not run: {e}"),
            passed: false,
        },
    }
}

async fn run_inner(
    stack: &mut Stack,
    fault: Fault,
    settings: Settings,
) -> Result<FaultRun, String> {
    let tag = fault.name();
    let db_name = format!("chaos_{}", tag.replace('-', "_"));
    let prefix = format!("{tag}.");
    let direct = mongodb::Client::with_uri_str(stack.direct_db_url(&db_name))
        .await
        .map_err(|e| format!("database: {e}"))?;
    let db = direct.database(&db_name);
    db.drop().await.map_err(|e| format!("database: {e}"))?;

    let stop_peers = CancellationToken::new();
    let (received, peer_task) =
        peers::start_consumer(stack.rabbit.amqp_url(), prefix.clone(), stop_peers.clone())
            .await
            .map_err(|e| format!("peers: {e}"))?;

    let mut env = stack.instance_env(&db_name, &prefix);
    if fault.elasticsearch_down() {
        // A line per request and a small buffer, so that lines must drop.
        env.insert("ELASTIC_SEARCH_URL".into(), closed_port_url());
        env.insert("ELASTIC_LOG_BUFFER_LINES".into(), "100".into());
        env.insert("RUST_LOG".into(), "info".into());
    }
    let mut instances = Vec::new();
    for i in 0..fault.instances() {
        let name = format!("{tag}-{}", i + 1);
        let log = stack.dir.join(format!("{name}.log"));
        let failpoints = if i == 0 {
            fault.failpoints()
        } else {
            Vec::new()
        };
        let instance = Instance::start(&name, env.clone(), log, &failpoints)
            .await
            .map_err(|e| e.to_string())?;
        instances.push(instance);
    }
    let urls: Vec<String> = instances.iter().map(Instance::base_url).collect();
    stack.sim.sim().set_webhook_target(
        format!("{}/api/v1/order/webhooks/flutterwave", urls[0]),
        WEBHOOK_HASH,
    );

    let listeners = Listeners::default();
    let mut client = Client::new(
        urls,
        JWT_SECRET,
        GATEWAY_SECRET,
        stack.sim.sim().clone(),
        ReviewPublisher::new(stack.rabbit.amqp_url(), &prefix),
        listeners.clone(),
        Duration::from_secs(90),
    );
    client.webhook_copies = fault.webhook_copies();
    let client = Arc::new(client);
    let work = tokio::spawn(workload::run_all(
        client,
        tag,
        settings.orders,
        settings.spread,
    ));

    let calls_before = stack.sim.sim().calls();
    let resets_before = stack.broker_proxy.stats().resets;
    let mut note = fault.inject(stack, &mut instances).await;
    let planned = work.await.map_err(|e| format!("workload: {e}"))?;
    let worked = Instant::now();

    let reviewed: Vec<String> = planned
        .iter()
        .filter(|p| p.journey.reviewed() && p.failed_step.is_none())
        .map(|p| p.order_id.clone())
        .collect();
    let recovery = wait_quiet(&db, &received, &reviewed, settings.recovery_limit).await;
    let settled_secs = recovery.map(|at| at.saturating_duration_since(worked).as_secs_f64());
    let evidence = evidence(
        fault,
        calls_before,
        stack.sim.sim().calls(),
        stack.broker_proxy.stats().resets - resets_before,
    );
    let evidence = if fault.elasticsearch_down() {
        let url = instances
            .first()
            .map(Instance::base_url)
            .unwrap_or_default();
        format!("{} log lines dropped", log_lines_dropped(&url).await)
    } else {
        evidence
    };
    if !evidence.is_empty() {
        if !note.is_empty() {
            note.push_str("; ");
        }
        note.push_str(&evidence);
    }
    // A last moment for redeliveries in flight, so that they are counted.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let truth = truth::gather(&db, &received, &listeners, &planned, stack.sim.sim())
        .await
        .map_err(|e| format!("reading the truth: {e}"))?;
    listeners.close();
    let counts = checker::check(&truth);
    for instance in &mut instances {
        instance.stop().await;
    }
    stop_peers.cancel();
    let _ = peer_task.await;

    let workload_failures: Vec<String> = planned
        .iter()
        .filter_map(|p| {
            p.failed_step
                .as_ref()
                .map(|e| format!("{} ({:?}): {e}", p.order_id, p.journey))
        })
        .collect();
    let passed = counts.violations() == 0 && settled_secs.is_some();
    Ok(FaultRun {
        fault: tag.into(),
        description: fault.describe().into(),
        orders: settings.orders,
        counts,
        workload_failures,
        settled_secs,
        duration_secs: 0.0,
        note,
        passed,
    })
}

/// Waits until nothing is left undelivered, every committed AMQP record
/// was received and every published review is stored; returns when, or
/// `None` after `limit`.
async fn wait_quiet(
    db: &mongodb::Database,
    received: &Received,
    reviewed: &[String],
    limit: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let pending = truth::undelivered(db).await.ok();
        let reviews = truth::reviews_stored(db, reviewed).await.ok();
        if pending == Some(0) && reviews == Some(reviewed.len() as u64) {
            let got: std::collections::HashSet<String> = received.snapshot().into_iter().collect();
            if let Ok(committed) = truth::committed(db).await
                && committed.iter().all(|c| got.contains(&c.message_id))
            {
                return Some(Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// What shows the fault really happened: the calls Flutterwave got, the
/// connections the proxy reset.
fn evidence(fault: Fault, before: CallCounts, after: CallCounts, resets: u64) -> String {
    match fault {
        Fault::ConnectionsReset => format!("{resets} broker connections reset"),
        Fault::Flutterwave5xx
        | Fault::Flutterwave429
        | Fault::RefundResponseDropped
        | Fault::WebhookTimesTen => format!(
            "Flutterwave calls: verify {}, by reference {}, lists {}, refund {}, refund look-ups {}",
            after.verify - before.verify,
            after.verify_by_reference - before.verify_by_reference,
            after.transactions - before.transactions,
            after.refund - before.refund,
            after.refund_lookup - before.refund_lookup,
        ),
        _ => String::new(),
    }
}

/// The instance's `log_lines_dropped_total`, from its `/metrics`.
async fn log_lines_dropped(base_url: &str) -> String {
    let text = match reqwest::get(format!("{base_url}/metrics")).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(e) => return format!("unknown ({e})"),
    };
    text.lines()
        .find_map(|line| line.strip_prefix("log_lines_dropped_total "))
        .unwrap_or("unknown")
        .to_string()
}

/// An address where nothing listens: a port bound and released at once.
fn closed_port_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(9);
    format!("http://127.0.0.1:{port}")
}
