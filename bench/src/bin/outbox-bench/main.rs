//! Outbox benchmark: measures, in one run on one machine, the outbox
//! against its physical limits and prints a Markdown table.
//!
//! 1. raw transaction rate: an order-like document and one outbox record
//!    per transaction, no relay;
//! 2. raw broker rate: persistent publishes with confirms, pipelined;
//!    1b/1c. the database's floor: commit, read and mark each record with
//!    no broker and no relay, under load and for a backlog (`floor`);
//!    1d/1e. the floor of an outbox that writes nothing per record: a log
//!    read through the change stream, published, one cursor write per
//!    batch (`log`);
//! 3. end-to-end: commits with a running relay until every record is
//!    confirmed, and its ratio to the smaller raw rate and to 1b;
//! 4. commit→confirm latency at 25, 50 and 90 % of that rate, paced;
//! 5. backlog drain: records committed while the broker is unreachable
//!    (a proxy this program owns is cut), then drained, against 2 and 1c;
//! 6. HTTP POST create through the service's real router;
//! 7. a broker outage under the outbox and under the old
//!    commit-then-publish approach, counting lost events for both.
//!
//! Every phase has its own database and routing key; everything is
//! dropped at the end. Layout: `cli` (flags), `harness` (client, relay,
//! tap), `phases`, `floor`, `log_floor`, `proxy`, `sys` (machine, CPU, RSS),
//! `report`.

mod cli;
mod floor;
mod harness;
mod log_floor;
mod phases;
mod proxy;
mod report;
mod sys;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = match cli::Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let watched = sys::Watched::find(&args.mongo);
    let load_before = sys::load_average();
    let bench = harness::Bench::connect(args.clone()).await?;
    // Interrupted, the run still drops what it made.
    let result = tokio::select! {
        result = run(&bench, &watched) => result,
        _ = interrupted() => Err("interrupted".into()),
    };
    bench.cleanup().await;
    let results = result?;

    println!("## Outbox benchmark\n");
    println!("Machine: {}", sys::machine());
    println!(
        "Load average (1 min) before / after the run: {load_before} / {}",
        sys::load_average()
    );
    let describe = |pid: Option<u32>| {
        pid.and_then(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .ok()
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        })
        .unwrap_or_else(|| "not found".into())
    };
    println!("Database server: `{}`", describe(watched.database).trim());
    println!(
        "Broker: RabbitMQ (`{}`)\n",
        args.amqp.split('@').next_back().unwrap_or("")
    );
    println!("Command: `{command}`\n");
    println!("{}", results.markdown(&args));
    Ok(())
}

async fn run(bench: &harness::Bench, watched: &sys::Watched) -> Result<report::Results, BoxError> {
    let args = &bench.args;
    let mut results = report::Results::default();
    if args.runs("tx") {
        eprintln!("1/7 raw transactions ...");
        let tx = phases::raw_transactions(bench, watched).await?;
        eprintln!("    {:.1} tx/s", tx.rate());
        results.tx = Some(tx);
        bench.drop_databases().await;
    }
    if args.runs("broker") {
        eprintln!("2/7 raw broker ...");
        let broker = phases::raw_broker(bench, watched).await?;
        eprintln!("    {:.1} msg/s", broker.rate());
        results.broker = Some(broker);
        bench.drop_databases().await;
    }
    if args.runs("floor") {
        eprintln!("1b, 1c database floor: commit, read, mark ...");
        let commit = floor::commit_and_mark(bench, watched).await?;
        eprintln!("    {:.1} /s under load", commit.rate());
        results.floor_commit = Some(commit);
        bench.drop_databases().await;
        let backlog = floor::backlog(bench, watched).await?;
        eprintln!("    {:.1} rec/s for a backlog", backlog.rate());
        results.floor_backlog = Some(backlog);
        bench.drop_databases().await;
    }
    if args.runs("log") {
        eprintln!("1d, 1e floor of a log read through the change stream ...");
        let commit = log_floor::commit_and_follow(bench, watched).await?;
        eprintln!("    {:.1} /s under load", commit.throughput.rate());
        results.log_commit = Some(commit);
        bench.drop_databases().await;
        let backlog = log_floor::backlog(bench, watched).await?;
        eprintln!("    {:.1} rec/s for a backlog", backlog.throughput.rate());
        results.log_backlog = Some(backlog);
        bench.drop_databases().await;
    }
    let mut max_rate = None;
    if args.runs("e2e") {
        eprintln!("3/7 end-to-end ...");
        let e2e = phases::end_to_end(bench, watched).await?;
        eprintln!("    {:.1} /s", e2e.throughput.rate());
        max_rate = Some(e2e.throughput.rate());
        results.e2e = Some(e2e);
        bench.drop_databases().await;
    }
    if args.runs("latency") {
        let max = match max_rate {
            Some(rate) => rate,
            None => phases::end_to_end(bench, watched).await?.throughput.rate(),
        };
        eprintln!("4/7 latency at 25/50/90 % of {max:.1} /s ...");
        results.levels = phases::latency(bench, watched, max).await?;
        max_rate = Some(max);
        bench.drop_databases().await;
    }
    if args.runs("drain") {
        eprintln!("5/7 backlog drain of {} records ...", args.records);
        let drain = phases::drain(bench, watched).await?;
        eprintln!("    {:.1} rec/s", drain.rate());
        results.drain = Some(drain);
        bench.drop_databases().await;
    }
    if args.runs("http") {
        eprintln!("6/7 HTTP create ...");
        let http = phases::http(bench, watched).await?;
        eprintln!("    {:.1} req/s", http.throughput.rate());
        results.http = Some(http);
        bench.drop_databases().await;
    }
    if args.runs("outage") {
        // Both approaches run at once, each at a quarter of the maximum,
        // so together they load the system like the 50 % latency level.
        let rate = max_rate.map(|r| r / 4.0).unwrap_or(20.0).max(1.0);
        eprintln!("7/7 broker outage, {rate:.1} orders/s per approach ...");
        results.outage = Some(phases::outage(bench, rate).await?);
    }
    Ok(results)
}

/// Ctrl-C or SIGTERM.
async fn interrupted() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
