//! Extractors that turn malformed input into the JSON error of API.md,
//! naming the field at fault.

use super::error::ApiError;
use super::limits::{MAX_JSON_DEPTH, too_deep};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// A JSON body; wrong content type is 415, too large 413, nested deeper
/// than [`MAX_JSON_DEPTH`] 400, and malformed or mistyped JSON 400 with the
/// path of the bad field.
pub struct JsonBody<T>(pub T, pub serde_json::Value);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json_type = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
            });
        if !json_type {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json",
            ));
        }
        let RawBody(bytes) = RawBody::from_request(request, state).await?;
        if too_deep(&bytes, MAX_JSON_DEPTH) {
            return Err(ApiError::bad_request(format!(
                "Body nests deeper than {MAX_JSON_DEPTH} levels"
            )));
        }
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("Body is not valid JSON: {e}")))?;
        let typed = parse(&value)?;
        Ok(JsonBody(typed, value))
    }
}

/// The raw body, within the route's `DefaultBodyLimit` (413 beyond it).
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(request, state)
            .await
            .map(RawBody)
            .map_err(|rejection| {
                ApiError::new(rejection.status(), "Request body too large or unreadable")
            })
    }
}

/// Path parameters; a segment that does not decode (invalid UTF-8 in its
/// percent-encoding, say) is 400 with the JSON error rather than axum's text.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| PathParams(value))
            .map_err(|rejection| {
                ApiError::new(rejection.status(), "Path parameter could not be decoded")
            })
    }
}

/// Deserializes with the path of the failing field in the message.
pub fn parse<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            ApiError::bad_request(inner)
        } else {
            ApiError::bad_request(format!("{path}: {inner}"))
        }
    })
}

/// `?limit&cursor` for lists, newest first.
pub struct PageQuery {
    pub limit: i64,
    pub cursor: Option<String>,
}

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 100;

impl<S: Send + Sync> FromRequestParts<S> for PageQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut limit = DEFAULT_LIMIT;
        let mut cursor = None;
        let mut seen = std::collections::HashSet::new();
        let query = parts.uri.query().unwrap_or_default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let (key, value) = (key.into_owned(), value.into_owned());
            if !seen.insert(key.clone()) {
                return Err(ApiError::bad_request(format!("{key} given more than once")));
            }
            match key.as_str() {
                "limit" => {
                    limit = value
                        .parse::<i64>()
                        .ok()
                        .filter(|l| (1..=MAX_LIMIT).contains(l))
                        .ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "limit must be between 1 and {MAX_LIMIT}"
                            ))
                        })?;
                }
                "cursor" => {
                    if value.is_empty()
                        || value.len() > 64
                        || !value.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
                    {
                        return Err(ApiError::bad_request(
                            "cursor is not one this service gave out",
                        ));
                    }
                    cursor = Some(value);
                }
                _ => {}
            }
        }
        Ok(PageQuery { limit, cursor })
    }
}
