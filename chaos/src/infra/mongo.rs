//! A MongoDB-wire server of the suite's own: SecantusDB (as scripts/deps.sh runs it) on a free loopback port, with its own data directory.
//!
//! SecantusDB acknowledges writes before its WiredTiger log reaches the
//! operating system unless it runs with `--sync-on-commit`: a SIGKILL within
//! roughly a few hundred milliseconds of an acknowledged write, even a
//! `w: majority` transaction commit, loses it on restart. Only `j: true`
//! writes survive without the flag. A mongod replica set journals majority
//! writes before acknowledging them, so the suite runs the durable mode by
//! default; `MongoOptions { sync_on_commit: false }` keeps the fast, lossy one.

use super::InfraError;
use super::process::{Group, free_port, on_path};
use mongodb::Client;
use mongodb::bson::doc;
use mongodb::options::ClientOptions;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;

/// Startup is about a second on an idle machine; the bound allows for a
/// loaded one.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// SIGTERM lets WiredTiger checkpoint; past this it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// A port taken between probing and binding shows up as an early exit.
const START_ATTEMPTS: u32 = 3;
const PROGRAM: &str = "secantusd-py";

/// How the server is run.
#[derive(Debug, Clone, Copy)]
pub struct MongoOptions {
    /// Fsync the log on every commit, so that acknowledged writes survive a
    /// SIGKILL (see the module documentation).
    pub sync_on_commit: bool,
}

impl Default for MongoOptions {
    fn default() -> Self {
        Self {
            sync_on_commit: true,
        }
    }
}

/// A SecantusDB server owned by the suite; killed when dropped.
pub struct OwnMongo {
    dir: PathBuf,
    program: PathBuf,
    port: u16,
    options: MongoOptions,
    process: Option<Group>,
}

impl OwnMongo {
    /// Starts a durable server with its data under `base_dir` and waits until
    /// it answers a ping.
    pub async fn start(base_dir: &Path) -> Result<Self, InfraError> {
        Self::start_with(base_dir, MongoOptions::default()).await
    }

