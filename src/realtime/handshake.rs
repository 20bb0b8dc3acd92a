//! The Socket.IO handshake: the client sends `auth: {token}` (the user JWT,
//! checked exactly as the REST routes check `Authorization`), and a socket
//! that passes joins its user's room. A refusal happens in a connect
//! middleware, so the client receives `connect_error` and never enters the
//! namespace.

use super::records::user_room;
use crate::http::auth::Auth;
use serde::Deserialize;
use socketioxide::ParserError;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{Extension, SocketRef, State, TryData};
use std::sync::Arc;

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
#[derive(Debug, Clone)]
pub(crate) struct SocketUser {
    room: String,
}

/// Connect middleware: refuses a socket without a valid user token, and
/// notes the user's room for [`on_connect`]. Needs the server's state to
/// hold the `Arc<Auth>` (`SocketIoBuilder::with_state`).
pub(crate) async fn authenticate<A: Adapter>(
    socket: SocketRef<A>,
    State(auth): State<Arc<Auth>>,
    TryData(payload): TryData<HandshakeAuth>,
) -> Result<(), Refusal> {
    let room = check(&auth, payload)?;
    socket.extensions.insert(SocketUser { room });
    Ok(())
}

/// Connect handler, run only after [`authenticate`] let the socket in.
pub(crate) async fn on_connect<A: Adapter>(
    socket: SocketRef<A>,
    Extension(user): Extension<SocketUser>,
) {
    tracing::debug!(sid = %socket.id, room = %user.room, "socket connected");
    socket.join(user.room);
}

/// The room of the token's user, or why the handshake is refused.
fn check(auth: &Auth, payload: Result<HandshakeAuth, ParserError>) -> Result<String, Refusal> {
    let token = payload
        .ok()
        .and_then(|p| p.token)
        .map(|t| t.trim().trim_start_matches("Bearer ").trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or(Refusal::Missing)?;
    let claims = auth.user(&token).ok_or(Refusal::Invalid)?;
    Ok(user_room(&claims.username))
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

    #[test]
    fn a_valid_token_names_the_lower_cased_room() {
        let good = token("user-secret", "Alice");
        assert_eq!(
            check(&auth(), payload(Some(good.clone()))),
            Ok("alice".into())
        );
        assert_eq!(
            check(&auth(), payload(Some(format!("Bearer {good}")))),
            Ok("alice".into())
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
