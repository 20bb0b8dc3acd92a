//! Entry point: `order-service` serves; `order-service outbox parked|replay ID|replay-all`
//! inspects and re-drives parked outbox records (see [`order_service::entry`]).

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    order_service::entry::run(std::env::args().skip(1).collect()).await
}
