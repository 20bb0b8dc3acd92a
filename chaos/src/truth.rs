//! Reads the ground truth after a fault: the outbox, orders and
//! notifications straight from the database (never through the fault
//! proxy), what the stand-in peers received, what the simulator applied.

use crate::checker::{Committed, GroundTruth, OrderOutcome, StoredNotification};
use crate::listeners::Listeners;
use crate::peers::Received;
use crate::workload::Planned;
use bson::{Document, doc};
use flutterwave_sim::Simulator;
use futures::TryStreamExt;
use mongodb::Database;
use std::collections::HashMap;

/// Outbox records not yet published (pending or parked), of any destination.
pub async fn undelivered(db: &Database) -> Result<u64, mongodb::error::Error> {
    db.collection::<Document>("outbox")
        .count_documents(doc! { "status": { "$ne": "published" } })
        .await
}

/// How many of `orders` carry their buyer's review.
pub async fn reviews_stored(
    db: &Database,
    orders: &[String],
) -> Result<u64, mongodb::error::Error> {
    db.collection::<Document>("orders")
        .count_documents(
            doc! { "orderId": { "$in": orders }, "buyerReview": { "$type": "object" } },
        )
        .await
}

/// The AMQP records the database committed.
pub async fn committed(db: &Database) -> Result<Vec<Committed>, mongodb::error::Error> {
    let records: Vec<Document> = db
        .collection::<Document>("outbox")
        .find(doc! { "destination.kind": "amqp" })
        .await?
        .try_collect()
        .await?;
    Ok(records.iter().filter_map(committed_record).collect())
}

fn committed_record(record: &Document) -> Option<Committed> {
    let destination = record.get_document("destination").ok()?;
    let payload: serde_json::Value =
        serde_json::from_str(record.get_str("payload").ok()?).unwrap_or_default();
    let field = |name: &str| payload[name].as_str().unwrap_or("").to_string();
    Some(Committed {
        message_id: record.get_str("_id").ok()?.to_string(),
        aggregate_id: record.get_str("aggregateId").ok()?.to_string(),
        seq: record.get_i64("seq").ok()?,
        committed_at_ms: record
            .get_datetime("createdAt")
            .map(|t| t.timestamp_millis())
            .unwrap_or(0),
        meaning: format!(
            "{}/{}/{}/{}/{}",
            destination.get_str("exchange").unwrap_or(""),
            destination.get_str("routingKey").unwrap_or(""),
            field("type"),
            field("template"),
            field("receiverEmail"),
        ),
    })
}

/// Everything the checker needs, for the orders the workload planned.
pub async fn gather(
    db: &Database,
    received: &Received,
    listeners: &Listeners,
    planned: &[Planned],
    sim: &Simulator,
) -> Result<GroundTruth, mongodb::error::Error> {
    let orders: Vec<Document> = db
        .collection::<Document>("orders")
        .find(doc! {})
        .await?
        .try_collect()
        .await?;
    let by_id: HashMap<&str, &Document> = orders
        .iter()
        .filter_map(|o| Some((o.get_str("orderId").ok()?, o)))
        .collect();
    // Refunds name a transaction; transactions name the order's tx_ref.
    let tx_refs: HashMap<u64, String> = sim
        .transactions()
        .into_iter()
        .map(|t| (t.id, t.tx_ref))
        .collect();
    let mut refunds_by_ref: HashMap<String, usize> = HashMap::new();
    for refund in sim.refunds() {
        if let Some(tx_ref) = tx_refs.get(&refund.tx_id) {
            *refunds_by_ref.entry(tx_ref.clone()).or_default() += 1;
        }
    }
    let outcomes = planned
        .iter()
        .map(|p| {
            let order = by_id.get(p.order_id.as_str());
            let tx_ref = order
                .and_then(|o| o.get_document("flutterwave").ok())
                .and_then(|f| f.get_str("txRef").ok())
                .unwrap_or("");
            OrderOutcome {
                order_id: p.order_id.clone(),
                expected_status: p.journey.expected_status().into(),
                actual_status: order
                    .and_then(|o| o.get_str("status").ok())
                    .map(String::from),
                refunds_expected: p.journey.refunds_expected(),
                refunds_applied: refunds_by_ref.get(tx_ref).copied().unwrap_or(0),
                review_expected: p.journey.reviewed(),
                review_stored: order.is_some_and(|o| o.get_document("buyerReview").is_ok()),
            }
        })
        .collect();
    let notifications: Vec<Document> = db
        .collection::<Document>("notifications")
        .find(doc! {})
        .await?
        .try_collect()
        .await?;
    let notifications = notifications
        .iter()
        .map(|n| {
            let text = |k: &str| n.get_str(k).unwrap_or("").to_string();
            StoredNotification {
                id: text("_id"),
                order_id: text("orderId"),
                user_to: text("userTo"),
                message: text("message"),
            }
        })
        .collect();
    let (heard, steady_listeners) = listeners.snapshot();
    Ok(GroundTruth {
        committed: committed(db).await?,
        received: received.snapshot(),
        first_arrivals: received.first_arrivals(),
        orders: outcomes,
        notifications,
        heard,
        steady_listeners,
        undelivered: undelivered(db).await? as usize,
    })
}
