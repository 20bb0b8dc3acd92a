//! Dependencies the suite starts for itself on loopback, isolated from the machine's shared ones.

pub mod mongo;
mod process;
pub mod proxy;
pub mod rabbit;
pub mod redis;

use std::path::PathBuf;
use std::time::Duration;

/// Why a dependency of the suite could not be started, driven or stopped.
#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    #[error("{program} is not installed: {hint}")]
    NotInstalled {
        program: &'static str,
        hint: &'static str,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} exited during startup ({status}); last log lines from {}:\n{tail}", log.display())]
    Exited {
        what: &'static str,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{what} not ready after {after:?} (last error: {last_error}); last log lines from {}:\n{tail}", log.display())]
    NotReady {
        what: &'static str,
        after: Duration,
        last_error: String,
        log: PathBuf,
        tail: String,
    },
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("{0}")]
    State(String),
}

impl InfraError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
