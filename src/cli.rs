//! Operator commands run against the configured database:
//! `outbox parked`, `outbox replay MESSAGE_ID`, `outbox replay-all`.

use crate::http::AppState;
use std::process::ExitCode;

pub async fn run(state: &AppState, args: &[String]) -> ExitCode {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
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
            eprintln!(
                "usage: order-service [outbox parked | outbox replay MESSAGE_ID | outbox replay-all]"
            );
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
