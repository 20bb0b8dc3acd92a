//! `flutterwave-sim` binary: serves the simulator for local runs and chaos suites until Ctrl-C / SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;

use flutterwave_sim::Simulator;

const USAGE: &str = "\
usage: flutterwave-sim [--addr HOST:PORT] [--secret-key KEY] [--webhook-url URL] [--webhook-hash HASH]

  --addr          FLUTTERWAVE_SIM_ADDR         default 127.0.0.1:4010
  --secret-key    FLUTTERWAVE_SECRET_KEY       default FLWSECK_TEST-local-simulator
  --webhook-url   FLUTTERWAVE_SIM_WEBHOOK_URL  default http://127.0.0.1:4006/api/v1/order/webhooks/flutterwave
  --webhook-hash  FLUTTERWAVE_WEBHOOK_HASH     default local-webhook-hash

Flags win over environment variables. Logs follow RUST_LOG (default info).";

#[derive(Debug)]
struct Config {
    addr: String,
    secret_key: String,
    webhook_url: String,
    webhook_hash: String,
}

impl Config {
    fn from_env() -> Self {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
        Self {
            addr: var("FLUTTERWAVE_SIM_ADDR", "127.0.0.1:4010"),
            secret_key: var("FLUTTERWAVE_SECRET_KEY", "FLWSECK_TEST-local-simulator"),
            webhook_url: var(
                "FLUTTERWAVE_SIM_WEBHOOK_URL",
                "http://127.0.0.1:4006/api/v1/order/webhooks/flutterwave",
            ),
            webhook_hash: var("FLUTTERWAVE_WEBHOOK_HASH", "local-webhook-hash"),
        }
    }

    /// Accepts `--flag value` and `--flag=value`; `Ok(None)` means help was asked for.
    fn apply_args(
        mut self,
        args: impl IntoIterator<Item = String>,
    ) -> Result<Option<Self>, String> {
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" {
                return Ok(None);
            }
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f.to_string(), Some(v.to_string())),
                None => (arg, None),
            };
            let slot = match flag.as_str() {
                "--addr" => &mut self.addr,
                "--secret-key" => &mut self.secret_key,
                "--webhook-url" => &mut self.webhook_url,
                "--webhook-hash" => &mut self.webhook_hash,
                other => return Err(format!("unknown argument {other}")),
            };
            *slot = match inline.or_else(|| args.next()) {
                Some(v) => v,
                None => return Err(format!("{flag} needs a value")),
            };
        }
        Ok(Some(self))
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env().apply_args(std::env::args().skip(1)) {
        Ok(Some(c)) => c,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("flutterwave-sim: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let addr: SocketAddr = match config.addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("flutterwave-sim: bad --addr {:?}: {e}", config.addr);
            return ExitCode::from(2);
        }
    };
    let sim = Simulator::new(config.secret_key);
    sim.set_webhook_target(config.webhook_url.clone(), config.webhook_hash);
    let handle = match sim.start(addr).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("flutterwave-sim: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "flutterwave-sim listening: FLUTTERWAVE_API_URL={} (webhooks -> {})",
        handle.base_url(),
        config.webhook_url
    );

    shutdown_signal().await;
    tracing::info!("shutting down");
    handle.shutdown().await;
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Config {
        Config {
            addr: "a".into(),
            secret_key: "k".into(),
            webhook_url: "u".into(),
            webhook_hash: "h".into(),
        }
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_override_and_accept_both_forms() {
        let c = base()
            .apply_args(args(&["--addr", "0.0.0.0:1", "--webhook-hash=x=y"]))
            .unwrap()
            .unwrap();
        assert_eq!(c.addr, "0.0.0.0:1");
        assert_eq!(c.webhook_hash, "x=y");
        assert_eq!(c.secret_key, "k");
    }

    #[test]
    fn bad_flags_are_errors() {
        assert!(base().apply_args(args(&["--nope"])).is_err());
        assert!(base().apply_args(args(&["--addr"])).is_err());
        assert!(base().apply_args(args(&["--help"])).unwrap().is_none());
    }
}
