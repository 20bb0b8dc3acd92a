//! What the machine is and where its CPU goes: the machine line of the
//! report, CPU time of this process, of the database server and of the
//! broker per phase (from /proc), this process's RSS, and percentiles.

use std::time::{Duration, Instant};

/// nproc, CPU model and RAM, as one line.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpus} CPUs (nproc), {model}, {ram_gib:.1} GiB RAM, Linux {}",
        kernel.trim()
    )
}

/// The 1-minute load average: other work on the machine skews every figure.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "unknown".into())
}

/// The first process whose command line contains every one of `needles`.
pub fn find_process(needles: &[&str]) -> Option<(u32, String)> {
    let own = std::process::id();
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if needles.iter().all(|n| cmdline.contains(n)) {
            return Some((pid, cmdline.trim().to_string()));
        }
    }
    None
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields start after its ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of stat(5), utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// The processes whose CPU is sampled: this one, the database server, the broker.
#[derive(Clone)]
pub struct Watched {
    pub database: Option<u32>,
    pub broker: Option<u32>,
}

impl Watched {
    /// The database server listening on `mongo` (host:port), found by its
    /// command line, and the RabbitMQ node.
    pub fn find(mongo: &str) -> Self {
        let port = mongo.rsplit(':').next().unwrap_or("27017");
        let server = |name: &str| {
            find_process(&[name, &format!("--port {port}")])
                .or_else(|| find_process(&[name, &format!("--port={port}")]))
                .or_else(|| (port == "27017").then(|| find_process(&[name])).flatten())
        };
        Self {
            database: server("secantusd")
                .or_else(|| server("mongod"))
                .map(|(pid, _)| pid),
            broker: find_process(&["beam.smp"]).map(|(pid, _)| pid),
        }
    }

    pub fn start(&self) -> CpuSample {
        let read = |pid: Option<u32>| pid.and_then(|p| cpu_ticks(&p.to_string()));
        CpuSample {
            at: Instant::now(),
            own: cpu_ticks("self"),
            database: read(self.database),
            broker: read(self.broker),
            watched: self.clone(),
        }
    }
}

pub struct CpuSample {
    at: Instant,
    own: Option<u64>,
    database: Option<u64>,
    broker: Option<u64>,
    watched: Watched,
}

/// CPU used during a phase, in % of one core (200 % = both of 2 cores).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    pub own: Option<f64>,
    pub database: Option<f64>,
    pub broker: Option<f64>,
    /// How long the sample ran.
    pub wall: Duration,
}

impl CpuUse {
    /// CPU time of the three processes together; none unless all three
    /// were read (a server on another machine is not counted, and a total
    /// without it would understate every phase that uses it).
    pub fn total(&self) -> Option<Duration> {
        let pct = self.own? + self.database? + self.broker?;
        Some(self.wall.mul_f64(pct / 100.0))
    }
}

impl CpuSample {
    pub fn finish(&self) -> CpuUse {
        let elapsed = self.at.elapsed();
        let wall = elapsed.as_secs_f64().max(1e-6);
        let tps = ticks_per_second();
        let pct = |before: Option<u64>, now: Option<u64>| match (before, now) {
            (Some(b), Some(n)) => Some((n.saturating_sub(b)) as f64 / tps / wall * 100.0),
            _ => None,
        };
        let read = |pid: Option<u32>| pid.and_then(|p| cpu_ticks(&p.to_string()));
        CpuUse {
            own: pct(self.own, cpu_ticks("self")),
            database: pct(self.database, read(self.watched.database)),
            broker: pct(self.broker, read(self.watched.broker)),
            wall: elapsed,
        }
    }
}

/// VmRSS and VmHWM of this process, in MiB.
pub fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Percentile `p` (0..=100) of `sorted` (ascending), nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.1} ms")
    }
}
