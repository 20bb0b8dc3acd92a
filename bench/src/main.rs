//! Realtime benchmark: connects N Socket.IO clients (default 10 000) to the
//! Order Service, causes notifications to some of them through the REST API,
//! and prints one table row: N, the service's resident memory (VmRSS from
//! /proc) idle and with the clients connected, and the latency from the
//! command to the client's receipt, p50 and p99.
//!
//! By default it starts the service itself (`order-service` next to this
//! binary, or `--service-bin`) on a fresh database, so the memory figure is
//! the service's alone; `--url` (with `--pid` for memory) measures one that
//! already runs. See docs/realtime.md for the command and the figures.
//!
//! - [`socket`]: the wire-level Socket.IO client;
//! - [`service`]: starting the service and reading its memory;
//! - [`trigger`]: causing notifications through the API.

mod service;
mod trigger;

use futures::StreamExt;
use realtime_bench::socket;
use service::{Launch, Service};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc};
use trigger::Trigger;

const USAGE: &str = "usage: realtime-bench [--clients N] [--notifications M] [--concurrency C]
    [--connect-concurrency K] [--redis URL] [--service-bin PATH] [--database-url URL]
    [--url http://host:port [--pid PID]] [--jwt-secret S] [--gateway-secret S]";

struct Args {
    clients: usize,
    notifications: usize,
    concurrency: usize,
    connect_concurrency: usize,
    url: Option<String>,
    pid: Option<u32>,
    service_bin: Option<PathBuf>,
    database_url: Option<String>,
    redis_url: Option<String>,
    jwt_secret: String,
    gateway_secret: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        clients: 10_000,
        notifications: 1_000,
        concurrency: 8,
        connect_concurrency: 256,
        url: None,
        pid: None,
        service_bin: None,
        database_url: None,
        redis_url: None,
        jwt_secret: "local-jwt-secret".into(),
        gateway_secret: "local-gateway-secret".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.into());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |v: &str| v.parse::<usize>().map_err(|_| format!("{flag}: {v:?}"));
        match flag.as_str() {
            "--clients" => args.clients = number(&value)?,
            "--notifications" => args.notifications = number(&value)?,
            "--concurrency" => args.concurrency = number(&value)?.max(1),
            "--connect-concurrency" => args.connect_concurrency = number(&value)?.max(1),
            "--url" => args.url = Some(value),
            "--pid" => args.pid = Some(number(&value)? as u32),
            "--service-bin" => args.service_bin = Some(value.into()),
            "--database-url" => args.database_url = Some(value),
            "--redis" => args.redis_url = Some(value),
            "--jwt-secret" => args.jwt_secret = value,
            "--gateway-secret" => args.gateway_secret = value,
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    if args.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    Ok(args)
}

/// Each socket is a file descriptor, in this process and in the service it
/// starts (which inherits the limit): lift the soft limit to the hard one.
fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("realtime-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let args = parse_args()?;
    let open_files = raise_open_files();
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let database_url = args.database_url.clone().unwrap_or_else(|| {
        format!("mongodb://127.0.0.1:27017/order_bench_{run_id}?directConnection=true")
    });
    let service = match &args.url {
        Some(url) => Service::attach(url.clone(), args.pid),
        None => {
            let binary = match &args.service_bin {
                Some(path) => path.clone(),
                None => std::env::current_exe()
                    .map_err(|e| e.to_string())?
                    .with_file_name("order-service"),
            };
            Service::launch(Launch {
                binary,
                database_url: database_url.clone(),
                redis_url: args.redis_url.clone(),
                jwt_secret: args.jwt_secret.clone(),
                gateway_secret: args.gateway_secret.clone(),
                prefix: format!("bench-{run_id}-"),
            })
            .await?
        }
    };
    eprintln!(
        "service {} (pid {:?}); open-file limit {open_files}",
        service.base_url, service.pid
    );
    let trigger = Trigger::new(&service.base_url, &args.jwt_secret, &args.gateway_secret);
    let idle = service.memory();

    // Connect every client; each forwards what it receives to one channel.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ws_url = service.ws_url();
    let seller = |i: usize| format!("bench{run_id}-s{i}");
    let started = Instant::now();
    let results: Vec<Result<tokio::task::JoinHandle<()>, String>> =
        futures::stream::iter(0..args.clients)
            .map(|i| {
                let (ws_url, tx, token) =
                    (ws_url.clone(), tx.clone(), trigger.user_token(&seller(i)));
                async move {
                    socket::connect(&ws_url, &token, tx)
                        .await
                        .map_err(|e| e.to_string())
                }
            })
            .buffer_unordered(args.connect_concurrency)
            .collect()
            .await;
    let connect_time = started.elapsed();
    let mut readers = Vec::new();
    let mut failures: HashMap<String, usize> = HashMap::new();
    for result in results {
        match result {
            Ok(reader) => readers.push(reader),
            Err(e) => *failures.entry(e).or_default() += 1,
        }
    }
    eprintln!(
        "{} of {} clients connected in {connect_time:.1?}; failures: {failures:?}",
        readers.len(),
        args.clients
    );
    // Let the service settle (buffers, allocator) before reading its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected = service.memory();

    // Cause the notifications, a few at a time, each to a different client.
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = args.notifications;
    let errors: Vec<String> = futures::stream::iter(0..total)
        .map(|k| {
            let (trigger, sent) = (trigger.clone(), sent.clone());
            let target = seller((k * args.clients / total.max(1)) % args.clients);
            let order_id = format!("bench{run_id}-{k}");
            let buyer = format!("bench{run_id}-b{k}");
            async move {
                let at = trigger.notify(&order_id, &buyer, &target).await?;
                sent.lock().await.insert(order_id, at);
                Ok::<(), String>(())
            }
        })
        .buffer_unordered(args.concurrency)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await;
    if let Some(first) = errors.first() {
        eprintln!(
            "{} notification(s) could not be caused; first: {first}",
            errors.len()
        );
    }

    // Collect receipts until every caused notification arrived (or a deadline).
    let expected = total - errors.len();
    let mut receipts = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while receipts.len() < expected {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(received)) => {
                receipts
                    .entry(received.order_id.clone())
                    .or_insert(received);
            }
            _ => break,
        }
    }
    let sent = sent.lock().await;
    let mut command: Vec<Duration> = Vec::new();
    let mut commit: Vec<Duration> = Vec::new();
    for (order_id, received) in &receipts {
        if let Some(at) = sent.get(order_id) {
            command.push(received.at.saturating_duration_since(*at));
        }
        if let Some(created) = received.created_at
            && let Ok(d) = received.wall.duration_since(created)
        {
            commit.push(d);
        }
    }
    command.sort();
    commit.sort();
    let after = service.memory();

    let kib = |m: Option<(u64, u64)>, peak: bool| m.map(|(rss, hwm)| if peak { hwm } else { rss });
    let per_client = match (kib(idle, false), kib(connected, false)) {
        (Some(a), Some(b)) if !readers.is_empty() => {
            format!(
                "{:.1} KiB",
                b.saturating_sub(a) as f64 / readers.len() as f64
            )
        }
        _ => "n/a".into(),
    };
    let show = |m: Option<u64>| m.map(mib).unwrap_or_else(|| "n/a".into());
    println!(
        "| clients | connect time | RSS idle | RSS connected | per client | RSS peak | notifications | received | cancel→receive p50 | p99 | createdAt→receive p50 | p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {connect_time:.1?} | {} | {} | {per_client} | {} | {expected} | {} | {} | {} | {} | {} |",
        readers.len(),
        show(kib(idle, false)),
        show(kib(connected, false)),
        show(kib(after, true)),
        receipts.len(),
        ms(percentile(&command, 0.50)),
        ms(percentile(&command, 0.99)),
        ms(percentile(&commit, 0.50)),
        ms(percentile(&commit, 0.99)),
    );

    for reader in readers {
        reader.abort();
    }
    if args.url.is_none() {
        service.stop().await;
        drop_database(&database_url).await;
    }
    if receipts.len() < expected {
        return Err(format!(
            "{} of {expected} notifications never arrived",
            expected - receipts.len()
        ));
    }
    Ok(())
}

/// Removes the database a started service used.
async fn drop_database(url: &str) {
    let Ok(client) = mongodb::Client::with_uri_str(url).await else {
        return;
    };
    if let Some(db) = client.default_database() {
        let _ = db.drop().await;
    }
}
