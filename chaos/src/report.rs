//! The run's output: a Markdown table (also printed) and a JSON file.

use crate::scenario::FaultRun;
use serde::Serialize;
use std::fmt::Write;
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: String,
    pub started_at: String,
    pub orders_per_fault: usize,
    pub runs: Vec<FaultRun>,
    pub passed: bool,
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Chaos run ({} mode, {}; {} orders per fault): **{}**\n",
            self.mode,
            self.started_at,
            self.orders_per_fault,
            if self.passed { "PASSED" } else { "FAILED" }
        );
        out.push_str(
            "| fault | events expected | received | lost | redelivered | duplicated | doubled effects | out of order | phantom | stuck | socket heard / expected | socket lost, misdirected, phantom | worst delay (s) | settled (s) | result |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for run in &self.runs {
            let c = &run.counts;
            let settled = run
                .settled_secs
                .map_or("never".to_string(), |s| format!("{s:.1}"));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {}, {}, {} | {:.1} | {} | {} |",
                run.fault,
                c.events_expected,
                c.events_received,
                c.lost,
                c.redelivered,
                c.duplicated,
                c.doubled_effects,
                c.out_of_order,
                c.phantom,
                c.stuck,
                c.socket_heard,
                c.socket_expected,
                c.socket_lost,
                c.socket_misdirected,
                c.socket_phantom,
                c.worst_delay_ms as f64 / 1000.0,
                settled,
                if run.passed { "pass" } else { "FAIL" },
            );
        }
        out.push_str("\nFaults:\n");
        for run in &self.runs {
            let _ = write!(out, "- `{}`: {}", run.fault, run.description);
            if !run.note.is_empty() {
                let _ = write!(out, " ({})", run.note);
            }
            let _ = writeln!(out, "; {:.0} s.", run.duration_secs);
            for stuck in run.counts.stuck_orders.iter().take(5) {
                let _ = writeln!(out, "  - stuck: {stuck}");
            }
            for failure in run.workload_failures.iter().take(5) {
                let _ = writeln!(out, "  - workload step gave up: {failure}");
            }
        }
        out
    }

    /// Writes `chaos-<mode>.md` and `chaos-<mode>.json` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(format!("chaos-{}.md", self.mode)), self.markdown())?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join(format!("chaos-{}.json", self.mode)), json)
    }
}
