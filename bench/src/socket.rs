//! A minimal Socket.IO client speaking the real wire protocol (Engine.IO 4
//! over WebSocket, Socket.IO 5 packets), light enough to hold thousands of
//! connections in one process: the reference JavaScript client costs tens
//! of megabytes per few hundred sockets, which would measure the client
//! instead of the service.
//!
//! Frames used: `0{..}` open, `40{auth}` connect, `40{sid}` accepted,
//! `44{..}` refused, `2`/`3` ping/pong, `42[event, ...args]` an event.

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::{Instant, SystemTime};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// One `order notification` as a client received it.
#[derive(Debug)]
pub struct Received {
    pub order_id: String,
    /// The notification's `_id`: clients drop duplicates by it.
    pub notification_id: Option<String>,
    /// The notification's `createdAt`, set in the service's transaction.
    pub created_at: Option<SystemTime>,
    pub at: Instant,
    pub wall: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("handshake: {0}")]
    Handshake(String),
}

/// Connects as the holder of `token` and waits until the service accepted
/// the handshake; then keeps answering pings and forwards every
/// `order notification` to `events` until the connection ends.
pub async fn connect(
    ws_url: &str,
    token: &str,
    events: mpsc::UnboundedSender<Received>,
) -> Result<tokio::task::JoinHandle<()>, ClientError> {
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await?;
    // Engine.IO open packet, then the Socket.IO connect with `auth`.
    match ws.next().await {
        Some(Ok(Message::Text(open))) if open.starts_with('0') => {}
        other => return Err(ClientError::Handshake(format!("no open packet: {other:?}"))),
    }
    let auth = serde_json::json!({ "token": token });
    ws.send(Message::Text(format!("40{auth}").into())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(frame))) if frame.starts_with("40") => break,
            Some(Ok(Message::Text(frame))) if frame.starts_with("44") => {
                return Err(ClientError::Handshake(frame.to_string()));
            }
            Some(Ok(Message::Text(frame))) if frame.as_str() == "2" => {
                ws.send(Message::Text("3".into())).await?;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err(ClientError::Handshake("closed".into())),
        }
    }
    Ok(tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            let Message::Text(frame) = message else {
                continue;
            };
            if frame.as_str() == "2" {
                if ws.send(Message::Text("3".into())).await.is_err() {
                    break;
                }
                continue;
            }
            let at = Instant::now();
            let wall = SystemTime::now();
            if let Some(body) = frame.strip_prefix("42")
                && let Some(received) = notification(body, at, wall)
                && events.send(received).is_err()
            {
                break;
            }
        }
    }))
}

fn notification(body: &str, at: Instant, wall: SystemTime) -> Option<Received> {
    let packet: Vec<Value> = serde_json::from_str(body).ok()?;
    if packet.first()?.as_str()? != "order notification" {
        return None;
    }
    let order_id = packet.get(1)?.get("orderId")?.as_str()?.to_string();
    let field = |name: &str| {
        packet
            .get(2)
            .and_then(|n| n.get(name))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let created_at = packet
        .get(2)
        .and_then(|n| n.get("createdAt"))
        .and_then(Value::as_str)
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(SystemTime::from);
    Some(Received {
        order_id,
        notification_id: field("_id"),
        created_at,
        at,
        wall,
    })
}
