//! One service instance: this binary re-run as `chaos serve` (the service
//! with its failpoints compiled in), on its own port, killed and restarted
//! by the faults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("cannot start instance {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("instance {0} did not become live within {1:?} (see its log)")]
    NotLive(String, Duration),
    #[error("no free port: {0}")]
    Port(std::io::Error),
}

/// A running (or killed) instance; its port and environment survive restarts.
pub struct Instance {
    pub name: String,
    pub port: u16,
    env: BTreeMap<String, String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Instance {
    /// Starts `chaos serve` with `env` and `failpoints` armed, logging to
    /// `log`, and waits until live.
    pub async fn start(
        name: &str,
        env: BTreeMap<String, String>,
        log: PathBuf,
        failpoints: &[(&str, &str)],
    ) -> Result<Self, InstanceError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(InstanceError::Port)?;
        let mut instance = Self {
            name: name.into(),
            port,
            env,
            log,
            child: None,
        };
        instance.spawn(failpoints).await?;
        Ok(instance)
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process again on the same port; `failpoints` (the `fail`
    /// crate's `FAILPOINTS` syntax) arm it, empty for none.
    pub async fn spawn(&mut self, failpoints: &[(&str, &str)]) -> Result<(), InstanceError> {
        let spawn_error = |source| InstanceError::Spawn {
            name: self.name.clone(),
            source,
        };
        let exe = std::env::current_exe().map_err(spawn_error)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(spawn_error)?;
        let log_err = log.try_clone().map_err(spawn_error)?;
        let mut command = Command::new(exe);
        command
            .arg("serve")
            .envs(&self.env)
            .env("PORT", self.port.to_string())
            .env("INSTANCE_ID", &self.name)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true);
        let armed: Vec<String> = failpoints.iter().map(|(n, a)| format!("{n}={a}")).collect();
        if armed.is_empty() {
            command.env_remove("FAILPOINTS");
        } else {
            command.env("FAILPOINTS", armed.join(";"));
        }
        self.child = Some(command.spawn().map_err(spawn_error)?);
        self.wait_live(Duration::from_secs(60)).await
    }

    async fn wait_live(&self, within: Duration) -> Result<(), InstanceError> {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + within;
        let url = format!("{}/health/live", self.base_url());
        while tokio::time::Instant::now() < deadline {
            if http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(InstanceError::NotLive(self.name.clone(), within))
    }

    /// Waits until the process exits by itself (an armed failpoint), bounded.
    pub async fn wait_exit(&mut self, within: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        tokio::time::timeout(within, child.wait()).await.is_ok()
    }

    /// SIGTERM and wait for the graceful shutdown (SIGKILL after 20 s).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                // SAFETY: signals our own child, whose pid we hold and have not reaped.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
            if tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}
