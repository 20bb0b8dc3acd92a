//! Telemetry: logging (JSON lines in production, readable lines elsewhere;
//! `RUST_LOG` overrides the level) and Prometheus metrics.

pub mod metrics;

use crate::config::Environment;
use tracing_subscriber::EnvFilter;

pub fn init(environment: Environment) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,lapin=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = if environment == Environment::Production {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // A subscriber set earlier (tests) stays in place.
    drop(result);
}
