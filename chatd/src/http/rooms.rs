use std::sync::Arc;

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use schema::{RoomId, RoomName, UserId};
use uuid::Uuid;

use super::admin::{self, MemberPage, RoomSettingsRequest};
use super::models::{
    CreateRoomRequest, DirectRoomRequest, InviteRequest, Room, RoomWithMembers, Visibility,
};
use super::{ApiError, BearerAuth, Done, Tag};
use crate::chat::{Admin, Chat};

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

    /// Join a public room (a no-op for members), or accept an invitation waiting for your
    /// consent. 404 `room_not_found` for a private room you are not invited to, as for one
    /// that does not exist; 403 `banned` for the banned, 409 `room_archived` for an archived
    /// room.
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

    /// Add users to a group room. Any member may invite. Invitees who have blocked the
    /// inviter get an invitation to accept instead (`GET /v1/invitations`); 403 `banned` if
    /// any invitee is banned (nobody is added).
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

    /// The room's members with their roles, in the order they joined (those who joined
    /// together by id), paged. Members only.
    #[oai(
        path = "/rooms/:room_id/members",
        method = "get",
        tag = "Tag::Administration"
    )]
    async fn members(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
        /// At most this many members (1–200, default 50).
        limit: Query<Option<u32>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> Result<Json<MemberPage>, ApiError> {
        let page =
            admin::member_page(&self.chat, &auth, room_id.0, limit.0, cursor.0.as_deref()).await?;
        Ok(Json(page))
    }

    /// Change the name, topic or visibility (admins and the owner; 403
    /// `insufficient_role`). Absent fields stay as they are.
    #[oai(
        path = "/rooms/:room_id",
        method = "patch",
        tag = "Tag::Administration"
    )]
    async fn settings(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
        body: Json<RoomSettingsRequest>,
    ) -> Result<Done, ApiError> {
        admin::change_settings(&self.chat, &auth, room_id.0, &body).await
    }

    /// Delete the room (the owner only): its history, members and search hits are gone for
    /// everyone; afterwards it is 404 `room_not_found`.
    #[oai(
        path = "/rooms/:room_id",
        method = "delete",
        tag = "Tag::Administration"
    )]
    async fn delete(&self, auth: BearerAuth, room_id: Path<Uuid>) -> Result<Done, ApiError> {
        admin::administer(&self.chat, &auth, room_id.0, Admin::Delete).await
    }

    /// Leave a group room. Afterwards the room and its history are closed to the caller.
    #[oai(path = "/rooms/:room_id/members/me", method = "delete")]
    async fn leave(&self, auth: BearerAuth, room_id: Path<Uuid>) -> Result<Done, ApiError> {
        self.chat.leave(auth.0.0, RoomId(room_id.0)).await?;
        Ok(Done::NoContent)
    }
}
