//! The service under test: started as a child process (so that its memory
//! is its own and can be read from /proc), or one already running.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

pub struct Service {
    pub base_url: String,
    pub pid: Option<u32>,
    child: Option<Child>,
}

pub struct Launch {
    pub binary: PathBuf,
    pub database_url: String,
    pub redis_url: Option<String>,
    pub jwt_secret: String,
    pub gateway_secret: String,
    pub prefix: String,
}

impl Service {
    pub fn attach(base_url: String, pid: Option<u32>) -> Self {
        Self {
            base_url,
            pid,
            child: None,
        }
    }

    /// Starts the service on a free port and waits until it is live.
    pub async fn launch(launch: Launch) -> Result<Self, String> {
        let port = free_port()?;
        let mut command = Command::new(&launch.binary);
        command
            .env("NODE_ENV", "development")
            .env("PORT", port.to_string())
            .env("DATABASE_URL", &launch.database_url)
            .env("JWT_TOKEN", &launch.jwt_secret)
            .env("GATEWAY_JWT_TOKEN", &launch.gateway_secret)
            .env("AMQP_EXCHANGE_PREFIX", &launch.prefix)
            // The benchmark is one user and one address: request quotas
            // would measure the limiter, not the sockets.
            .env("RATE_LIMIT_PER_USER_PER_MIN", "0")
            .env("RATE_LIMIT_PER_IP_PER_MIN", "0")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(redis) = &launch.redis_url {
            command.env("REDIS_URL", redis);
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", launch.binary.display()))?;
        let service = Self {
            base_url: format!("http://127.0.0.1:{port}"),
            pid: child.id(),
            child: Some(child),
        };
        service.wait_live(Duration::from_secs(60)).await?;
        Ok(service)
    }

    async fn wait_live(&self, within: Duration) -> Result<(), String> {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let live = http
                .get(format!("{}/health/live", self.base_url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if live {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err("the service did not become live".into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn ws_url(&self) -> String {
        let host = self
            .base_url
            .trim_start_matches("http://")
            .trim_start_matches("https://");
        format!("ws://{host}/socket.io/?EIO=4&transport=websocket")
    }

    /// Resident and peak memory of the service, in KiB (`VmRSS`, `VmHWM`).
    pub fn memory(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Asks a started service to stop (SIGTERM) and waits for it.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                // SAFETY: signals our own child, whose pid we hold.
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

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}
