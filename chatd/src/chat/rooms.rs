//! Rooms: creating group and direct rooms, joining, inviting (with consent where the invitee
//! has blocked the inviter), leaving, administration (roles, kick, ban, settings, archive,
//! delete), and what a member sees of a room.

use projector::queries::{self, InvitationView, MemberView, RoomSummary};
use schema::events::{Role, RoomKind};
use schema::room::RoomCommand;
use schema::{DomainError, RoomId, RoomName, Topic, UserId, Visibility};

use super::Chat;
use super::accounts::Person;
use super::commands::Executed;
use super::error::Result;

/// What an administrator of a room may do (see `schema::room::RoomCommand` for the rules).
#[derive(Debug, Clone)]
pub enum Admin {
    SetRole {
        user: UserId,
        role: Role,
    },
    TransferOwnership {
        to: UserId,
    },
    Kick {
        user: UserId,
    },
    Ban {
        user: UserId,
    },
    Unban {
        user: UserId,
    },
    Settings {
        name: Option<RoomName>,
        topic: Option<Topic>,
        visibility: Option<Visibility>,
    },
    Archive {
        archived: bool,
    },
    Delete,
}

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
        if self.blocked_either(actor, other).await? {
            return Err(DomainError::Blocked.into());
        }
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
        let (summary, members, hidden) = self
            .models
            .read(move |c| {
                Ok((
                    queries::room(c, room, actor)?,
                    queries::members(c, room)?,
                    queries::block_partners(c, actor)?,
                ))
            })
            .await?;
        let summary = summary.ok_or(DomainError::NotFound("room"))?;
        Ok(RoomDetail {
            summary,
            members: self.with_presence(members, &hidden),
        })
    }

    /// Invites users into a group room. Those who have blocked the inviter get an invitation
    /// they must accept (`POST …/join`) or decline instead of being added.
    pub async fn invite(&self, actor: UserId, room: RoomId, users: Vec<UserId>) -> Result<()> {
        schema::room::check_request_size("user_ids", users.len())?;
        self.require_users(users.clone()).await?;
        let wanted = users.clone();
        let consent_needed = self
            .models
            .read(move |c| queries::blocking(c, &wanted, actor))
            .await?;
        let command = RoomCommand::Invite {
            by: actor,
            users,
            consent_needed,
        };
        self.room_command(room, command).await?;
        Ok(())
    }

    pub async fn leave(&self, actor: UserId, room: RoomId) -> Result<()> {
        self.room_command(room, RoomCommand::Leave { user: actor })
            .await?;
        Ok(())
    }

    /// Invitations waiting for the caller's consent.
    pub async fn invitations(&self, actor: UserId) -> Result<Vec<InvitationView>> {
        Ok(self
            .models
            .read(move |c| queries::invitations(c, actor))
            .await?)
    }

    pub async fn decline_invitation(&self, actor: UserId, room: RoomId) -> Result<()> {
        self.room_command(room, RoomCommand::DeclineInvitation { user: actor })
            .await?;
        Ok(())
    }

    /// A page of the room's members with their roles (members only), in the order they
    /// joined, after the cursor `after`.
    pub async fn member_page(
        &self,
        actor: UserId,
        room: RoomId,
        after: Option<(u64, UserId)>,
        limit: usize,
    ) -> Result<Vec<(MemberView, bool)>> {
        self.require_member(actor, room).await?;
        let (page, hidden) = self
            .models
            .read(move |c| {
                Ok((
                    queries::member_page(c, room, after, limit)?,
                    queries::block_partners(c, actor)?,
                ))
            })
            .await?;
        Ok(page
            .into_iter()
            .map(|m| {
                let online = self.is_visibly_online(m.user.user_id, &hidden);
                (m, online)
            })
            .collect())
    }

    /// Runs an administrative command, answering a non-member as for a room that does not
    /// exist.
    pub async fn administer(&self, actor: UserId, room: RoomId, command: Admin) -> Result<()> {
        self.require_member(actor, room).await?;
        let by = actor;
        let command = match command {
            Admin::SetRole { user, role } => RoomCommand::SetRole { by, user, role },
            Admin::TransferOwnership { to } => RoomCommand::TransferOwnership { by, to },
            Admin::Kick { user } => RoomCommand::Kick { by, user },
            Admin::Ban { user } => RoomCommand::Ban { by, user },
            Admin::Unban { user } => RoomCommand::Unban { by, user },
            Admin::Settings {
                name,
                topic,
                visibility,
            } => RoomCommand::ChangeSettings {
                by,
                name,
                topic,
                visibility,
            },
            Admin::Archive { archived } => RoomCommand::Archive { by, archived },
            Admin::Delete => RoomCommand::DeleteRoom { by },
        };
        self.room_command(room, command).await?;
        Ok(())
    }
}
