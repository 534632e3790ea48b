//! Room administration: the member list with roles, roles and ownership, kick and ban, name,
//! topic and visibility, archive, delete; and invitations waiting for consent.
//!
//! `GET …/members`, `PATCH` and `DELETE /v1/rooms/{room_id}` are declared in `rooms` (the
//! OpenAPI document keeps one API's operations per path) and implemented here.
//!
//! Who may do what is decided by the room aggregate (`schema::room`); a caller who is not a
//! member is told what a stranger is told about any room they are not in.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{Enum, Object, OpenApi};
use schema::events::Role;
use schema::{RoomId, RoomName, Topic, UserId};
use uuid::Uuid;

use super::models::{Text, Visibility};
use super::{ApiError, BearerAuth, Done, Tag};
use crate::chat::{Admin, Chat};

#[derive(Debug)]
pub struct Api {
    pub chat: Arc<Chat>,
}

/// A role an owner can give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum GivenRole {
    Admin,
    Member,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct RoleRequest {
    pub role: GivenRole,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct TransferRequest {
    /// The member who becomes the owner; the previous owner becomes an admin.
    pub user_id: Uuid,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct RoomSettingsRequest {
    /// 1–100 characters.
    pub name: MaybeUndefined<Text>,
    /// 0–500 characters, one line; empty or `null` clears it.
    pub topic: MaybeUndefined<Text>,
    pub visibility: MaybeUndefined<Visibility>,
}

/// A field of a partial update: absent is unchanged, `null` is `cleared` (for fields that can
/// be cleared; others refuse it).
pub(super) fn update<T>(
    field: &'static str,
    v: &MaybeUndefined<T>,
    cleared: Option<T>,
) -> Result<Option<T>, ApiError>
where
    T: Clone,
{
    match v {
        MaybeUndefined::Undefined => Ok(None),
        MaybeUndefined::Value(v) => Ok(Some(v.clone())),
        MaybeUndefined::Null => cleared.map(Some).ok_or_else(|| {
            ApiError::from(schema::DomainError::Invalid {
                field,
                reason: "cannot be null".into(),
            })
        }),
    }
}

#[derive(Debug, Object)]
pub struct RoomMember {
    pub user_id: Uuid,
    /// Empty for a deleted account.
    pub username: String,
    pub display_name: String,
    /// `owner`, `admin` or `member` (both members of a direct room are `member`).
    pub role: String,
    pub online: bool,
}

#[derive(Debug, Object)]
pub struct MemberPage {
    /// In the order they joined.
    pub members: Vec<RoomMember>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Object)]
pub struct Invitation {
    pub room_id: Uuid,
    #[oai(skip_serializing_if_is_none)]
    pub room_name: Option<String>,
    pub invited_by: Uuid,
    pub at: DateTime<Utc>,
}

fn encode_cursor(seq: u64, user: UserId) -> String {
    let mut raw = seq.to_be_bytes().to_vec();
    raw.extend_from_slice(user.0.as_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(cursor: &str) -> Result<(u64, UserId), ApiError> {
    let bad = || {
        ApiError::new(
            crate::chat::Code::InvalidCursor,
            "not a cursor of this list",
        )
    };
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let (seq, user) = raw.split_at_checked(8).ok_or_else(bad)?;
    let seq = u64::from_be_bytes(seq.try_into().map_err(|_| bad())?);
    let user = Uuid::from_slice(user).map_err(|_| bad())?;
    Ok((seq, UserId(user)))
}

impl Api {
    async fn admin(&self, auth: &BearerAuth, room: Uuid, command: Admin) -> Result<Done, ApiError> {
        administer(&self.chat, auth, room, command).await
    }
}

/// Runs an administrative command for the caller.
pub(super) async fn administer(
    chat: &Chat,
    auth: &BearerAuth,
    room: Uuid,
    command: Admin,
) -> Result<Done, ApiError> {
    chat.administer(auth.0.0, RoomId(room), command).await?;
    Ok(Done::NoContent)
}

/// `PATCH /v1/rooms/{room_id}` (served by `rooms`, which owns the path).
pub(super) async fn change_settings(
    chat: &Chat,
    auth: &BearerAuth,
    room: Uuid,
    body: &RoomSettingsRequest,
) -> Result<Done, ApiError> {
    let name = update("name", &body.name, None)?;
    let name = name.as_deref().map(RoomName::parse).transpose()?;
    let topic = update("topic", &body.topic, Some(Text(String::new())))?;
    let topic = topic.as_deref().map(Topic::parse).transpose()?;
    let visibility = update("visibility", &body.visibility, None)?.map(Into::into);
    let command = Admin::Settings {
        name,
        topic,
        visibility,
    };
    administer(chat, auth, room, command).await
}

/// `GET /v1/rooms/{room_id}/members` (served by `rooms`, which owns the path).
pub(super) async fn member_page(
    chat: &Chat,
    auth: &BearerAuth,
    room: Uuid,
    limit: Option<u32>,
    cursor: Option<&str>,
) -> Result<MemberPage, ApiError> {
    let limit = limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid_parameter("limit must be 1–200"));
    }
    let after = cursor.map(decode_cursor).transpose()?;
    let mut page = chat
        .member_page(auth.0.0, RoomId(room), after, limit as usize + 1)
        .await?;
    let more = page.len() > limit as usize;
    page.truncate(limit as usize);
    let next_cursor = more
        .then(|| {
            page.last()
                .map(|(m, _)| encode_cursor(m.joined_seq, m.user.user_id))
        })
        .flatten();
    let members = page
        .into_iter()
        .map(|(m, online)| RoomMember {
            user_id: m.user.user_id.0,
            username: m.user.username,
            display_name: m.user.display_name,
            role: m.role,
            online,
        })
        .collect();
    Ok(MemberPage {
        members,
        next_cursor,
    })
}

#[OpenApi(tag = "Tag::Administration")]
impl Api {
    /// Make a member an admin or an admin a member (the owner only).
    #[oai(path = "/rooms/:room_id/members/:user_id/role", method = "put")]
    async fn role(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
        user_id: Path<Uuid>,
        body: Json<RoleRequest>,
    ) -> Result<Done, ApiError> {
        let role = match body.role {
            GivenRole::Admin => Role::Admin,
            GivenRole::Member => Role::Member,
        };
        let user = UserId(user_id.0);
        self.admin(&auth, room_id.0, Admin::SetRole { user, role })
            .await
    }

    /// Hand the room to another member (the owner only); the previous owner becomes an admin.
    #[oai(path = "/rooms/:room_id/owner", method = "put")]
    async fn transfer(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
        body: Json<TransferRequest>,
    ) -> Result<Done, ApiError> {
        let to = UserId(body.user_id);
        self.admin(&auth, room_id.0, Admin::TransferOwnership { to })
            .await
    }

    /// Kick: remove a member of a lower role (admins and the owner). They may be invited
    /// again. Their live connections stop receiving the room at once. (`…/members/me` is
    /// leaving.)
    #[oai(path = "/rooms/:room_id/members/:user_id", method = "delete")]
    async fn kick(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
        user_id: Path<Uuid>,
    ) -> Result<Done, ApiError> {
        let user = UserId(user_id.0);
        self.admin(&auth, room_id.0, Admin::Kick { user }).await
    }

    /// Ban a user (admins and the owner, over a lower role): removed if a member, and they
    /// cannot join or be invited (403 `banned`) until unbanned.
    #[oai(path = "/rooms/:room_id/bans/:user_id", method = "put")]
    async fn ban(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
        user_id: Path<Uuid>,
    ) -> Result<Done, ApiError> {
        let user = UserId(user_id.0);
        self.admin(&auth, room_id.0, Admin::Ban { user }).await
    }

    /// Lift a ban (admins and the owner).
    #[oai(path = "/rooms/:room_id/bans/:user_id", method = "delete")]
    async fn unban(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
        user_id: Path<Uuid>,
    ) -> Result<Done, ApiError> {
        let user = UserId(user_id.0);
        self.admin(&auth, room_id.0, Admin::Unban { user }).await
    }

    /// Archive the room (the owner only): read-only, sends refused with 409 `room_archived`.
    #[oai(path = "/rooms/:room_id/archive", method = "put")]
    async fn archive(&self, auth: BearerAuth, room_id: Path<Uuid>) -> Result<Done, ApiError> {
        self.admin(&auth, room_id.0, Admin::Archive { archived: true })
            .await
    }

    /// Unarchive the room (the owner only).
    #[oai(path = "/rooms/:room_id/archive", method = "delete")]
    async fn unarchive(&self, auth: BearerAuth, room_id: Path<Uuid>) -> Result<Done, ApiError> {
        self.admin(&auth, room_id.0, Admin::Archive { archived: false })
            .await
    }

    /// Invitations waiting for your consent (you had blocked the inviter). Accept with
    /// `POST /v1/rooms/{room_id}/join`, decline with
    /// `DELETE /v1/rooms/{room_id}/invitations/me`.
    #[oai(path = "/invitations", method = "get", tag = "Tag::Rooms")]
    async fn invitations(&self, auth: BearerAuth) -> Result<Json<Vec<Invitation>>, ApiError> {
        let list = self.chat.invitations(auth.0.0).await?;
        Ok(Json(
            list.into_iter()
                .map(|i| Invitation {
                    room_id: i.room_id.0,
                    room_name: i.room_name,
                    invited_by: i.invited_by.0,
                    at: i.at,
                })
                .collect(),
        ))
    }

    /// Decline an invitation waiting for your consent (404 `invitation_not_found`).
    #[oai(
        path = "/rooms/:room_id/invitations/me",
        method = "delete",
        tag = "Tag::Rooms"
    )]
    async fn decline(&self, auth: BearerAuth, room_id: Path<Uuid>) -> Result<Done, ApiError> {
        self.chat
            .decline_invitation(auth.0.0, RoomId(room_id.0))
            .await?;
        Ok(Done::NoContent)
    }
}
