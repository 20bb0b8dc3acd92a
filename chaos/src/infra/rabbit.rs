//! A RabbitMQ node of the suite's own, from the installed Debian package: its own node name, ports, cookie and data, on loopback only.
//!
//! The node runs from the package's inner start script, not from the
//! /usr/sbin wrapper: the wrapper switches to the `rabbitmq` user, whose
//! home holds the shared node's cookie and whose config names port 5672.
//! Here every path the broker reads or writes is under the caller's
//! directory, HOME included, so the Erlang cookie is the node's own and
//! `rabbitmqctl` run with the same environment reaches this node only. It
//! runs as whichever user runs the suite. The node is started in the
//! foreground as the leader of its own process group, so that a SIGKILL
//! of the group is a broker crash.

use super::InfraError;
use super::process::{Group, free_port, tail};
use lapin::{Connection, ConnectionProperties};
use rand::Rng;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::process::Command;

/// Boot takes about ten seconds on an idle two-core machine; recovery after
/// a kill somewhat more.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// `rabbitmqctl stop` returns before the VM has exited.
const STOP_WAIT: Duration = Duration::from_secs(60);
const CTL_TIMEOUT: Duration = Duration::from_secs(60);
const START_ATTEMPTS: u32 = 3;
/// The free-disk limit with no alarm; the huge one raises the alarm on any disk.
const DISK_LIMIT_NORMAL: &str = "50MB";
const DISK_LIMIT_ALARM: &str = "1000000GB";
/// Ports `rabbitmqctl` itself listens on for distribution (the package's
/// default range); the node must not take them.
const CTL_DIST_PORTS: std::ops::RangeInclusive<u16> = 35672..=35682;
const SBIN: &str = "/usr/lib/rabbitmq/bin";

/// A RabbitMQ node owned by the suite; killed when dropped.
pub struct OwnRabbit {
    dir: PathBuf,
    server: PathBuf,
    ctl: PathBuf,
    node: String,
    port: u16,
    dist_port: u16,
    process: Option<Group>,
}

