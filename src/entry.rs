//! The process entry shared by the `order-service` binary and the chaos suite's
//! instances: configuration from the environment, logging, then either a CLI
//! tool (`outbox parked|replay ID|replay-all`, `reviews …`) or the server until
//! SIGTERM / Ctrl-C.

use crate::app::Application;
use crate::config::Config;
use crate::telemetry::metrics::Metrics;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Runs the process: `args` are the command-line arguments after the program
/// name; none means serve.
pub async fn run(args: Vec<String>) -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics = Metrics::new();
    let shipper = crate::telemetry::init(&config, metrics.families().log_lines_dropped.clone());
    let logs_stop = CancellationToken::new();
    let logs = shipper.map(|s| tokio::spawn(s.run(logs_stop.clone())));
    if !args.is_empty() {
        return match crate::cli::Tools::connect(&config).await {
            Ok(tools) => crate::cli::run(&tools, &args).await,
            Err(e) => {
                eprintln!("database: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let app = match Application::build_with_metrics(config, metrics).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("start-up failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = app.run_until_stopped(shutdown_signal()).await;
    // Last lines (the shutdown itself) still go out.
    logs_stop.cancel();
    if let Some(logs) = logs {
        let _ = logs.await;
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
