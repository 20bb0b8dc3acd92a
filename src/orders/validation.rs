//! Request bodies of the order routes and their validation. Every error
//! names the offending field. Unknown fields are ignored, so bodies the old
//! gateway sends (with figures we no longer trust) are still accepted.

use super::error::OrderError;
use super::model::Offer;
use serde::Deserialize;
use serde::de::{self, Deserializer, Unexpected, Visitor};
use std::fmt;
use utoipa::ToSchema;

/// Longest free text accepted (descriptions, requirements, messages).
const MAX_TEXT: usize = 5_000;
/// Longest short field (ids, names, titles, URLs).
const MAX_SHORT: usize = 512;
/// Largest price accepted, a guard against typos and overflow games.
const MAX_PRICE: f64 = 100_000_000.0;
/// Longest link accepted for a delivered file (a `data:` URI is bounded by
/// the route's body limit instead).
const MAX_URL: usize = 2_048;

// The `#[schema(...)]` bounds below document the checks in `validate`
// (the OpenAPI document is generated from them); `validate` is what holds.

/// POST `/api/v1/order`: the old Joi schema. `status`, `serviceFee` and
/// other server-set fields in the body are ignored. `buyerUsername` must be
/// the caller (403 otherwise) and differ from `sellerUsername`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateOrder {
    /// `gigTitle` and `description` are required text (up to 512 and 5000
    /// characters), `price` as the order's, `deliveryInDays` 1 to 3650.
    pub offer: Offer,
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$")]
    pub gig_id: String,
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$")]
    pub seller_id: String,
    #[schema(min_length = 1, max_length = 512, pattern = r"\S")]
    pub seller_username: String,
    #[schema(min_length = 3, max_length = 512, pattern = r"^[^@\s]+@\S*\.\S*$")]
    pub seller_email: String,
    #[schema(min_length = 1, max_length = 512, pattern = r"\S")]
    pub seller_image: String,
    #[schema(min_length = 1, max_length = 512, pattern = r"\S")]
    pub gig_cover_image: String,
    #[schema(min_length = 1, max_length = 512, pattern = r"\S")]
    pub gig_main_title: String,
    #[schema(min_length = 1, max_length = 512, pattern = r"\S")]
    pub gig_basic_title: String,
    #[schema(min_length = 1, max_length = 5000, pattern = r"\S")]
    pub gig_basic_description: String,
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$")]
    pub buyer_id: String,
    /// The caller's own username (compared case-insensitively).
    #[schema(min_length = 1, max_length = 512, pattern = r"\S")]
    pub buyer_username: String,
    #[schema(min_length = 3, max_length = 512, pattern = r"^[^@\s]+@\S*\.\S*$")]
    pub buyer_email: String,
    #[schema(min_length = 1, max_length = 512, pattern = r"\S")]
    pub buyer_image: String,
    /// Unique: a second order with the same id is 409.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$")]
    pub order_id: String,
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$")]
    pub invoice_id: String,
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(deserialize_with = "integral")]
    pub quantity: i64,
    #[schema(exclusive_minimum = 0, maximum = 100_000_000)]
    pub price: f64,
    #[serde(default)]
    #[schema(max_length = 5000)]
    pub requirements: Option<String>,
    /// ISO 4217 code; `ORDER_CURRENCY` (NGN) when absent.
    #[serde(default)]
    #[schema(pattern = r"^[A-Z]{3}$")]
    pub currency: Option<String>,
}

/// PUT `/extension/{orderId}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestExtension {
    #[schema(min_length = 1, max_length = 64, pattern = r"\S")]
    pub original_date: String,
    #[schema(min_length = 1, max_length = 64, pattern = r"\S")]
    pub new_date: String,
    #[schema(minimum = 1, maximum = 365)]
    #[serde(deserialize_with = "integral")]
    pub days: i64,
    #[schema(min_length = 1, max_length = 5000, pattern = r"\S")]
    pub reason: String,
    #[serde(default)]
    #[schema(max_length = 64)]
    pub delivery_date_update: Option<String>,
}

