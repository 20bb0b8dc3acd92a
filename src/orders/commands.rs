//! Order commands. Each is ONE MongoDB transaction that reads the order,
//! decides with the pure state machine, writes the order (bumping
//! `version`), its notifications and its outbox records (including one
//! Socket.IO emit per notification), and commits.
//! Nothing leaves the service before the commit: the relay publishes after.

use super::error::OrderError;
use super::events::{Emitter, EventContext, Exchanges};
use super::fees;
use super::model::{
    CheckoutClaim, DeliveredWork, ExtensionRequest, Notification, Offer, Order, OrderEvents,
    OrderStatus, Party, Payment, Refund, RefundStatus, StrayPayment,
};
use super::repository::{Page, Repository};
use super::state_machine::{self, Action};
use super::validation::{CreateOrder, DeliverOrder, RequestExtension};
use crate::realtime;
use bson::doc;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use mongodb::{Client, ClientSession, Database};
use outbox::relay::Waker;
use outbox::transaction::{self, RetryPolicy};
use outbox::{NewRecord, Outbox};
use rand::Rng;
use std::sync::Arc;

/// Who asks, and the request's trace identifiers carried into every event.
#[derive(Debug, Clone)]
pub struct Actor {
    pub username: String,
    pub correlation_id: Option<String>,
    pub traceparent: String,
}

/// A payment the provider confirmed for an order (from the verify route,
/// a webhook or the reconciliation sweep).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfirmedPayment {
    pub transaction_id: String,
    pub gateway_status: String,
    pub payment_method: String,
    pub fee: f64,
    pub amount: f64,
}

/// An `Idempotency-Key` with the canonical hash of the request it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_hash: String,
}

/// The response to a create, fresh or replayed.
#[derive(Debug, Clone)]
pub struct Created {
    pub status: u16,
    pub body: serde_json::Value,
    pub replayed: bool,
}

/// What a decision function produced: the new order and what it causes.
pub(crate) struct Change {
    pub(crate) order: Order,
    pub(crate) notifications: Vec<Notification>,
    pub(crate) records: Vec<NewRecord>,
}

/// Outcome of a decision: change the order, or leave it as it is (an
/// idempotent repeat).
pub(crate) enum Decision {
    Change(Box<Change>),
    Unchanged,
}

impl From<Change> for Decision {
    fn from(change: Change) -> Self {
        Decision::Change(Box::new(change))
    }
}

impl Decision {
    /// A change to the order alone (payment bookkeeping): nobody is
    /// notified and no event goes out.
    fn bookkeeping(order: Order) -> Self {
        Decision::from(Change {
            order,
            notifications: vec![],
            records: vec![],
        })
    }
}

#[derive(Clone)]
pub struct Orders {
    client: Client,
    repo: Repository,
    outbox: Outbox,
    policy: RetryPolicy,
    exchanges: Exchanges,
    client_url: String,
    currency: String,
    waker: Option<Waker>,
}

pub const CREATED_MESSAGE: &str = "Order created successfully.";

impl Orders {
    pub fn new(
        client: Client,
        db: &Database,
        outbox: Outbox,
        exchanges: Exchanges,
        client_url: String,
        currency: String,
    ) -> Self {
        Self {
            client,
            repo: Repository::new(db),
            outbox,
            policy: RetryPolicy::default(),
            exchanges,
            client_url,
            currency,
            waker: None,
        }
    }

    /// Hand each commit's aggregates to this process's relay, which then
    /// delivers them without waiting for a poll or scanning for them.
    pub fn with_waker(mut self, waker: Waker) -> Self {
        self.waker = Some(waker);
        self
    }

    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    fn context(&self, actor: &Actor) -> EventContext {
        EventContext {
            exchanges: self.exchanges.clone(),
            client_url: self.client_url.clone(),
            correlation_id: actor.correlation_id.clone(),
            traceparent: actor.traceparent.clone(),
        }
    }

