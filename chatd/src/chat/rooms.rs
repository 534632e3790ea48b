//! Rooms: creating group and direct rooms, joining, inviting, leaving, and what a member
//! sees of a room.

use projector::queries::{self, RoomSummary};
use schema::events::RoomKind;
use schema::room::RoomCommand;
use schema::{DomainError, RoomId, RoomName, UserId, Visibility};

use super::Chat;
use super::accounts::Person;
use super::commands::Executed;
use super::error::Result;

/// A room with its members.
#[derive(Debug, Clone)]
pub struct RoomDetail {
    pub summary: RoomSummary,
    pub members: Vec<Person>,
}

impl Chat {
    pub async fn create_room(
        &self,
        actor: UserId,
        name: RoomName,
        members: Vec<UserId>,
        visibility: Visibility,
    ) -> Result<RoomDetail> {
        // Refuse before looking a thousand users up.
        schema::room::check_request_size("member_ids", members.len())?;
        self.require_users(members.clone()).await?;
        let room_id = RoomId::new();
        let command = RoomCommand::Create {
            room_id,
            kind: RoomKind::Group,
            name: Some(name),
            visibility,
            creator: actor,
            members,
        };
        self.room_command(room_id, command).await?;
        self.room_detail(actor, room_id).await
    }

    /// The direct room between `actor` and `other`, created on first use. The flag says
    /// whether this call created it.
    pub async fn direct_room(&self, actor: UserId, other: UserId) -> Result<(RoomDetail, bool)> {
        if actor == other {
            return Err(DomainError::DirectWithSelf.into());
        }
        self.require_users(vec![other]).await?;
        let room_id = RoomId::direct(actor, other);
        let command = RoomCommand::Create {
            room_id,
            kind: RoomKind::Direct,
            name: None,
            visibility: Visibility::Private,
            creator: actor,
            members: vec![other],
        };
        let Executed { events, append, .. } = self.room_command(room_id, command).await?;
        let created = !events.is_empty() && append.is_some_and(|a| !a.duplicate);
        Ok((self.room_detail(actor, room_id).await?, created))
    }

    pub async fn public_rooms(&self, q: String, limit: usize) -> Result<Vec<RoomSummary>> {
        Ok(self
            .models
            .read(move |c| queries::public_rooms(c, &q, limit))
            .await?)
    }

    /// Joins a public room (no-op for a member; 404 `room_not_found` for a private one, as
    /// for a room that does not exist).
    pub async fn join(&self, actor: UserId, room: RoomId) -> Result<()> {
        self.room_command(room, RoomCommand::Join { user: actor })
            .await?;
        Ok(())
    }

    /// The caller's rooms and the log position that reflects, in one snapshot.
    pub async fn rooms_at_checkpoint(&self, actor: UserId) -> Result<(u64, Vec<RoomId>)> {
        Ok(self
            .models
            .read(move |c| queries::rooms_at_checkpoint(c, actor))
            .await?)
    }

    pub async fn rooms_of(&self, actor: UserId) -> Result<Vec<RoomSummary>> {
        Ok(self
            .models
            .read(move |c| queries::room_list(c, actor))
            .await?)
    }

    /// Refuses unless `actor` is a member of the room (404 `room_not_found` otherwise, whether
    /// or not the room exists).
    pub async fn require_member(&self, actor: UserId, room: RoomId) -> Result<()> {
        let member = self
            .models
            .read(move |c| queries::is_member(c, room, actor))
            .await?;
        if member {
            Ok(())
        } else {
            Err(DomainError::NotAMember.into())
        }
    }

    pub async fn room_detail(&self, actor: UserId, room: RoomId) -> Result<RoomDetail> {
        self.require_member(actor, room).await?;
        let (summary, members) = self
            .models
            .read(move |c| Ok((queries::room(c, room, actor)?, queries::members(c, room)?)))
            .await?;
        let summary = summary.ok_or(DomainError::NotFound("room"))?;
        Ok(RoomDetail {
            summary,
            members: self.with_presence(members),
        })
    }

    pub async fn invite(&self, actor: UserId, room: RoomId, users: Vec<UserId>) -> Result<()> {
        schema::room::check_request_size("user_ids", users.len())?;
        self.require_users(users.clone()).await?;
        self.room_command(room, RoomCommand::Invite { by: actor, users })
            .await?;
        Ok(())
    }

    pub async fn leave(&self, actor: UserId, room: RoomId) -> Result<()> {
        self.room_command(room, RoomCommand::Leave { user: actor })
            .await?;
        Ok(())
    }
}