    pub async fn start_with(base_dir: &Path, options: MongoOptions) -> Result<Self, InfraError> {
        let program = on_path(PROGRAM).ok_or(InfraError::NotInstalled {
            program: PROGRAM,
            hint: "run scripts/deps.sh (it pip-installs secantusdb==0.7.0b3)",
        })?;
        let dir = base_dir.to_path_buf();
        std::fs::create_dir_all(dir.join("data"))
            .map_err(|e| InfraError::io(format!("creating {}", dir.display()), e))?;
        // An explicit configuration file turns off the server's search of
        // the working and home directories for one that could change ports
        // or paths behind the suite's back.
        std::fs::write(dir.join("secantusd.toml"), "")
            .map_err(|e| InfraError::io(format!("writing {}", dir.display()), e))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut mongo = Self {
                dir: dir.clone(),
                program: program.clone(),
                port: free_port()?,
                options,
                process: None,
            };
            match mongo.launch().await {
                Ok(()) => return Ok(mongo),
                Err(InfraError::Exited { .. }) if attempt < START_ATTEMPTS => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// A connection string for database `db`, with the options the service's
    /// tests use (the server advertises a one-member replica set that a
    /// driver must not try to discover).
    pub fn url(&self, db: &str) -> String {
        format!(
            "mongodb://127.0.0.1:{}/{db}?directConnection=true",
            self.port
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the server's stdout and stderr go.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("secantusd.log")
    }

    /// Whether the server process is alive.
    #[cfg(test)]
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// SIGKILL to the server's process group; returns once it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await;
        }
    }

    /// Starts the server again on the same port and data directory (after a
    /// kill, or stopping it gracefully first if it still runs) and waits
    /// until it answers a ping.
    pub async fn restart(&mut self) -> Result<(), InfraError> {
        if let Some(mut process) = self.process.take() {
            process.terminate(STOP_GRACE).await;
        }
        self.launch().await
    }

    /// SIGTERM, then SIGKILL after a grace period.
    pub async fn stop(mut self) {
        if let Some(mut process) = self.process.take() {
            process.terminate(STOP_GRACE).await;
        }
    }

    async fn launch(&mut self) -> Result<(), InfraError> {
        let mut command = Command::new(&self.program);
        command
            .current_dir(&self.dir)
            .arg("--config")
            .arg(self.dir.join("secantusd.toml"))
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--storage-path")
            .arg(self.dir.join("data"));
        if self.options.sync_on_commit {
            command.arg("--sync-on-commit");
        }
        let process = Group::spawn("secantusd", command, &self.log_path())?;
        self.process = Some(process);
        let ready = self.wait_ready().await;
        if ready.is_err() {
            self.kill().await;
        }
        ready
    }

    async fn wait_ready(&mut self) -> Result<(), InfraError> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let mut options = ClientOptions::parse(self.url("admin"))
            .await
            .map_err(|e| InfraError::State(format!("database url: {e}")))?;
        options.server_selection_timeout = Some(Duration::from_millis(500));
        options.connect_timeout = Some(Duration::from_millis(500));
        let client = Client::with_options(options)
            .map_err(|e| InfraError::State(format!("database client: {e}")))?;
        let mut last_error;
        loop {
            let Some(process) = self.process.as_mut() else {
                return Err(InfraError::State("secantusd is not running".into()));
            };
            if let Some(status) = process.exited() {
                return Err(process.exited_error(status));
            }
            match client
                .database("admin")
                .run_command(doc! { "ping": 1 })
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) => last_error = e.to_string(),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(InfraError::NotReady {
                    what: "secantusd",
                    after: READY_TIMEOUT,
                    last_error,
                    log: process.log().to_path_buf(),
                    tail: super::process::tail(process.log(), 30),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::process::testing::TempDir;
    use mongodb::bson::Document;
    use mongodb::options::{Acknowledgment, WriteConcern};

    async fn client(mongo: &OwnMongo) -> Client {
        Client::with_uri_str(mongo.url("chaos_infra"))
            .await
            .unwrap()
    }

    /// Whether a server answers a ping on `port`, not a bare TCP accept:
    /// a test running beside this one may have been given the freed port.
    async fn listening(port: u16) -> bool {
        let Ok(mut options) =
            ClientOptions::parse(format!("mongodb://127.0.0.1:{port}/?directConnection=true"))
                .await
        else {
            return false;
        };
        options.server_selection_timeout = Some(Duration::from_secs(1));
        options.connect_timeout = Some(Duration::from_secs(1));
        let Ok(client) = Client::with_options(options) else {
            return false;
        };
        client
            .database("admin")
            .run_command(doc! { "ping": 1 })
            .await
            .is_ok()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_committed_majority_transaction_survives_sigkill_and_restart() {
        let dir = TempDir::new("mongo");
        let started = std::time::Instant::now();
        let mut mongo = OwnMongo::start(&dir.0).await.unwrap();
        eprintln!("secantusd started in {:?}", started.elapsed());
        let port = mongo.port();
        assert!(mongo.is_running());

        let client = client(&mongo).await;
        let orders = client
            .database("chaos_infra")
            .collection::<Document>("orders");
        let mut session = client.start_session().await.unwrap();
        session
            .start_transaction()
            .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
            .await
            .unwrap();
        orders
            .insert_one(doc! { "_id": 1, "state": "committed" })
            .session(&mut session)
            .await
            .unwrap();
        session.commit_transaction().await.unwrap();

        // At once: the write must not depend on a background flush.
        mongo.kill().await;
        assert!(!mongo.is_running());
        assert!(!listening(port).await, "a killed server accepts nothing");

        let restarted = std::time::Instant::now();
        mongo.restart().await.unwrap();
        eprintln!("secantusd restarted in {:?}", restarted.elapsed());
        assert_eq!(mongo.port(), port);
        let found = self::client(&mongo)
            .await
            .database("chaos_infra")
            .collection::<Document>("orders")
            .find_one(doc! { "_id": 1 })
            .await
            .unwrap();
        assert_eq!(
            found.and_then(|d| d.get_str("state").ok().map(str::to_owned)),
            Some("committed".to_string())
        );
        mongo.stop().await;
        assert!(!listening(port).await, "a stopped server accepts nothing");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_handle_kills_the_server() {
        let dir = TempDir::new("mongo-drop");
        let mongo = OwnMongo::start(&dir.0).await.unwrap();
        let port = mongo.port();
        drop(mongo);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while listening(port).await {
            assert!(tokio::time::Instant::now() < deadline, "still listening");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
