//! The review message on the wire (API.md, "Events in"): parsed and checked
//! completely before anything is written, so that a malformed message is
//! recognised at once and dead-lettered with a reason a human can act on.

use crate::orders::reviews::{NewReview, Reviewer};
use chrono::{DateTime, TimeZone, Utc};
use lapin::BasicProperties;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Why a message can never be applied, however often it is tried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(String);

/// The inbox key of a message: its AMQP `message_id`, else the SHA-256 of
/// its body, so that a producer that sets no id still gets exactly-once.
pub fn inbox_key(properties: &BasicProperties, body: &[u8]) -> String {
    match properties.message_id() {
        Some(id) if !id.as_str().trim().is_empty() => id.to_string(),
        _ => Sha256::digest(body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    }
}

/// `{type, orderId, rating, review, createdAt?, ...}`; other fields are ignored.
pub fn parse(body: &[u8]) -> Result<NewReview, Malformed> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| Malformed(format!("body is not JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(Malformed("body is not a JSON object".into()));
    };
    let reviewer = match string(&fields, "type")? {
        "buyer-review" => Reviewer::Buyer,
        "seller-review" => Reviewer::Seller,
        other => {
            return Err(Malformed(format!(
                "type {other:?} is neither buyer-review nor seller-review"
            )));
        }
    };
    let order_id = string(&fields, "orderId")?.trim();
    if order_id.is_empty() {
        return Err(Malformed("orderId is empty".into()));
    }
    let rating = match fields.get("rating") {
        None | Some(Value::Null) => return Err(Malformed("rating is missing".into())),
        Some(v) => v
            .as_i64()
            .filter(|r| (1..=5).contains(r))
            .ok_or_else(|| Malformed(format!("rating {v} is not an integer from 1 to 5")))?,
    };
    let review = string(&fields, "review")?.to_string();
    Ok(NewReview {
        reviewer,
        order_id: order_id.to_string(),
        rating: rating as i32,
        review,
        created_at: created_at(fields.get("createdAt"))?,
    })
}

fn string<'a>(fields: &'a Map<String, Value>, name: &str) -> Result<&'a str, Malformed> {
    match fields.get(name) {
        None | Some(Value::Null) => Err(Malformed(format!("{name} is missing"))),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Malformed(format!("{name} is not a string"))),
    }
}

/// An RFC 3339 string (what JavaScript's `toISOString` writes) or epoch
/// milliseconds; absent is allowed (the time of applying is used).
fn created_at(value: Option<&Value>) -> Result<Option<DateTime<Utc>>, Malformed> {
    let invalid = || Malformed("createdAt is not a date".into());
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map(|d| Some(d.with_timezone(&Utc)))
            .map_err(|_| invalid()),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            .map(Some)
            .ok_or_else(invalid),
        Some(_) => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: Value) -> Vec<u8> {
        serde_json::to_vec(&value).expect("json")
    }

    #[test]
    fn a_complete_review_parses() {
        let review = parse(&body(json!({
            "type": "seller-review", "orderId": "o-1", "rating": 4, "review": "Great buyer",
            "createdAt": "2026-11-20T10:00:00.000Z", "gigId": "ignored"
        })))
        .expect("valid");
        assert_eq!(review.reviewer, Reviewer::Seller);
        assert_eq!(review.order_id, "o-1");
        assert_eq!(review.rating, 4);
        assert_eq!(review.review, "Great buyer");
        assert_eq!(
            review.created_at.map(|d| d.to_rfc3339()).as_deref(),
            Some("2026-11-20T10:00:00+00:00")
        );
        let review = parse(&body(
            json!({ "type": "buyer-review", "orderId": "o-1", "rating": 1, "review": "" }),
        ))
        .expect("createdAt is optional");
        assert_eq!(review.created_at, None);
    }

    #[test]
    fn every_defect_is_named() {
        let base = json!({ "type": "buyer-review", "orderId": "o-1", "rating": 5, "review": "ok" });
        let with = |key: &str, value: Value| {
            let mut v = base.clone();
            v[key] = value;
            body(v)
        };
        let reason = |b: &[u8]| parse(b).expect_err("malformed").to_string();
        assert!(reason(b"{not json").starts_with("body is not JSON"));
        assert_eq!(reason(b"[1]"), "body is not a JSON object");
        assert!(reason(&with("type", json!("gig-review"))).contains("gig-review"));
        assert_eq!(reason(&with("orderId", Value::Null)), "orderId is missing");
        assert_eq!(reason(&with("orderId", json!(" "))), "orderId is empty");
        for bad in [json!(9), json!(0), json!(4.5), json!("5")] {
            assert!(reason(&with("rating", bad)).contains("from 1 to 5"));
        }
        assert_eq!(reason(&with("review", json!(3))), "review is not a string");
        assert_eq!(
            reason(&with("createdAt", json!("yesterday"))),
            "createdAt is not a date"
        );
    }

    #[test]
    fn the_inbox_key_is_the_message_id_or_the_body_hash() {
        let with_id = BasicProperties::default().with_message_id("m-1".into());
        assert_eq!(inbox_key(&with_id, b"{}"), "m-1");
        let hashed = inbox_key(&BasicProperties::default(), b"abc");
        assert_eq!(
            hashed,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let blank = BasicProperties::default().with_message_id("".into());
        assert_eq!(inbox_key(&blank, b"abc"), hashed);
    }
}
