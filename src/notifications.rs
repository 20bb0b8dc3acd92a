//! Notifications of a user: listing and marking as read, by their `userTo` only.

use crate::orders::OrderError;
use crate::orders::commands::Actor;
use crate::orders::model::Notification;
use crate::orders::repository::{Page, Repository};
use crate::realtime::records::{aggregate, notification_record};
use bson::doc;
use futures::FutureExt;
use mongodb::Client;
use mongodb::options::ReturnDocument;
use outbox::Outbox;
use outbox::relay::Waker;
use outbox::transaction::{self, RetryPolicy};

#[derive(Clone)]
pub struct Notifications {
    client: Client,
    repo: Repository,
    outbox: Outbox,
    policy: RetryPolicy,
    /// Wakes this process's relay after a commit, so the emit goes out at once.
    waker: Option<Waker>,
}

impl Notifications {
    pub fn new(client: Client, repo: Repository, outbox: Outbox, waker: Option<Waker>) -> Self {
        Self {
            client,
            repo,
            outbox,
            policy: RetryPolicy::default(),
            waker,
        }
    }

    pub async fn list(
        &self,
        actor: &Actor,
        user_to: &str,
        page: Page<'_>,
    ) -> Result<Vec<Notification>, OrderError> {
        if !user_to.eq_ignore_ascii_case(&actor.username) {
            return Err(OrderError::Forbidden(
                "notifications are read only by their receiver",
            ));
        }
        self.repo.notifications_for(user_to, page).await
    }

    /// Sets `isRead` and, in the same transaction, stages the socket emit of
    /// the updated notification (with its order), so that the receiver's
    /// other open tabs and devices see it read. Marking a read notification
    /// again changes nothing and emits nothing.
    pub async fn mark_as_read(
        &self,
        actor: &Actor,
        notification_id: &str,
    ) -> Result<Notification, OrderError> {
        crate::orders::validation::identifier("notificationId", notification_id)?;
        let (repo, outbox) = (self.repo.clone(), self.outbox.clone());
        let (id, username) = (notification_id.to_string(), actor.username.clone());
        let (notification, changed) =
            transaction::run(&self.client, &self.policy, move |session| {
                let (repo, outbox, id, username) =
                    (repo.clone(), outbox.clone(), id.clone(), username.clone());
                async move {
                    let existing = repo
                        .notifications
                        .find_one(doc! { "_id": &id })
                        .session(&mut *session)
                        .await?
                        .ok_or(OrderError::NotFoundWhat("notification not found"))?;
                    if !existing.user_to.eq_ignore_ascii_case(&username) {
                        return Err(OrderError::Forbidden(
                            "notifications are marked only by their receiver",
                        ));
                    }
                    if existing.is_read {
                        return Ok((existing, false));
                    }
                    let updated = repo
                        .notifications
                        .find_one_and_update(
                            doc! { "_id": &id },
                            doc! { "$set": { "isRead": true } },
                        )
                        .return_document(ReturnDocument::After)
                        .session(&mut *session)
                        .await?
                        .ok_or(OrderError::NotFoundWhat("notification not found"))?;
                    let order = repo.by_order_id_in(session, &updated.order_id).await?;
                    outbox
                        .stage(session, vec![notification_record(order.as_ref(), &updated)])
                        .await?;
                    Ok((updated, true))
                }
                .boxed()
            })
            .await?;
        if changed && let Some(waker) = &self.waker {
            waker.hand([aggregate(&notification.order_id)]);
        }
        Ok(notification)
    }
}
