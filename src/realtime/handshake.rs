//! The Socket.IO handshake: the client sends `auth: {token}` (the user JWT,
//! checked exactly as the REST routes check `Authorization`), and a socket
//! that passes joins its user's room. A refusal happens in a connect
//! middleware, so the client receives `connect_error` and never enters the
//! namespace.

use super::records::user_room;
use crate::http::auth::{Auth, LEEWAY_SECS};
use serde::Deserialize;
use socketioxide::ParserError;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{Extension, SocketRef, State, TryData};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the client puts in `auth`.
#[derive(Debug, Deserialize)]
pub(crate) struct HandshakeAuth {
    token: Option<String>,
}

/// Why a handshake was refused; the text reaches the client as
/// `connect_error`'s `message`, so it names no detail of the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("Authentication error: token missing")]
    Missing,
    #[error("Authentication error: invalid token")]
    Invalid,
}

/// Who a connected socket belongs to (kept in the socket's extensions
/// between the middleware and the connect handler).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SocketUser {
    room: String,
    /// How long the token stays valid (with the clock-skew leeway the
    /// handshake allowed); `None` for a token without `exp`.
    lifetime: Option<Duration>,
}

/// Connect middleware: refuses a socket without a valid user token, and
/// notes the user's room for [`on_connect`]. Needs the server's state to
/// hold the `Arc<Auth>` (`SocketIoBuilder::with_state`).
pub(crate) async fn authenticate<A: Adapter>(
    socket: SocketRef<A>,
    State(auth): State<Arc<Auth>>,
    TryData(payload): TryData<HandshakeAuth>,
) -> Result<(), Refusal> {
    let user = check(&auth, payload)?;
    socket.extensions.insert(user);
    Ok(())
}

/// Connect handler, run only after [`authenticate`] let the socket in.
pub(crate) async fn on_connect<A: Adapter>(
    socket: SocketRef<A>,
    Extension(user): Extension<SocketUser>,
) {
    tracing::debug!(sid = %socket.id, room = %user.room, "socket connected");
    socket.join(user.room);
    // A socket lives no longer than its token: past it, the client must
    // connect again with a fresh one.
    if let Some(lifetime) = user.lifetime {
        let gone = CancellationToken::new();
        let on_gone = gone.clone();
        socket.on_disconnect(move || async move { on_gone.cancel() });
        tokio::spawn(async move {
            tokio::select! {
                _ = gone.cancelled() => {}
                _ = tokio::time::sleep(lifetime) => {
                    tracing::debug!(sid = %socket.id, "token expired; disconnecting the socket");
                    let _ = socket.disconnect();
                }
            }
        });
    }
}

/// The token's user, or why the handshake is refused.
fn check(auth: &Auth, payload: Result<HandshakeAuth, ParserError>) -> Result<SocketUser, Refusal> {
    let token = payload
        .ok()
        .and_then(|p| p.token)
        .map(|t| t.trim().trim_start_matches("Bearer ").trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or(Refusal::Missing)?;
    let claims = auth.user(&token).ok_or(Refusal::Invalid)?;
    let lifetime = claims.exp.map(|exp| {
        let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        Duration::from_secs_f64((exp + LEEWAY_SECS as f64 - now).max(0.0))
    });
    Ok(SocketUser {
        room: user_room(&claims.username),
        lifetime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use jsonwebtoken::{EncodingKey, Header, encode};

    fn auth() -> Auth {
        Auth::new(&Secret::new("user-secret"), &Secret::new("gateway-secret"))
    }

    fn token(secret: &str, username: &str) -> String {
        encode(
            &Header::default(),
            &serde_json::json!({ "id": 1, "username": username, "iat": 0 }),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("token")
    }

    fn payload(token: Option<String>) -> Result<HandshakeAuth, ParserError> {
        Ok(HandshakeAuth { token })
    }

    fn room(user: Result<SocketUser, Refusal>) -> Result<String, Refusal> {
        user.map(|u| u.room)
    }

    #[test]
    fn a_valid_token_names_the_lower_cased_room() {
        let good = token("user-secret", "Alice");
        assert_eq!(
            room(check(&auth(), payload(Some(good.clone())))),
            Ok("alice".into())
        );
        assert_eq!(
            room(check(&auth(), payload(Some(format!("Bearer {good}"))))),
            Ok("alice".into())
        );
    }

    #[test]
    fn a_socket_lives_as_long_as_its_token_and_the_leeway() {
        let now = chrono::Utc::now().timestamp();
        let expiring = encode(
            &Header::default(),
            &serde_json::json!({ "username": "alice", "iat": now, "exp": now + 60 }),
            &EncodingKey::from_secret(b"user-secret"),
        )
        .expect("token");
        let lifetime = check(&auth(), payload(Some(expiring)))
            .expect("accepted")
            .lifetime
            .expect("bounded");
        let expected = 60 + LEEWAY_SECS;
        assert!(
            lifetime <= Duration::from_secs(expected)
                && lifetime > Duration::from_secs(expected - 3),
            "{lifetime:?}"
        );
        let lasting = token("user-secret", "alice");
        assert!(
            check(&auth(), payload(Some(lasting)))
                .expect("accepted")
                .lifetime
                .is_none()
        );
    }

    #[test]
    fn missing_and_bad_tokens_are_refused() {
        assert_eq!(check(&auth(), payload(None)), Err(Refusal::Missing));
        assert_eq!(
            check(&auth(), payload(Some(" ".into()))),
            Err(Refusal::Missing)
        );
        assert_eq!(
            check(&auth(), payload(Some(token("other-secret", "alice")))),
            Err(Refusal::Invalid)
        );
        assert_eq!(
            check(&auth(), payload(Some("not-a-jwt".into()))),
            Err(Refusal::Invalid)
        );
    }
}
