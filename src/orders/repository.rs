//! Reads and schema of the order collections. Writes happen in `commands`,
//! inside transactions.

use super::error::OrderError;
use super::model::{Notification, Order};
use bson::{Document, doc};
use futures::TryStreamExt;
use mongodb::options::IndexOptions;
use mongodb::{ClientSession, Collection, Database, IndexModel};
use std::time::Duration;

/// How long an `Idempotency-Key` is remembered (API.md: 24 h).
pub const IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// One page of a list, newest first.
#[derive(Debug, Clone, Copy)]
pub struct Page<'a> {
    pub limit: i64,
    /// The `_id` of the last item of the previous page.
    pub cursor: Option<&'a str>,
}

#[derive(Clone)]
pub struct Repository {
    pub(crate) orders: Collection<Order>,
    pub(crate) notifications: Collection<Notification>,
    pub(crate) idempotency: Collection<Document>,
}

impl Repository {
    pub fn new(db: &Database) -> Self {
        Self {
            orders: db.collection("orders"),
            notifications: db.collection("notifications"),
            idempotency: db.collection("idempotency_keys"),
        }
    }

    pub async fn ensure_schema(&self, db: &Database) -> Result<(), OrderError> {
        for name in ["orders", "notifications", "idempotency_keys"] {
            outbox::store::create_collection(db, name).await?;
        }
        let unique = || IndexOptions::builder().unique(true).build();
        self.orders
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! { "orderId": 1 })
                    .options(unique())
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "flutterwave.txRef": 1 })
                    .options(unique())
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "sellerId": 1, "_id": -1 })
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "buyerId": 1, "_id": -1 })
                    .build(),
                // The reconciliation sweep: unpaid checkouts by age, and
                // paid orders by the age of their payment.
                IndexModel::builder()
                    .keys(doc! { "status": 1, "flutterwave.checkoutAt": 1 })
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "flutterwave.paidAt": 1 })
                    .build(),
            ])
            .await?;
        self.notifications
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "userTo": 1, "_id": -1 })
                    .build(),
            )
            .await?;
        self.idempotency
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "createdAt": 1 })
                    .options(
                        IndexOptions::builder()
                            .expire_after(IDEMPOTENCY_RETENTION)
                            .build(),
                    )
                    .build(),
            )
            .await?;
        Ok(())
    }

    pub async fn by_order_id(&self, order_id: &str) -> Result<Option<Order>, OrderError> {
        Ok(self.orders.find_one(doc! { "orderId": order_id }).await?)
    }

    pub async fn by_order_id_in(
        &self,
        session: &mut ClientSession,
        order_id: &str,
    ) -> Result<Option<Order>, OrderError> {
        Ok(self
            .orders
            .find_one(doc! { "orderId": order_id })
            .session(session)
            .await?)
    }

    pub async fn by_tx_ref_in(
        &self,
        session: &mut ClientSession,
        tx_ref: &str,
    ) -> Result<Option<Order>, OrderError> {
        Ok(self
            .orders
            .find_one(doc! { "flutterwave.txRef": tx_ref })
            .session(session)
            .await?)
    }

    pub async fn by_tx_ref(&self, tx_ref: &str) -> Result<Option<Order>, OrderError> {
        Ok(self
            .orders
            .find_one(doc! { "flutterwave.txRef": tx_ref })
            .await?)
    }

    /// Orders where `field` (sellerId / buyerId) is `id` and the caller is
    /// that party: the username check keeps one user from listing another's
    /// orders by guessing an id.
    pub async fn list(
        &self,
        field: &str,
        id: &str,
        username_field: &str,
        username: &str,
        page: Page<'_>,
    ) -> Result<Vec<Order>, OrderError> {
        let mut filter = doc! {
            field: id,
            username_field: { "$regex": format!("^{}$", regex::escape(username)), "$options": "i" },
        };
        if let Some(cursor) = page.cursor {
            filter.insert("_id", doc! { "$lt": cursor });
        }
        let cursor = self
            .orders
            .find(filter)
            .sort(doc! { "_id": -1 })
            .limit(page.limit)
            .await?;
        Ok(cursor.try_collect().await?)
    }

    pub async fn notifications_for(
        &self,
        user_to: &str,
        page: Page<'_>,
    ) -> Result<Vec<Notification>, OrderError> {
        let mut filter = doc! {
            "userTo": { "$regex": format!("^{}$", regex::escape(user_to)), "$options": "i" },
        };
        if let Some(cursor) = page.cursor {
            filter.insert("_id", doc! { "$lt": cursor });
        }
        let cursor = self
            .notifications
            .find(filter)
            .sort(doc! { "_id": -1 })
            .limit(page.limit)
            .await?;
        Ok(cursor.try_collect().await?)
    }
}
