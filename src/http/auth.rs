//! Authentication: the gateway's token (which service forwards the call)
//! and the user's token (who asks). HS256 only.

use super::AppState;
use super::error::ApiError;
use super::trace;
use crate::config::Secret;
use crate::orders::commands::Actor;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::Deserialize;
use std::collections::HashSet;

/// Services allowed to call through the gateway.
const GATEWAY_SERVICES: &[&str] = &[
    "auth", "seller", "gig", "search", "buyer", "message", "order", "review",
];

/// Clock skew tolerated on `exp`/`nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;

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
            .filter(|claims| !claims.username.trim().is_empty())
    }

    pub fn gateway_allows(&self, token: &str) -> bool {
        decode::<GatewayClaims>(token, &self.gateway_key, &self.validation)
            .is_ok_and(|data| GATEWAY_SERVICES.contains(&data.claims.id.as_str()))
    }
}

/// The authenticated caller of a `/api/v1/order/**` route: the gateway
/// token checked (403), then the user token (401).
pub struct User(pub Actor);

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
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Invalid request, request not coming from api gateway",
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
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "Authentication required: token missing, expired or invalid",
                )
            })?;
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
