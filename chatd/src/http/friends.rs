//! Friends with consent (request, accept, decline, cancel, unfriend) and blocking. Friends see
//! each other's presence; so do members of a shared room, unless one has blocked the other.
//! (This replaces the one-sided `PUT /v1/friends/{user_id}`.)

use std::sync::Arc;

use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use schema::UserId;
use uuid::Uuid;

use super::models::{Member, User};
use super::{ApiError, BearerAuth, Done, Tag};
use crate::chat::Chat;

#[derive(Debug)]
pub struct Api {
    pub chat: Arc<Chat>,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct FriendRequestBody {
    /// The person to ask.
    pub user_id: Uuid,
}

#[derive(Debug, Object)]
pub struct FriendRequestResult {
    /// `requested` (waiting for them) or `friends` (they had asked you: now you are friends).
    pub status: String,
}

#[derive(Debug, Object)]
pub struct FriendRequests {
    /// People asking you.
    pub incoming: Vec<User>,
    /// People you asked.
    pub outgoing: Vec<User>,
}

fn users(list: Vec<projector::queries::UserView>) -> Vec<User> {
    list.into_iter().map(Into::into).collect()
}

#[OpenApi(tag = "Tag::Friends")]
impl Api {
    /// Your friends (accepted requests), by username, with whether each is online.
    #[oai(path = "/friends", method = "get")]
    async fn list(&self, auth: BearerAuth) -> Result<Json<Vec<Member>>, ApiError> {
        let friends = self.chat.friends(auth.0.0).await?;
        Ok(Json(friends.into_iter().map(Into::into).collect()))
    }

    /// End a friendship (idempotent).
    #[oai(path = "/friends/:user_id", method = "delete")]
    async fn remove(&self, auth: BearerAuth, user_id: Path<Uuid>) -> Result<Done, ApiError> {
        self.chat.unfriend(auth.0.0, UserId(user_id.0)).await?;
        Ok(Done::NoContent)
    }

    /// Ask someone to be friends. Asking someone who asked you accepts. 403 `blocked` when
    /// one of you has blocked the other.
    #[oai(path = "/friends/requests", method = "post")]
    async fn request(
        &self,
        auth: BearerAuth,
        body: Json<FriendRequestBody>,
    ) -> Result<Json<FriendRequestResult>, ApiError> {
        let friends = self
            .chat
            .request_friend(auth.0.0, UserId(body.user_id))
            .await?;
        let status = if friends { "friends" } else { "requested" };
        Ok(Json(FriendRequestResult {
            status: status.into(),
        }))
    }

    /// Friend requests waiting: to you and from you.
    #[oai(path = "/friends/requests", method = "get")]
    async fn requests(&self, auth: BearerAuth) -> Result<Json<FriendRequests>, ApiError> {
        let me = auth.0.0;
        Ok(Json(FriendRequests {
            incoming: users(self.chat.friend_requests(me, true).await?),
            outgoing: users(self.chat.friend_requests(me, false).await?),
        }))
    }

    /// Accept the request `user_id` sent you (404 `friend_request_not_found`).
    #[oai(path = "/friends/requests/:user_id/accept", method = "post")]
    async fn accept(&self, auth: BearerAuth, user_id: Path<Uuid>) -> Result<Done, ApiError> {
        self.chat
            .answer_friend_request(auth.0.0, UserId(user_id.0), true)
            .await?;
        Ok(Done::NoContent)
    }

    /// Decline the request `user_id` sent you (404 `friend_request_not_found`).
    #[oai(path = "/friends/requests/:user_id/decline", method = "post")]
    async fn decline(&self, auth: BearerAuth, user_id: Path<Uuid>) -> Result<Done, ApiError> {
        self.chat
            .answer_friend_request(auth.0.0, UserId(user_id.0), false)
            .await?;
        Ok(Done::NoContent)
    }

    /// Withdraw your request to `user_id` (404 `friend_request_not_found`).
    #[oai(path = "/friends/requests/:user_id", method = "delete")]
    async fn cancel(&self, auth: BearerAuth, user_id: Path<Uuid>) -> Result<Done, ApiError> {
        self.chat
            .cancel_friend_request(auth.0.0, UserId(user_id.0))
            .await?;
        Ok(Done::NoContent)
    }

    /// The people you have blocked.
    #[oai(path = "/blocks", method = "get")]
    async fn blocks(&self, auth: BearerAuth) -> Result<Json<Vec<User>>, ApiError> {
        Ok(Json(users(self.chat.blocked_users(auth.0.0).await?)))
    }

    /// Block someone (idempotent): no direct messages between you (403 `blocked`), no
    /// friend requests, their invitations wait for your consent, and neither sees the
    /// other's presence.
    #[oai(path = "/blocks/:user_id", method = "put")]
    async fn block(&self, auth: BearerAuth, user_id: Path<Uuid>) -> Result<Done, ApiError> {
        self.chat.block(auth.0.0, UserId(user_id.0)).await?;
        Ok(Done::NoContent)
    }

    /// Unblock someone (idempotent).
    #[oai(path = "/blocks/:user_id", method = "delete")]
    async fn unblock(&self, auth: BearerAuth, user_id: Path<Uuid>) -> Result<Done, ApiError> {
        self.chat.unblock(auth.0.0, UserId(user_id.0)).await?;
        Ok(Done::NoContent)
    }
}
