//! Reconciliation: webhooks get lost. Orders still awaiting payment after a
//! checkout are checked with `verify_by_reference` on a backoff schedule; a
//! successful, matching transaction drives the same transition as PUT
//! verify (idempotent, so whichever path comes first wins and the others
//! change nothing). Orders paid recently are checked too, with the list of
//! every payment made with their reference: a checkout page paid twice
//! leaves a payment the order cannot take, which is refunded in full. An
//! order is watched for as long as any checkout page can take payments
//! (Flutterwave's longest `session_duration`, whatever this instance sends)
//! plus the longest wait between checks: no payment can start after that.
//! One instance checks an order at a time: the schedule in `payment_checks`
//! is advanced atomically by whoever takes the check.

use super::flutterwave::{Flutterwave, ProviderError};
use super::settle::{Settled, settle};
use crate::orders::commands::Actor;
use crate::orders::model::{Order, OrderStatus};
use crate::orders::{OrderError, Orders};
use crate::telemetry::metrics::Metrics;
use bson::{Document, doc};
use futures::{StreamExt, TryStreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};
use outbox::lease::IN_CHUNK;
use outbox::transaction::is_duplicate_key;
use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The sweep's schedule.
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    /// How often the sweep looks for due orders.
    pub interval: Duration,
    /// The first check comes this long after the checkout link was made.
    pub first_delay: Duration,
    /// Each later check waits `growth` times longer than the one before.
    pub growth: f64,
    /// Longest wait between two checks.
    pub max_delay: Duration,
    /// Most orders checked by one sweep; the rest wait for the next.
    pub batch: usize,
    /// Checks one instance runs at once. At least 1.
    pub concurrency: usize,
    /// Checks one instance starts per second, at most: the sweep shares
    /// Flutterwave's rate limit with buyers' checkouts and verifies, and
    /// must leave them most of it. At least 1.
    pub rate_per_second: u32,
}

/// Flutterwave's longest checkout session (`session_duration`, minutes).
pub const LONGEST_SESSION_MINUTES: u32 = 1_440;
pub const LONGEST_SESSION: Duration = Duration::from_secs(LONGEST_SESSION_MINUTES as u64 * 60);

impl ReconcileSettings {
    /// How long after its checkout an order is checked: until any page
    /// stops taking payments (the longest session, not the one configured
    /// now: links made under a longer setting are still out there), then one
    /// full wait between checks so a payment in the page's last minute still
    /// gets a check after it, and a second wait of slack for a sweep running
    /// late.
    pub fn watch(&self) -> Duration {
        LONGEST_SESSION
            .saturating_add(self.max_delay.saturating_mul(2))
            .saturating_add(self.interval)
    }
}

/// An order listed by a sweep, in the phase it was listed for.
struct Due {
    order_id: String,
    /// Listed as paid: checked for further payments, not for its first.
    paid: bool,
}

impl Due {
    fn new(order_id: String, paid: bool) -> Self {
        Self { order_id, paid }
    }

    /// Its schedule's id in `payment_checks`. Each phase has its own, so a
    /// paid order's checks are counted from its payment, not from the
    /// checks it had while unpaid.
    fn schedule_id(&self) -> String {
        if self.paid {
            format!("paid:{}", self.order_id)
        } else {
            self.order_id.clone()
        }
    }
}

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checked {
    Paid,
    Stray,
    Pending,
    Failed,
}

impl Checked {
    /// The `outcome` label of `reconcile_checks_total`.
    fn label(self) -> &'static str {
        match self {
            Checked::Paid => "paid",
            Checked::Stray => "stray",
            Checked::Pending => "pending",
            Checked::Failed => "failed",
        }
    }
}

/// What one sweep did, for tests and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    pub checked: u64,
    pub paid: u64,
    /// Further payments of paid orders found, each now being refunded.
    pub strays: u64,
}

#[derive(Clone)]
pub struct Reconciler {
    flutterwave: Flutterwave,
    orders: Orders,
    checks: Collection<Document>,
    settings: ReconcileSettings,
    /// Paces the checks (`rate_per_second`).
    pace: Arc<DefaultDirectRateLimiter>,
    metrics: Option<Metrics>,
}

