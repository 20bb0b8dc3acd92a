//! Authentication: the gateway's token (which service forwards the call)
//! and the user's token (who asks). HS256 only: a token whose header names
//! another algorithm (`none`, HS512, RS256, ...) is refused before its
//! signature is looked at. `exp` and `nbf` are enforced when present, with
//! [`LEEWAY_SECS`] of tolerated clock skew between the issuer and this host.
//! Tokens are never logged: failures are counted against the caller's IP
//! (see [`super::rate_limit`]) and answered without detail.

use super::AppState;
use super::error::ApiError;
use super::rate_limit::{ClientIp, RateLimits};
use super::trace;
use crate::config::Secret;
use crate::orders::commands::Actor;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::Deserialize;
use std::collections::HashSet;
use std::sync::Arc;

/// Services allowed to call through the gateway.
const GATEWAY_SERVICES: &[&str] = &[
    "auth", "seller", "gig", "search", "buyer", "message", "order", "review",
];

/// Clock skew tolerated on `exp`/`nbf`, in seconds: a token is still
/// accepted up to 30 s after its `exp`, and from 30 s before its `nbf`.
pub const LEEWAY_SECS: u64 = 30;

pub struct Auth {
    user_key: DecodingKey,
    gateway_key: DecodingKey,
    validation: Validation,
}

#[derive(Debug, Deserialize)]
pub struct UserClaims {
    pub username: String,
    #[serde(default)]
    pub email: Option<String>,
    /// Expiry, seconds since the epoch, if the token has one (checked by
    /// the decoder; kept so a socket can end with its token).
    #[serde(default)]
    pub exp: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct GatewayClaims {
    id: String,
}

impl Auth {
    pub fn new(user_secret: &Secret, gateway_secret: &Secret) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Tokens of the existing auth service carry no `exp`; when one is
        // present it is enforced.
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        Self {
            user_key: DecodingKey::from_secret(user_secret.expose().as_bytes()),
            gateway_key: DecodingKey::from_secret(gateway_secret.expose().as_bytes()),
            validation,
        }
    }

    pub fn user(&self, token: &str) -> Option<UserClaims> {
        decode::<UserClaims>(token, &self.user_key, &self.validation)
            .ok()
            .map(|data| data.claims)
            // Every identity check compares names as they are, but for ASCII
            // case: `alice ` would be another account that the socket room
            // (trimmed) took for `alice`. Such a name is refused outright.
            .filter(|claims| {
                let name = claims.username.as_str();
                !name.is_empty() && name.trim() == name
            })
    }

    pub fn gateway_allows(&self, token: &str) -> bool {
        decode::<GatewayClaims>(token, &self.gateway_key, &self.validation)
            .is_ok_and(|data| GATEWAY_SERVICES.contains(&data.claims.id.as_str()))
    }
}

/// The authenticated caller of a `/api/v1/order/**` route: the gateway
/// token checked (403), then the user token (401), then the user's rate
/// limit (429). A failed check counts against the client IP's limit, which,
/// once exhausted, answers 429 instead.
pub struct User(pub Actor);

/// `failure`, or 429 when the client has failed too often. `via_gateway`:
/// the gateway token was valid, so the gateway's `X-Forwarded-For` names the
/// client.
fn refuse(parts: &Parts, failure: ApiError, via_gateway: bool) -> ApiError {
    let limits = parts.extensions.get::<Arc<RateLimits>>();
    match (limits, parts.extensions.get::<ClientIp>()) {
        (Some(limits), Some(ClientIp(ip))) => {
            let client = if via_gateway {
                limits.gateway_client(&parts.headers, *ip)
            } else {
                *ip
            };
            limits.check_ip(client).err().unwrap_or(failure)
        }
        _ => failure,
    }
}

impl FromRequestParts<AppState> for User {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let gateway = parts
            .headers
            .get("gatewaytoken")
            .and_then(|v| v.to_str().ok());
        if !gateway.is_some_and(|token| state.auth.gateway_allows(token)) {
            return Err(refuse(
                parts,
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "Invalid request, request not coming from api gateway",
                ),
                false,
            ));
        }
        let bearer = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let claims = bearer
            .and_then(|token| state.auth.user(token.trim()))
            .ok_or_else(|| {
                refuse(
                    parts,
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "Authentication required: token missing, expired or invalid",
                    ),
                    true,
                )
            })?;
        if let Some(limits) = parts.extensions.get::<Arc<RateLimits>>() {
            limits.check_user(&claims.username)?;
        }
        Ok(User(Actor {
            username: claims.username,
            correlation_id: Some(trace::correlation_id(&parts.headers)),
            traceparent: trace::traceparent(&parts.headers),
        }))
    }
}

/// Constant-time comparison of a presented secret with the expected one.
pub fn secret_matches(presented: &[u8], expected: &Secret) -> bool {
    use subtle::ConstantTimeEq;
    presented.ct_eq(expected.expose().as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn auth() -> Auth {
        Auth::new(&Secret::new("user-key"), &Secret::new("gateway-key"))
    }

    fn token(alg: Algorithm, key: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn exp_and_nbf_are_honoured_with_the_documented_leeway() {
        let auth = auth();
        let user = |extra: serde_json::Value| {
            let mut claims = json!({ "id": 1, "username": "alice", "iat": now() });
            claims
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            auth.user(&token(Algorithm::HS256, "user-key", claims))
                .is_some()
        };
        assert!(user(json!({})), "no exp: the old auth service issues none");
        assert!(user(json!({ "exp": now() + 60 })));
        assert!(user(json!({ "exp": now() - 10 })), "within the leeway");
        assert!(!user(json!({ "exp": now() - 2 * LEEWAY_SECS as i64 })));
        assert!(user(json!({ "nbf": now() + 10 })), "within the leeway");
        assert!(!user(json!({ "nbf": now() + 2 * LEEWAY_SECS as i64 })));
    }

    #[test]
    fn only_hs256_with_the_right_key_is_accepted() {
        let auth = auth();
        let claims = json!({ "id": 1, "username": "alice", "iat": now() });
        assert!(
            auth.user(&token(Algorithm::HS256, "user-key", claims.clone()))
                .is_some()
        );
        assert!(
            auth.user(&token(Algorithm::HS512, "user-key", claims.clone()))
                .is_none()
        );
        assert!(
            auth.user(&token(Algorithm::HS256, "gateway-key", claims.clone()))
                .is_none()
        );
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let unsigned = format!(
            "{}.{}.",
            b64(&json!({ "alg": "none", "typ": "JWT" })),
            b64(&claims)
        );
        assert!(auth.user(&unsigned).is_none(), "alg none");
        let blank = token(
            Algorithm::HS256,
            "user-key",
            json!({ "username": "  ", "iat": now() }),
        );
        assert!(auth.user(&blank).is_none());
        let padded = token(
            Algorithm::HS256,
            "user-key",
            json!({ "username": "alice ", "iat": now() }),
        );
        assert!(auth.user(&padded).is_none(), "not alice, and not allowed");
        let gateway = |id: &str| token(Algorithm::HS256, "gateway-key", json!({ "id": id }));
        assert!(auth.gateway_allows(&gateway("order")));
        assert!(!auth.gateway_allows(&gateway("payments")));
    }
}
