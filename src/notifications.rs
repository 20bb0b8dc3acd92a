//! Notifications of a user: listing and marking as read, by their `userTo` only.

use crate::orders::OrderError;
use crate::orders::commands::Actor;
use crate::orders::model::Notification;
use crate::orders::repository::{Page, Repository};
use bson::doc;
use mongodb::options::ReturnDocument;

#[derive(Clone)]
pub struct Notifications {
    repo: Repository,
}

impl Notifications {
    pub fn new(repo: Repository) -> Self {
        Self { repo }
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

    pub async fn mark_as_read(
        &self,
        actor: &Actor,
        notification_id: &str,
    ) -> Result<Notification, OrderError> {
        crate::orders::validation::identifier("notificationId", notification_id)?;
        let existing = self
            .repo
            .notifications
            .find_one(doc! { "_id": notification_id })
            .await?
            .ok_or(OrderError::NotFoundWhat("notification not found"))?;
        if !existing.user_to.eq_ignore_ascii_case(&actor.username) {
            return Err(OrderError::Forbidden(
                "notifications are marked only by their receiver",
            ));
        }
        self.repo
            .notifications
            .find_one_and_update(
                doc! { "_id": notification_id },
                doc! { "$set": { "isRead": true } },
            )
            .return_document(ReturnDocument::After)
            .await?
            .ok_or(OrderError::NotFoundWhat("notification not found"))
    }
}
