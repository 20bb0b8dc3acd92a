//! The Flutterwave webhook receiver: authenticity (constant time), one inbox
//! entry per event, and a re-verification command staged in the same
//! transaction. Answers within milliseconds; the payload itself is never
//! trusted: the command asks the API what really happened.

use crate::config::Secret;
use crate::orders::OrderError;
use crate::orders::repository::Repository;
use crate::payments::reverify::VERIFY_COMMAND;
use base64::Engine;
use bson::doc;
use futures::FutureExt;
use hmac::{Hmac, Mac};
use mongodb::Client;
use outbox::relay::Waker;
use outbox::transaction::{self, RetryPolicy};
use outbox::{Inbox, NewRecord, Outbox};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

/// The inbox consumer name for Flutterwave events.
pub const CONSUMER: &str = "flutterwave-webhook";

/// What this service reads of a Flutterwave event; other fields (the
/// customer, the card) are neither read nor kept.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct WebhookEvent {
    /// e.g. `charge.completed`; other types are recorded and ignored.
    pub event: String,
    pub data: WebhookData,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct WebhookData {
    /// Flutterwave's transaction id.
    pub id: u64,
    /// The order's `flutterwave.txRef`.
    #[serde(default)]
    pub tx_ref: Option<String>,
}

/// Deepest JSON nesting read from a webhook body.
const MAX_DEPTH: usize = crate::http::limits::MAX_JSON_DEPTH;

/// An event from the raw body, or why it is not one. Total: any bytes give
/// one or the other (property-tested below).
pub fn parse(body: &[u8]) -> Result<WebhookEvent, String> {
    if crate::http::limits::too_deep(body, MAX_DEPTH) {
        return Err(format!("nests deeper than {MAX_DEPTH} levels"));
    }
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// What happened to a received event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// First time seen; re-verification staged.
    Accepted,
    /// Seen before: no second effect.
    Duplicate,
    /// Not an event we act on; recorded and ignored.
    Ignored,
}

