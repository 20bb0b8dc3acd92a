//! Socket.IO listeners, one per buyer and seller, connected before their
//! order's first change: what each user's browser would have seen.
//! A listener whose connection dropped (its instance was killed) may
//! rightly have missed emits; the checker only holds steady ones to "heard
//! everything".

use realtime_bench::socket;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One `order notification` as a listener received it.
#[derive(Debug, Clone)]
pub struct Heard {
    /// The user the listener authenticated as.
    pub listener: String,
    pub notification_id: String,
}

#[derive(Default)]
struct Inner {
    heard: Vec<Heard>,
    connections: Vec<(String, JoinHandle<()>)>,
}

#[derive(Clone, Default)]
pub struct Listeners(Arc<Mutex<Inner>>);

impl Listeners {
    /// Connects `user` (holding `token`) and waits until the handshake is
    /// accepted, so that every later emit to the user can reach it.
    pub async fn listen(&self, ws_url: &str, user: &str, token: &str) -> Result<(), String> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let connection = socket::connect(ws_url, token, tx)
            .await
            .map_err(|e| format!("socket for {user}: {e}"))?;
        let sink = self.0.clone();
        let listener = user.to_string();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if let Ok(mut inner) = sink.lock() {
                    inner.heard.push(Heard {
                        listener: listener.clone(),
                        notification_id: event.notification_id.unwrap_or_default(),
                    });
                }
            }
        });
        if let Ok(mut inner) = self.0.lock() {
            inner.connections.push((user.to_string(), connection));
        }
        Ok(())
    }

    /// What was heard, and the users whose connection is still up.
    pub fn snapshot(&self) -> (Vec<Heard>, Vec<String>) {
        let Ok(inner) = self.0.lock() else {
            return Default::default();
        };
        let steady = inner
            .connections
            .iter()
            .filter(|(_, c)| !c.is_finished())
            .map(|(user, _)| user.clone())
            .collect();
        (inner.heard.clone(), steady)
    }

    pub fn close(&self) {
        if let Ok(inner) = self.0.lock() {
            for (_, connection) in &inner.connections {
                connection.abort();
            }
        }
    }
}
