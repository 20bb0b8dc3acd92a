//! Outgoing `charge.completed` webhooks, signed the way Flutterwave signs them.

use std::time::Duration;

use axum::body::Bytes;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::Utc;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::task::JoinSet;

use crate::state::{WebhookDelivery, WebhookTarget};
use crate::{SimError, Simulator, wire};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Which authenticity headers a delivery carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignMode {
    /// `verif-hash: <secret hash>` only (classic v3 behaviour).
    VerifHash,
    /// `flutterwave-signature: base64(HMAC-SHA256(hash, body))` only.
    HmacSignature,
    /// Both headers, so a receiver checking either one accepts it.
    #[default]
    Both,
    /// Both headers, with a wrong hash and a signature made with the wrong key.
    Forged,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookOptions {
    /// How many identical deliveries (Flutterwave does deliver duplicates).
    pub times: usize,
    /// Fire all deliveries at once instead of one after the other, to race the receiver.
    pub concurrent: bool,
    pub sign: SignMode,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        Self {
            times: 1,
            concurrent: false,
            sign: SignMode::default(),
        }
    }
}

/// `base64(HMAC-SHA256(key = hash, message = body))`, the `flutterwave-signature` header value.
pub fn signature(hash: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(hash.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    BASE64.encode(mac.finalize().into_bytes())
}

fn auth_headers(hash: &str, body: &[u8], sign: SignMode) -> Vec<(&'static str, String)> {
    match sign {
        SignMode::VerifHash => vec![("verif-hash", hash.to_string())],
        SignMode::HmacSignature => vec![("flutterwave-signature", signature(hash, body))],
        SignMode::Both => vec![
            ("verif-hash", hash.to_string()),
            ("flutterwave-signature", signature(hash, body)),
        ],
        SignMode::Forged => {
            // Derived from the real hash so it can never equal it by accident.
            let wrong = format!("{hash}-forged");
            vec![
                ("verif-hash", wrong.clone()),
                ("flutterwave-signature", signature(&wrong, body)),
            ]
        }
    }
}

impl Simulator {
    /// POSTs the `charge.completed` event for `tx_id` to the webhook target `opts.times` times
    /// and returns the receiver's status for the last delivery.
    pub async fn send_webhook(&self, tx_id: u64, opts: WebhookOptions) -> Result<u16, SimError> {
        if opts.times == 0 {
            return Err(SimError::InvalidInput("times must be at least 1".into()));
        }
        let (tx, target) = {
            let state = self.lock();
            let tx = state
                .transactions
                .get(&tx_id)
                .cloned()
                .ok_or(SimError::UnknownTransaction(tx_id))?;
            let target = state
                .webhook_target
                .clone()
                .ok_or(SimError::NoWebhookTarget)?;
            (tx, target)
        };
        // Serialised once: every duplicate must be byte-identical, and the HMAC covers these bytes.
        let body = Bytes::from(serde_json::to_vec(&wire::webhook_event(&tx))?);

        if !opts.concurrent {
            let mut last = 0;
            for _ in 0..opts.times {
                last = self
                    .deliver_once(tx_id, &target, body.clone(), opts.sign)
                    .await?;
            }
            return Ok(last);
        }

        let mut set = JoinSet::new();
        for i in 0..opts.times {
            let (sim, target, body) = (self.clone(), target.clone(), body.clone());
            set.spawn(async move { (i, sim.deliver_once(tx_id, &target, body, opts.sign).await) });
        }
        let mut results = Vec::with_capacity(opts.times);
        while let Some(joined) = set.join_next().await {
            results.push(joined.map_err(|e| SimError::InvalidInput(e.to_string()))?);
        }
        results.sort_by_key(|(i, _)| *i);
        let mut last = Ok(0);
        for (_, result) in results {
            last = Ok(result?);
        }
        last
    }

    /// Sends one delivery and records it in the webhook log whatever the outcome.
    pub(crate) async fn deliver_once(
        &self,
        tx_id: u64,
        target: &WebhookTarget,
        body: Bytes,
        sign: SignMode,
    ) -> Result<u16, SimError> {
        let mut req = self
            .inner
            .http
            .post(&target.url)
            .timeout(TIMEOUT)
            .header("content-type", "application/json");
        for (name, value) in auth_headers(&target.hash, &body, sign) {
            req = req.header(name, value);
        }
        let result = req.body(body).send().await.map(|r| r.status().as_u16());
        let (status, error) = match &result {
            Ok(code) => (Some(*code), None),
            Err(e) => (None, Some(e.to_string())),
        };
        tracing::debug!(tx_id, url = %target.url, ?status, ?error, "webhook delivered");
        self.lock().deliveries.push(WebhookDelivery {
            tx_id,
            url: target.url.clone(),
            sign,
            status,
            error,
            at: Utc::now(),
        });
        Ok(result?)
    }
}
