//! The error boundary: every failure becomes the JSON error of API.md.
//! Client mistakes say what was wrong; server faults say nothing specific
//! (the real cause is logged by [`log_internal_errors`], never sent).

use crate::orders::OrderError;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

const COMING_FROM: &str = "order-service";

/// The error JSON of API.md, the body of every 4xx and 5xx.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"message": "Order not found", "statusCode": 404, "status": "error", "comingFrom": "order-service"}))]
pub struct ErrorBody {
    /// What was wrong (naming the field for bad input); for a 5xx, nothing
    /// specific: the cause is logged, never sent.
    pub message: String,
    /// The HTTP status, repeated.
    #[schema(minimum = 400, maximum = 599)]
    pub status_code: u16,
    pub status: ErrorTag,
    /// Always `order-service`.
    pub coming_from: String,
}

/// The constant `status` of [`ErrorBody`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ErrorTag {
    Error,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: Option<u64>,
    /// The cause of a 5xx, for the log only.
    pub internal: Option<String>,
}

/// Carries a 5xx cause from the conversion to the logging middleware.
#[derive(Clone)]
struct InternalCause(String);

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
            internal: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn internal(cause: impl ToString) -> Self {
        Self {
            internal: Some(cause.to_string()),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong on our side",
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            message: self.message,
            status_code: self.status.as_u16(),
            status: ErrorTag::Error,
            coming_from: COMING_FROM.to_string(),
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(cause) = self.internal {
            response.extensions_mut().insert(InternalCause(cause));
        }
        response
    }
}

impl From<OrderError> for ApiError {
    fn from(error: OrderError) -> Self {
        use OrderError::*;
        match error {
            Invalid(message) => ApiError::bad_request(message),
            PaymentRejected(reason) => {
                ApiError::bad_request(format!("Payment not accepted: {reason}"))
            }
            NotFound => ApiError::new(StatusCode::NOT_FOUND, "Order not found"),
            NotFoundWhat(what) => ApiError::new(StatusCode::NOT_FOUND, what),
            Forbidden(why) => ApiError::new(StatusCode::FORBIDDEN, why),
            Conflict(message) => ApiError::new(StatusCode::CONFLICT, message),
            Refused(refused) => ApiError::new(StatusCode::CONFLICT, refused.to_string()),
            IdempotencyMismatch => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error.to_string())
            }
            ProviderUnavailable { retry_after } => ApiError {
                retry_after: Some(retry_after.as_secs().max(1)),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Payment provider unavailable, try again later",
                )
            },
            Provider(cause) => ApiError {
                internal: Some(cause),
                ..ApiError::new(StatusCode::BAD_GATEWAY, "Payment provider error")
            },
            // Retries ran out: the order stayed contended; the caller may retry.
            VersionConflict => ApiError::new(
                StatusCode::CONFLICT,
                "The order was changed concurrently, try again",
            ),
            Database(e) => ApiError::internal(e),
            Outbox(e) => ApiError::internal(e),
            Decode(e) => ApiError::internal(e),
        }
    }
}

/// Logs the cause of every 5xx this service produced.
pub async fn log_internal_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    if let Some(InternalCause(cause)) = response.extensions().get::<InternalCause>() {
        tracing::error!(%method, %path, status = response.status().as_u16(), cause = %cause, "request failed");
    }
    response
}
