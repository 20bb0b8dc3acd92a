//! The chaos suite: starts its own database, broker, Flutterwave simulator
//! and service instances on loopback, runs a workload while injecting one
//! fault at a time, and checks from what peers really received that nothing
//! was lost, doubled, reordered or invented.
//!
//!   chaos run [--short] [--fault NAME]... [--orders N] [--out DIR]
//!   chaos list
//!   chaos serve        (internal: one service instance, failpoints armed from FAILPOINTS)

mod checker;
mod faults;
mod infra;
mod instance;
mod listeners;
mod peers;
mod report;
mod scenario;
mod stack;
mod truth;
mod workload;

use faults::Fault;
use report::Report;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("chaos: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.first().map(String::as_str) {
        Some("serve") => {
            // Arms the failpoints named in FAILPOINTS for this process only.
            let scenario = fail::FailScenario::setup();
            let code = runtime.block_on(order_service::entry::run(Vec::new()));
            scenario.teardown();
            code
        }
        Some("list") => {
            for fault in faults::ALL {
                let short = if faults::SHORT.contains(&fault) {
                    " (short)"
                } else {
                    ""
                };
                println!("{:28} {}{short}", fault.name(), fault.describe());
            }
            ExitCode::SUCCESS
        }
        Some("run") => match Options::parse(&args[1..]) {
            Ok(options) => runtime.block_on(run(options)),
            Err(e) => {
                eprintln!("chaos: {e}\n{USAGE}");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

const USAGE: &str =
    "usage: chaos run [--short] [--fault NAME]... [--orders N] [--out DIR] | chaos list";

struct Options {
    mode: &'static str,
    faults: Vec<Fault>,
    orders: usize,
    out: PathBuf,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut short = false;
        let mut chosen = Vec::new();
        let mut orders = None;
        let mut out = PathBuf::from("target/chaos");
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--short" => short = true,
                "--fault" => {
                    let name = it.next().ok_or("--fault needs a name")?;
                    chosen.push(Fault::parse(name).ok_or(format!("unknown fault {name}"))?);
                }
                "--orders" => {
                    let n = it.next().ok_or("--orders needs a number")?;
                    orders = Some(n.parse().map_err(|_| format!("--orders: {n}"))?);
                }
                "--out" => out = PathBuf::from(it.next().ok_or("--out needs a directory")?),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        let (mode, faults) = match (short, chosen.is_empty()) {
            (_, false) => ("selected", chosen),
            (true, true) => ("short", faults::SHORT.to_vec()),
            (false, true) => ("full", faults::ALL.to_vec()),
        };
        Ok(Self {
            mode,
            faults,
            orders: orders.unwrap_or(if short { 20 } else { 40 }),
            out,
        })
    }
}

async fn run(options: Options) -> ExitCode {
    let started_at = chrono::Utc::now().to_rfc3339();
    let dir = std::env::temp_dir().join(format!("gigconnect-chaos-{}", std::process::id()));
    eprintln!("chaos: starting the stack in {}", dir.display());
    let mut stack = match stack::Stack::start(&dir).await {
        Ok(stack) => stack,
        Err(e) => {
            eprintln!("chaos: {e}");
            return ExitCode::FAILURE;
        }
    };
    let settings = scenario::Settings {
        orders: options.orders,
        spread: Duration::from_secs(12),
        recovery_limit: Duration::from_secs(120),
    };
    let mut runs = Vec::new();
    for fault in &options.faults {
        eprintln!("chaos: {} ({})", fault.name(), fault.describe());
        let run = scenario::run(&mut stack, *fault, settings).await;
        eprintln!(
            "chaos: {} {} in {:.0} s: {:?}",
            run.fault,
            if run.passed { "passed" } else { "FAILED" },
            run.duration_secs,
            run.counts
        );
        runs.push(run);
    }
    stack.stop().await;
    let passed = runs.iter().all(|r| r.passed);
    let report = Report {
        mode: options.mode.into(),
        started_at,
        orders_per_fault: options.orders,
        runs,
        passed,
    };
    println!("{}", report.markdown());
    if let Err(e) = report.write(&options.out) {
        eprintln!(
            "chaos: cannot write the report to {}: {e}",
            options.out.display()
        );
        return ExitCode::FAILURE;
    }
    if passed {
        let _ = std::fs::remove_dir_all(&dir);
        ExitCode::SUCCESS
    } else {
        eprintln!("chaos: logs kept in {}", dir.display());
        ExitCode::FAILURE
    }
}
