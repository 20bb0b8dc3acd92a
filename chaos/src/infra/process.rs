//! A server process in a process group of its own, so that killing it kills exactly what the suite started and nothing else.

use super::InfraError;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::{Child, Command};

/// How long a process killed with SIGKILL may take to be gone.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// A loopback port nobody listens on right now. Another process may take it
/// before the server binds it; callers retry a start whose server exits.
pub(crate) fn free_port() -> Result<u16, InfraError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| InfraError::io("binding a probe socket on 127.0.0.1", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| InfraError::io("reading the probe socket's port", e))?
        .port();
    Ok(port)
}

/// The first `name` on PATH.
pub(crate) fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The last `lines` lines of a log, for error messages.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::from("(no log)");
    };
    // The end of the file is enough; a server's log can grow large.
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut text = String::new();
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_ok() {
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One process identity in /proc: a pid and its start time, so that a pid
/// reused by an unrelated process after ours died is never signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: i32,
    start: u64,
}

struct Stat {
    ppid: i32,
    state: char,
    start: u64,
}

fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself hold spaces or ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Every live descendant of `root`. Servers such as the Erlang VM put their
/// helpers in sessions of their own, so the process group alone misses them.
fn descendants(root: i32) -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let table: Vec<(i32, Stat)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, st) in &table {
            if st.ppid == parent && st.state != 'Z' {
                found.push(Proc {
                    pid: *pid,
                    start: st.start,
                });
                frontier.push(*pid);
            }
        }
    }
    found
}

fn alive(p: Proc) -> bool {
    matches!(stat(p.pid), Some(st) if st.start == p.start && st.state != 'Z')
}

fn signal_proc(p: Proc, signal: i32) {
    if alive(p) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(p.pid, signal);
        }
    }
}

/// A spawned server: the leader of its own process group.
pub(crate) struct Group {
    what: &'static str,
    child: Child,
    pgid: i32,
    log: PathBuf,
}

impl Group {
    /// Spawns `command` as the leader of a new process group, stdout and
    /// stderr appended to `log`.
    pub(crate) fn spawn(
        what: &'static str,
        mut command: Command,
        log: &Path,
    ) -> Result<Self, InfraError> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| InfraError::io(format!("opening {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| InfraError::io(format!("opening {}", log.display()), e))?;
        command
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(false);
        let child = command
            .spawn()
            .map_err(|e| InfraError::io(format!("spawning {what}"), e))?;
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| InfraError::State(format!("{what} exited before it had a pid")))?;
        Ok(Self {
            what,
            child,
            pgid,
            log: log.to_path_buf(),
        })
    }

    pub(crate) fn log(&self) -> &Path {
        &self.log
    }

    /// The exit status if the leader has exited.
    pub(crate) fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown: {e}")),
        }
    }

    /// An error saying the server died during startup, with its last log lines.
    pub(crate) fn exited_error(&self, status: String) -> InfraError {
        InfraError::Exited {
            what: self.what,
            status,
            log: self.log.clone(),
            tail: tail(&self.log, 30),
        }
    }

    /// SIGKILL to the whole group and every descendant, then waits until all
    /// of them are gone: the server dies abruptly, as in a crash.
    pub(crate) async fn kill(&mut self) {
        let stragglers = self.signal_all(libc::SIGKILL);
        let _ = tokio::time::timeout(KILL_WAIT, self.child.wait()).await;
        wait_gone(&stragglers, KILL_WAIT).await;
    }

    /// SIGTERM to the group; after `grace` without an exit, SIGKILL.
    pub(crate) async fn terminate(&mut self, grace: Duration) {
        let tree = descendants(self.pgid);
        // SAFETY: killpg(2) has no memory-safety preconditions.
        unsafe {
            libc::killpg(self.pgid, libc::SIGTERM);
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
            return;
        }
        self.reap_helpers(tree).await;
    }

    /// Waits up to `timeout` for the leader to exit on its own (after a
    /// shutdown asked by other means); true if it did.
    pub(crate) async fn wait_exit(&mut self, timeout: Duration) -> bool {
        let tree = descendants(self.pgid);
        if tokio::time::timeout(timeout, self.child.wait())
            .await
            .is_err()
        {
            return false;
        }
        self.reap_helpers(tree).await;
        true
    }

    /// Helpers outside the group normally follow their server out; any that
    /// linger would hold its files, so they get a short wait, then SIGKILL.
    async fn reap_helpers(&self, tree: Vec<Proc>) {
        wait_gone(&tree, Duration::from_secs(3)).await;
        for p in &tree {
            signal_proc(*p, libc::SIGKILL);
        }
        wait_gone(&tree, KILL_WAIT).await;
    }

    /// Signals the group and every descendant found before the signal (once
    /// the leader dies its children are re-parented and can no longer be
    /// found); returns the descendants.
    fn signal_all(&self, signal: i32) -> Vec<Proc> {
        let tree = descendants(self.pgid);
        // SAFETY: killpg(2) has no memory-safety preconditions.
        unsafe {
            libc::killpg(self.pgid, signal);
        }
        for p in &tree {
            signal_proc(*p, signal);
        }
        tree
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.signal_all(libc::SIGKILL);
        }
    }
}

async fn wait_gone(procs: &[Proc], timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while procs.iter().any(|p| alive(*p)) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory per test, removed by the guard.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(name: &str) -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("chaos-infra-{name}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
