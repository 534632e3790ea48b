use std::sync::Arc;

use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use schema::UserId;
use uuid::Uuid;

use super::models::Member;
use super::{ApiError, BearerAuth, Tag};
use crate::chat::Chat;

#[derive(Debug)]
pub struct Api {
    pub chat: Arc<Chat>,
}

#[derive(ApiResponse)]
enum Done {
    /// Done (also when there was nothing to do).
    #[oai(status = 204)]
    NoContent,
}

#[OpenApi(tag = "Tag::Friends")]
impl Api {
    /// Your friend list, by username.
    #[oai(path = "/friends", method = "get")]
    async fn list(&self, auth: BearerAuth) -> Result<Json<Vec<Member>>, ApiError> {
        let friends = self.chat.friends(auth.0.0).await?;
        Ok(Json(friends.into_iter().map(Into::into).collect()))
    }

    /// Add someone to your friend list (idempotent).
    #[oai(path = "/friends/:user_id", method = "put")]
    async fn add(&self, auth: BearerAuth, user_id: Path<Uuid>) -> Result<Done, ApiError> {
        self.chat.add_friend(auth.0.0, UserId(user_id.0)).await?;
        Ok(Done::NoContent)
    }

    /// Remove someone from your friend list (idempotent).
    #[oai(path = "/friends/:user_id", method = "delete")]
    async fn remove(&self, auth: BearerAuth, user_id: Path<Uuid>) -> Result<Done, ApiError> {
        self.chat.remove_friend(auth.0.0, UserId(user_id.0)).await?;
        Ok(Done::NoContent)
    }
}