/// PUT `/deliver-order/{orderId}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverOrder {
    #[schema(min_length = 1, max_length = 5000, pattern = r"\S")]
    pub message: String,
    /// An `http(s)://` link (up to 2048 characters) or a `data:` URI, which
    /// is uploaded to Cloudinary and replaced by its `secure_url`.
    #[serde(default)]
    #[schema(pattern = "^(https?://|data:)")]
    pub file: Option<String>,
    #[serde(default)]
    #[schema(max_length = 512)]
    pub file_type: Option<String>,
    #[serde(default, deserialize_with = "optional_integral")]
    #[schema(minimum = 0)]
    pub file_size: Option<i64>,
    #[serde(default)]
    #[schema(max_length = 512)]
    pub file_name: Option<String>,
}

/// PUT `/notification/mark-as-read`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MarkAsRead {
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]+$")]
    pub notification_id: String,
}

/// An integer that JSON may spell `5` or `5.0`: JSON Schema (and so the
/// OpenAPI document) counts both as integers, serde's `i64` only the first.
/// Reads BSON integers too, for the stored `Offer`.
pub fn integral<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    struct Integral;

    impl Visitor<'_> for Integral {
        type Value = i64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer")
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<i64, E> {
            Ok(value)
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<i64, E> {
            i64::try_from(value).map_err(|_| E::invalid_value(Unexpected::Unsigned(value), &self))
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<i64, E> {
            // 2^63 is exactly representable; anything below it with no
            // fraction converts without loss of its integer value.
            const LIMIT: f64 = 9_223_372_036_854_775_808.0;
            if value.fract() == 0.0 && (-LIMIT..LIMIT).contains(&value) {
                Ok(value as i64)
            } else {
                Err(E::invalid_value(Unexpected::Float(value), &self))
            }
        }
    }

    deserializer.deserialize_any(Integral)
}

/// [`integral`], optional.
fn optional_integral<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    struct Int(#[serde(deserialize_with = "integral")] i64);
    Ok(Option::<Int>::deserialize(deserializer)?.map(|Int(n)| n))
}

fn invalid(field: &str, problem: &str) -> OrderError {
    OrderError::Invalid(format!("{field} {problem}"))
}

pub fn text(field: &str, value: &str, max: usize) -> Result<(), OrderError> {
    if value.trim().is_empty() {
        return Err(invalid(field, "is required"));
    }
    if value.chars().count() > max {
        return Err(invalid(field, &format!("must be at most {max} characters")));
    }
    Ok(())
}

fn optional_text(field: &str, value: Option<&str>, max: usize) -> Result<(), OrderError> {
    match value {
        Some(v) if v.chars().count() > max => {
            Err(invalid(field, &format!("must be at most {max} characters")))
        }
        _ => Ok(()),
    }
}

fn money(field: &str, value: f64) -> Result<(), OrderError> {
    if value.is_finite() && value > 0.0 && value <= MAX_PRICE {
        Ok(())
    } else {
        Err(invalid(
            field,
            &format!("must be a positive amount up to {MAX_PRICE}"),
        ))
    }
}

fn email(field: &str, value: &str) -> Result<(), OrderError> {
    text(field, value, MAX_SHORT)?;
    let valid = value.split_once('@').is_some_and(|(user, domain)| {
        !user.is_empty() && domain.contains('.') && !value.contains(char::is_whitespace)
    });
    if valid {
        Ok(())
    } else {
        Err(invalid(field, "must be an e-mail address"))
    }
}

/// Ids travel in URLs, payment references and routing: keep them plain.
pub fn identifier(field: &str, value: &str) -> Result<(), OrderError> {
    text(field, value, 64)?;
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(())
    } else {
        Err(invalid(
            field,
            "may contain only letters, digits, '-' and '_'",
        ))
    }
}

