//! Telemetry: logging (JSON lines in production, readable lines elsewhere;
//! `RUST_LOG` overrides the level), log shipping to Elasticsearch when
//! `ELASTIC_SEARCH_URL` is set, traces to Elastic APM when `ENABLE_APM=1`,
//! and Prometheus metrics.

pub mod apm;
pub mod elastic;
pub mod metrics;
pub mod trace_context;

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
                ..elastic::ShipperConfig::new(url.expose(), &config.instance_id)
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
    // Off, there is no layer at all: `None` is a layer that does nothing.
    let (apm, pending) = match apm::Settings::from_config(config)
        .and_then(|settings| settings.map(|settings| apm::layer(&settings)).transpose())
    {
        Ok(Some((layer, pending))) => (Some(layer), Some(pending)),
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("trace export disabled: {e}");
            (None, None)
        }
    };
    // A subscriber set earlier (tests) stays in place.
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(console)
        .with(elastic)
        .with(apm)
        .try_init();
    if let (Ok(()), Some(pending)) = (installed, pending) {
        pending.activate();
    }
    shipper
}

/// Sends what telemetry still holds before the process exits: the spans
/// waiting for export. (Log lines go with the shipper's own task.)
pub async fn shutdown() {
    apm::shutdown().await;
}
