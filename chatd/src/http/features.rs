//! REST of the message features (issue 17): reactions, pins, readers, threads.

use std::sync::Arc;

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use schema::{Emoji, MessageId, RoomId};
use uuid::Uuid;

use super::messages::{DEFAULT_LIMIT, MAX_LIMIT};
use super::models::{PinsResponse, ReadersResponse, ThreadPage};
use super::{ApiError, BearerAuth, Tag};
use crate::chat::Chat;

#[derive(Debug)]
pub struct Api {
    pub chat: Arc<Chat>,
}

#[derive(ApiResponse)]
enum Done {
    /// Done (or it already was so).
    #[oai(status = 204)]
    Done,
}

#[OpenApi(tag = "Tag::Messages")]
impl Api {
    /// React to a message with an emoji (1–16 characters, URL-encoded in the path). One
    /// reaction per user per emoji per message: reacting again changes nothing. Members
    /// only; 404 `message_not_found` for a deleted message. The room gets a `reaction_added`
    /// event carrying the emoji's new `count`.
    #[oai(
        path = "/rooms/:room_id/messages/:message_id/reactions/:emoji",
        method = "put"
    )]
    async fn react(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
        message_id: Path<Uuid>,
        emoji: Path<String>,
    ) -> Result<Done, ApiError> {
        let emoji = Emoji::parse(&emoji.0)?;
        self.chat
            .react(
                auth.0.0,
                RoomId(room_id.0),
                MessageId(message_id.0),
                emoji,
                true,
            )
            .await?;
        Ok(Done::Done)
    }

    /// Take back your emoji reaction (not there: nothing changes). The room gets a
    /// `reaction_removed` event carrying the emoji's new `count`.
    #[oai(
        path = "/rooms/:room_id/messages/:message_id/reactions/:emoji",
        method = "delete"
    )]
    async fn unreact(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
        message_id: Path<Uuid>,
        emoji: Path<String>,
    ) -> Result<Done, ApiError> {
        let emoji = Emoji::parse(&emoji.0)?;
        self.chat
            .react(
                auth.0.0,
                RoomId(room_id.0),
                MessageId(message_id.0),
                emoji,
                false,
            )
            .await?;
        Ok(Done::Done)
    }

    /// Who has read a message: the members (the sender aside) who were in the room when it
    /// was sent and whose read marker is at or past it, and how many have not.
    #[oai(path = "/rooms/:room_id/messages/:message_id/readers", method = "get")]
    async fn readers(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
        message_id: Path<Uuid>,
    ) -> Result<Json<ReadersResponse>, ApiError> {
        let readers = self
            .chat
            .readers(auth.0.0, RoomId(room_id.0), MessageId(message_id.0))
            .await?;
        Ok(Json(readers.into()))
    }

    /// A thread: its root message and a page of its replies, paged by seq like the history
    /// (without bounds the newest `limit`; `before_seq` older; `after_seq` newer), oldest
    /// first within the page.
    #[oai(path = "/rooms/:room_id/messages/:message_id/thread", method = "get")]
    async fn thread(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
        message_id: Path<Uuid>,
        /// Only replies with a smaller seq.
        before_seq: Query<Option<u64>>,
        /// Only replies with a larger seq.
        after_seq: Query<Option<u64>>,
        /// Page size, 1–200 (default 50).
        limit: Query<Option<u64>>,
    ) -> Result<Json<ThreadPage>, ApiError> {
        let limit = limit.0.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::invalid_parameter(format!(
                "limit must be 1–{MAX_LIMIT}"
            )));
        }
        let thread = self
            .chat
            .thread(
                auth.0.0,
                RoomId(room_id.0),
                MessageId(message_id.0),
                before_seq.0,
                after_seq.0,
                limit as usize,
            )
            .await?;
        Ok(Json(ThreadPage {
            root: thread.root,
            replies: thread.replies.events,
            has_more: thread.replies.has_more,
        }))
    }

    /// The room's pinned messages, newest pin first. Members only.
    #[oai(path = "/rooms/:room_id/pins", method = "get")]
    async fn pins(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
    ) -> Result<Json<PinsResponse>, ApiError> {
        let pins = self.chat.pins(auth.0.0, RoomId(room_id.0)).await?;
        Ok(Json(PinsResponse {
            pins: pins.into_iter().map(Into::into).collect(),
        }))
    }

    /// Pin a message (at most 50 per room: 403 `not_allowed` beyond). Any member may pin;
    /// pinning again changes nothing. The room gets a `message_pinned` event.
    #[oai(path = "/rooms/:room_id/pins/:message_id", method = "put")]
    async fn pin(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
        message_id: Path<Uuid>,
    ) -> Result<Done, ApiError> {
        self.chat
            .pin(auth.0.0, RoomId(room_id.0), MessageId(message_id.0), true)
            .await?;
        Ok(Done::Done)
    }

    /// Unpin a message (not pinned: nothing changes). The room gets a `message_unpinned` event.
    #[oai(path = "/rooms/:room_id/pins/:message_id", method = "delete")]
    async fn unpin(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
        message_id: Path<Uuid>,
    ) -> Result<Done, ApiError> {
        self.chat
            .pin(auth.0.0, RoomId(room_id.0), MessageId(message_id.0), false)
            .await?;
        Ok(Done::Done)
    }
}
