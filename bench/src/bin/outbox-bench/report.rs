//! The Markdown report: the results table with ratios and goals, and the
//! tables that show where the time went (CPU per process, database
//! commands per record and their latencies).

use crate::log_floor::LogFloor;
use crate::phases::{Drain, EndToEnd, Http, Level, Outage, Throughput, Usage};
use crate::sys::{ms, percentile};
use std::fmt::Write;
use std::time::Duration;

#[derive(Default)]
pub struct Results {
    pub tx: Option<Throughput>,
    pub broker: Option<Throughput>,
    /// The database's floor: commit, read and mark under load (1b) and for
    /// a backlog (1c), no broker, no relay.
    pub floor_commit: Option<Throughput>,
    pub floor_backlog: Option<Throughput>,
    /// The floor of an outbox read as a log through the change stream,
    /// with one cursor write per batch: under load (1d), for a backlog (1e).
    pub log_commit: Option<LogFloor>,
    pub log_backlog: Option<LogFloor>,
    pub e2e: Option<EndToEnd>,
    pub levels: Vec<Level>,
    pub drain: Option<Drain>,
    pub http: Option<Http>,
    pub outage: Option<Outage>,
}

fn rate(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// The ratio cell: each known ratio with the row it is taken to, e.g.
/// "0.56 of min(1, 2); 0.84 of 1b".
fn ratios(parts: &[(Option<f64>, &str)]) -> String {
    parts
        .iter()
        .filter_map(|(ratio, to)| ratio.map(|r| format!("{r:.2} of {to}")))
        .collect::<Vec<_>>()
        .join("; ")
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// For a floor held against a goal it does not itself have to meet.
fn reach(ok: bool) -> &'static str {
    if ok {
        "within reach"
    } else {
        "**out of reach**"
    }
}

/// The most a path whose records cost `needed` of CPU can reach on
/// `cores` fully used, as a fraction of `reference` records per second.
fn cpu_bound(cores: f64, needed: Duration, reference: f64) -> f64 {
    cores / needed.as_secs_f64().max(1e-12) / reference.max(1e-12)
}

fn cpu_ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn pcts(sorted: &[Duration]) -> String {
    format!(
        "p50 {} / p99 {} / p99.9 {} (n = {})",
        ms(percentile(sorted, 50.0)),
        ms(percentile(sorted, 99.0)),
        ms(percentile(sorted, 99.9)),
        sorted.len()
    )
}

impl Results {
    pub fn markdown(&self, args: &crate::cli::Args) -> String {
        let mut out = String::new();
        let raw_tx = self.tx.as_ref().map(Throughput::rate);
        let raw_broker = self.broker.as_ref().map(Throughput::rate);
        let floor_commit = self.floor_commit.as_ref().map(Throughput::rate);
        let _ = writeln!(out, "| # | measurement | result | ratio | goal | |");
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        if let Some(tx) = &self.tx {
            let _ = writeln!(
                out,
                "| 1 | raw transactions: order + outbox record, {} producers, no relay | {} tx/s ({} in {:.1} s) | | | |",
                args.concurrency,
                rate(tx.rate()),
                tx.count,
                tx.elapsed.as_secs_f64()
            );
        }
        if let Some(b) = &self.broker {
            let _ = writeln!(
                out,
                "| 2 | raw broker: persistent publishes, confirms, {} in flight, durable queue consumed | {} msg/s ({} in {:.1} s) | | | |",
                args.window,
                rate(b.rate()),
                b.count,
                b.elapsed.as_secs_f64()
            );
        }
        if let Some(f) = &self.floor_commit {
            let _ = writeln!(
                out,
                "| 1b | database floor under load: the producers of 1 commit while one loop reads each record and marks it published (the relay's write), no broker, no relay | {} /s ({} in {:.1} s) | {} | | |",
                rate(f.rate()),
                f.count,
                f.elapsed.as_secs_f64(),
                ratios(&[(raw_tx.map(|t| f.rate() / t), "1")]),
            );
        }
        if let Some(f) = &self.floor_backlog {
            let _ = writeln!(
                out,
                "| 1c | database floor for a backlog: {} records staged as in 5, then read by aggregate and marked published a round at a time (no scan), no broker, no relay | {} rec/s ({} in {:.1} s) | | | |",
                f.count,
                rate(f.rate()),
                f.count,
                f.elapsed.as_secs_f64(),
            );
        }
        let smaller = self.smaller_raw().map(|(rate, _)| rate);
        if let Some(l) = &self.log_commit {
            let ratio = smaller.map(|f| l.throughput.rate() / f);
            let _ = writeln!(
                out,
                "| 1d | log floor under load: the producers of 1 commit while one reader follows the change stream, publishes each record with a confirm and writes its cursor once per batch ({:.0} records per cursor write), no write per record, no leases | {} /s ({} in {:.1} s, lost {}, out of order {}); commit→confirm at full load {} | {} | ≥ 0.9 (as 3) | {} |",
                l.records_per_checkpoint,
                rate(l.throughput.rate()),
                l.throughput.count,
                l.throughput.elapsed.as_secs_f64(),
                l.lost,
                l.out_of_order,
                pcts(&l.latencies),
                ratios(&[(ratio, "min(1, 2)")]),
                ratio.map(|r| reach(r >= 0.9)).unwrap_or_default(),
            );
        }
        if let Some(l) = &self.log_backlog {
            let ratio = raw_broker.map(|b| l.throughput.rate() / b);
            let _ = writeln!(
                out,
                "| 1e | log floor for a backlog: {} records staged as in 5, then read from the change stream, published with confirms ({} in flight), one cursor write per {:.0} records | {} rec/s ({} in {:.1} s; first confirm {:.2} s after resuming the stream; lost {}, out of order {}) | {} | ≥ 0.8 (as 5) | {} |",
                l.throughput.count,
                args.window,
                l.records_per_checkpoint,
                rate(l.throughput.rate()),
                l.throughput.count,
                l.throughput.elapsed.as_secs_f64(),
                l.to_first.as_secs_f64(),
                l.lost,
                l.out_of_order,
                ratios(&[(ratio, "2")]),
                ratio.map(|r| reach(r >= 0.8)).unwrap_or_default(),
            );
        }
        if let Some(e) = &self.e2e {
            let ratio = smaller.map(|f| e.throughput.rate() / f);
            let _ = writeln!(
                out,
                "| 3 | end-to-end: committed and confirmed, {} producers, relay running | {} /s ({} in {:.1} s, lost {}); commit→confirm at full load {} | {} | ≥ 0.9 | {} |",
                args.concurrency,
                rate(e.throughput.rate()),
                e.throughput.count,
                e.throughput.elapsed.as_secs_f64(),
                e.lost,
                pcts(&e.latencies),
                ratios(&[
                    (ratio, "min(1, 2)"),
                    (floor_commit.map(|f| e.throughput.rate() / f), "1b"),
                    (
                        self.log_commit
                            .as_ref()
                            .map(|l| e.throughput.rate() / l.throughput.rate()),
                        "1d"
                    ),
                ]),
                ratio.map(|r| verdict(r >= 0.9)).unwrap_or_default(),
            );
        }
        for (i, level) in self.levels.iter().enumerate() {
            let p99 = percentile(&level.latencies, 99.0);
            let (goal, met) = if (level.fraction - 0.5).abs() < 1e-9 {
                ("p99 ≤ 20 ms", verdict(p99 <= Duration::from_millis(20)))
            } else {
                ("", "")
            };
            let _ = writeln!(
                out,
                "| 4{} | commit→confirm latency at {:.0} % of max ({} /s paced, {} /s achieved) | {} | | {goal} | {met} |",
                ['a', 'b', 'c'].get(i).copied().unwrap_or('x'),
                level.fraction * 100.0,
                rate(level.target),
                rate(level.achieved),
                pcts(&level.latencies),
            );
        }
        if let Some(d) = &self.drain {
            let ratio = raw_broker.map(|b| d.rate() / b);
            let _ = writeln!(
                out,
                "| 5 | backlog drain: {} records ({} per aggregate) committed while the broker was unreachable (staged in {:.1} s) | {} rec/s (drained in {:.1} s; first confirm {:.1} s after the broker returned); lost {}, out of order {}, duplicates {} | {} | ≥ 0.8 | {} |",
                d.records,
                args.drain_per_aggregate,
                d.staged_in.as_secs_f64(),
                rate(d.rate()),
                d.drained_in.as_secs_f64(),
                d.reconnect.as_secs_f64(),
                d.lost,
                d.out_of_order,
                d.duplicates,
                ratios(&[
                    (ratio, "2"),
                    (
                        self.floor_backlog.as_ref().map(|f| d.rate() / f.rate()),
                        "1c"
                    ),
                ]),
                ratio
                    .map(|r| verdict(r >= 0.8 && d.lost == 0 && d.out_of_order == 0))
                    .unwrap_or_default(),
            );
        }
        if let Some(h) = &self.http {
            let ratio = raw_tx.map(|t| h.throughput.rate() / t);
            let _ = writeln!(
                out,
                "| 6 | HTTP POST /api/v1/order through the real router, {} clients | {} req/s, p50 {}, p99 {} ({} created, {} failed); RSS {:.0} MiB, peak {:.0} MiB (app + load generator in one process) | {} | ≥ 0.8 | {} |",
                args.http_concurrency,
                rate(h.throughput.rate()),
                ms(percentile(&h.latencies, 50.0)),
                ms(percentile(&h.latencies, 99.0)),
                h.throughput.count,
                h.failures,
                h.rss.0,
                h.rss.1,
                ratios(&[(ratio, "1")]),
                ratio.map(|r| verdict(r >= 0.8)).unwrap_or_default(),
            );
        }
        if let Some(o) = &self.outage {
            let _ = writeln!(
                out,
                "| 7 | broker cut off for {:.0} s of {:.0} s, {} orders/s each | outbox: {} committed, **{} lost**, {} duplicates, {} out of order; old commit-then-publish: {} committed, **{} lost**, {} errors logged | | nothing lost | {} |",
                args.outage.as_secs_f64(),
                args.outage_run.as_secs_f64(),
                rate(o.rate),
                o.outbox_committed,
                o.outbox_lost,
                o.outbox_duplicates,
                o.outbox_out_of_order,
                o.direct_committed,
                o.direct_lost,
                o.direct_errors,
                verdict(o.outbox_lost == 0),
            );
        }
        out.push_str(&self.usage_table());
        out.push_str(&self.cpu_bounds());
        out
    }

    /// The smaller of the two raw rates, which row 3 is held to, and its
    /// row's name.
    fn smaller_raw(&self) -> Option<(f64, &'static str)> {
        let tx = self.tx.as_ref().map(Throughput::rate);
        let broker = self.broker.as_ref().map(Throughput::rate);
        match (tx, broker) {
            (Some(t), Some(b)) if t <= b => Some((t, "1")),
            (Some(_), Some(b)) => Some((b, "2")),
            (Some(t), None) => Some((t, "1")),
            (None, b) => b.map(|b| (b, "2")),
        }
    }

    /// How far the machine's CPU lets each missed goal go, from the CPU per
    /// record of the rows measured: a path that needs at least the work of
    /// two rows costs at least their sum, and runs at most as fast as the
    /// machine's cores allow at that cost.
    fn cpu_bounds(&self) -> String {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);
        let per = |usage: &Usage| usage.cpu_per_unit;
        let broker_rate = self.broker.as_ref().map(Throughput::rate);
        // Row 3's ratio is to the smaller raw rate, so its bound is too.
        let smaller = self.smaller_raw();
        let broker = self.broker.as_ref().and_then(|b| per(&b.usage));
        let floor_commit = self.floor_commit.as_ref().and_then(|f| per(&f.usage));
        let floor_backlog = self.floor_backlog.as_ref().and_then(|f| per(&f.usage));
        let log_backlog = self
            .log_backlog
            .as_ref()
            .and_then(|l| per(&l.throughput.usage));
        let e2e = self.e2e.as_ref().and_then(|e| per(&e.throughput.usage));
        let drain = self.drain.as_ref().and_then(|d| per(&d.usage));

        // A relay that cost less than the rows it is held to shows that
        // their costs did not add in this run, so the "at the least" bound
        // is loose; its own cost then bounds it better.
        let loose = |measured: Option<Duration>, parts: [Option<Duration>; 2]| {
            let least: Option<Duration> = parts.into_iter().sum();
            matches!((measured, least), (Some(m), Some(l)) if m < l)
        };
        let mut notes = Vec::new();
        if loose(e2e, [floor_commit, broker]) {
            notes.push("end-to-end cost less per record than 1b and 2 together");
        }
        if loose(drain, [floor_backlog, broker]) {
            notes.push("the drain cost less per record than 1c and 2 together");
        }
        let mut rows = Vec::new();
        let mut row =
            |path: &str, needed: Duration, (reference, to): (f64, &str), goal: Option<f64>| {
                let bound = cpu_bound(cores, needed, reference);
                let (goal, reached) = goal
                    .map(|g| (format!("≥ {g}"), reach(bound >= g)))
                    .unwrap_or_default();
                rows.push(format!(
                    "| {path} | {} | {bound:.2} of {to} | {goal} | {reached} |",
                    cpu_ms(needed)
                ));
            };
        if let (Some(smaller), Some(floor), Some(broker)) = (smaller, floor_commit, broker) {
            row(
                "3 end-to-end, at the least: commit, read and mark (1b), publish with a confirm (2)",
                floor + broker,
                smaller,
                Some(0.9),
            );
        }
        if let (Some(smaller), Some(e2e)) = (smaller, e2e) {
            row("3 end-to-end, at its measured cost", e2e, smaller, None);
        }
        let to_broker = broker_rate.map(|b| (b, "2"));
        if let (Some(to_broker), Some(broker), Some(floor)) = (to_broker, broker, floor_backlog) {
            row(
                "5 drain, at the least: read and mark (1c), publish with a confirm (2)",
                floor + broker,
                to_broker,
                Some(0.8),
            );
        }
        if let (Some(to_broker), Some(log)) = (to_broker, log_backlog) {
            row(
                "5 drain read as a log (1e: follow the stream, publish, one cursor write per batch)",
                log,
                to_broker,
                Some(0.8),
            );
        }
        if let (Some(to_broker), Some(drain)) = (to_broker, drain) {
            row("5 drain, at its measured cost", drain, to_broker, None);
        }
        if rows.is_empty() {
            return String::new();
        }
        let mut out = format!(
            "\nWhat the CPU allows (this process, the database server and RabbitMQ \
             together, per record; a path costing at least the rows named runs at \
             most at {cores:.0} cores ÷ that cost, given here as a ratio to the rate \
             named; an estimate, as costs are assumed to add):\n\n\
             | path | CPU per record | at most | goal | |\n|---|---|---|---|---|\n",
        );
        for row in rows {
            let _ = writeln!(out, "{row}");
        }
        for note in notes {
            let _ = writeln!(
                out,
                "\nIn this run {note}: their costs did not add, so that \"at the least\" \
                 bound is loose, and the row at its measured cost bounds it better."
            );
        }
        out
    }

    fn usage_table(&self) -> String {
        let mut rows: Vec<(String, &Usage, f64)> = Vec::new();
        if let Some(t) = &self.tx {
            rows.push(("1 raw transactions".into(), &t.usage, t.rate()));
        }
        if let Some(b) = &self.broker {
            rows.push(("2 raw broker".into(), &b.usage, b.rate()));
        }
        if let Some(f) = &self.floor_commit {
            rows.push(("1b floor under load".into(), &f.usage, f.rate()));
        }
        if let Some(f) = &self.floor_backlog {
            rows.push(("1c floor for a backlog".into(), &f.usage, f.rate()));
        }
        if let Some(l) = &self.log_commit {
            rows.push((
                "1d log floor under load".into(),
                &l.throughput.usage,
                l.throughput.rate(),
            ));
        }
        if let Some(l) = &self.log_backlog {
            rows.push((
                "1e log floor for a backlog".into(),
                &l.throughput.usage,
                l.throughput.rate(),
            ));
        }
        if let Some(e) = &self.e2e {
            rows.push((
                "3 end-to-end".into(),
                &e.throughput.usage,
                e.throughput.rate(),
            ));
        }
        for level in &self.levels {
            rows.push((
                format!("4 latency at {:.0} %", level.fraction * 100.0),
                &level.usage,
                level.achieved,
            ));
        }
        if let Some(d) = &self.drain {
            rows.push((
                "5 drain (after the broker returned)".into(),
                &d.usage,
                d.rate(),
            ));
        }
        if let Some(h) = &self.http {
            rows.push((
                "6 HTTP create".into(),
                &h.throughput.usage,
                h.throughput.rate(),
            ));
        }
        let cpu = |v: Option<f64>| v.map(|v| format!("{v:.0} %")).unwrap_or("n/a".into());
        let mut out = String::from(
            "\nWhere the time goes (CPU in % of one core; 200 % is the whole machine):\n\n\
             | phase | rate /s | this process | database server | RabbitMQ | CPU per record | DB commands per record | DB commands /s |\n\
             |---|---|---|---|---|---|---|---|\n",
        );
        for (name, usage, r) in &rows {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} | {} | {} |",
                rate(*r),
                cpu(usage.cpu.own),
                cpu(usage.cpu.database),
                cpu(usage.cpu.broker),
                usage.cpu_per_unit.map(cpu_ms).unwrap_or("n/a".into()),
                usage
                    .commands_per_unit
                    .map(|c| format!("{c:.1}"))
                    .unwrap_or("n/a".into()),
                usage
                    .commands_per_unit
                    .map(|c| format!("{:.0}", c * r))
                    .unwrap_or("n/a".into()),
            );
        }
        let detailed: Vec<&(String, &Usage, f64)> = rows
            .iter()
            .filter(|(_, u, _)| !u.commands.is_empty())
            .collect();
        if !detailed.is_empty() {
            out.push_str(
                "\nDatabase round trips as the driver timed them (p50 / p99, count):\n\n\
                 | phase | command | p50 | p99 | count |\n|---|---|---|---|---|\n",
            );
            for (name, usage, _) in detailed {
                let mut commands: Vec<(&String, &Vec<Duration>)> = usage.commands.iter().collect();
                commands.sort_by_key(|(_, d)| std::cmp::Reverse(d.len()));
                for (command, durations) in commands {
                    let mut sorted = durations.clone();
                    sorted.sort();
                    let _ = writeln!(
                        out,
                        "| {name} | {command} | {} | {} | {} |",
                        ms(percentile(&sorted, 50.0)),
                        ms(percentile(&sorted, 99.0)),
                        sorted.len()
                    );
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::{cpu_bound, ratios};
    use std::time::Duration;

    #[test]
    fn a_path_runs_at_most_as_fast_as_the_cores_allow_at_its_cost() {
        // 2 cores at 2 ms a record: 1 000 records a second, half of 2 000.
        let bound = cpu_bound(2.0, Duration::from_millis(2), 2000.0);
        assert!((bound - 0.5).abs() < 1e-9);
        assert!(cpu_bound(2.0, Duration::ZERO, 0.0).is_finite());
    }

    #[test]
    fn the_ratio_cell_names_each_known_ratio_and_skips_the_unknown() {
        assert_eq!(
            ratios(&[(Some(0.561), "min(1, 2)"), (Some(0.8449), "1b")]),
            "0.56 of min(1, 2); 0.84 of 1b"
        );
        assert_eq!(ratios(&[(None, "2"), (Some(1.0), "1c")]), "1.00 of 1c");
        assert_eq!(ratios(&[(None, "1")]), "");
    }
}
