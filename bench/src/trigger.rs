//! Causes notifications the way users do, through the gateway's API: a
//! buyer creates an order for a seller and cancels it, which notifies the
//! seller ("cancelled the order.") without any payment provider involved.

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};
use std::time::Instant;

#[derive(Clone)]
pub struct Trigger {
    http: reqwest::Client,
    base_url: String,
    jwt_secret: String,
    gateway_token: String,
}

impl Trigger {
    pub fn new(base_url: &str, jwt_secret: &str, gateway_secret: &str) -> Self {
        let gateway_token = encode(
            &Header::default(),
            &json!({ "id": "order", "iat": chrono::Utc::now().timestamp() }),
            &EncodingKey::from_secret(gateway_secret.as_bytes()),
        )
        .unwrap_or_default();
        Self {
            http: reqwest::Client::new(),
            base_url: base_url.trim_end_matches('/').to_string(),
            jwt_secret: jwt_secret.to_string(),
            gateway_token,
        }
    }

    pub fn user_token(&self, username: &str) -> String {
        encode(
            &Header::default(),
            &json!({
                "id": 1,
                "username": username,
                "email": format!("{username}@bench.test"),
                "iat": chrono::Utc::now().timestamp(),
            }),
            &EncodingKey::from_secret(self.jwt_secret.as_bytes()),
        )
        .unwrap_or_default()
    }

    /// Creates and cancels an order from `buyer` to `seller`; returns the
    /// order id and when the cancel was sent (the notification's cause).
    pub async fn notify(
        &self,
        order_id: &str,
        buyer: &str,
        seller: &str,
    ) -> Result<Instant, String> {
        let token = self.user_token(buyer);
        self.call(
            self.http
                .post(format!("{}/api/v1/order", self.base_url))
                .json(&order_body(order_id, buyer, seller)),
            &token,
        )
        .await?;
        let sent = Instant::now();
        self.call(
            self.http
                .put(format!("{}/api/v1/order/cancel/{order_id}", self.base_url))
                .json(&json!({})),
            &token,
        )
        .await?;
        Ok(sent)
    }

    async fn call(&self, request: reqwest::RequestBuilder, token: &str) -> Result<(), String> {
        let response = request
            .header("gatewaytoken", &self.gateway_token)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            Err(format!("{status}: {body}"))
        }
    }
}

fn order_body(order_id: &str, buyer: &str, seller: &str) -> Value {
    json!({
        "offer": {
            "gigTitle": "Benchmark gig", "price": 50.0, "description": "load",
            "deliveryInDays": 3, "oldDeliveryDate": "2030-01-01T00:00:00.000Z",
            "accepted": true, "cancelled": false
        },
        "gigId": "bench-gig", "sellerId": format!("id-{seller}"), "sellerUsername": seller,
        "sellerEmail": format!("{seller}@bench.test"), "sellerImage": "https://img/s.png",
        "gigCoverImage": "https://img/c.png", "gigMainTitle": "Main", "gigBasicTitle": "Basic",
        "gigBasicDescription": "Basic", "buyerId": format!("id-{buyer}"), "buyerUsername": buyer,
        "buyerEmail": format!("{buyer}@bench.test"), "buyerImage": "https://img/b.png",
        "orderId": order_id, "invoiceId": format!("inv-{order_id}"), "quantity": 1, "price": 50.0
    })
}
