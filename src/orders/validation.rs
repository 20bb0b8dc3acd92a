//! Request bodies of the order routes and their validation. Every error
//! names the offending field. Unknown fields are ignored, so bodies the old
//! gateway sends (with figures we no longer trust) are still accepted.

use super::error::OrderError;
use super::model::Offer;
use serde::Deserialize;

/// Longest free text accepted (descriptions, requirements, messages).
const MAX_TEXT: usize = 5_000;
/// Longest short field (ids, names, titles, URLs).
const MAX_SHORT: usize = 512;
/// Largest price accepted, a guard against typos and overflow games.
const MAX_PRICE: f64 = 100_000_000.0;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateOrder {
    pub offer: Offer,
    pub gig_id: String,
    pub seller_id: String,
    pub seller_username: String,
    pub seller_email: String,
    pub seller_image: String,
    pub gig_cover_image: String,
    pub gig_main_title: String,
    pub gig_basic_title: String,
    pub gig_basic_description: String,
    pub buyer_id: String,
    pub buyer_username: String,
    pub buyer_email: String,
    pub buyer_image: String,
    pub order_id: String,
    pub invoice_id: String,
    pub quantity: i64,
    pub price: f64,
    #[serde(default)]
    pub requirements: Option<String>,
    #[serde(default)]
    pub currency: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestExtension {
    pub original_date: String,
    pub new_date: String,
    pub days: i64,
    pub reason: String,
    #[serde(default)]
    pub delivery_date_update: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliverOrder {
    pub message: String,
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub file_type: Option<String>,
    #[serde(default)]
    pub file_size: Option<i64>,
    #[serde(default)]
    pub file_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MarkAsRead {
    pub notification_id: String,
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
        if let Some(file) = &self.file
            && !(file.starts_with("https://")
                || file.starts_with("http://")
                || file.starts_with("data:"))
        {
            return Err(invalid("file", "must be a URL or a data: URI"));
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
    fn emails_need_a_domain() {
        assert!(email("buyerEmail", "a@b.io").is_ok());
        assert!(email("buyerEmail", "nope").is_err());
        assert!(email("buyerEmail", "a@b").is_err());
    }
}
