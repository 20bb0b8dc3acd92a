//! Flutterwave v3 client: verify a transaction (by id or reference), refund,
//! and look refunds up. URLs are built from `FLUTTERWAVE_API_URL`, never from
//! the key; the key travels only in the `Authorization` header.

use super::resilience::Guarded;
use crate::config::{FlutterwaveLimits, Secret};
use crate::telemetry::metrics::Metrics;
use backon::{ExponentialBuilder, Retryable};
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

/// The body of POST /payments (hosted checkout).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PaymentLinkRequest {
    pub tx_ref: String,
    pub amount: f64,
    pub currency: String,
    pub redirect_url: String,
    pub customer: Customer,
    pub customizations: Customizations,
    /// Minutes the page takes payments; after that no payment can come.
    pub session_duration: u32,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Customer {
    pub email: String,
    pub name: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Customizations {
    pub title: String,
}

#[derive(Deserialize)]
struct PaymentLink {
    link: String,
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
    guarded: Guarded,
    base_url: String,
    secret_key: Secret,
    read_retries: usize,
    metrics: Option<Metrics>,
}

impl Flutterwave {
    pub fn new(
        base_url: &str,
        secret_key: Secret,
        timeout: Duration,
        limits: &FlutterwaveLimits,
    ) -> Result<Self, ProviderError> {
        // The stack's timeout layer bounds each call; reqwest's own is a
        // backstop a little later, so the layer is what fires.
        let http = reqwest::Client::builder()
            .timeout(timeout + Duration::from_secs(1))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| ProviderError::Decode(e.to_string()))?;
        Ok(Self {
            guarded: Guarded::new(http.clone(), limits, timeout)?,
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            secret_key,
            read_retries: limits.read_retries,
            metrics: None,
        })
    }

    /// Count every call by operation and outcome.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Breaker state as a number for the gauge: 0 closed, 1 open, 2 half-open.
    pub fn breaker_code(&self) -> i64 {
        match self.breaker_label() {
            "closed" => 0,
            "open" => 1,
            _ => 2,
        }
    }

    /// Circuit breaker state, for readiness and metrics.
    pub fn breaker_label(&self) -> &'static str {
        self.guarded.breaker_label()
    }

    /// GET /transactions/{id}/verify; `None` when Flutterwave knows no such id.
    pub async fn verify(&self, transaction_id: &str) -> Result<Option<Transaction>, ProviderError> {
        let url = format!("{}/transactions/{transaction_id}/verify", self.base_url);
        self.read_optional("verify", || self.http.get(&url)).await
    }

    /// GET /transactions/verify_by_reference?tx_ref=...
    pub async fn verify_by_reference(
        &self,
        tx_ref: &str,
    ) -> Result<Option<Transaction>, ProviderError> {
        let url = format!("{}/transactions/verify_by_reference", self.base_url);
        self.read_optional("verify_by_reference", || {
            self.http.get(&url).query(&[("tx_ref", tx_ref)])
        })
        .await
    }

    /// GET /transactions?tx_ref=...&status=successful: every payment made
    /// with the reference (a checkout page can be paid twice), where
    /// `verify_by_reference` answers with one. Only the first page is
    /// read: one reference has a handful of successful payments at most.
    pub async fn transactions_by_reference(
        &self,
        tx_ref: &str,
    ) -> Result<Vec<Transaction>, ProviderError> {
        self.list(
            "transactions",
            "transactions",
            &[("tx_ref", tx_ref), ("status", "successful")],
        )
        .await
    }

    /// POST /transactions/{id}/refund. Not idempotent on Flutterwave's side,
    /// so never retried here: callers look refunds up before trying again.
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
        self.send::<RefundRecord>("refund", request)
            .await?
            .ok_or_else(|| ProviderError::Decode("refund answer without data".into()))
    }

    /// POST /payments: a hosted payment link. Asking twice yields two links
    /// for the same `tx_ref`, so callers ask once per order.
    pub async fn create_payment_link(
        &self,
        request: &PaymentLinkRequest,
    ) -> Result<String, ProviderError> {
        let url = format!("{}/payments", self.base_url);
        let data: PaymentLink = self
            .send("payments", self.http.post(url).json(request))
            .await?
            .ok_or_else(|| ProviderError::Decode("payment answer without data".into()))?;
        Ok(data.link)
    }

    /// GET /refunds?tx_id=...: the refunds already applied to a transaction.
    pub async fn refunds_for(
        &self,
        transaction_id: &str,
    ) -> Result<Vec<RefundRecord>, ProviderError> {
        self.list("refund_lookup", "refunds", &[("tx_id", transaction_id)])
            .await
    }

    /// GET {path}?{query}: a list read (retried like any read); no data is
    /// an empty list.
    async fn list<T: for<'de> Deserialize<'de>>(
        &self,
        operation: &'static str,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Vec<T>, ProviderError> {
        let url = format!("{}/{path}", self.base_url);
        Ok(self
            .read(operation, || self.http.get(&url).query(query))
            .await?
            .unwrap_or_default())
    }

    /// An idempotent read, retried with backoff on transient failures (but
    /// not while the breaker is open: that would only queue more waiting).
    async fn read<T: for<'de> Deserialize<'de>>(
        &self,
        operation: &'static str,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Option<T>, ProviderError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .with_max_times(self.read_retries);
        (|| self.send::<T>(operation, request()))
            .retry(backoff)
            .when(|e| match e {
                ProviderError::Timeout => true,
                ProviderError::Unavailable { reason, .. } => {
                    !reason.contains("breaker") && !reason.contains("rate limit")
                }
                _ => false,
            })
            .await
    }

    async fn read_optional<T: for<'de> Deserialize<'de>>(
        &self,
        operation: &'static str,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Option<T>, ProviderError> {
        match self.read(operation, request).await {
            // Flutterwave answers an unknown id with 400 "No transaction was found".
            Err(ProviderError::Rejected(message)) if message.contains("No transaction") => Ok(None),
            other => other,
        }
    }

    async fn send<T: for<'de> Deserialize<'de>>(
        &self,
        operation: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<Option<T>, ProviderError> {
        let result = self.send_once(request).await;
        if let Some(metrics) = &self.metrics {
            let outcome = match &result {
                Ok(_) => "ok",
                Err(ProviderError::Rejected(_)) => "rejected",
                Err(ProviderError::Timeout) => "timeout",
                Err(ProviderError::Unavailable { reason, .. }) if reason.contains("breaker") => {
                    "breaker_open"
                }
                Err(ProviderError::Unavailable { reason, .. }) if reason.contains("rate limit") => {
                    metrics.families().flutterwave_rate_limited.inc();
                    "rate_limited"
                }
                Err(ProviderError::Unavailable { .. }) => "unavailable",
                Err(ProviderError::Decode(_)) => "bad_answer",
            };
            metrics
                .families()
                .flutterwave_calls
                .with_label_values(&[operation, outcome])
                .inc();
        }
        result
    }

    async fn send_once<T: for<'de> Deserialize<'de>>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<Option<T>, ProviderError> {
        let request = request
            .bearer_auth(self.secret_key.expose())
            .build()
            .map_err(|e| ProviderError::Decode(e.to_string()))?;
        let reply = self.guarded.call(request).await?;
        let envelope: Envelope<T> = serde_json::from_slice(&reply.body)
            .map_err(|e| ProviderError::Decode(e.to_string()))?;
        if !(200..300).contains(&reply.status) || envelope.status != "success" {
            return Err(ProviderError::Rejected(envelope.message));
        }
        Ok(envelope.data)
    }
}
