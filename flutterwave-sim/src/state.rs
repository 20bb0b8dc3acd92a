//! In-memory ledger of the simulator: transactions, refunds, payment links, call counts and webhook log.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::faults::Faults;
use crate::webhook::SignMode;

/// Flutterwave merchant account id reported in every payload; one merchant is enough locally.
pub(crate) const ACCOUNT_ID: u64 = 17_321;
/// Wallet refunds are drawn from (`meta.source = availablebalance`).
pub(crate) const WALLET_ID: u64 = 74_639;
/// Flutterwave's card fee, used when a test does not pin `app_fee`.
const DEFAULT_FEE_RATE: f64 = 0.014;

const FIRST_TX_ID: u64 = 1_000_001;
const FIRST_REFUND_ID: u64 = 5_000_001;
const FIRST_CUSTOMER_ID: u64 = 200_001;

/// What a test asks for; the simulator fills in ids, references and timestamps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NewTransaction {
    /// Merchant reference. Empty means "generate one" (`sim-<uuid>`).
    pub tx_ref: String,
    pub amount: f64,
    pub currency: String,
    /// `"successful"`, `"failed"` or `"pending"` (free text so chaos runs can try odd values).
    pub status: String,
    pub customer_email: String,
    pub customer_name: String,
    pub payment_type: String,
    /// `None` means 1.4 % of `amount`, rounded to kobo/cents.
    pub app_fee: Option<f64>,
}

