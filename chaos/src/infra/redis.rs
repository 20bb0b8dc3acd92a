//! A Redis of the suite's own (Debian's redis-server, as scripts/deps.sh
//! installs it) on a free loopback port, keeping nothing on disk: it only
//! carries Socket.IO emits between the suite's service instances.

use super::InfraError;
use super::process::{Group, free_port, on_path};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const PROGRAM: &str = "redis-server";

/// A redis-server owned by the suite; killed when dropped.
pub struct OwnRedis {
    port: u16,
    process: Group,
}

impl OwnRedis {
    /// Starts the server (its log under `base_dir`) and waits for a PONG.
    pub async fn start(base_dir: &Path) -> Result<Self, InfraError> {
        let program = on_path(PROGRAM).ok_or(InfraError::NotInstalled {
            program: PROGRAM,
            hint: "run scripts/deps.sh (it installs redis-server)",
        })?;
        std::fs::create_dir_all(base_dir)
            .map_err(|e| InfraError::io(format!("creating {}", base_dir.display()), e))?;
        let port = free_port()?;
        let mut command = Command::new(program);
        command
            .current_dir(base_dir)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"]);
        let log: PathBuf = base_dir.join("redis.log");
        let mut redis = Self {
            port,
            process: Group::spawn("redis-server", command, &log)?,
        };
        redis.wait_ready().await?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn stop(mut self) {
        self.process.terminate(Duration::from_secs(5)).await;
    }

    async fn wait_ready(&mut self) -> Result<(), InfraError> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let mut last_error = String::from("no answer");
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = self.process.exited() {
                return Err(self.process.exited_error(status));
            }
            match ping(self.port).await {
                Ok(()) => return Ok(()),
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(InfraError::NotReady {
            what: "redis-server",
            after: READY_TIMEOUT,
            last_error,
            log: self.process.log().to_path_buf(),
            tail: super::process::tail(self.process.log(), 30),
        })
    }
}

async fn ping(port: u16) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(b"PING\r\n").await?;
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer).await?;
    if &answer == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(std::io::Error::other("unexpected answer to PING"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::process::testing::TempDir;

    #[tokio::test]
    async fn answers_ping_and_is_gone_after_stop() {
        let dir = TempDir::new("redis");
        let redis = OwnRedis::start(&dir.0).await.expect("start");
        let port = redis.port;
        assert!(ping(port).await.is_ok());
        redis.stop().await;
        assert!(ping(port).await.is_err());
    }
}
