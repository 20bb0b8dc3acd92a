//! Errors of the simulator's library API (not HTTP answers, which are built in `wire`).

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("no transaction with id {0}")]
    UnknownTransaction(u64),
    #[error("no payment link for {0}")]
    UnknownPaymentLink(String),
    #[error("the payment link for {0} has expired")]
    ExpiredPaymentLink(String),
    #[error("no webhook target configured (set_webhook_target or POST /__sim/webhook-target)")]
    NoWebhookTarget,
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("webhook delivery failed: {0}")]
    Webhook(#[from] reqwest::Error),
    #[error("serialising the webhook body failed: {0}")]
    Json(#[from] serde_json::Error),
}
