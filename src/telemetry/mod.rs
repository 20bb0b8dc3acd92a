//! Telemetry: logging (JSON lines in production, readable lines elsewhere;
//! `RUST_LOG` overrides the level), log shipping to Elasticsearch when
//! `ELASTIC_SEARCH_URL` is set, and Prometheus metrics.

pub mod elastic;
pub mod metrics;

use crate::config::{Config, Environment};
use prometheus::IntCounter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the global subscriber. Returns the Elasticsearch sender to run
/// in the background when shipping is on; `dropped` counts lines it had to
/// drop.
pub fn init(config: &Config, dropped: IntCounter) -> Option<elastic::Shipper> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,lapin=warn"));
    let console = if config.environment == Environment::Production {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    let (elastic, shipper) = match &config.elastic_search_url {
        Some(url) => match elastic::layer(
            elastic::ShipperConfig {
                capacity: config.elastic_log_buffer,
                ..elastic::ShipperConfig::new(url, &config.instance_id)
            },
            dropped,
        ) {
            Ok((layer, shipper)) => (Some(layer), Some(shipper)),
            Err(e) => {
                eprintln!("log shipping disabled: {e}");
                (None, None)
            }
        },
        None => (None, None),
    };
    // A subscriber set earlier (tests) stays in place.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(console)
        .with(elastic)
        .try_init();
    shipper
}