    /// After a commit that staged records of `aggregates` (none for a
    /// create): hands them to this process's relay.
    pub(crate) fn committed(&self, aggregates: Vec<String>) {
        // Chaos: the process dies after its commit, before its relay publishes.
        fail::fail_point!("order-committed", |_| std::process::abort());
        if let Some(waker) = &self.waker
            && !aggregates.is_empty()
        {
            waker.hand(aggregates);
        }
    }

    pub async fn create(
        &self,
        actor: &Actor,
        request: CreateOrder,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Created, OrderError> {
        request.validate()?;
        if !request.buyer_username.eq_ignore_ascii_case(&actor.username) {
            return Err(OrderError::Forbidden(
                "only the buyer named in the order can create it",
            ));
        }
        let now = Utc::now();
        let order = new_order(request, &self.currency, now);
        let repo = self.repo.clone();
        let result = transaction::run(&self.client, &self.policy, move |session| {
            let repo = repo.clone();
            let order = order.clone();
            let idempotency = idempotency.clone();
            async move { create_in(session, &repo, order, idempotency).await }.boxed()
        })
        .await?;
        if !result.replayed {
            self.committed(Vec::new());
        }
        Ok(result)
    }

    /// The order if `actor` is one of its parties.
    pub async fn get(&self, actor: &Actor, order_id: &str) -> Result<Order, OrderError> {
        let order = self
            .repo
            .by_order_id(order_id)
            .await?
            .ok_or(OrderError::NotFound)?;
        party(&order, actor)?;
        Ok(order)
    }

    /// The checks of [`Orders::deliver`] on the order as it is now, writing
    /// nothing: the delivery's file is uploaded only if they pass.
    pub async fn check_deliver(&self, actor: &Actor, order_id: &str) -> Result<(), OrderError> {
        let order = self.get(actor, order_id).await?;
        deliverable(&order, &actor.username).map(|_| ())
    }

    pub async fn by_tx_ref(&self, tx_ref: &str) -> Result<Option<Order>, OrderError> {
        self.repo.by_tx_ref(tx_ref).await
    }

    pub async fn list_for_seller(
        &self,
        actor: &Actor,
        seller_id: &str,
        page: Page<'_>,
    ) -> Result<Vec<Order>, OrderError> {
        self.repo
            .list(
                "sellerId",
                seller_id,
                "sellerUsername",
                &actor.username,
                page,
            )
            .await
    }

    pub async fn list_for_buyer(
        &self,
        actor: &Actor,
        buyer_id: &str,
        page: Page<'_>,
    ) -> Result<Vec<Order>, OrderError> {
        self.repo
            .list("buyerId", buyer_id, "buyerUsername", &actor.username, page)
            .await
    }

    /// AWAITING_PAYMENT -> PROCESSING with a payment the provider confirmed.
    /// Repeating it with the same transaction changes nothing.
    pub async fn record_payment(
        &self,
        actor: &Actor,
        order_id: &str,
        payment: ConfirmedPayment,
    ) -> Result<Order, OrderError> {
        self.change(order_id, actor, move |order, ctx, now| {
            if order.status != OrderStatus::AwaitingPayment
                && order.paid_with(&payment.transaction_id)
            {
                return Ok(Decision::Unchanged);
            }
            state_machine::transition(order.status, Action::Pay, false)?;
            let mut next = order.clone();
            next.status = OrderStatus::Processing;
            next.events.order_started = Some(now.to_rfc3339());
            next.flutterwave = Payment {
                transaction_id: Some(payment.transaction_id.clone()),
                gateway_status: Some(payment.gateway_status.clone()),
                payment_method: Some(payment.payment_method.clone()),
                fee: Some(payment.fee),
                amount_paid: Some(payment.amount),
                paid_at: Some(now.to_rfc3339()),
                ..order.flutterwave.clone()
            };
            announce(
                next,
                ctx,
                now,
                Party::Buyer,
                "placed an order for your gig.",
                |emit| emit.paid(),
            )
        })
        .await
    }

    pub async fn cancel(&self, actor: &Actor, order_id: &str) -> Result<Order, OrderError> {
        let username = actor.username.clone();
        self.change(order_id, actor, move |order, ctx, now| {
            let from = party_of(order, &username)?;
            let transition = state_machine::transition(order.status, Action::Cancel, false)?;
            let mut next = order.clone();
            next.status = transition.to;
            next.cancelled = true;
            next.offer.cancelled = true;
            let refund = match transition.refund {
                state_machine::Refund::Due => {
                    let amount = fees::refund_amount(order.price);
                    next.refund = Some(Refund {
                        status: RefundStatus::Pending,
                        amount,
                        flutterwave_refund_id: None,
                        attempts: 0,
                    });
                    Some(amount)
                }
                state_machine::Refund::None => None,
            };
            announce(next, ctx, now, from, "cancelled the order.", |emit| {
                emit.cancelled(refund)
            })
        })
        .await
    }

    pub async fn request_extension(
        &self,
        actor: &Actor,
        order_id: &str,
        request: RequestExtension,
    ) -> Result<Order, OrderError> {
        request.validate()?;
        let username = actor.username.clone();
        self.change(order_id, actor, move |order, ctx, now| {
            only(
                order,
                &username,
                Party::Seller,
                "only the seller can request an extension",
            )?;
            state_machine::transition(
                order.status,
                Action::RequestExtension,
                order.request_extension.is_some(),
            )?;
            let extension = ExtensionRequest {
                original_date: request.original_date.clone(),
                new_date: request.new_date.clone(),
                days: request.days,
                reason: request.reason.clone(),
            };
            let mut next = order.clone();
            next.request_extension = Some(extension.clone());
            announce(
                next,
                ctx,
                now,
                Party::Seller,
                "requested for an order delivery date extension.",
                |emit| emit.extension_requested(&extension),
            )
        })
        .await
    }

    pub async fn decide_extension(
        &self,
        actor: &Actor,
        order_id: &str,
        approve: bool,
    ) -> Result<Order, OrderError> {
        let username = actor.username.clone();
        self.change(order_id, actor, move |order, ctx, now| {
            only(
                order,
                &username,
                Party::Buyer,
                "only the buyer can decide on an extension",
            )?;
            let action = if approve {
                Action::ApproveExtension
            } else {
                Action::RejectExtension
            };
            state_machine::transition(order.status, action, order.request_extension.is_some())?;
            let mut next = order.clone();
            let request = next.request_extension.take();
            if let (true, Some(request)) = (approve, request) {
                next.offer.new_delivery_date = Some(request.new_date.clone());
                next.offer.delivery_in_days += request.days;
                next.offer.reason = Some(request.reason.clone());
                next.events.delivery_date_update = Some(now.to_rfc3339());
            }
            let message = if approve {
                "approved your order delivery date extension request."
            } else {
                "rejected your order delivery date extension request."
            };
            announce(next, ctx, now, Party::Buyer, message, |emit| {
                emit.extension_decided(approve)
            })
        })
        .await
    }

    /// Delivers work; `request.file` must already be a stored URL.
    pub async fn deliver(
        &self,
        actor: &Actor,
        order_id: &str,
        request: DeliverOrder,
    ) -> Result<Order, OrderError> {
        request.validate()?;
        let username = actor.username.clone();
        self.change(order_id, actor, move |order, ctx, now| {
            let transition = deliverable(order, &username)?;
            let mut next = order.clone();
            next.status = transition.to;
            next.delivered = true;
            next.events.order_delivered = Some(now.to_rfc3339());
            next.delivered_work.push(DeliveredWork {
                message: request.message.clone(),
                file: request.file.clone(),
                file_type: request.file_type.clone(),
                file_size: request.file_size,
                file_name: request.file_name.clone(),
            });
            announce(
                next,
                ctx,
                now,
                Party::Seller,
                "delivered your order.",
                |emit| emit.delivered(&request.message),
            )
        })
        .await
    }

    pub async fn approve(&self, actor: &Actor, order_id: &str) -> Result<Order, OrderError> {
        let username = actor.username.clone();
        self.change(order_id, actor, move |order, ctx, now| {
            only(
                order,
                &username,
                Party::Buyer,
                "only the buyer can approve the delivery",
            )?;
            let transition = state_machine::transition(order.status, Action::Approve, false)?;
            let mut next = order.clone();
            next.status = transition.to;
            next.approved = true;
            next.approved_at = Some(now.to_rfc3339());
            announce(
                next,
                ctx,
                now,
                Party::Buyer,
                "approved your order delivery.",
                |emit| emit.completed(&now.to_rfc3339()),
            )
        })
        .await
    }

    /// Takes the right to ask Flutterwave for the order's payment link, unless
    /// a link exists or another caller holds an unexpired claim. The returned
    /// order tells which: a link, our claim, or someone else's.
    pub async fn claim_checkout(
        &self,
        actor: &Actor,
        order_id: &str,
        token: &str,
        hold: chrono::Duration,
    ) -> Result<Order, OrderError> {
        let (username, token) = (actor.username.clone(), token.to_string());
        self.change(order_id, actor, move |order, _, now| {
            only(
                order,
                &username,
                Party::Buyer,
                "only the buyer can pay for an order",
            )?;
            state_machine::transition(order.status, Action::Pay, false)?;
            let claimed = order
                .flutterwave
                .checkout_claim
                .as_ref()
                .is_some_and(|c| c.until > now);
            // An expired link is replaced: its page takes no more payments.
            if order.flutterwave.live_checkout_link(now).is_some() || claimed {
                return Ok(Decision::Unchanged);
            }
            let mut next = order.clone();
            next.flutterwave.checkout_claim = Some(CheckoutClaim {
                token: token.clone(),
                until: now + hold,
            });
            Ok(Decision::bookkeeping(next))
        })
        .await
    }

    /// Gives a claim back after the provider call failed, so a retry need
    /// not wait for it to expire.
    pub async fn release_checkout_claim(
        &self,
        actor: &Actor,
        order_id: &str,
        token: &str,
    ) -> Result<Order, OrderError> {
        let token = token.to_string();
        self.change(order_id, actor, move |order, _, _| {
            if order
                .flutterwave
                .checkout_claim
                .as_ref()
                .is_none_or(|c| c.token != token)
            {
                return Ok(Decision::Unchanged);
            }
            let mut next = order.clone();
            next.flutterwave.checkout_claim = None;
            Ok(Decision::bookkeeping(next))
        })
        .await
    }

    /// Stores the link obtained under our claim (first live link wins),
    /// whose page takes payments until `expires_at`.
    pub async fn store_checkout_link(
        &self,
        actor: &Actor,
        order_id: &str,
        link: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<Order, OrderError> {
        let link = link.to_string();
        self.change(order_id, actor, move |order, _, now| {
            if order.flutterwave.live_checkout_link(now).is_some() {
                return Ok(Decision::Unchanged);
            }
            let mut next = order.clone();
            next.flutterwave.checkout_link = Some(link.clone());
            next.flutterwave.checkout_at = Some(now);
            next.flutterwave.checkout_expires_at = Some(expires_at);
            next.flutterwave.checkout_claim = None;
            Ok(Decision::bookkeeping(next))
        })
        .await
    }

    /// Records the outcome of the refund command on the order: on its
    /// cancellation refund, or on the stray payment `stray` names.
    pub async fn record_refund(
        &self,
        order_id: &str,
        stray: Option<&str>,
        outcome: Refund,
    ) -> Result<Order, OrderError> {
        let stray = stray.map(String::from);
        let actor = Actor {
            username: String::new(),
            correlation_id: None,
            traceparent: String::new(),
        };
        self.change(order_id, &actor, move |order, _, _| {
            let mut next = order.clone();
            if stray.is_none() && next.refund.is_none() {
                // An order cancelled before refunds were recorded on it.
                next.refund = Some(Refund {
                    status: RefundStatus::Pending,
                    ..outcome.clone()
                });
            }
            let Some(refund) = next.refund_for_mut(stray.as_deref()) else {
                return Err(OrderError::NotFoundWhat("the order owes no such refund"));
            };
            if !refund.may_become(&outcome) {
                return Ok(Decision::Unchanged);
            }
            *refund = outcome.clone();
            Ok(Decision::bookkeeping(next))
        })
        .await
    }

    /// Takes note of a payment the order cannot take and stages its full
    /// refund, in one transaction. Once per transaction: a payment already
    /// noted, or the one the order was paid with, changes nothing.
    pub async fn record_stray_payment(
        &self,
        actor: &Actor,
        order_id: &str,
        stray: StrayPayment,
    ) -> Result<Order, OrderError> {
        self.change(order_id, actor, move |order, ctx, _| {
            if order.status == OrderStatus::AwaitingPayment {
                return Err(OrderError::Conflict(
                    "the order awaits payment: the payment pays it".into(),
                ));
            }
            let known = order.paid_with(&stray.transaction_id)
                || order
                    .stray_payments
                    .iter()
                    .any(|s| s.transaction_id == stray.transaction_id);
            if known {
                return Ok(Decision::Unchanged);
            }
            tracing::warn!(order_id = %order.order_id, transaction_id = %stray.transaction_id, status = ?order.status, "payment the order cannot take; refunding it in full");
            let mut next = order.clone();
            next.stray_payments.push(stray.clone());
            let mut emitter = Emitter::new(ctx, &next);
            emitter.stray_payment(&stray);
            let records = emitter.into_records();
            Ok(Decision::from(Change {
                order: next,
                notifications: vec![],
                records,
            }))
        })
        .await
    }

    /// The read-decide-write transaction shared by every command.
    pub(crate) async fn change<F>(
        &self,
        order_id: &str,
        actor: &Actor,
        decide: F,
    ) -> Result<Order, OrderError>
    where
        F: Fn(&Order, &EventContext, DateTime<Utc>) -> Result<Decision, OrderError>
            + Send
            + Sync
            + 'static,
    {
        self.change_guarded(order_id, actor, None, decide)
            .await?
            .ok_or(OrderError::NotFound)
    }

    /// Like [`Orders::change`], but first records `guard` in the inbox in the
    /// same transaction: a message seen before changes nothing and yields `None`.
    pub(crate) async fn change_guarded<F>(
        &self,
        order_id: &str,
        actor: &Actor,
        guard: Option<InboxGuard>,
        decide: F,
    ) -> Result<Option<Order>, OrderError>
    where
        F: Fn(&Order, &EventContext, DateTime<Utc>) -> Result<Decision, OrderError>
            + Send
            + Sync
            + 'static,
    {
        let ctx = Arc::new(self.context(actor));
        let decide = Arc::new(decide);
        let guard = Arc::new(guard);
        let repo = self.repo.clone();
        let outbox = self.outbox.clone();
        let order_id = order_id.to_string();
        let (order, staged) = transaction::run(&self.client, &self.policy, move |session| {
            let (repo, outbox, ctx, decide, guard, order_id) = (
                repo.clone(),
                outbox.clone(),
                ctx.clone(),
                decide.clone(),
                guard.clone(),
                order_id.clone(),
            );
            async move {
                if let Some(guard) = guard.as_ref()
                    && !guard
                        .inbox
                        .record(
                            session,
                            guard.consumer,
                            &guard.message_id,
                            guard.details.clone(),
                        )
                        .await?
                {
                    return Ok::<_, OrderError>((None, None));
                }
                let current = repo
                    .by_order_id_in(session, &order_id)
                    .await?
                    .ok_or(OrderError::NotFound)?;
                let now = Utc::now();
                match decide(&current, &ctx, now)? {
                    Decision::Unchanged => Ok((Some(current), None)),
                    Decision::Change(change) => {
                        let (order, staged) =
                            write(session, &repo, &outbox, &ctx, &current, *change, now).await?;
                        Ok((Some(order), Some(staged)))
                    }
                }
            }
            .boxed()
        })
        .await?;
        // Only a change was committed: `staged` holds its aggregates.
        if let Some(staged) = staged {
            self.committed(staged);
        }
        Ok(order)
    }
}

/// An inbox entry written in the same transaction as the change it guards.
#[derive(Clone)]
pub(crate) struct InboxGuard {
    pub(crate) inbox: outbox::Inbox,
    pub(crate) consumer: &'static str,
    pub(crate) message_id: String,
    pub(crate) details: bson::Document,
}

/// The usual change: the new order, the events `emit` stages for it, and a
/// notification from `from` to the other party.
fn announce(
    next: Order,
    ctx: &EventContext,
    now: DateTime<Utc>,
    from: Party,
    message: &str,
    emit: impl FnOnce(&mut Emitter<'_>),
) -> Result<Decision, OrderError> {
    let mut emitter = Emitter::new(ctx, &next);
    emit(&mut emitter);
    let records = emitter.into_records();
    let note = Notification::to_other_party(&next, from, message, now);
    Ok(Decision::from(Change {
        order: next,
        notifications: vec![note],
        records,
    }))
}

/// Writes a change on top of `current`; fails with a retryable conflict if
/// another writer got there first. Returns the order written and the
/// aggregates of the records staged with it.
async fn write(
    session: &mut ClientSession,
    repo: &Repository,
    outbox: &Outbox,
    ctx: &EventContext,
    current: &Order,
    change: Change,
    now: DateTime<Utc>,
) -> Result<(Order, Vec<String>), OrderError> {
    let mut order = change.order;
    order.version = current.version + 1;
    order.updated_at = now;
    let result = repo
        .orders
        .replace_one(
            doc! { "_id": &current.id, "version": current.version },
            &order,
        )
        .session(&mut *session)
        .await?;
    if result.matched_count == 0 {
        return Err(OrderError::VersionConflict);
    }
    if !change.notifications.is_empty() {
        repo.notifications
            .insert_many(&change.notifications)
            .session(&mut *session)
            .await?;
    }
    // Each notification also goes to its receiver's sockets; staged here,
    // in the same transaction, so no command can store one without it.
    let mut records = change.records;
    records.extend(
        change
            .notifications
            .iter()
            .map(|note| ctx.stamp(realtime::records::notification_record(Some(&order), note))),
    );
    let aggregates = NewRecord::aggregates(&records);
    outbox.stage(session, records).await?;
    Ok((order, aggregates))
}

async fn create_in(
    session: &mut ClientSession,
    repo: &Repository,
    order: Order,
    idempotency: Option<IdempotencyKey>,
) -> Result<Created, OrderError> {
    if let Some(key) = &idempotency
        && let Some(previous) = repo
            .idempotency
            .find_one(doc! { "_id": &key.key })
            .session(&mut *session)
            .await?
    {
        if previous.get_str("requestHash").unwrap_or_default() != key.request_hash {
            return Err(OrderError::IdempotencyMismatch);
        }
        let body = previous.get_str("body").unwrap_or("{}");
        return Ok(Created {
            status: previous.get_i32("status").unwrap_or(201) as u16,
            body: serde_json::from_str(body).map_err(|e| OrderError::Decode(e.to_string()))?,
            replayed: true,
        });
    }
    if repo
        .by_order_id_in(session, &order.order_id)
        .await?
        .is_some()
    {
        return Err(OrderError::Conflict(format!(
            "order {} already exists",
            order.order_id
        )));
    }
    match repo.orders.insert_one(&order).session(&mut *session).await {
        Ok(_) => {}
        Err(e) if transaction::is_duplicate_key(&e) => {
            return Err(OrderError::Conflict(format!(
                "order {} already exists",
                order.order_id
            )));
        }
        Err(e) => return Err(e.into()),
    }
    let body = serde_json::json!({ "message": CREATED_MESSAGE, "order": order });
    if let Some(key) = &idempotency {
        repo.idempotency
            .insert_one(doc! {
                "_id": &key.key,
                "requestHash": &key.request_hash,
                "status": 201,
                "body": body.to_string(),
                "createdAt": bson::DateTime::now(),
            })
            .session(&mut *session)
            .await?;
    }
    Ok(Created {
        status: 201,
        body,
        replayed: false,
    })
}

fn new_order(request: CreateOrder, default_currency: &str, now: DateTime<Utc>) -> Order {
    let tx_ref = tx_ref(&request.order_id, now);
    Order {
        id: uuid::Uuid::now_v7().to_string(),
        offer: Offer {
            reason: None,
            ..request.offer
        },
        gig_id: request.gig_id,
        seller_id: request.seller_id,
        seller_username: request.seller_username,
        seller_image: request.seller_image,
        seller_email: request.seller_email,
        gig_cover_image: request.gig_cover_image,
        gig_main_title: request.gig_main_title,
        gig_basic_title: request.gig_basic_title,
        gig_basic_description: request.gig_basic_description,
        buyer_id: request.buyer_id,
        buyer_username: request.buyer_username,
        buyer_email: request.buyer_email,
        buyer_image: request.buyer_image,
        status: OrderStatus::AwaitingPayment,
        order_id: request.order_id,
        invoice_id: request.invoice_id,
        quantity: request.quantity,
        price: request.price,
        service_fee: fees::service_fee(request.price),
        currency: request
            .currency
            .unwrap_or_else(|| default_currency.to_string()),
        requirements: request.requirements.unwrap_or_default(),
        approved: false,
        delivered: false,
        cancelled: false,
        approved_at: None,
        delivered_work: Vec::new(),
        request_extension: None,
        date_ordered: now.to_rfc3339(),
        events: OrderEvents {
            place_order: Some(now.to_rfc3339()),
            requirements: Some(now.to_rfc3339()),
            ..OrderEvents::default()
        },
        buyer_review: None,
        seller_review: None,
        flutterwave: Payment {
            tx_ref,
            ..Payment::default()
        },
        refund: None,
        stray_payments: Vec::new(),
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

/// `{orderId}-{ms}-{6 upper alnum}`: unique, and traceable to the order by eye.
pub fn tx_ref(order_id: &str, now: DateTime<Utc>) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    let suffix: String = (0..6)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{order_id}-{}-{suffix}", now.timestamp_millis())
}

fn party(order: &Order, actor: &Actor) -> Result<Party, OrderError> {
    party_of(order, &actor.username)
}

fn party_of(order: &Order, username: &str) -> Result<Party, OrderError> {
    order
        .party_of(username)
        .ok_or(OrderError::Forbidden("you are not a party to this order"))
}

fn only(
    order: &Order,
    username: &str,
    side: Party,
    refusal: &'static str,
) -> Result<(), OrderError> {
    if party_of(order, username)? == side {
        Ok(())
    } else {
        Err(OrderError::Forbidden(refusal))
    }
}

/// Whether `username` may deliver `order` now: its seller, in a state
/// that allows it.
fn deliverable(order: &Order, username: &str) -> Result<state_machine::Transition, OrderError> {
    only(
        order,
        username,
        Party::Seller,
        "only the seller can deliver",
    )?;
    Ok(state_machine::transition(
        order.status,
        Action::Deliver,
        false,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_ref_has_the_documented_shape() {
        let now = Utc::now();
        let reference = tx_ref("ord-1", now);
        let parts: Vec<&str> = reference.rsplitn(3, '-').collect();
        assert_eq!(parts[2], "ord-1");
        assert_eq!(parts[1], now.timestamp_millis().to_string());
        assert_eq!(parts[0].len(), 6);
        assert!(
            parts[0]
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        );
    }
}
