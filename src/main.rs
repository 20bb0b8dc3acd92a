//! Entry point: `order-service` serves; `order-service outbox parked|replay ID|replay-all`
//! inspects and re-drives parked outbox records.

use order_service::app::Application;
use order_service::config::Config;
use order_service::telemetry::metrics::Metrics;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics = Metrics::new();
    let shipper =
        order_service::telemetry::init(&config, metrics.families().log_lines_dropped.clone());
    let logs_stop = CancellationToken::new();
    let logs = shipper.map(|s| tokio::spawn(s.run(logs_stop.clone())));
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        return match order_service::cli::Tools::connect(&config).await {
            Ok(tools) => order_service::cli::run(&tools, &args).await,
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
