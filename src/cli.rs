//! Operator commands run against the configured database and broker:
//! `outbox parked`, `outbox replay MESSAGE_ID`, `outbox replay-all`,
//! `reviews dlq`, `reviews redrive-dlq`.

use crate::config::Config;
use crate::consumers::{redrive, review};
use crate::http::AppState;
use crate::orders::events::Exchanges;
use outbox::{Broker, Outbox};
use std::process::ExitCode;

/// What the commands need: the outbox and the broker, without the HTTP
/// listener, so they run beside a live service on the same host.
pub struct Tools {
    pub outbox: Outbox,
    pub broker: Broker,
    pub exchange_prefix: String,
}

impl Tools {
    pub async fn connect(config: &Config) -> Result<Self, mongodb::error::Error> {
        let client = mongodb::Client::with_uri_str(config.database_url.expose()).await?;
        let db = client.database(&config.database_name);
        let exchanges = Exchanges::new(&config.exchange_prefix);
        let queues = review::queues(&config.exchange_prefix);
        Ok(Self {
            outbox: Outbox::new(&db),
            broker: crate::app::broker(config, &exchanges, &queues),
            exchange_prefix: config.exchange_prefix.clone(),
        })
    }

    pub fn from_state(state: &AppState) -> Self {
        Self {
            outbox: state.outbox.clone(),
            broker: state.broker.clone(),
            exchange_prefix: state.config.exchange_prefix.clone(),
        }
    }
}

const USAGE: &str = "usage: order-service [outbox parked | outbox replay MESSAGE_ID | outbox replay-all | reviews dlq | reviews redrive-dlq]";

pub async fn run(state: &Tools, args: &[String]) -> ExitCode {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if let ["reviews", command] = args.as_slice() {
        return reviews(state, command).await;
    }
    let result = match args.as_slice() {
        ["outbox", "parked"] => state.outbox.parked(1000).await.map(|records| {
            for r in records {
                println!(
                    "{}\t{}\tseq={}\t{}\tattempts={}\t{}",
                    r.message_id,
                    r.aggregate_id,
                    r.seq,
                    r.destination.label(),
                    r.attempts,
                    r.last_error.unwrap_or_default()
                );
            }
        }),
        ["outbox", "replay", id] => state
            .outbox
            .replay(id)
            .await
            .map(|()| println!("replayed {id}")),
        ["outbox", "replay-all"] => state
            .outbox
            .replay_all()
            .await
            .map(|n| println!("replayed {n} records")),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `reviews dlq` lists the review DLQ (up to 100, nothing removed);
/// `reviews redrive-dlq` moves all of it back to the review queue.
async fn reviews(state: &Tools, command: &str) -> ExitCode {
    let queues = review::queues(&state.exchange_prefix);
    let result = match command {
        "dlq" => redrive::peek(&state.broker, &queues, 100)
            .await
            .map(|(total, parked)| {
                println!("{total} message(s) in {}", queues.dlq);
                for p in parked {
                    println!(
                        "{}\tretries={}\t{}\t{}\t{}",
                        p.message_id.as_deref().unwrap_or("-"),
                        p.retries,
                        p.dead_lettered_at.as_deref().unwrap_or("-"),
                        p.reason.as_deref().unwrap_or("-"),
                        p.body
                    );
                }
            }),
        "redrive-dlq" => redrive::redrive(&state.broker, &queues).await.map(|n| {
            println!(
                "moved {n} message(s) from {} to {}",
                queues.dlq, queues.main
            )
        }),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
