//! Delivered files: a `data:` URI is uploaded to Cloudinary (signed upload
//! API) and replaced by its `secure_url`; a URL is kept as it is.

use crate::config::Cloudinary;
use crate::orders::OrderError;
use reqwest::StatusCode;
use serde::Deserialize;
use sha1::{Digest, Sha1};
use std::time::Duration;

#[derive(Clone)]
pub struct Uploads {
    http: reqwest::Client,
    config: Cloudinary,
}

#[derive(Deserialize)]
struct Uploaded {
    secure_url: String,
}

impl Uploads {
    pub fn new(config: Cloudinary) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Self { http, config }
    }

    pub async fn store(&self, file: &str) -> Result<String, OrderError> {
        if !file.starts_with("data:") {
            return Ok(file.to_string());
        }
        let (Some(cloud), Some(key), Some(secret)) = (
            &self.config.cloud_name,
            &self.config.api_key,
            &self.config.api_secret,
        ) else {
            // Not an outage that waiting cures: this deployment has no file
            // store, so the client must send a link instead.
            tracing::warn!(
                "an inline file was refused: CLOUD_NAME, CLOUD_API_KEY or CLOUD_API_SECRET is unset"
            );
            return Err(OrderError::Invalid(
                "file: inline data: files are not accepted here (no file store is configured); send a link".into(),
            ));
        };
        let timestamp = chrono::Utc::now().timestamp().to_string();
        // Cloudinary signs the sorted parameters followed by the secret.
        let signature = format!(
            "{:x}",
            Sha1::digest(format!("timestamp={timestamp}{}", secret.expose()).as_bytes())
        );
        let url = format!(
            "{}/{cloud}/auto/upload",
            self.config.api_url.trim_end_matches('/')
        );
        let response = self
            .http
            .post(url)
            .form(&[
                ("file", file),
                ("api_key", key),
                ("timestamp", &timestamp),
                ("signature", &signature),
            ])
            .send()
            .await
            .map_err(|_| OrderError::ProviderUnavailable {
                retry_after: Duration::from_secs(30),
            })?;
        match response.status() {
            status if status.is_success() => {}
            // Our key, signature or plan, not the seller's file: a server
            // fault, logged as such.
            status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                return Err(OrderError::Provider(format!(
                    "file store refused our credentials: {status}"
                )));
            }
            StatusCode::TOO_MANY_REQUESTS => {
                return Err(OrderError::ProviderUnavailable {
                    retry_after: Duration::from_secs(30),
                });
            }
            status if status.is_client_error() => {
                return Err(OrderError::Invalid(
                    "file was refused by the file store".into(),
                ));
            }
            _ => {
                return Err(OrderError::ProviderUnavailable {
                    retry_after: Duration::from_secs(30),
                });
            }
        }
        let uploaded: Uploaded = response
            .json()
            .await
            .map_err(|e| OrderError::Provider(e.to_string()))?;
        Ok(uploaded.secure_url)
    }
}
