//! The workload: orders taken through their life over the real REST API
//! (create → pay by the verify route or a webhook → extension → deliver →
//! approve, or cancel after payment for a refund), reviews published with
//! duplicates. Every step retries through failures on any live instance
//! until a deadline, as a gateway would; the end each order is meant to
//! reach is recorded for the checker.

use crate::listeners::Listeners;
use crate::peers::ReviewPublisher;
use flutterwave_sim::{NewTransaction, PayOptions, Simulator, WebhookOptions};
use jsonwebtoken::{EncodingKey, Header, encode};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How one order goes through its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Journey {
    /// Paid through PUT verify, delivered, approved, reviewed (sent twice).
    Complete,
    /// Paid on the hosted link; the webhook (or reconciliation) moves it.
    CompleteByWebhook,
    /// An extension requested and approved before delivery.
    Extended,
    /// Paid, then cancelled by the buyer: one refund owed.
    CancelledAfterPayment,
    /// Cancelled before payment: no refund.
    CancelledUnpaid,
}

impl Journey {
    pub fn for_index(i: usize) -> Self {
        match i % 5 {
            0 => Journey::Complete,
            1 => Journey::CompleteByWebhook,
            2 => Journey::Extended,
            3 => Journey::CancelledAfterPayment,
            _ => Journey::CancelledUnpaid,
        }
    }

    pub fn expected_status(self) -> &'static str {
        match self {
            Journey::CancelledAfterPayment | Journey::CancelledUnpaid => "CANCELLED",
            _ => "COMPLETED",
        }
    }

    pub fn refunds_expected(self) -> usize {
        usize::from(self == Journey::CancelledAfterPayment)
    }

    pub fn reviewed(self) -> bool {
        self == Journey::Complete
    }
}

/// One command of a journey, retried until it is done.
struct Step<'a> {
    name: &'a str,
    method: Method,
    path: String,
    user: &'a str,
    body: Option<Value>,
    order_id: &'a str,
    /// The status that shows the command took effect.
    done_when: &'a str,
}

/// What the workload needs to reach the service and its peers.
pub struct Client {
    http: reqwest::Client,
    instances: Vec<String>,
    next: AtomicUsize,
    jwt_secret: String,
    gateway_secret: String,
    pub sim: Simulator,
    pub reviews: ReviewPublisher,
    pub listeners: Listeners,
    /// The same webhook is sent this many times at once (1: once).
    pub webhook_copies: usize,
    step_deadline: Duration,
}

/// One order's plan and how far it got.
#[derive(Debug, Clone)]
pub struct Planned {
    pub order_id: String,
    pub journey: Journey,
    /// The first step that did not complete before its deadline, if any.
    pub failed_step: Option<String>,
}

impl Client {
    pub fn new(
        instances: Vec<String>,
        jwt_secret: &str,
        gateway_secret: &str,
        sim: Simulator,
        reviews: ReviewPublisher,
        listeners: Listeners,
        step_deadline: Duration,
    ) -> Self {
        Self {
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap_or_default(),
            instances,
            next: AtomicUsize::new(0),
            jwt_secret: jwt_secret.into(),
            gateway_secret: gateway_secret.into(),
            sim,
            reviews,
            listeners,
            webhook_copies: 1,
            step_deadline,
        }
    }