impl Default for NewTransaction {
    fn default() -> Self {
        Self {
            tx_ref: String::new(),
            amount: 1000.0,
            currency: "NGN".into(),
            status: "successful".into(),
            customer_email: "customer@example.com".into(),
            customer_name: "Test Customer".into(),
            payment_type: "card".into(),
            app_fee: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub id: u64,
    pub tx_ref: String,
    pub flw_ref: String,
    pub amount: f64,
    pub currency: String,
    pub charged_amount: f64,
    pub app_fee: f64,
    pub status: String,
    pub payment_type: String,
    pub narration: String,
    pub account_id: u64,
    pub customer_id: u64,
    pub customer_email: String,
    pub customer_name: String,
    /// Sum of applied refunds; bounds further partial refunds.
    pub amount_refunded: f64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refund {
    pub id: u64,
    pub tx_id: u64,
    pub account_id: u64,
    pub flw_ref: String,
    pub wallet_id: u64,
    pub amount_refunded: f64,
    pub status: String,
    pub destination: String,
    pub comments: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Look-ups left before a `pending` refund settles.
    pub pending_lookups: u32,
    /// What a pending refund settles as: `completed`, or `failed`.
    pub settles_as: String,
}

impl Refund {
    /// A look-up of this refund: a pending one settles after its last.
    /// Whether it failed just now.
    fn looked_up(&mut self) -> bool {
        if self.status == "pending" {
            self.pending_lookups = self.pending_lookups.saturating_sub(1);
            if self.pending_lookups == 0 {
                self.status = self.settles_as.clone();
                return self.status == "failed";
            }
        }
        false
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentLink {
    pub token: String,
    pub link: String,
    pub tx_ref: String,
    pub amount: f64,
    pub currency: String,
    pub redirect_url: String,
    pub customer_email: String,
    pub customer_name: Option<String>,
    pub title: Option<String>,
    /// Set once the hosted page was paid, so a browser refresh redirects instead of charging again.
    pub paid_tx_id: Option<u64>,
    pub created_at: DateTime<Utc>,
    /// `session_duration` as asked for, in minutes; `None` when the request named none.
    pub session_duration: Option<u32>,
    /// When the page stops taking payments; `None`: it never does.
    pub expires_at: Option<DateTime<Utc>>,
}

impl PaymentLink {
    /// The page no longer takes payments (a paid page still redirects).
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// Requests that reached each operation, including those a fault or the auth check answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallCounts {
    pub verify: u64,
    pub verify_by_reference: u64,
    /// `GET /v3/transactions`.
    pub transactions: u64,
    pub refund: u64,
    /// `GET /v3/refunds` and `GET /v3/refunds/{id}`.
    pub refund_lookup: u64,
    pub payments: u64,
    /// Customer visits to the hosted checkout page (not part of the merchant API).
    pub hosted_pay: u64,
    /// Sum of all of the above.
    pub total: u64,
    /// Most merchant API requests (hosted page visits aside) in progress at once.
    pub peak_in_flight: u64,
}

/// One webhook POST attempt, kept so tests can see what was sent even when the receiver failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    pub tx_id: u64,
    pub url: String,
    pub sign: SignMode,
    /// HTTP status of the receiver, `None` when the request itself failed.
    pub status: Option<u16>,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookTarget {
    pub url: String,
    pub hash: String,
}

#[derive(Debug)]
pub(crate) struct State {
    next_tx_id: u64,
    next_refund_id: u64,
    next_customer_id: u64,
    customers: HashMap<String, u64>,
    /// Keyed by id, which also orders by creation.
    pub(crate) transactions: BTreeMap<u64, Transaction>,
    pub(crate) refunds: Vec<Refund>,
    pub(crate) links: Vec<PaymentLink>,
    pub(crate) faults: Faults,
    pub(crate) calls: CallCounts,
    /// Merchant API requests in progress now, for `CallCounts::peak_in_flight`.
    pub(crate) in_flight: u64,
    pub(crate) webhook_target: Option<WebhookTarget>,
    pub(crate) deliveries: Vec<WebhookDelivery>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            next_tx_id: FIRST_TX_ID,
            next_refund_id: FIRST_REFUND_ID,
            next_customer_id: FIRST_CUSTOMER_ID,
            customers: HashMap::new(),
            transactions: BTreeMap::new(),
            refunds: Vec::new(),
            links: Vec::new(),
            faults: Faults::default(),
            calls: CallCounts::default(),
            in_flight: 0,
            webhook_target: None,
            deliveries: Vec::new(),
        }
    }
}

pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Float money compares with a tolerance below one kobo/cent.
const EPSILON: f64 = 1e-6;

impl State {
    pub(crate) fn add_transaction(&mut self, new: NewTransaction) -> Transaction {
        let id = self.next_tx_id;
        self.next_tx_id += 1;
        let customer_id = match self.customers.get(&new.customer_email) {
            Some(id) => *id,
            None => {
                let cid = self.next_customer_id;
                self.next_customer_id += 1;
                self.customers.insert(new.customer_email.clone(), cid);
                cid
            }
        };
        let tx_ref = if new.tx_ref.is_empty() {
            format!("sim-{}", uuid::Uuid::new_v4().simple())
        } else {
            new.tx_ref
        };
        let tx = Transaction {
            id,
            tx_ref,
            flw_ref: format!("FLW-MOCK-{}", uuid::Uuid::new_v4().simple()),
            amount: new.amount,
            currency: new.currency,
            charged_amount: new.amount,
            app_fee: new
                .app_fee
                .unwrap_or_else(|| round2(new.amount * DEFAULT_FEE_RATE)),
            status: new.status,
            narration: format!("Simulated {} payment", new.payment_type),
            payment_type: new.payment_type,
            account_id: ACCOUNT_ID,
            customer_id,
            customer_email: new.customer_email,
            customer_name: new.customer_name,
            amount_refunded: 0.0,
            created_at: Utc::now(),
        };
        self.transactions.insert(id, tx.clone());
        tx
    }

    /// Flutterwave answers a reference lookup with the payment that counts: the latest
    /// successful one, falling back to the latest attempt.
    /// The refunds `wanted` picks, each counted as looked up; a pending one
    /// that fails gives its amount back to the transaction's balance.
    pub(crate) fn look_up_refunds(&mut self, wanted: impl Fn(&Refund) -> bool) -> Vec<Refund> {
        let mut found = Vec::new();
        for refund in self.refunds.iter_mut().filter(|r| wanted(r)) {
            if refund.looked_up()
                && let Some(tx) = self.transactions.get_mut(&refund.tx_id)
            {
                tx.amount_refunded = round2(tx.amount_refunded - refund.amount_refunded);
            }
            found.push(refund.clone());
        }
        found
    }

    pub(crate) fn by_reference(&self, tx_ref: &str) -> Option<&Transaction> {
        let mut matching = self
            .transactions
            .values()
            .rev()
            .filter(|t| t.tx_ref == tx_ref);
        let latest = matching.clone().next()?;
        Some(
            matching
                .find(|t| t.status == "successful")
                .unwrap_or(latest),
        )
    }

    /// Applies a refund; `Ok((refund, drop_response))` where `drop_response` tells the handler
    /// to swallow its answer (the `refund_drop_response_next` fault).
    pub(crate) fn apply_refund(
        &mut self,
        tx_id: u64,
        amount: Option<f64>,
        comments: Option<String>,
    ) -> Result<(Refund, bool), String> {
        let tx = self
            .transactions
            .get_mut(&tx_id)
            .ok_or_else(|| crate::wire::NO_TRANSACTION.to_string())?;
        if tx.status != "successful" {
            return Err(format!(
                "Cannot refund a transaction with status {}",
                tx.status
            ));
        }
        let remaining = round2(tx.amount - tx.amount_refunded);
        if remaining <= EPSILON {
            return Err("Transaction has already been fully refunded".into());
        }
        let amount = amount.unwrap_or(remaining);
        if !amount.is_finite() || amount <= 0.0 {
            return Err("Refund amount must be greater than 0".into());
        }
        if amount > remaining + EPSILON {
            return Err(format!(
                "Refund amount {amount} exceeds the refundable balance of {remaining}"
            ));
        }
        tx.amount_refunded = round2(tx.amount_refunded + amount);

        let id = self.next_refund_id;
        self.next_refund_id += 1;
        let pending_lookups = self.faults.refund_pending_lookups;
        let now = Utc::now();
        let refund = Refund {
            id,
            tx_id,
            account_id: ACCOUNT_ID,
            flw_ref: format!("URF_{}_{id}", now.timestamp_millis()),
            wallet_id: WALLET_ID,
            amount_refunded: amount,
            status: if pending_lookups > 0 {
                "pending"
            } else {
                "completed"
            }
            .into(),
            destination: "payment_source".into(),
            comments,
            created_at: now,
            pending_lookups,
            settles_as: if self.faults.refund_pending_then_fails {
                "failed"
            } else {
                "completed"
            }
            .into(),
        };
        self.refunds.push(refund.clone());

        let drop_response = self.faults.refund_drop_response_next > 0;
        if drop_response {
            self.faults.refund_drop_response_next -= 1;
        }
        Ok((refund, drop_response))
    }
}