/// `verif-hash` equal to the shared hash, or `flutterwave-signature` the
/// base64 HMAC-SHA256 of the raw body keyed with it. Both compared in
/// constant time.
pub fn authentic(
    verif_hash: Option<&[u8]>,
    signature: Option<&[u8]>,
    body: &[u8],
    hash: &Secret,
) -> bool {
    if let Some(presented) = verif_hash
        && bool::from(presented.ct_eq(hash.expose().as_bytes()))
    {
        return true;
    }
    let Some(presented) = signature else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(hash.expose().as_bytes()) else {
        return false;
    };
    mac.update(body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    presented.ct_eq(expected.as_bytes()).into()
}

#[derive(Clone)]
pub struct WebhookReceiver {
    client: Client,
    inbox: Inbox,
    outbox: Outbox,
    repo: Repository,
    waker: Option<Waker>,
}

impl WebhookReceiver {
    pub fn new(
        client: Client,
        inbox: Inbox,
        outbox: Outbox,
        repo: Repository,
        waker: Option<Waker>,
    ) -> Self {
        Self {
            client,
            inbox,
            outbox,
            repo,
            waker,
        }
    }

    pub async fn receive(
        &self,
        event: WebhookEvent,
        correlation_id: String,
        traceparent: String,
    ) -> Result<Receipt, OrderError> {
        let key = format!("{}:{}", event.event, event.data.id);
        let (inbox, outbox, repo) = (self.inbox.clone(), self.outbox.clone(), self.repo.clone());
        // With the aggregate of the command staged, if one was.
        let (receipt, staged) = transaction::run(&self.client, &RetryPolicy::default(), move |session| {
            let (inbox, outbox, repo, event, key) = (inbox.clone(), outbox.clone(), repo.clone(), event.clone(), key.clone());
            let (correlation_id, traceparent) = (correlation_id.clone(), traceparent.clone());
            async move {
                let tx_ref = event.data.tx_ref.clone().unwrap_or_default();
                let details = doc! { "event": &event.event, "transactionId": event.data.id as i64, "txRef": &tx_ref };
                if !inbox.record(session, CONSUMER, &key, details).await? {
                    return Ok::<_, OrderError>((Receipt::Duplicate, None));
                }
                if event.event != "charge.completed" {
                    return Ok((Receipt::Ignored, None));
                }
                // Per-order ordering needs the order's id as the aggregate;
                // an unknown reference gets its own, and the command parks it.
                let aggregate = match repo.by_tx_ref_in(session, &tx_ref).await? {
                    Some(order) => order.order_id,
                    None => format!("webhook:{tx_ref}"),
                };
                let command = NewRecord::command(
                    aggregate.clone(),
                    VERIFY_COMMAND,
                    serde_json::json!({ "transactionId": event.data.id.to_string(), "txRef": tx_ref, "event": event.event }),
                )
                .with_correlation(Some(correlation_id))
                .with_header("traceparent", traceparent);
                outbox.stage(session, vec![command]).await?;
                Ok((Receipt::Accepted, Some(aggregate)))
            }
            .boxed()
        })
        .await?;
        if let (Some(aggregate), Some(waker)) = (staged, &self.waker) {
            waker.hand([aggregate]);
        }
        Ok(receipt)
    }

    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(key: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(body);
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    #[test]
    fn accepts_the_hash_or_a_valid_signature_only() {
        let hash = Secret::new("s3cret");
        let body = br#"{"event":"charge.completed"}"#;
        assert!(authentic(Some(b"s3cret"), None, body, &hash));
        assert!(!authentic(Some(b"s3cre"), None, body, &hash));
        assert!(!authentic(Some(b"s3cret!"), None, body, &hash));
        assert!(authentic(
            None,
            Some(sign("s3cret", body).as_bytes()),
            body,
            &hash
        ));
        assert!(!authentic(
            None,
            Some(sign("other", body).as_bytes()),
            body,
            &hash
        ));
        assert!(!authentic(
            None,
            Some(sign("s3cret", b"tampered").as_bytes()),
            body,
            &hash
        ));
        assert!(!authentic(None, None, body, &hash));
    }

    mod never_panics {
        //! Property tests: the signature check and the parser are total
        //! over arbitrary bytes (256 cases each by default;
        //! `PROPTEST_CASES` raises it for a longer campaign).

        use super::*;
        use proptest::prelude::*;

        /// Bodies that are mostly JSON-ish, so the parser gets past the first byte.
        fn jsonish() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..512),
                "[\\[\\]{}\":,0-9a-z_.\\\\ -]{0,256}".prop_map(String::into_bytes),
                // Well-formed events, ids beyond u64 and negative ones included.
                (
                    any::<String>(),
                    any::<i128>(),
                    proptest::option::of(any::<String>())
                )
                    .prop_map(|(event, id, tx_ref)| format!(
                        r#"{{"event":{},"data":{{"id":{id},"tx_ref":{}}}}}"#,
                        serde_json::Value::String(event),
                        tx_ref.map_or(serde_json::Value::Null, serde_json::Value::String),
                    )
                    .into_bytes()),
                (1usize..200)
                    .prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes()),
            ]
        }

        proptest! {
            #[test]
            fn authentic_is_total(
                hash in proptest::collection::vec(any::<u8>(), 0..64),
                key in ".{0,40}",
                signature in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
                body in jsonish(),
            ) {
                let secret = Secret::new(key.clone());
                let accepted = authentic(Some(&hash), signature.as_deref(), &body, &secret);
                // Only the exact hash or the exact signature gets in.
                let signed = signature.as_deref() == Some(sign(&key, &body).as_bytes());
                prop_assert_eq!(accepted, hash == key.as_bytes() || signed);
                prop_assert!(authentic(None, Some(sign(&key, &body).as_bytes()), &body, &secret));
            }

            #[test]
            fn parse_is_total(body in jsonish()) {
                match parse(&body) {
                    Ok(event) => {
                        // What parses has the two fields the receiver reads.
                        let _ = (event.event.len(), event.data.id);
                    }
                    Err(reason) => prop_assert!(!reason.is_empty()),
                }
            }
        }
    }
}