impl Reconciler {
    pub fn new(
        db: &Database,
        flutterwave: Flutterwave,
        orders: Orders,
        settings: ReconcileSettings,
    ) -> Self {
        let rate = NonZeroU32::new(settings.rate_per_second).unwrap_or(NonZeroU32::MIN);
        Self {
            flutterwave,
            orders,
            checks: db.collection("payment_checks"),
            pace: Arc::new(RateLimiter::direct(Quota::per_second(rate))),
            settings,
            metrics: None,
        }
    }

    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub async fn ensure_schema(&self, db: &Database) -> Result<(), OrderError> {
        outbox::store::create_collection(db, "payment_checks").await?;
        Ok(())
    }

    /// Runs sweeps until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "payment reconciliation sweep failed");
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(self.settings.interval) => {}
            }
        }
    }

    /// One pass over the orders due for a check.
    ///
    /// Every unpaid checkout still watched is a candidate, and so is every
    /// paid order whose checkout is (its page may have been paid again);
    /// those whose schedule says "not yet" are left out before the batch is
    /// cut, so a crowd of recently checked orders never keeps a due one from
    /// its turn. Unpaid ones come first: money taken and not yet recorded
    /// weighs more than money taken twice. Up to `concurrency` checks run at
    /// once, paced to `rate_per_second`, each also through the Flutterwave
    /// client's own rate limit and breaker.
    pub async fn sweep(&self) -> Result<SweepOutcome, OrderError> {
        let now = chrono::Utc::now();
        // Ages past what chrono holds reach back to its first day.
        let at = |age: Duration| {
            chrono::Duration::from_std(age)
                .ok()
                .and_then(|age| now.checked_sub_signed(age))
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        };
        // Checkout and payment times are stored as RFC 3339 text in UTC,
        // which sorts as time does to within a second (the fraction's
        // digits vary).
        let newest = at(self.settings.first_delay);
        let oldest = at(self.settings.watch());
        let mut candidates: Vec<Due> = self
            .candidates(
                doc! {
                    // Cancelled ones too: their checkout page stays payable,
                    // and a payment made there is refunded in full.
                    "status": { "$in": ["AWAITING_PAYMENT", "CANCELLED"] },
                    "flutterwave.transactionId": null,
                    "flutterwave.checkoutAt": { "$gte": &oldest, "$lte": &newest },
                },
                "flutterwave.checkoutAt",
            )
            .await?
            .into_iter()
            .map(|order_id| Due::new(order_id, false))
            .collect();
        candidates.extend(
            self.candidates(
                doc! {
                    "flutterwave.transactionId": { "$ne": null },
                    // Paid no earlier than its checkout was made, so this
                    // bounds the scan; the checkout's age decides, where
                    // the order has one.
                    "flutterwave.paidAt": { "$gte": &oldest, "$lte": &newest },
                    "$or": [
                        { "flutterwave.checkoutAt": { "$gte": &oldest } },
                        { "flutterwave.checkoutAt": null },
                    ],
                },
                "flutterwave.paidAt",
            )
            .await?
            .into_iter()
            .map(|order_id| Due::new(order_id, true)),
        );
        let schedules: Vec<String> = candidates.iter().map(Due::schedule_id).collect();
        let waiting = self.not_yet_due(&schedules).await?;
        let listed = candidates
            .into_iter()
            .zip(schedules)
            .filter(|(_, schedule)| !waiting.contains(schedule))
            .map(|(due, _)| due)
            .take(self.settings.batch);
        // One check's failure is its own: the others in flight go on.
        let outcome = futures::stream::iter(listed)
            .map(|due| async move { self.check_due(&due).await })
            .buffer_unordered(self.settings.concurrency.max(1))
            .fold(SweepOutcome::default(), |mut outcome, checked| async move {
                if let Some(checked) = checked {
                    outcome.checked += 1;
                    outcome.paid += u64::from(checked == Checked::Paid);
                    outcome.strays += u64::from(checked == Checked::Stray);
                }
                outcome
            })
            .await;
        Ok(outcome)
    }

    /// Checks one due order unless another instance took the check or the
    /// order changed phase since it was listed; a failure is logged and
    /// counted, never passed on.
    async fn check_due(&self, due: &Due) -> Option<Checked> {
        let checked = match self.try_check(due).await {
            Ok(None) => return None,
            Ok(Some(checked)) => checked,
            Err(e) => {
                tracing::warn!(order_id = %due.order_id, error = %e, "reconciliation check failed");
                Checked::Failed
            }
        };
        if let Some(metrics) = &self.metrics {
            metrics
                .families()
                .reconcile_checks
                .with_label_values(&[checked.label()])
                .inc();
        }
        Some(checked)
    }

    async fn try_check(&self, due: &Due) -> Result<Option<Checked>, OrderError> {
        // Paced before the order is read, and read just before its check:
        // the checks before it take time.
        self.pace.until_ready().await;
        let Some(order) = self.orders.repository().by_order_id(&due.order_id).await? else {
            return Ok(None);
        };
        // Paid since it was listed unpaid: the paid phase's turn comes.
        let paid = order.flutterwave.transaction_id.is_some();
        if paid != due.paid
            || !paid
                && !matches!(
                    order.status,
                    OrderStatus::AwaitingPayment | OrderStatus::Cancelled
                )
        {
            return Ok(None);
        }
        if !self.take_check(&due.schedule_id()).await? {
            return Ok(None);
        }
        Ok(Some(if paid {
            if self.check_paid(&order).await? > 0 {
                Checked::Stray
            } else {
                Checked::Pending
            }
        } else if self.check(&order).await? {
            Checked::Paid
        } else {
            Checked::Pending
        }))
    }

    /// The ids of the orders matching `filter`, newest `by` first (recent
    /// ones are the likeliest to be paid).
    async fn candidates(&self, filter: Document, by: &str) -> Result<Vec<String>, OrderError> {
        Ok(self
            .orders
            .repository()
            .orders
            .clone_with_type::<Document>()
            .find(filter)
            .projection(doc! { "orderId": 1 })
            .sort(doc! { by: -1 })
            .await?
            .try_collect::<Vec<Document>>()
            .await?
            .iter()
            .filter_map(|d| d.get_str("orderId").ok().map(String::from))
            .collect())
    }

    /// Of the schedules `ids`, those whose next check is still to come.
    async fn not_yet_due(&self, ids: &[String]) -> Result<HashSet<String>, OrderError> {
        let now = bson::DateTime::now();
        let mut waiting = HashSet::new();
        for chunk in ids.chunks(IN_CHUNK) {
            let schedules: Vec<Document> = self
                .checks
                .find(doc! { "_id": { "$in": chunk }, "nextCheckAt": { "$gt": now } })
                .projection(doc! { "_id": 1 })
                .await?
                .try_collect()
                .await?;
            waiting.extend(
                schedules
                    .iter()
                    .filter_map(|d| d.get_str("_id").ok().map(String::from)),
            );
        }
        Ok(waiting)
    }

    /// Advances the order's schedule if a check is due; true when this
    /// instance took it. The first sighting creates the schedule.
    async fn take_check(&self, schedule_id: &str) -> Result<bool, OrderError> {
        let now = bson::DateTime::now();
        let taken = self
            .checks
            .find_one_and_update(
                // A schedule left without `nextCheckAt` (its creator died
                // between the two writes) counts as due, as `not_yet_due` has it.
                doc! {
                    "_id": schedule_id,
                    "$or": [
                        { "nextCheckAt": { "$lte": now } },
                        { "nextCheckAt": { "$exists": false } },
                    ],
                },
                doc! { "$inc": { "attempts": 1 }, "$set": { "lastCheckAt": now } },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await;
        let schedule = match taken {
            Ok(Some(schedule)) => schedule,
            Ok(None) => return Ok(false),
            Err(e) if is_duplicate_key(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let attempts = schedule
            .get_i32("attempts")
            .map(i64::from)
            .or_else(|_| schedule.get_i64("attempts"))
            .unwrap_or(1);
        let next = bson::DateTime::from_millis(
            now.timestamp_millis() + next_delay(&self.settings, attempts).as_millis() as i64,
        );
        self.checks
            .update_one(
                doc! { "_id": schedule_id },
                doc! { "$set": { "nextCheckAt": next } },
            )
            .await?;
        Ok(true)
    }

    /// Asks Flutterwave; true when the order got paid by this check.
    async fn check(&self, order: &Order) -> Result<bool, OrderError> {
        let transaction = match self
            .flutterwave
            .verify_by_reference(&order.flutterwave.tx_ref)
            .await
        {
            Ok(Some(transaction)) => transaction,
            Ok(None) => return Ok(false),
            Err(ProviderError::Unavailable { .. }) => return Ok(false),
            Err(e) => return Err(OrderError::Provider(e.to_string())),
        };
        if transaction.status != "successful" {
            return Ok(false);
        }
        let actor = Actor {
            username: order.buyer_username.clone(),
            correlation_id: Some(format!("reconcile-{}", order.order_id)),
            traceparent: String::new(),
        };
        // Cancelled since it was read: the payment is refunded, not kept.
        match settle(&self.orders, &actor, order, &transaction).await {
            Ok(Settled::Paid(_)) => Ok(true),
            Ok(Settled::Refunding(_)) => Ok(false),
            Err(OrderError::PaymentRejected(_) | OrderError::Refused(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Asks Flutterwave for every payment made with a paid order's
    /// reference; each successful one the order has not taken or noted is
    /// settled as a stray payment (noted and refunded in full, once).
    /// How many were found.
    async fn check_paid(&self, order: &Order) -> Result<u64, OrderError> {
        let transactions = match self
            .flutterwave
            .transactions_by_reference(&order.flutterwave.tx_ref)
            .await
        {
            Ok(transactions) => transactions,
            Err(ProviderError::Unavailable { .. }) => return Ok(0),
            Err(e) => return Err(OrderError::Provider(e.to_string())),
        };
        let actor = Actor {
            username: order.buyer_username.clone(),
            correlation_id: Some(format!("reconcile-{}", order.order_id)),
            traceparent: String::new(),
        };
        let mut found = 0;
        for transaction in transactions.iter().filter(|t| t.status == "successful") {
            let id = transaction.id.to_string();
            let known = |o: &Order| {
                o.paid_with(&id) || o.stray_payments.iter().any(|s| s.transaction_id == id)
            };
            if known(order) {
                continue;
            }
            // Fresh for each: settling the one before changed the order.
            let Some(current) = self
                .orders
                .repository()
                .by_order_id(&order.order_id)
                .await?
            else {
                return Ok(found);
            };
            if known(&current) {
                continue;
            }
            match settle(&self.orders, &actor, &current, transaction).await {
                Ok(Settled::Refunding(_)) => found += 1,
                Ok(Settled::Paid(_)) => {}
                Err(OrderError::PaymentRejected(_) | OrderError::Refused(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }
}

/// Wait after the `attempts`-th check: the first delay grown `growth`-fold
/// per check, capped.
fn next_delay(settings: &ReconcileSettings, attempts: i64) -> Duration {
    let base = settings
        .first_delay
        .max(Duration::from_millis(100))
        .as_secs_f64();
    let factor = settings.growth.max(1.0).powi(attempts.clamp(0, 30) as i32);
    Duration::from_secs_f64((base * factor).min(settings.max_delay.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_grow_sparser_up_to_the_cap() {
        let settings = ReconcileSettings {
            interval: Duration::from_secs(30),
            first_delay: Duration::from_secs(300),
            growth: 2.0,
            max_delay: Duration::from_secs(3600),
            batch: 500,
            concurrency: 4,
            rate_per_second: 5,
        };
        let delays: Vec<u64> = (1..=5)
            .map(|n| next_delay(&settings, n).as_secs())
            .collect();
        assert_eq!(delays, vec![600, 1200, 2400, 3600, 3600]);
        // The longest page, then two hour-long waits and one sweep interval.
        assert_eq!(settings.watch().as_secs(), 86_400 + 7_200 + 30);
        let huge = ReconcileSettings {
            max_delay: Duration::MAX,
            ..settings
        };
        assert_eq!(huge.watch(), Duration::MAX, "saturates, never wraps");
    }
}