impl CreateOrder {
    pub fn validate(&self) -> Result<(), OrderError> {
        let o = &self.offer;
        text("offer.gigTitle", &o.gig_title, MAX_SHORT)?;
        money("offer.price", o.price)?;
        text("offer.description", &o.description, MAX_TEXT)?;
        if !(1..=3650).contains(&o.delivery_in_days) {
            return Err(invalid(
                "offer.deliveryInDays",
                "must be between 1 and 3650",
            ));
        }
        text("offer.oldDeliveryDate", &o.old_delivery_date, 64)?;
        optional_text("offer.newDeliveryDate", o.new_delivery_date.as_deref(), 64)?;
        optional_text("offer.reason", o.reason.as_deref(), MAX_TEXT)?;
        for (field, value) in [
            ("gigId", &self.gig_id),
            ("sellerId", &self.seller_id),
            ("buyerId", &self.buyer_id),
            ("orderId", &self.order_id),
            ("invoiceId", &self.invoice_id),
        ] {
            identifier(field, value)?;
        }
        for (field, value) in [
            ("sellerUsername", &self.seller_username),
            ("buyerUsername", &self.buyer_username),
            ("sellerImage", &self.seller_image),
            ("buyerImage", &self.buyer_image),
            ("gigCoverImage", &self.gig_cover_image),
            ("gigMainTitle", &self.gig_main_title),
            ("gigBasicTitle", &self.gig_basic_title),
        ] {
            text(field, value, MAX_SHORT)?;
        }
        text("gigBasicDescription", &self.gig_basic_description, MAX_TEXT)?;
        email("sellerEmail", &self.seller_email)?;
        email("buyerEmail", &self.buyer_email)?;
        if !(1..=1000).contains(&self.quantity) {
            return Err(invalid("quantity", "must be between 1 and 1000"));
        }
        money("price", self.price)?;
        optional_text("requirements", self.requirements.as_deref(), MAX_TEXT)?;
        if let Some(currency) = &self.currency
            && !(currency.len() == 3 && currency.chars().all(|c| c.is_ascii_uppercase()))
        {
            return Err(invalid(
                "currency",
                "must be a three-letter ISO code such as NGN",
            ));
        }
        if self
            .buyer_username
            .eq_ignore_ascii_case(&self.seller_username)
        {
            return Err(invalid("sellerUsername", "must differ from buyerUsername"));
        }
        Ok(())
    }
}

impl RequestExtension {
    pub fn validate(&self) -> Result<(), OrderError> {
        text("originalDate", &self.original_date, 64)?;
        text("newDate", &self.new_date, 64)?;
        text("reason", &self.reason, MAX_TEXT)?;
        optional_text(
            "deliveryDateUpdate",
            self.delivery_date_update.as_deref(),
            64,
        )?;
        if !(1..=365).contains(&self.days) {
            return Err(invalid("days", "must be between 1 and 365"));
        }
        Ok(())
    }
}

impl DeliverOrder {
    pub fn validate(&self) -> Result<(), OrderError> {
        text("message", &self.message, MAX_TEXT)?;
        optional_text("fileType", self.file_type.as_deref(), MAX_SHORT)?;
        optional_text("fileName", self.file_name.as_deref(), MAX_SHORT)?;
        if self.file_size.is_some_and(|s| s < 0) {
            return Err(invalid("fileSize", "must not be negative"));
        }
        if let Some(file) = &self.file {
            let link = file.starts_with("https://") || file.starts_with("http://");
            if !(link || file.starts_with("data:")) {
                return Err(invalid("file", "must be a URL or a data: URI"));
            }
            if link && file.chars().count() > MAX_URL {
                return Err(invalid(
                    "file",
                    &format!("must be at most {MAX_URL} characters"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_refuse_operators_and_spaces() {
        assert!(identifier("orderId", "ord-1_A").is_ok());
        assert!(identifier("orderId", "{\"$gt\":\"\"}").is_err());
        assert!(identifier("orderId", "a b").is_err());
        let error = identifier("orderId", "").unwrap_err().to_string();
        assert_eq!(error, "orderId is required");
    }

    #[test]
    fn money_must_be_finite_and_positive() {
        assert!(money("price", 10.0).is_ok());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e12] {
            assert!(money("price", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn integers_may_be_spelled_as_integral_floats() {
        #[derive(Deserialize)]
        struct Probe {
            #[serde(deserialize_with = "integral")]
            n: i64,
            #[serde(default, deserialize_with = "optional_integral")]
            m: Option<i64>,
        }
        let read = |json: &str| serde_json::from_str::<Probe>(json).map(|p| (p.n, p.m));
        assert_eq!(read(r#"{"n": 5}"#).unwrap(), (5, None));
        assert_eq!(read(r#"{"n": 5.0, "m": -2.0}"#).unwrap(), (5, Some(-2)));
        assert_eq!(read(r#"{"n": 1, "m": null}"#).unwrap(), (1, None));
        for bad in [
            r#"{"n": 5.5}"#,
            r#"{"n": 1e300}"#,
            r#"{"n": 18446744073709551615}"#,
            r#"{"n": "5"}"#,
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails_need_a_domain() {
        assert!(email("buyerEmail", "a@b.io").is_ok());
        assert!(email("buyerEmail", "nope").is_err());
        assert!(email("buyerEmail", "a@b").is_err());
    }
}
