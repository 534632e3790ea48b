use std::sync::Arc;

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use schema::{RoomId, RoomName, UserId};
use uuid::Uuid;

use super::models::{
    CreateRoomRequest, DirectRoomRequest, InviteRequest, Room, RoomWithMembers, Visibility,
};
use super::{ApiError, BearerAuth, Tag};
use crate::chat::Chat;

#[derive(Debug)]
pub struct Api {
    pub chat: Arc<Chat>,
}

#[derive(ApiResponse)]
enum CreatedRoom {
    /// The room was created.
    #[oai(status = 201)]
    Created(Json<RoomWithMembers>),
    /// The room already existed (direct rooms are created once per pair).
    #[oai(status = 200)]
    Existing(Json<RoomWithMembers>),
}

#[derive(ApiResponse)]
enum Done {
    /// Done (also when there was nothing to do).
    #[oai(status = 204)]
    NoContent,
}

fn ids(v: &[Uuid]) -> Vec<UserId> {
    v.iter().copied().map(UserId).collect()
}

#[OpenApi(tag = "Tag::Rooms")]
impl Api {
    /// Create a group room. The caller is a member; `member_ids` must be existing users.
    #[oai(path = "/rooms", method = "post")]
    async fn create(
        &self,
        auth: BearerAuth,
        body: Json<CreateRoomRequest>,
    ) -> Result<CreatedRoom, ApiError> {
        let name = RoomName::parse(&body.name)?;
        let visibility = body.visibility.unwrap_or(Visibility::Private).into();
        let detail = self
            .chat
            .create_room(auth.0.0, name, ids(&body.member_ids), visibility)
            .await?;
        Ok(CreatedRoom::Created(Json(detail.into())))
    }

    /// The one direct room between the caller and another user, created on first call.
    #[oai(path = "/rooms/direct", method = "post")]
    async fn direct(
        &self,
        auth: BearerAuth,
        body: Json<DirectRoomRequest>,
    ) -> Result<CreatedRoom, ApiError> {
        let (detail, created) = self
            .chat
            .direct_room(auth.0.0, UserId(body.user_id))
            .await?;
        Ok(if created {
            CreatedRoom::Created(Json(detail.into()))
        } else {
            CreatedRoom::Existing(Json(detail.into()))
        })
    }

    /// Public group rooms anyone may join, biggest first; `q` filters by name.
    #[oai(path = "/rooms/public", method = "get")]
    async fn public(
        &self,
        _auth: BearerAuth,
        /// Part of the room name (optional).
        q: Query<Option<String>>,
        /// At most this many rooms (1–100, default 50).
        limit: Query<Option<u32>>,
    ) -> Result<Json<Vec<Room>>, ApiError> {
        let limit = limit.0.unwrap_or(50);
        if !(1..=100).contains(&limit) {
            return Err(ApiError::invalid_parameter("limit must be 1–100"));
        }
        let q = q.0.unwrap_or_default().trim().to_owned();
        let rooms = self.chat.public_rooms(q, limit as usize).await?;
        Ok(Json(rooms.into_iter().map(Into::into).collect()))
    }

    /// Join a public room (a no-op for members). 404 `room_not_found` for a private room you
    /// are not in, as for one that does not exist.
    #[oai(path = "/rooms/:room_id/join", method = "post")]
    async fn join(&self, auth: BearerAuth, room_id: Path<Uuid>) -> Result<Done, ApiError> {
        self.chat.join(auth.0.0, RoomId(room_id.0)).await?;
        Ok(Done::NoContent)
    }

    /// The caller's rooms, most recent activity first.
    #[oai(path = "/rooms", method = "get")]
    async fn list(&self, auth: BearerAuth) -> Result<Json<Vec<Room>>, ApiError> {
        let rooms = self.chat.rooms_of(auth.0.0).await?;
        Ok(Json(rooms.into_iter().map(Into::into).collect()))
    }

    /// One room with its members. Members only: 404 `room_not_found` for a room you are not
    /// in, whether or not it exists.
    #[oai(path = "/rooms/:room_id", method = "get")]
    async fn get(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
    ) -> Result<Json<RoomWithMembers>, ApiError> {
        Ok(Json(
            self.chat
                .room_detail(auth.0.0, RoomId(room_id.0))
                .await?
                .into(),
        ))
    }

    /// Add users to a group room. Any member may invite.
    #[oai(path = "/rooms/:room_id/members", method = "post")]
    async fn invite(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
        body: Json<InviteRequest>,
    ) -> Result<Done, ApiError> {
        self.chat
            .invite(auth.0.0, RoomId(room_id.0), ids(&body.user_ids))
            .await?;
        Ok(Done::NoContent)
    }

    /// Leave a group room. Afterwards the room and its history are closed to the caller.
    #[oai(path = "/rooms/:room_id/members/me", method = "delete")]
    async fn leave(&self, auth: BearerAuth, room_id: Path<Uuid>) -> Result<Done, ApiError> {
        self.chat.leave(auth.0.0, RoomId(room_id.0)).await?;
        Ok(Done::NoContent)
    }
}
