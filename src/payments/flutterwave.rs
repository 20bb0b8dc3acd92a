//! Flutterwave v3 client: verify a transaction (by id or reference), refund,
//! and look refunds up. URLs are built from `FLUTTERWAVE_API_URL`, never from
//! the key; the key travels only in the `Authorization` header.

use crate::config::Secret;
use serde::Deserialize;
use std::time::Duration;

/// A transaction as Flutterwave reports it (the fields we use).
#[derive(Debug, Clone, Deserialize)]
pub struct Transaction {
    pub id: u64,
    pub tx_ref: String,
    pub amount: f64,
    pub currency: String,
    pub status: String,
    #[serde(default)]
    pub payment_type: Option<String>,
    #[serde(default)]
    pub app_fee: Option<f64>,
}

/// A refund as Flutterwave reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct RefundRecord {
    pub id: u64,
    #[serde(default)]
    pub tx_id: Option<u64>,
    pub amount_refunded: f64,
    pub status: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// 5xx, 429, timeouts, connection failures: try again later.
    #[error("Flutterwave unavailable: {reason}")]
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
    /// The outcome is unknown (timed out after sending): ask before retrying.
    #[error("Flutterwave did not answer in time")]
    Timeout,
    /// A 4xx other than 429: the request itself was refused.
    #[error("Flutterwave refused the request: {0}")]
    Rejected(String),
    #[error("unexpected answer from Flutterwave: {0}")]
    Decode(String),
}

#[derive(Deserialize)]
struct Envelope<T> {
    status: String,
    #[serde(default)]
    message: String,
    data: Option<T>,
}

#[derive(Clone)]
pub struct Flutterwave {
    http: reqwest::Client,
    base_url: String,
    secret_key: Secret,
}

impl Flutterwave {
    pub fn new(
        base_url: &str,
        secret_key: Secret,
        timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| ProviderError::Decode(e.to_string()))?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            secret_key,
        })
    }

    /// GET /transactions/{id}/verify; `None` when Flutterwave knows no such id.
    pub async fn verify(&self, transaction_id: &str) -> Result<Option<Transaction>, ProviderError> {
        let url = format!("{}/transactions/{transaction_id}/verify", self.base_url);
        self.get_optional(self.http.get(url)).await
    }

    /// GET /transactions/verify_by_reference?tx_ref=...
    pub async fn verify_by_reference(
        &self,
        tx_ref: &str,
    ) -> Result<Option<Transaction>, ProviderError> {
        let url = format!("{}/transactions/verify_by_reference", self.base_url);
        self.get_optional(self.http.get(url).query(&[("tx_ref", tx_ref)]))
            .await
    }

    /// POST /transactions/{id}/refund. Not idempotent on Flutterwave's side:
    /// callers must look refunds up before retrying an unknown outcome.
    pub async fn refund(
        &self,
        transaction_id: &str,
        amount: f64,
        comments: &str,
    ) -> Result<RefundRecord, ProviderError> {
        let url = format!("{}/transactions/{transaction_id}/refund", self.base_url);
        let request = self
            .http
            .post(url)
            .json(&serde_json::json!({ "amount": amount, "comments": comments }));
        self.send::<RefundRecord>(request)
            .await?
            .ok_or_else(|| ProviderError::Decode("refund answer without data".into()))
    }

    /// GET /refunds?tx_id=...: the refunds already applied to a transaction.
    pub async fn refunds_for(
        &self,
        transaction_id: &str,
    ) -> Result<Vec<RefundRecord>, ProviderError> {
        let url = format!("{}/refunds", self.base_url);
        Ok(self
            .send::<Vec<RefundRecord>>(self.http.get(url).query(&[("tx_id", transaction_id)]))
            .await?
            .unwrap_or_default())
    }

    async fn get_optional<T: for<'de> Deserialize<'de>>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<Option<T>, ProviderError> {
        match self.send(request).await {
            // Flutterwave answers an unknown id with 400 "No transaction was found".
            Err(ProviderError::Rejected(message)) if message.contains("No transaction") => Ok(None),
            other => other,
        }
    }

    async fn send<T: for<'de> Deserialize<'de>>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<Option<T>, ProviderError> {
        let response = request
            .bearer_auth(self.secret_key.expose())
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    ProviderError::Timeout
                } else {
                    ProviderError::Unavailable {
                        reason: "connection failed".into(),
                        retry_after: Duration::from_secs(5),
                    }
                }
            })?;
        let status = response.status();
        if status.as_u16() == 429 || status.is_server_error() {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(5);
            return Err(ProviderError::Unavailable {
                reason: format!("HTTP {status}"),
                retry_after: Duration::from_secs(retry_after),
            });
        }
        let body = response.bytes().await.map_err(|_| ProviderError::Timeout)?;
        let envelope: Envelope<T> =
            serde_json::from_slice(&body).map_err(|e| ProviderError::Decode(e.to_string()))?;
        if !status.is_success() || envelope.status != "success" {
            return Err(ProviderError::Rejected(envelope.message));
        }
        Ok(envelope.data)
    }
}
