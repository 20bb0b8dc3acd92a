//! Command-line flags: every size and duration of the run, with small
//! defaults so that a whole run takes a few minutes on a 2-core machine.

use std::time::Duration;

pub const USAGE: &str = "\
outbox-bench: measures the transactional outbox against its physical limits

usage: outbox-bench [flags]

  --mongo HOST:PORT        MongoDB-wire server (default $TEST_MONGODB_HOST or 127.0.0.1:27017)
  --amqp URI               RabbitMQ (default $TEST_AMQP_URI or amqp://guest:guest@127.0.0.1:5672/%2f)
  --seconds S              length of each throughput phase (default 10)
  --concurrency N          concurrent producers (transactions) (default 16)
  --window N               unconfirmed publishes in flight, raw broker phase (default 256)
  --latency-seconds S      length of each paced latency level (default 8)
  --records N              backlog committed while the broker is unreachable, and for the
                           database floor of a backlog (default 100000)
  --drain-per-aggregate N  records per aggregate in the backlog (default 5)
  --drain-batch N          backlog records staged per transaction (default 500)
  --http-concurrency N     concurrent HTTP clients (default 16)
  --outage-seconds S       how long the broker is cut off in the outage phase (default 3)
  --outage-run S           length of the outage phase (default 12)
  --scan-limit N           relay: due records per round (default: the service's, 2000)
  --relay-concurrency N    relay: aggregates at once per round (default: the service's, 32)
  --rounds-in-flight N     relay: rounds delivering at once on a backlog (default: the
                           service's, 3)
  --per-aggregate N        relay: records per aggregate per lease (default: the service's, 100)
  --only LIST              comma-separated phases: tx,broker,floor,log,e2e,latency,drain,http,
                           outage
  --no-monitor             no driver command monitoring (to check its overhead)
  --watch                  relay with its change-stream watcher, which the service leaves
                           off (OUTBOX_WATCH_CHANGES; to measure its cost)
  --no-hand                producers wake the relay to scan instead of handing it their
                           aggregate (to measure the hand-over)
";

#[derive(Debug, Clone)]
pub struct Args {
    pub mongo: String,
    pub amqp: String,
    pub seconds: Duration,
    pub concurrency: usize,
    pub window: usize,
    pub latency_seconds: Duration,
    pub records: usize,
    pub drain_per_aggregate: usize,
    pub drain_batch: usize,
    pub http_concurrency: usize,
    pub outage: Duration,
    pub outage_run: Duration,
    pub scan_limit: Option<i64>,
    pub relay_concurrency: Option<usize>,
    pub rounds_in_flight: Option<usize>,
    pub per_aggregate: Option<i64>,
    pub only: Option<Vec<String>>,
    pub monitor: bool,
    /// The relay's change-stream watcher, off as in the service.
    pub watch: bool,
    /// Producers hand their aggregate to the relay rather than wake it to scan.
    pub hand: bool,
}

pub const PHASES: &[&str] = &[
    "tx", "broker", "floor", "log", "e2e", "latency", "drain", "http", "outage",
];

impl Args {
    /// Parses flags; `Err` carries the message to print (usage included).
    pub fn parse(mut argv: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut args = Args {
            mongo: std::env::var("TEST_MONGODB_HOST").unwrap_or_else(|_| "127.0.0.1:27017".into()),
            amqp: std::env::var("TEST_AMQP_URI")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            seconds: Duration::from_secs(10),
            concurrency: 16,
            window: 256,
            latency_seconds: Duration::from_secs(8),
            records: 100_000,
            drain_per_aggregate: 5,
            drain_batch: 500,
            http_concurrency: 16,
            outage: Duration::from_secs(3),
            outage_run: Duration::from_secs(12),
            scan_limit: None,
            relay_concurrency: None,
            rounds_in_flight: None,
            per_aggregate: None,
            only: None,
            monitor: true,
            watch: false,
            hand: true,
        };
        while let Some(flag) = argv.next() {
            if flag == "--help" || flag == "-h" {
                return Err(USAGE.to_string());
            }
            if flag == "--no-monitor" {
                args.monitor = false;
                continue;
            }
            if flag == "--watch" {
                args.watch = true;
                continue;
            }
            if flag == "--no-hand" {
                args.hand = false;
                continue;
            }
            let value = argv
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"))?;
            let bad = || format!("{flag}: {value:?} is not a valid value\n\n{USAGE}");
            let seconds = |v: &str| v.parse::<f64>().map(Duration::from_secs_f64);
            match flag.as_str() {
                "--mongo" => args.mongo = value.clone(),
                "--amqp" => args.amqp = value.clone(),
                "--seconds" => args.seconds = seconds(&value).map_err(|_| bad())?,
                "--concurrency" => args.concurrency = value.parse().map_err(|_| bad())?,
                "--window" => args.window = value.parse().map_err(|_| bad())?,
                "--latency-seconds" => args.latency_seconds = seconds(&value).map_err(|_| bad())?,
                "--records" => args.records = value.parse().map_err(|_| bad())?,
                "--drain-per-aggregate" => {
                    args.drain_per_aggregate = value.parse().map_err(|_| bad())?
                }
                "--drain-batch" => args.drain_batch = value.parse().map_err(|_| bad())?,
                "--http-concurrency" => args.http_concurrency = value.parse().map_err(|_| bad())?,
                "--outage-seconds" => args.outage = seconds(&value).map_err(|_| bad())?,
                "--outage-run" => args.outage_run = seconds(&value).map_err(|_| bad())?,
                "--scan-limit" => args.scan_limit = Some(value.parse().map_err(|_| bad())?),
                "--relay-concurrency" => {
                    args.relay_concurrency = Some(value.parse().map_err(|_| bad())?)
                }
                "--rounds-in-flight" => {
                    args.rounds_in_flight = Some(value.parse().map_err(|_| bad())?)
                }
                "--per-aggregate" => args.per_aggregate = Some(value.parse().map_err(|_| bad())?),
                "--only" => {
                    let list: Vec<String> =
                        value.split(',').map(|s| s.trim().to_string()).collect();
                    if let Some(unknown) = list.iter().find(|p| !PHASES.contains(&p.as_str())) {
                        return Err(format!("--only: unknown phase {unknown:?}\n\n{USAGE}"));
                    }
                    args.only = Some(list);
                }
                _ => return Err(format!("unknown flag {flag}\n\n{USAGE}")),
            }
        }
        if args.concurrency == 0
            || args.window == 0
            || args.http_concurrency == 0
            || args.drain_per_aggregate == 0
            || args.drain_batch < args.drain_per_aggregate
        {
            return Err(format!(
                "counts must be at least 1, and --drain-batch at least --drain-per-aggregate\n\n{USAGE}"
            ));
        }
        Ok(args)
    }

    pub fn runs(&self, phase: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|p| p == phase))
    }

    pub fn mongo_uri(&self, db: &str) -> String {
        format!("mongodb://{}/{db}?directConnection=true", self.mongo)
    }
}