    fn user_token(&self, username: &str) -> String {
        let claims = json!({
            "id": 1, "username": username, "email": format!("{username}@example.com"),
            "iat": chrono::Utc::now().timestamp(),
        });
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(self.jwt_secret.as_bytes()),
        )
        .unwrap_or_default()
    }

    fn gateway_token(&self) -> String {
        encode(
            &Header::default(),
            &json!({ "id": "auth", "iat": chrono::Utc::now().timestamp() }),
            &EncodingKey::from_secret(self.gateway_secret.as_bytes()),
        )
        .unwrap_or_default()
    }

    /// Connects `user`'s Socket.IO listener to the next live instance.
    async fn listen(&self, user: &str) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.step_deadline;
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.instances.len();
            let ws_url = format!(
                "{}/socket.io/?EIO=4&transport=websocket",
                self.instances[i].replacen("http://", "ws://", 1)
            );
            match self
                .listeners
                .listen(&ws_url, user, &self.user_token(user))
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    }

    /// One attempt on the next instance in turn; `None` when no answer came
    /// back (the instance is down, or died mid-request).
    async fn send(
        &self,
        method: Method,
        path: &str,
        user: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Option<(StatusCode, Value)> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.instances.len();
        let mut request = self
            .http
            .request(method, format!("{}/api/v1/order{path}", self.instances[i]))
            .header("gatewaytoken", self.gateway_token())
            .bearer_auth(self.user_token(user));
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.ok()?;
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        Some((status, body))
    }

    async fn status_of(&self, order_id: &str, user: &str) -> Option<String> {
        match self
            .send(Method::GET, &format!("/{order_id}"), user, None, None)
            .await
        {
            Some((StatusCode::OK, body)) => body["order"]["status"].as_str().map(String::from),
            _ => None,
        }
    }

    /// Sends a command until it succeeds, or until the order already shows
    /// `step.done_when` (an earlier attempt committed but its answer was lost).
    async fn command(&self, step: Step<'_>) -> Result<Value, String> {
        let Step {
            name: step,
            method,
            path,
            user,
            body,
            order_id,
            done_when,
        } = step;
        let body = body.as_ref();
        let deadline = tokio::time::Instant::now() + self.step_deadline;
        let mut last = String::from("no answer");
        while tokio::time::Instant::now() < deadline {
            match self.send(method.clone(), &path, user, body, None).await {
                Some((status, body)) if status.is_success() => return Ok(body),
                Some((status, body))
                    if status.is_client_error()
                        && status != StatusCode::CONFLICT
                        && status != StatusCode::TOO_MANY_REQUESTS =>
                {
                    return Err(format!("{step}: {status} {body}"));
                }
                Some((status, body)) => last = format!("{status} {body}"),
                None => last = "no answer".into(),
            }
            if self.status_of(order_id, user).await.as_deref() == Some(done_when) {
                return Ok(Value::Null);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(format!(
            "{step}: gave up after {:?}: {last}",
            self.step_deadline
        ))
    }

    /// Waits until the order shows `status` (a webhook or reconciliation moves it).
    async fn wait_for(&self, order_id: &str, user: &str, status: &str) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.step_deadline;
        while tokio::time::Instant::now() < deadline {
            if self.status_of(order_id, user).await.as_deref() == Some(status) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(format!("never reached {status}"))
    }

    /// Takes one order through `journey`; the error names the step that failed.
    pub async fn run(&self, order_id: &str, journey: Journey) -> Result<(), String> {
        let buyer = format!("buyer{}", short(order_id));
        let seller = format!("seller{}", short(order_id));
        self.listen(&buyer).await?;
        self.listen(&seller).await?;
        let created = self.create(order_id, &buyer, &seller).await?;
        let tx_ref = created["flutterwave"]["txRef"]
            .as_str()
            .ok_or("create: no txRef")?
            .to_string();
        let amount = created["price"].as_f64().unwrap_or(0.0)
            + created["serviceFee"].as_f64().unwrap_or(0.0);
        match journey {
            Journey::CancelledUnpaid => {
                return self.cancel(order_id, &buyer).await.map(|_| ());
            }
            Journey::CompleteByWebhook => self.pay_by_webhook(order_id, &buyer, &tx_ref).await?,
            _ => {
                self.pay_by_verify(order_id, &buyer, &tx_ref, amount)
                    .await?
            }
        }
        if journey == Journey::CancelledAfterPayment {
            return self.cancel(order_id, &buyer).await.map(|_| ());
        }
        if journey == Journey::Extended {
            self.extend(order_id, &buyer, &seller).await?;
        }
        self.command(Step {
            name: "deliver",
            method: Method::PUT,
            path: format!("/deliver-order/{order_id}"),
            user: &seller,
            body: Some(json!({ "message": "Here is your work" })),
            order_id,
            done_when: "DELIVERED",
        })
        .await?;
        self.command(Step {
            name: "approve",
            method: Method::PUT,
            path: format!("/approve-order/{order_id}"),
            user: &buyer,
            body: Some(json!({})),
            order_id,
            done_when: "COMPLETED",
        })
        .await?;
        if journey.reviewed() {
            self.review(order_id).await?;
        }
        Ok(())
    }

    async fn create(&self, order_id: &str, buyer: &str, seller: &str) -> Result<Value, String> {
        let body = order_body(order_id, buyer, seller, 1500.0);
        let deadline = tokio::time::Instant::now() + self.step_deadline;
        while tokio::time::Instant::now() < deadline {
            // The Idempotency-Key makes a retry after a lost answer safe:
            // the first response is replayed, nothing is created twice.
            match self
                .send(Method::POST, "", buyer, Some(&body), Some(order_id))
                .await
            {
                Some((StatusCode::CREATED, body)) => return Ok(body["order"].clone()),
                Some((status, body))
                    if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS =>
                {
                    return Err(format!("create: {status} {body}"));
                }
                _ => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
        Err("create: gave up".into())
    }

    async fn pay_by_verify(
        &self,
        order_id: &str,
        buyer: &str,
        tx_ref: &str,
        amount: f64,
    ) -> Result<(), String> {
        let tx = self.sim.add_transaction(NewTransaction {
            tx_ref: tx_ref.into(),
            amount,
            currency: "NGN".into(),
            ..NewTransaction::default()
        });
        self.command(Step {
            name: "verify",
            method: Method::PUT,
            path: format!("/verify/{}/{tx_ref}", tx.id),
            user: buyer,
            body: None,
            order_id,
            done_when: "PROCESSING",
        })
        .await
        .map(|_| ())
    }

    async fn pay_by_webhook(
        &self,
        order_id: &str,
        buyer: &str,
        tx_ref: &str,
    ) -> Result<(), String> {
        self.command(Step {
            name: "checkout",
            method: Method::POST,
            path: format!("/{order_id}/checkout"),
            user: buyer,
            body: Some(json!({})),
            order_id,
            done_when: "PROCESSING",
        })
        .await?;
        let paid = self
            .sim
            .pay_link(tx_ref, PayOptions::default())
            .await
            .map_err(|e| format!("pay link: {e}"))?;
        if self.webhook_copies > 1 {
            let copies = WebhookOptions {
                times: self.webhook_copies,
                concurrent: true,
                ..WebhookOptions::default()
            };
            // Failed copies are fine: the one above, a retry or the
            // reconciliation sweep moves the order.
            let _ = self.sim.send_webhook(paid.id, copies).await;
        }
        self.wait_for(order_id, buyer, "PROCESSING").await
    }

    async fn extend(&self, order_id: &str, buyer: &str, seller: &str) -> Result<(), String> {
        let request = json!({
            "originalDate": "2026-12-10T00:00:00.000Z", "newDate": "2026-12-15T00:00:00.000Z",
            "days": 5, "reason": "More time for tests"
        });
        // The request is not a status change: repeat it until the order
        // carries it (a repeat only rewrites the same request).
        let deadline = tokio::time::Instant::now() + self.step_deadline;
        loop {
            if let Some((status, _)) = self
                .send(
                    Method::PUT,
                    &format!("/extension/{order_id}"),
                    seller,
                    Some(&request),
                    None,
                )
                .await
                && status.is_success()
            {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err("extension: gave up".into());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let deadline = tokio::time::Instant::now() + self.step_deadline;
        while tokio::time::Instant::now() < deadline {
            match self
                .send(
                    Method::PUT,
                    &format!("/gig/approve/{order_id}"),
                    buyer,
                    None,
                    None,
                )
                .await
            {
                Some((status, _)) if status.is_success() => return Ok(()),
                // 409: no pending request any more, as an earlier attempt
                // committed and its answer was lost.
                Some((StatusCode::CONFLICT, _)) => return Ok(()),
                _ => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
        Err("extension approval: gave up".into())
    }

    async fn cancel(&self, order_id: &str, buyer: &str) -> Result<Value, String> {
        self.command(Step {
            name: "cancel",
            method: Method::PUT,
            path: format!("/cancel/{order_id}"),
            user: buyer,
            body: Some(json!({})),
            order_id,
            done_when: "CANCELLED",
        })
        .await
    }

    /// The buyer's review, published twice under one message id (a
    /// redelivery as the review service's broker would make).
    async fn review(&self, order_id: &str) -> Result<(), String> {
        let body = json!({
            "type": "buyer-review", "orderId": order_id, "rating": 5,
            "review": "Great work", "createdAt": "2026-11-27T10:00:00.000Z",
            "gigId": "gig-1", "reviewerId": "r-1"
        });
        let message_id = format!("review-{order_id}");
        for _ in 0..2 {
            self.reviews
                .publish(&message_id, &body, self.step_deadline)
                .await?;
        }
        Ok(())
    }
}

/// Runs `orders` journeys, started at an even pace over `spread` so that
/// the fault, injected meanwhile, hits orders at every step; ids carry
/// `tag`'s initials.
pub async fn run_all(
    client: Arc<Client>,
    tag: &str,
    orders: usize,
    spread: Duration,
) -> Vec<Planned> {
    let initials: String = tag.split('-').filter_map(|w| w.chars().next()).collect();
    let interval = spread / orders.max(1) as u32;
    let tasks: Vec<_> = (0..orders)
        .map(|i| {
            let client = client.clone();
            // Short: order ids end up in invoice ids, which are bounded.
            let unique = uuid::Uuid::new_v4().simple().to_string();
            let order_id = format!("{initials}-{i:04}-{}", &unique[..12]);
            tokio::spawn(async move {
                tokio::time::sleep(interval * i as u32).await;
                let journey = Journey::for_index(i);
                let failed_step = client.run(&order_id, journey).await.err();
                Planned {
                    order_id,
                    journey,
                    failed_step,
                }
            })
        })
        .collect();
    let mut planned = Vec::with_capacity(orders);
    for task in tasks {
        if let Ok(p) = task.await {
            planned.push(p);
        }
    }
    planned
}

fn short(order_id: &str) -> String {
    order_id.chars().rev().take(8).collect()
}

/// A create body as the gateway sends it.
fn order_body(order_id: &str, buyer: &str, seller: &str, price: f64) -> Value {
    json!({
        "offer": {
            "gigTitle": "I will build your API", "price": price, "description": "A REST API",
            "deliveryInDays": 5, "oldDeliveryDate": "2026-12-10T00:00:00.000Z",
            "accepted": true, "cancelled": false
        },
        "gigId": "gig-1", "sellerId": format!("id-{seller}"), "sellerUsername": seller,
        "sellerEmail": format!("{seller}@example.com"), "sellerImage": "https://img/s.png",
        "gigCoverImage": "https://img/c.png", "gigMainTitle": "Main", "gigBasicTitle": "Basic",
        "gigBasicDescription": "Basic description", "buyerId": format!("id-{buyer}"),
        "buyerUsername": buyer, "buyerEmail": format!("{buyer}@example.com"),
        "buyerImage": "https://img/b.png", "orderId": order_id,
        "invoiceId": format!("inv-{order_id}"), "quantity": 1, "price": price,
        "requirements": "Please use Rust"
    })
}