impl OwnRabbit {
    /// Starts a fresh node with its data under `base_dir` and waits until
    /// it accepts an AMQP connection as guest.
    pub async fn start(base_dir: &Path) -> Result<Self, InfraError> {
        let (server, ctl) = programs()?;
        let dir = base_dir.to_path_buf();
        prepare(&dir)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let mut rabbit = Self {
                dir: dir.clone(),
                server: server.clone(),
                ctl: ctl.clone(),
                node: format!("chaos-{}-{n}@localhost", std::process::id()),
                port: node_port()?,
                dist_port: node_port()?,
                process: None,
            };
            std::fs::write(rabbit.dir.join("rabbitmq.conf"), rabbit.config())
                .map_err(|e| InfraError::io(format!("writing {}", dir.display()), e))?;
            match rabbit.launch().await {
                Ok(()) => return Ok(rabbit),
                // Most likely a port taken after it was probed.
                Err(InfraError::Exited { .. }) if attempt < START_ATTEMPTS => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// guest/guest on the default vhost; guest may log in from loopback only,
    /// which is all this node listens on.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    #[cfg(test)]
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// Where the start script's stdout and stderr go; the broker's own log
    /// is under `log/`.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("stdout.log")
    }

    /// Whether the node's process is alive.
    #[cfg(test)]
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// SIGKILL to the node's process group (and its helpers): the broker
    /// dies abruptly. Returns once it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await;
        }
    }

    /// `rabbitmqctl stop`, then waits for the node's process to exit; killed
    /// if it has not after a minute.
    pub async fn stop_graceful(&mut self) -> Result<(), InfraError> {
        let Some(mut process) = self.process.take() else {
            return Ok(());
        };
        let stopped = self.ctl(&["stop"]).await;
        if stopped.is_err() || !process.wait_exit(STOP_WAIT).await {
            process.kill().await;
        }
        stopped.map(|_| ())
    }

    /// Starts the node again with the same name, ports and data (durable
    /// queues and persistent messages survive); a node still running is
    /// stopped gracefully first.
    pub async fn restart(&mut self) -> Result<(), InfraError> {
        if self.process.is_some() {
            // Killed anyway when the graceful stop fails; the start decides.
            let _ = self.stop_graceful().await;
        }
        self.launch().await
    }

    /// Raises (a free-disk limit no disk meets) or clears the disk alarm and
    /// waits until the node reports the new state. While raised, the broker
    /// blocks publishing connections: publishes get no confirm.
    pub async fn set_disk_alarm(&self, on: bool) -> Result<(), InfraError> {
        let limit = if on {
            DISK_LIMIT_ALARM
        } else {
            DISK_LIMIT_NORMAL
        };
        self.ctl(&["set_disk_free_limit", limit]).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if self.disk_alarm().await? == on {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(InfraError::State(format!(
                    "{}: disk alarm still {} after set_disk_free_limit {limit}",
                    self.node,
                    if on { "clear" } else { "raised" }
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether the node has a disk alarm raised.
    pub async fn disk_alarm(&self) -> Result<bool, InfraError> {
        let alarms = self
            .ctl(&["-q", "eval", "rabbit_alarm:get_alarms()."])
            .await?;
        Ok(alarms.contains("resource_limit,disk"))
    }

    /// Runs `rabbitmqctl -n <node> <args>` with the node's environment and
    /// returns its stdout.
    pub async fn ctl(&self, args: &[&str]) -> Result<String, InfraError> {
        let rendered = format!("rabbitmqctl -n {} {}", self.node, args.join(" "));
        let mut command = Command::new(&self.ctl);
        self.environment(&mut command);
        command
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|e| InfraError::io(format!("spawning {rendered}"), e))?;
        let pgid = child.id().and_then(|id| i32::try_from(id).ok());
        let output = match tokio::time::timeout(CTL_TIMEOUT, child.wait_with_output()).await {
            Ok(output) => output.map_err(|e| InfraError::io(format!("running {rendered}"), e))?,
            Err(_) => {
                if let Some(pgid) = pgid {
                    // SAFETY: killpg(2) has no memory-safety preconditions.
                    unsafe {
                        libc::killpg(pgid, libc::SIGKILL);
                    }
                }
                return Err(InfraError::Command {
                    command: rendered,
                    status: format!("no answer in {CTL_TIMEOUT:?}"),
                    output: String::new(),
                });
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            return Err(InfraError::Command {
                command: rendered,
                status: output.status.to_string(),
                output: format!("{stdout}{}", String::from_utf8_lossy(&output.stderr)),
            });
        }
        Ok(stdout)
    }

    /// Graceful stop, killed if that fails.
    pub async fn stop(mut self) {
        let _ = self.stop_graceful().await;
    }

    fn config(&self) -> String {
        format!(
            "listeners.tcp.local = 127.0.0.1:{}\n\
             disk_free_limit.absolute = {DISK_LIMIT_NORMAL}\n\
             log.file.level = info\n",
            self.port
        )
    }

    /// Everything the start script and rabbitmqctl read, pointed at `dir`:
    /// nothing of the shared node's (/etc/rabbitmq, /var/lib/rabbitmq) applies.
    fn environment(&self, command: &mut Command) {
        let dir = &self.dir;
        command
            .current_dir(dir)
            .env("HOME", dir.join("home"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_USE_LONGNAME", "false")
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("node.pid"))
            // Distribution (the node's and rabbitmqctl's) on loopback only;
            // epmd, shared by every node on the machine, likewise if this
            // node is the one that has to start it.
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_FLAGS", "-kernel inet_dist_use_interface {127,0,0,1}");
    }

    async fn launch(&mut self) -> Result<(), InfraError> {
        let mut command = Command::new(&self.server);
        self.environment(&mut command);
        let process = Group::spawn("rabbitmq-server", command, &self.log_path())?;
        self.process = Some(process);
        let ready = self.wait_ready().await;
        if ready.is_err() {
            self.kill().await;
        }
        ready
    }

    async fn wait_ready(&mut self) -> Result<(), InfraError> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let url = self.amqp_url();
        let mut last_error;
        loop {
            let Some(process) = self.process.as_mut() else {
                return Err(InfraError::State("rabbitmq-server is not running".into()));
            };
            if let Some(status) = process.exited() {
                return Err(process.exited_error(status));
            }
            let attempt = tokio::time::timeout(
                Duration::from_secs(5),
                Connection::connect(&url, ConnectionProperties::default()),
            )
            .await;
            match attempt {
                Ok(Ok(connection)) => {
                    let _ = connection.close(200, "ready".into()).await;
                    return Ok(());
                }
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = "connect timed out".into(),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(InfraError::NotReady {
                    what: "rabbitmq-server",
                    after: READY_TIMEOUT,
                    last_error,
                    log: process.log().to_path_buf(),
                    tail: tail(process.log(), 30),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn programs() -> Result<(PathBuf, PathBuf), InfraError> {
    let hint = "install Debian's rabbitmq-server (scripts/deps.sh does); its scripts under /usr/lib/rabbitmq/bin are needed";
    // Only the inner scripts: a rabbitmq-server found on PATH may be the
    // wrapper that switches user (see the module documentation).
    let find = |program: &'static str| {
        Path::new(SBIN)
            .join(program)
            .is_file()
            .then(|| Path::new(SBIN).join(program))
            .ok_or(InfraError::NotInstalled { program, hint })
    };
    Ok((find("rabbitmq-server")?, find("rabbitmqctl")?))
}

/// A free port outside the range rabbitmqctl listens on.
fn node_port() -> Result<u16, InfraError> {
    loop {
        let port = free_port()?;
        if !CTL_DIST_PORTS.contains(&port) {
            return Ok(port);
        }
    }
}

/// The node's directories, no plugins (so no management listener), an empty
/// env file (so not the system one, which names the shared node) and a
/// cookie of its own.
fn prepare(dir: &Path) -> Result<(), InfraError> {
    let io = |e| InfraError::io(format!("preparing {}", dir.display()), e);
    for sub in ["home", "mnesia", "log"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(io)?;
    }
    std::fs::write(dir.join("enabled_plugins"), "[].\n").map_err(io)?;
    std::fs::write(dir.join("rabbitmq-env.conf"), "").map_err(io)?;
    let cookie_path = dir.join("home").join(".erlang.cookie");
    if !cookie_path.exists() {
        let mut rng = rand::rng();
        let cookie: String = (0..32)
            .map(|_| char::from(b'A' + rng.random_range(0..26u8)))
            .collect();
        // Erlang refuses a cookie file others can read.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&cookie_path)
            .map_err(io)?;
        file.write_all(cookie.as_bytes()).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::process::testing::TempDir;
    use lapin::options::{
        BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Channel};

    async fn confirm_channel(rabbit: &OwnRabbit) -> (Connection, Channel) {
        let connection = Connection::connect(&rabbit.amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        channel
            .queue_declare(
                "chaos.infra".into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        (connection, channel)
    }

    fn persistent() -> BasicProperties {
        BasicProperties::default().with_delivery_mode(2)
    }

    /// Whether a broker answers on `port`: an AMQP handshake, not a bare
    /// TCP accept, as a test running beside this one may have been given
    /// the freed port for a listener of its own.
    async fn listening(port: u16) -> bool {
        let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
        let connect = Connection::connect(&url, ConnectionProperties::default());
        matches!(
            tokio::time::timeout(Duration::from_secs(5), connect).await,
            Ok(Ok(_))
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_confirmed_persistent_message_survives_a_kill_and_the_disk_alarm_blocks_publishes() {
        let dir = TempDir::new("rabbit");
        let started = std::time::Instant::now();
        let mut rabbit = OwnRabbit::start(&dir.0).await.unwrap();
        eprintln!("rabbitmq started in {:?}", started.elapsed());
        assert!(rabbit.node_name().starts_with("chaos-"));
        assert_ne!(rabbit.port(), 5672);
        let port = rabbit.port();

        let (connection, channel) = confirm_channel(&rabbit).await;
        let confirm = channel
            .basic_publish(
                "".into(),
                "chaos.infra".into(),
                BasicPublishOptions::default(),
                b"kept",
                persistent(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
        drop(connection);

        rabbit.kill().await;
        assert!(!rabbit.is_running());
        assert!(!listening(port).await, "a killed broker accepts nothing");
        let restarted = std::time::Instant::now();
        rabbit.restart().await.unwrap();
        eprintln!(
            "rabbitmq restarted after a kill in {:?}",
            restarted.elapsed()
        );
        assert_eq!(rabbit.port(), port);

        let (connection, channel) = confirm_channel(&rabbit).await;
        let message = channel
            .basic_get("chaos.infra".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("the persistent message survived the kill");
        assert_eq!(message.delivery.data, b"kept");

        // Disk alarm: the broker stops reading from publishers, no confirm.
        let raised = std::time::Instant::now();
        rabbit.set_disk_alarm(true).await.unwrap();
        eprintln!("disk alarm raised in {:?}", raised.elapsed());
        let publisher = tokio::spawn(async move {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    "chaos.infra".into(),
                    BasicPublishOptions::default(),
                    b"blocked",
                    persistent(),
                )
                .await?
                .await?;
            Ok::<_, lapin::Error>((confirm, channel))
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!publisher.is_finished(), "no confirm while the alarm is on");
        rabbit.set_disk_alarm(false).await.unwrap();
        let (confirm, channel) = tokio::time::timeout(Duration::from_secs(30), publisher)
            .await
            .expect("the confirm arrives once the alarm clears")
            .unwrap()
            .unwrap();
        assert!(confirm.is_ack());
        let message = channel
            .basic_get("chaos.infra".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("the blocked message was routed after all");
        assert_eq!(message.delivery.data, b"blocked");
        drop(connection);

        let stopped = std::time::Instant::now();
        rabbit.stop_graceful().await.unwrap();
        eprintln!("rabbitmq stopped gracefully in {:?}", stopped.elapsed());
        assert!(!listening(port).await);
        let restarted = std::time::Instant::now();
        rabbit.restart().await.unwrap();
        eprintln!(
            "rabbitmq restarted after a graceful stop in {:?}",
            restarted.elapsed()
        );
        rabbit.stop().await;
        assert!(!listening(port).await);
    }
}
