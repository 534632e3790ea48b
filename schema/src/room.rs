//! The room aggregate (`room-<id>`). The stream version of a room is the `seq` clients see.

use std::collections::{HashMap, HashSet};

use crate::events::{Event, Role, RoomKind};
use crate::ids::{MessageId, RoomId, UserId};
use crate::mentions::{self, Mention};
use crate::values::{Emoji, MessageBody, RoomName, Topic, Visibility, limits};
use crate::{Aggregate, DomainError, Result};

#[derive(Debug, Clone, Default)]
pub struct RoomAggregate {
    pub created: Option<Created>,
    pub members: HashSet<UserId>,
    /// Sender and deletion state of every message, for edit and delete rules.
    pub messages: HashMap<MessageId, MessageState>,
    /// Who reacted with what to which message (one reaction per user per emoji per message).
    pub reactions: HashMap<MessageId, HashMap<Emoji, HashSet<UserId>>>,
    /// The pinned messages.
    pub pinned: HashSet<MessageId>,
    /// Members above [`Role::Member`] (a group's owner and admins).
    pub roles: HashMap<UserId, Role>,
    /// When each member joined (events folded so far), for choosing a new owner.
    pub joined: HashMap<UserId, u64>,
    pub banned: HashSet<UserId>,
    /// Invitations waiting for the invitee's consent: invitee → inviter.
    pub pending: HashMap<UserId, UserId>,
    pub archived: bool,
    pub deleted: bool,
    folded: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Created {
    pub room_id: RoomId,
    pub kind: RoomKind,
    pub visibility: Visibility,
}

#[derive(Debug, Clone, Copy)]
pub struct MessageState {
    pub sender_id: UserId,
    pub deleted: bool,
    /// The thread root this message replies in.
    pub reply_to: Option<MessageId>,
}

#[derive(Debug, Clone)]
pub enum RoomCommand {
    /// Create a group room, or the direct room of two people (then `name` is `None` and
    /// `room_id` is [`RoomId::direct`]). Creating an existing direct room is a no-op.
    Create {
        room_id: RoomId,
        kind: RoomKind,
        name: Option<RoomName>,
        visibility: Visibility,
        creator: UserId,
        members: Vec<UserId>,
    },
    /// Invite users; those in `consent_needed` (they have blocked the inviter) get an
    /// invitation they must accept instead of being added.
    Invite {
        by: UserId,
        users: Vec<UserId>,
        consent_needed: Vec<UserId>,
    },
    Join {
        user: UserId,
    },
    Leave {
        user: UserId,
    },
    Send {
        sender: UserId,
        message_id: MessageId,
        body: MessageBody,
        client_msg_id: Option<String>,
        /// The message this one replies to (a reply to a reply joins its root's thread).
        reply_to: Option<MessageId>,
        /// Who of the room is online now, as the node taking the command sees presence: an
        /// `@here` in the body addresses these (members only). Empty when the body has none.
        online: Vec<UserId>,
    },
    Edit {
        sender: UserId,
        message_id: MessageId,
        body: MessageBody,
        /// As for `Send`: whom an `@here` in the new body addresses.
        online: Vec<UserId>,
    },
    Delete {
        sender: UserId,
        message_id: MessageId,
    },
    // ---- message features (issue 17)
    React {
        user: UserId,
        message_id: MessageId,
        emoji: Emoji,
    },
    Unreact {
        user: UserId,
        message_id: MessageId,
        emoji: Emoji,
    },
    Pin {
        user: UserId,
        message_id: MessageId,
    },
    Unpin {
        user: UserId,
        message_id: MessageId,
    },
    /// The invitee declines an invitation that waits for their consent.
    DeclineInvitation {
        user: UserId,
    },
    /// A deleted account leaves: like `Leave`, but also from direct rooms, and a no-op where
    /// they are not a member.
    Depart {
        user: UserId,
    },
    /// The owner makes a member an admin or an admin a member.
    SetRole {
        by: UserId,
        user: UserId,
        role: Role,
    },
    TransferOwnership {
        by: UserId,
        to: UserId,
    },
    /// An admin (or the owner) removes someone of a lower role.
    Kick {
        by: UserId,
        user: UserId,
    },
    /// Like `Kick`, and the user cannot come back until unbanned (also for non-members).
    Ban {
        by: UserId,
        user: UserId,
    },
    Unban {
        by: UserId,
        user: UserId,
    },
    /// Admins change the name, topic or visibility; `None` leaves a field as it is.
    ChangeSettings {
        by: UserId,
        name: Option<RoomName>,
        topic: Option<Topic>,
        visibility: Option<Visibility>,
    },
    /// The owner makes the room read-only (`archived: true`) or writable again.
    Archive {
        by: UserId,
        archived: bool,
    },
    /// The owner deletes the room.
    DeleteRoom {
        by: UserId,
    },
}

/// The events that remove a member from a room (they stop receiving it at once).
pub fn removed_member(event: &Event) -> Option<UserId> {
    match event {
        Event::MemberLeft { user_id }
        | Event::MemberKicked { user_id, .. }
        | Event::MemberBanned { user_id, .. } => Some(*user_id),
        _ => None,
    }
}

impl RoomAggregate {
    pub fn is_member(&self, user: UserId) -> bool {
        self.members.contains(&user)
    }

    fn existing(&self) -> Result<Created> {
        match self.created {
            Some(c) if !self.deleted => Ok(c),
            _ => Err(DomainError::NotFound("room")),
        }
    }

    /// A member's role (members without a stored role are plain members).
    pub fn role(&self, user: UserId) -> Role {
        self.roles.get(&user).copied().unwrap_or(Role::Member)
    }

    fn writable(&self) -> Result<()> {
        if self.archived {
            return Err(DomainError::RoomArchived);
        }
        Ok(())
    }

    /// `by` is a member of a group room with at least `role`.
    fn administrator(&self, by: UserId, role: Role) -> Result<Created> {
        let created = self.member(by)?;
        if created.kind == RoomKind::Direct {
            return Err(DomainError::NotAllowed(
                "a direct room has no administration",
            ));
        }
        if self.role(by) < role {
            return Err(DomainError::InsufficientRole);
        }
        Ok(created)
    }

    /// The events of `user` leaving: ownership passes first to the admin, else the member,
    /// who joined earliest.
    fn leaving(&self, user: UserId) -> Vec<Event> {
        let mut events = Vec::new();
        if self.role(user) == Role::Owner {
            let successor = self
                .members
                .iter()
                .filter(|m| **m != user)
                .min_by_key(|m| (std::cmp::Reverse(self.role(**m)), self.joined.get(m)));
            if let Some(to) = successor {
                events.push(Event::OwnershipTransferred {
                    from: user,
                    to: *to,
                });
            }
        }
        events.push(Event::MemberLeft { user_id: user });
        events
    }

    /// `by` may remove `user`: an admin or the owner, over someone of a lower role.
    fn may_remove(&self, by: UserId, user: UserId) -> Result<()> {
        self.administrator(by, Role::Admin)?;
        if self.is_member(user) && self.role(user) >= self.role(by) {
            return Err(DomainError::InsufficientRole);
        }
        Ok(())
    }

    fn member(&self, user: UserId) -> Result<Created> {
        let created = self.existing()?;
        if !self.is_member(user) {
            return Err(DomainError::NotAMember);
        }
        Ok(created)
    }

    fn own_message(&self, sender: UserId, message_id: MessageId) -> Result<()> {
        self.member(sender)?;
        match self.messages.get(&message_id) {
            None | Some(MessageState { deleted: true, .. }) => {
                Err(DomainError::NotFound("message"))
            }
            Some(m) if m.sender_id != sender => Err(DomainError::NotTheSender),
            Some(_) => Ok(()),
        }
    }

    /// A message `user` (a member) may react to, pin or reply to: one that exists here and is
    /// not deleted.
    fn live_message(&self, user: UserId, message_id: MessageId) -> Result<&MessageState> {
        self.member(user)?;
        match self.messages.get(&message_id) {
            Some(m) if !m.deleted => Ok(m),
            _ => Err(DomainError::NotFound("message")),
        }
    }

    fn reaction_count(&self, message_id: MessageId, emoji: &Emoji) -> usize {
        self.reactions
            .get(&message_id)
            .and_then(|r| r.get(emoji))
            .map_or(0, HashSet::len)
    }

    fn has_reacted(&self, user: UserId, message_id: MessageId, emoji: &Emoji) -> bool {
        self.reactions
            .get(&message_id)
            .and_then(|r| r.get(emoji))
            .is_some_and(|users| users.contains(&user))
    }

    /// The mentions of `body`, `@here` resolved to the members among `online`.
    fn mentions(&self, body: &MessageBody, online: &[UserId]) -> Vec<Mention> {
        let mut found = mentions::parse(body.as_str(), |u| self.is_member(u));
        for m in &mut found {
            if let Mention::Here { user_ids } = m {
                let mut here: Vec<UserId> = online
                    .iter()
                    .copied()
                    .filter(|u| self.is_member(*u))
                    .collect();
                here.sort_unstable();
                here.dedup();
                *user_ids = Some(here);
            }
        }
        found
    }

    /// The thread a reply to `parent` belongs in: `parent`'s own thread root if it is a reply.
    fn thread_root(&self, user: UserId, parent: MessageId) -> Result<MessageId> {
        match self.live_message(user, parent) {
            Ok(m) => Ok(m.reply_to.unwrap_or(parent)),
            Err(DomainError::NotFound(_)) => Err(DomainError::invalid(
                "reply_to",
                "no such message in this room",
            )),
            Err(e) => Err(e),
        }
    }
}

/// Refuses a request naming more than [`limits::MEMBERS_PER_REQUEST`] users in `field`.
pub fn check_request_size(field: &'static str, n: usize) -> Result<()> {
    if n > limits::MEMBERS_PER_REQUEST {
        return Err(DomainError::Invalid {
            field,
            reason: format!(
                "at most {} members per request",
                limits::MEMBERS_PER_REQUEST
            ),
        });
    }
    Ok(())
}

impl Aggregate for RoomAggregate {
    type Command = RoomCommand;

    fn decide(&self, command: &RoomCommand) -> Result<Vec<Event>> {
        match command {
            RoomCommand::Create {
                room_id,
                kind,
                name,
                visibility,
                creator,
                members,
            } => {
                check_request_size("member_ids", members.len())?;
                if self.created.is_some() {
                    return match kind {
                        RoomKind::Direct => Ok(vec![]),
                        RoomKind::Group => Err(DomainError::NotAllowed("the room already exists")),
                    };
                }
                let mut all = vec![*creator];
                let mut seen: HashSet<UserId> = HashSet::from([*creator]);
                all.extend(members.iter().copied().filter(|m| seen.insert(*m)));
                if *kind == RoomKind::Direct && all.len() != 2 {
                    return Err(DomainError::DirectWithSelf);
                }
                Ok(vec![Event::RoomCreated {
                    room_id: *room_id,
                    kind: *kind,
                    name: name.clone(),
                    visibility: *visibility,
                    created_by: *creator,
                    members: all,
                }])
            }
            RoomCommand::Invite {
                by,
                users,
                consent_needed,
            } => {
                check_request_size("user_ids", users.len())?;
                let created = self.member(*by)?;
                if created.kind == RoomKind::Direct {
                    return Err(DomainError::NotAllowed(
                        "a direct room has exactly two members",
                    ));
                }
                self.writable()?;
                if users.iter().any(|u| self.banned.contains(u)) {
                    return Err(DomainError::Banned);
                }
                let mut seen = HashSet::new();
                Ok(users
                    .iter()
                    .filter(|u| !self.is_member(**u) && seen.insert(**u))
                    .filter_map(|u| {
                        if !consent_needed.contains(u) {
                            Some(Event::MemberJoined {
                                user_id: *u,
                                invited_by: Some(*by),
                            })
                        } else if self.pending.contains_key(u) {
                            None
                        } else {
                            Some(Event::InvitationPending {
                                user_id: *u,
                                invited_by: *by,
                            })
                        }
                    })
                    .collect())
            }
            RoomCommand::Join { user } => {
                let created = self.existing()?;
                if self.is_member(*user) {
                    return Ok(vec![]);
                }
                if self.banned.contains(user) {
                    return Err(DomainError::Banned);
                }
                self.writable()?;
                if let Some(inviter) = self.pending.get(user) {
                    return Ok(vec![Event::MemberJoined {
                        user_id: *user,
                        invited_by: Some(*inviter),
                    }]);
                }
                if created.visibility != Visibility::Public || created.kind == RoomKind::Direct {
                    return Err(DomainError::RoomNotPublic);
                }
                Ok(vec![Event::MemberJoined {
                    user_id: *user,
                    invited_by: None,
                }])
            }
            RoomCommand::DeclineInvitation { user } => {
                self.existing()?;
                if !self.pending.contains_key(user) {
                    return Err(DomainError::NotFound("invitation"));
                }
                Ok(vec![Event::InvitationDeclined { user_id: *user }])
            }
            RoomCommand::Leave { user } => {
                let created = self.member(*user)?;
                if created.kind == RoomKind::Direct {
                    return Err(DomainError::NotAllowed("a direct room cannot be left"));
                }
                Ok(self.leaving(*user))
            }
            RoomCommand::Depart { user } => {
                if self.existing().is_err() || !self.is_member(*user) {
                    return Ok(vec![]);
                }
                Ok(self.leaving(*user))
            }
            RoomCommand::SetRole { by, user, role } => {
                self.administrator(*by, Role::Owner)?;
                self.writable()?;
                if !self.is_member(*user) {
                    return Err(DomainError::NotFound("member"));
                }
                if *role == Role::Owner || *user == *by {
                    return Err(DomainError::NotAllowed(
                        "use the ownership transfer to change the owner",
                    ));
                }
                if self.role(*user) == *role {
                    return Ok(vec![]);
                }
                Ok(vec![Event::MemberRoleChanged {
                    user_id: *user,
                    role: *role,
                    by: *by,
                }])
            }
            RoomCommand::TransferOwnership { by, to } => {
                self.administrator(*by, Role::Owner)?;
                self.writable()?;
                if !self.is_member(*to) {
                    return Err(DomainError::NotFound("member"));
                }
                if *to == *by {
                    return Ok(vec![]);
                }
                Ok(vec![Event::OwnershipTransferred { from: *by, to: *to }])
            }
            RoomCommand::Kick { by, user } => {
                self.may_remove(*by, *user)?;
                if !self.is_member(*user) {
                    return Err(DomainError::NotFound("member"));
                }
                Ok(vec![Event::MemberKicked {
                    user_id: *user,
                    by: *by,
                }])
            }
            RoomCommand::Ban { by, user } => {
                self.may_remove(*by, *user)?;
                if *user == *by {
                    return Err(DomainError::NotAllowed("you cannot ban yourself"));
                }
                if self.banned.contains(user) {
                    return Ok(vec![]);
                }
                Ok(vec![Event::MemberBanned {
                    user_id: *user,
                    by: *by,
                }])
            }
            RoomCommand::Unban { by, user } => {
                self.administrator(*by, Role::Admin)?;
                if !self.banned.contains(user) {
                    return Ok(vec![]);
                }
                Ok(vec![Event::MemberUnbanned {
                    user_id: *user,
                    by: *by,
                }])
            }
            RoomCommand::ChangeSettings {
                by,
                name,
                topic,
                visibility,
            } => {
                let created = self.administrator(*by, Role::Admin)?;
                self.writable()?;
                let visibility = visibility.filter(|v| *v != created.visibility);
                if name.is_none() && topic.is_none() && visibility.is_none() {
                    return Ok(vec![]);
                }
                Ok(vec![Event::RoomSettingsChanged {
                    by: *by,
                    name: name.clone(),
                    topic: topic.clone(),
                    visibility,
                }])
            }
            RoomCommand::Archive { by, archived } => {
                self.administrator(*by, Role::Owner)?;
                Ok(match (self.archived, *archived) {
                    (false, true) => vec![Event::RoomArchived { by: *by }],
                    (true, false) => vec![Event::RoomUnarchived { by: *by }],
                    _ => vec![],
                })
            }
            RoomCommand::DeleteRoom { by } => {
                self.administrator(*by, Role::Owner)?;
                Ok(vec![Event::RoomDeleted { by: *by }])
            }
            RoomCommand::Send {
                sender,
                message_id,
                body,
                client_msg_id,
                reply_to,
                online,
            } => {
                // A retry of a send that was stored is answered with the original (the log
                // deduplicates by id) even if the sender has left since.
                if let Some(m) = self.messages.get(message_id)
                    && m.sender_id == *sender
                {
                    return Ok(vec![Event::MessageSent {
                        message_id: *message_id,
                        sender_id: *sender,
                        body: body.clone(),
                        client_msg_id: client_msg_id.clone(),
                        reply_to: m.reply_to,
                        mentions: Vec::new(),
                    }]);
                }
                self.member(*sender)?;
                self.writable()?;
                let reply_to = reply_to
                    .map(|parent| self.thread_root(*sender, parent))
                    .transpose()?;
                Ok(vec![Event::MessageSent {
                    message_id: *message_id,
                    sender_id: *sender,
                    body: body.clone(),
                    client_msg_id: client_msg_id.clone(),
                    reply_to,
                    mentions: self.mentions(body, online),
                }])
            }
            RoomCommand::Edit {
                sender,
                message_id,
                body,
                online,
            } => {
                self.own_message(*sender, *message_id)?;
                self.writable()?;
                Ok(vec![Event::MessageEdited {
                    message_id: *message_id,
                    sender_id: *sender,
                    body: body.clone(),
                    mentions: self.mentions(body, online),
                }])
            }
            RoomCommand::Delete { sender, message_id } => {
                self.own_message(*sender, *message_id)?;
                self.writable()?;
                Ok(vec![Event::MessageDeleted {
                    message_id: *message_id,
                    sender_id: *sender,
                }])
            }
            RoomCommand::React {
                user,
                message_id,
                emoji,
            } => {
                self.live_message(*user, *message_id)?;
                self.writable()?;
                if self.has_reacted(*user, *message_id, emoji) {
                    return Ok(vec![]);
                }
                Ok(vec![Event::ReactionAdded {
                    message_id: *message_id,
                    user_id: *user,
                    emoji: emoji.clone(),
                    count: self.reaction_count(*message_id, emoji) as u64 + 1,
                }])
            }
            RoomCommand::Unreact {
                user,
                message_id,
                emoji,
            } => {
                self.live_message(*user, *message_id)?;
                self.writable()?;
                if !self.has_reacted(*user, *message_id, emoji) {
                    return Ok(vec![]);
                }
                Ok(vec![Event::ReactionRemoved {
                    message_id: *message_id,
                    user_id: *user,
                    emoji: emoji.clone(),
                    count: self.reaction_count(*message_id, emoji) as u64 - 1,
                }])
            }
            RoomCommand::Pin { user, message_id } => {
                self.live_message(*user, *message_id)?;
                self.writable()?;
                if self.pinned.contains(message_id) {
                    return Ok(vec![]);
                }
                if self.pinned.len() >= limits::PINS_PER_ROOM {
                    return Err(DomainError::NotAllowed(
                        "a room has at most 50 pinned messages; unpin one first",
                    ));
                }
                Ok(vec![Event::MessagePinned {
                    message_id: *message_id,
                    pinned_by: *user,
                }])
            }
            RoomCommand::Unpin { user, message_id } => {
                self.member(*user)?;
                self.writable()?;
                if !self.pinned.contains(message_id) {
                    return Ok(vec![]);
                }
                Ok(vec![Event::MessageUnpinned {
                    message_id: *message_id,
                    unpinned_by: *user,
                }])
            }
        }
    }

    fn evolve(&mut self, event: &Event) {
        self.folded += 1;
        if let Some(user) = removed_member(event) {
            self.members.remove(&user);
            self.roles.remove(&user);
            self.joined.remove(&user);
        }
        match event {
            Event::RoomCreated {
                room_id,
                kind,
                visibility,
                members,
                created_by,
                ..
            } => {
                self.created = Some(Created {
                    room_id: *room_id,
                    kind: *kind,
                    visibility: *visibility,
                });
                for m in members {
                    self.members.insert(*m);
                    self.joined.insert(*m, self.folded);
                }
                if *kind == RoomKind::Group {
                    self.roles.insert(*created_by, Role::Owner);
                }
            }
            Event::MemberJoined { user_id, .. } => {
                self.members.insert(*user_id);
                self.joined.insert(*user_id, self.folded);
                self.pending.remove(user_id);
            }
            Event::MemberBanned { user_id, .. } => {
                self.banned.insert(*user_id);
                self.pending.remove(user_id);
            }
            Event::MemberUnbanned { user_id, .. } => {
                self.banned.remove(user_id);
            }
            Event::InvitationPending {
                user_id,
                invited_by,
            } => {
                self.pending.insert(*user_id, *invited_by);
            }
            Event::InvitationDeclined { user_id } => {
                self.pending.remove(user_id);
            }
            Event::MemberRoleChanged { user_id, role, .. } => {
                if *role == Role::Member {
                    self.roles.remove(user_id);
                } else {
                    self.roles.insert(*user_id, *role);
                }
            }
            Event::OwnershipTransferred { from, to } => {
                self.roles.insert(*to, Role::Owner);
                if self.is_member(*from) {
                    self.roles.insert(*from, Role::Admin);
                }
            }
            Event::RoomSettingsChanged {
                visibility: Some(v),
                ..
            } => {
                if let Some(c) = &mut self.created {
                    c.visibility = *v;
                }
            }
            Event::RoomArchived { .. } => self.archived = true,
            Event::RoomUnarchived { .. } => self.archived = false,
            Event::RoomDeleted { .. } => {
                self.deleted = true;
                self.members.clear();
                self.roles.clear();
                self.joined.clear();
                self.pending.clear();
            }
            Event::MessageSent {
                message_id,
                sender_id,
                reply_to,
                ..
            } => {
                self.messages.insert(
                    *message_id,
                    MessageState {
                        sender_id: *sender_id,
                        deleted: false,
                        reply_to: *reply_to,
                    },
                );
            }
            Event::MessageDeleted { message_id, .. } => {
                if let Some(m) = self.messages.get_mut(message_id) {
                    m.deleted = true;
                }
                // A deleted message keeps no reactions and no pin.
                self.reactions.remove(message_id);
                self.pinned.remove(message_id);
            }
            Event::ReactionAdded {
                message_id,
                user_id,
                emoji,
                ..
            } => {
                self.reactions
                    .entry(*message_id)
                    .or_default()
                    .entry(emoji.clone())
                    .or_default()
                    .insert(*user_id);
            }
            Event::ReactionRemoved {
                message_id,
                user_id,
                emoji,
                ..
            } => {
                if let Some(by_emoji) = self.reactions.get_mut(message_id) {
                    if let Some(users) = by_emoji.get_mut(emoji) {
                        users.remove(user_id);
                        if users.is_empty() {
                            by_emoji.remove(emoji);
                        }
                    }
                    if by_emoji.is_empty() {
                        self.reactions.remove(message_id);
                    }
                }
            }
            Event::MessagePinned { message_id, .. } => {
                self.pinned.insert(*message_id);
            }
            Event::MessageUnpinned { message_id, .. } => {
                self.pinned.remove(message_id);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::given;

    struct World {
        room: RoomId,
        alice: UserId,
        bob: UserId,
        carol: UserId,
    }

    fn world() -> World {
        World {
            room: RoomId::new(),
            alice: UserId::new(),
            bob: UserId::new(),
            carol: UserId::new(),
        }
    }

    fn group(w: &World, visibility: Visibility) -> Event {
        Event::RoomCreated {
            room_id: w.room,
            kind: RoomKind::Group,
            name: Some(RoomName::parse("general").unwrap()),
            visibility,
            created_by: w.alice,
            members: vec![w.alice, w.bob],
        }
    }

    fn body(s: &str) -> MessageBody {
        MessageBody::parse(s).unwrap()
    }

    fn sent(id: MessageId, sender: UserId) -> Event {
        Event::MessageSent {
            message_id: id,
            sender_id: sender,
            body: body("hi"),
            client_msg_id: None,
            reply_to: None,
            mentions: vec![],
        }
    }

    #[test]
    fn create_puts_creator_first_and_drops_duplicate_members() {
        let w = world();
        given::<RoomAggregate>(&[])
            .when(RoomCommand::Create {
                room_id: w.room,
                kind: RoomKind::Group,
                name: Some(RoomName::parse("general").unwrap()),
                visibility: Visibility::Private,
                creator: w.alice,
                members: vec![w.bob, w.alice, w.bob],
            })
            .then(&[group(&w, Visibility::Private)]);
    }

    #[test]
    fn direct_room_creation_is_get_or_create() {
        let w = world();
        let create = || RoomCommand::Create {
            room_id: RoomId::direct(w.alice, w.bob),
            kind: RoomKind::Direct,
            name: None,
            visibility: Visibility::Private,
            creator: w.alice,
            members: vec![w.bob],
        };
        let first = given::<RoomAggregate>(&[]).when(create()).events();
        assert_eq!(first.len(), 1);
        given::<RoomAggregate>(&first).when(create()).then(&[]);
    }

    #[test]
    fn direct_room_with_yourself_is_refused() {
        let w = world();
        given::<RoomAggregate>(&[])
            .when(RoomCommand::Create {
                room_id: RoomId::direct(w.alice, w.alice),
                kind: RoomKind::Direct,
                name: None,
                visibility: Visibility::Private,
                creator: w.alice,
                members: vec![w.alice],
            })
            .then_error(DomainError::DirectWithSelf);
    }

    #[test]
    fn too_many_members_in_one_request_is_refused() {
        let w = world();
        let members = (0..=limits::MEMBERS_PER_REQUEST)
            .map(|_| UserId::new())
            .collect();
        let result = given::<RoomAggregate>(&[])
            .when(RoomCommand::Create {
                room_id: w.room,
                kind: RoomKind::Group,
                name: Some(RoomName::parse("big").unwrap()),
                visibility: Visibility::Private,
                creator: w.alice,
                members,
            })
            .0;
        assert!(matches!(
            result,
            Err(DomainError::Invalid {
                field: "member_ids",
                ..
            })
        ));
    }

    #[test]
    fn members_send_and_others_cannot() {
        let w = world();
        let id = MessageId::new();
        let send = |sender| RoomCommand::Send {
            sender,
            message_id: id,
            body: body("hi"),
            client_msg_id: None,
            reply_to: None,
            online: vec![],
        };
        given::<RoomAggregate>(&[group(&w, Visibility::Private)])
            .when(send(w.bob))
            .then(&[sent(id, w.bob)]);
        given::<RoomAggregate>(&[group(&w, Visibility::Private)])
            .when(send(w.carol))
            .then_error(DomainError::NotAMember);
        given::<RoomAggregate>(&[])
            .when(send(w.alice))
            .then_error(DomainError::NotFound("room"));
    }

    #[test]
    fn invite_adds_only_new_members_and_only_by_a_member() {
        let w = world();
        given::<RoomAggregate>(&[group(&w, Visibility::Private)])
            .when(RoomCommand::Invite {
                by: w.alice,
                users: vec![w.bob, w.carol, w.carol],
                consent_needed: vec![],
            })
            .then(&[Event::MemberJoined {
                user_id: w.carol,
                invited_by: Some(w.alice),
            }]);
        given::<RoomAggregate>(&[group(&w, Visibility::Private)])
            .when(RoomCommand::Invite {
                by: w.carol,
                users: vec![w.carol],
                consent_needed: vec![],
            })
            .then_error(DomainError::NotAMember);
    }

    #[test]
    fn leaving_ends_membership() {
        let w = world();
        let history = [
            group(&w, Visibility::Private),
            Event::MemberLeft { user_id: w.bob },
        ];
        given::<RoomAggregate>(&history)
            .when(RoomCommand::Send {
                sender: w.bob,
                message_id: MessageId::new(),
                body: body("still here?"),
                client_msg_id: None,
                reply_to: None,
                online: vec![],
            })
            .then_error(DomainError::NotAMember);
        given::<RoomAggregate>(&history)
            .when(RoomCommand::Leave { user: w.bob })
            .then_error(DomainError::NotAMember);
        // ...but a retry of a send from before leaving still gets its original answer.
        let id = MessageId::new();
        let before_leaving = [
            group(&w, Visibility::Private),
            sent(id, w.bob),
            Event::MemberLeft { user_id: w.bob },
        ];
        given::<RoomAggregate>(&before_leaving)
            .when(RoomCommand::Send {
                sender: w.bob,
                message_id: id,
                body: body("hi"),
                client_msg_id: None,
                reply_to: None,
                online: vec![],
            })
            .then(&[sent(id, w.bob)]);
    }

    #[test]
    fn only_public_rooms_can_be_joined_without_invite() {
        let w = world();
        given::<RoomAggregate>(&[group(&w, Visibility::Private)])
            .when(RoomCommand::Join { user: w.carol })
            .then_error(DomainError::RoomNotPublic);
        given::<RoomAggregate>(&[group(&w, Visibility::Public)])
            .when(RoomCommand::Join { user: w.carol })
            .then(&[Event::MemberJoined {
                user_id: w.carol,
                invited_by: None,
            }]);
        given::<RoomAggregate>(&[group(&w, Visibility::Public)])
            .when(RoomCommand::Join { user: w.bob })
            .then(&[]);
    }

    #[test]
    fn only_the_sender_edits_or_deletes_and_deleted_messages_are_gone() {
        let w = world();
        let id = MessageId::new();
        let history = [group(&w, Visibility::Private), sent(id, w.alice)];
        given::<RoomAggregate>(&history)
            .when(RoomCommand::Edit {
                sender: w.bob,
                message_id: id,
                body: body("x"),
                online: vec![],
            })
            .then_error(DomainError::NotTheSender);
        given::<RoomAggregate>(&history)
            .when(RoomCommand::Delete {
                sender: w.alice,
                message_id: id,
            })
            .then(&[Event::MessageDeleted {
                message_id: id,
                sender_id: w.alice,
            }]);
        let deleted = [
            history[0].clone(),
            history[1].clone(),
            Event::MessageDeleted {
                message_id: id,
                sender_id: w.alice,
            },
        ];
        given::<RoomAggregate>(&deleted)
            .when(RoomCommand::Edit {
                sender: w.alice,
                message_id: id,
                body: body("x"),
                online: vec![],
            })
            .then_error(DomainError::NotFound("message"));
    }

    // ---- message features (issue 17)

    fn emoji(s: &str) -> Emoji {
        Emoji::parse(s).unwrap()
    }

    fn react(user: UserId, message_id: MessageId, e: &str) -> RoomCommand {
        RoomCommand::React {
            user,
            message_id,
            emoji: emoji(e),
        }
    }

    fn added(message_id: MessageId, user_id: UserId, e: &str, count: u64) -> Event {
        Event::ReactionAdded {
            message_id,
            user_id,
            emoji: emoji(e),
            count,
        }
    }

    #[test]
    fn one_reaction_per_user_per_emoji_per_message_with_counts() {
        let w = world();
        let id = MessageId::new();
        let mut history = vec![group(&w, Visibility::Private), sent(id, w.alice)];
        given::<RoomAggregate>(&history)
            .when(react(w.bob, id, "👍"))
            .then(&[added(id, w.bob, "👍", 1)]);
        history.push(added(id, w.bob, "👍", 1));
        // Again: already there, nothing to store.
        given::<RoomAggregate>(&history)
            .when(react(w.bob, id, "👍"))
            .then(&[]);
        given::<RoomAggregate>(&history)
            .when(react(w.alice, id, "👍"))
            .then(&[added(id, w.alice, "👍", 2)]);
        given::<RoomAggregate>(&history)
            .when(react(w.bob, id, "🎉"))
            .then(&[added(id, w.bob, "🎉", 1)]);
        given::<RoomAggregate>(&history)
            .when(react(w.carol, id, "👍"))
            .then_error(DomainError::NotAMember);
        let unreact = |user| RoomCommand::Unreact {
            user,
            message_id: id,
            emoji: emoji("👍"),
        };
        given::<RoomAggregate>(&history)
            .when(unreact(w.bob))
            .then(&[Event::ReactionRemoved {
                message_id: id,
                user_id: w.bob,
                emoji: emoji("👍"),
                count: 0,
            }]);
        given::<RoomAggregate>(&history)
            .when(unreact(w.alice))
            .then(&[]);
    }

    #[test]
    fn a_deleted_message_loses_reactions_and_pin_and_takes_no_new_ones() {
        let w = world();
        let id = MessageId::new();
        let history = [
            group(&w, Visibility::Private),
            sent(id, w.alice),
            added(id, w.bob, "👍", 1),
            Event::MessagePinned {
                message_id: id,
                pinned_by: w.bob,
            },
            Event::MessageDeleted {
                message_id: id,
                sender_id: w.alice,
            },
        ];
        let state = RoomAggregate::replay(&history);
        assert!(state.reactions.is_empty() && state.pinned.is_empty());
        given::<RoomAggregate>(&history)
            .when(react(w.bob, id, "👍"))
            .then_error(DomainError::NotFound("message"));
        given::<RoomAggregate>(&history)
            .when(RoomCommand::Pin {
                user: w.bob,
                message_id: id,
            })
            .then_error(DomainError::NotFound("message"));
        given::<RoomAggregate>(&history)
            .when(react(w.bob, MessageId::new(), "👍"))
            .then_error(DomainError::NotFound("message"));
    }

    #[test]
    fn pins_are_idempotent_and_bounded() {
        let w = world();
        let mut history = vec![group(&w, Visibility::Private)];
        let ids: Vec<MessageId> = (0..=limits::PINS_PER_ROOM)
            .map(|_| MessageId::new())
            .collect();
        for id in &ids {
            history.push(sent(*id, w.alice));
        }
        let pin = |message_id| RoomCommand::Pin {
            user: w.bob,
            message_id,
        };
        given::<RoomAggregate>(&history)
            .when(pin(ids[0]))
            .then(&[Event::MessagePinned {
                message_id: ids[0],
                pinned_by: w.bob,
            }]);
        for id in &ids[..limits::PINS_PER_ROOM] {
            history.push(Event::MessagePinned {
                message_id: *id,
                pinned_by: w.bob,
            });
        }
        given::<RoomAggregate>(&history).when(pin(ids[0])).then(&[]);
        assert!(matches!(
            given::<RoomAggregate>(&history)
                .when(pin(ids[limits::PINS_PER_ROOM]))
                .0,
            Err(DomainError::NotAllowed(_))
        ));
        given::<RoomAggregate>(&history)
            .when(RoomCommand::Unpin {
                user: w.alice,
                message_id: ids[3],
            })
            .then(&[Event::MessageUnpinned {
                message_id: ids[3],
                unpinned_by: w.alice,
            }]);
        given::<RoomAggregate>(&history)
            .when(RoomCommand::Unpin {
                user: w.alice,
                message_id: ids[limits::PINS_PER_ROOM],
            })
            .then(&[]);
    }

    fn send_reply(
        sender: UserId,
        message_id: MessageId,
        text: &str,
        reply_to: Option<MessageId>,
    ) -> RoomCommand {
        RoomCommand::Send {
            sender,
            message_id,
            body: body(text),
            client_msg_id: None,
            reply_to,
            online: vec![],
        }
    }

    #[test]
    fn replies_join_the_root_thread_and_must_reply_to_a_live_message() {
        let w = world();
        let (root, reply, deleted) = (MessageId::new(), MessageId::new(), MessageId::new());
        let history = [
            group(&w, Visibility::Private),
            sent(root, w.alice),
            Event::MessageSent {
                message_id: reply,
                sender_id: w.bob,
                body: body("re"),
                client_msg_id: None,
                reply_to: Some(root),
                mentions: vec![],
            },
            sent(deleted, w.alice),
            Event::MessageDeleted {
                message_id: deleted,
                sender_id: w.alice,
            },
        ];
        let id = MessageId::new();
        let events = given::<RoomAggregate>(&history)
            .when(send_reply(w.alice, id, "re re", Some(reply)))
            .events();
        assert!(
            matches!(&events[..], [Event::MessageSent { reply_to: Some(r), .. }] if *r == root)
        );
        for parent in [deleted, MessageId::new()] {
            assert!(matches!(
                given::<RoomAggregate>(&history)
                    .when(send_reply(w.alice, id, "x", Some(parent)))
                    .0,
                Err(DomainError::Invalid {
                    field: "reply_to",
                    ..
                })
            ));
        }
    }

    #[test]
    fn mentions_of_members_are_parsed_on_send_and_edit() {
        let w = world();
        let bob = UserId::for_username(&crate::Username::parse("bob").unwrap());
        let created = Event::RoomCreated {
            room_id: w.room,
            kind: RoomKind::Group,
            name: Some(RoomName::parse("general").unwrap()),
            visibility: Visibility::Private,
            created_by: w.alice,
            members: vec![w.alice, bob],
        };
        let id = MessageId::new();
        let events = given::<RoomAggregate>(std::slice::from_ref(&created))
            .when(send_reply(w.alice, id, "@bob @nobody and @here", None))
            .events();
        // Nobody was online: `@here` addresses no one.
        let here = |users: Vec<UserId>| Mention::Here {
            user_ids: Some(users),
        };
        assert!(matches!(&events[..], [Event::MessageSent { mentions, .. }]
            if *mentions == vec![Mention::User { user_id: bob }, here(vec![])]));
        let history = [created, events[0].clone()];
        given::<RoomAggregate>(&history)
            .when(RoomCommand::Edit {
                sender: w.alice,
                message_id: id,
                body: body("never mind, @all"),
                online: vec![],
            })
            .then(&[Event::MessageEdited {
                message_id: id,
                sender_id: w.alice,
                body: body("never mind, @all"),
                mentions: vec![Mention::All],
            }]);
    }

    #[test]
    fn here_addresses_the_members_online_when_it_is_sent_or_edited() {
        let w = world();
        let created = Event::RoomCreated {
            room_id: w.room,
            kind: RoomKind::Group,
            name: Some(RoomName::parse("general").unwrap()),
            visibility: Visibility::Private,
            created_by: w.alice,
            members: vec![w.alice, w.bob, w.carol],
        };
        let (id, outsider) = (MessageId::new(), UserId::new());
        // Bob and an outsider are online; Carol is not.
        let online = vec![outsider, w.bob, w.bob];
        let events = given::<RoomAggregate>(std::slice::from_ref(&created))
            .when(RoomCommand::Send {
                sender: w.alice,
                message_id: id,
                body: body("@here standup"),
                client_msg_id: None,
                reply_to: None,
                online: online.clone(),
            })
            .events();
        let here = Mention::Here {
            user_ids: Some(vec![w.bob]),
        };
        assert!(matches!(&events[..], [Event::MessageSent { mentions, .. }]
            if *mentions == vec![here.clone()]));
        // An edit resolves it again, from who is online at the edit.
        given::<RoomAggregate>(&[created, events[0].clone()])
            .when(RoomCommand::Edit {
                sender: w.alice,
                message_id: id,
                body: body("@here standup now"),
                online: vec![w.carol],
            })
            .then(&[Event::MessageEdited {
                message_id: id,
                sender_id: w.alice,
                body: body("@here standup now"),
                mentions: vec![Mention::Here {
                    user_ids: Some(vec![w.carol]),
                }],
            }]);
    }
    // ---- administration

    fn with_admin_bob(w: &World) -> Vec<Event> {
        vec![
            group(w, Visibility::Private),
            Event::MemberJoined {
                user_id: w.carol,
                invited_by: Some(w.alice),
            },
            Event::MemberRoleChanged {
                user_id: w.bob,
                role: Role::Admin,
                by: w.alice,
            },
        ]
    }

    #[test]
    fn the_creator_owns_a_group_and_only_the_owner_sets_roles() {
        let w = world();
        let room = RoomAggregate::replay(&[group(&w, Visibility::Private)]);
        assert_eq!(room.role(w.alice), Role::Owner);
        assert_eq!(room.role(w.bob), Role::Member);
        given::<RoomAggregate>(&[group(&w, Visibility::Private)])
            .when(RoomCommand::SetRole {
                by: w.alice,
                user: w.bob,
                role: Role::Admin,
            })
            .then(&[Event::MemberRoleChanged {
                user_id: w.bob,
                role: Role::Admin,
                by: w.alice,
            }]);
        given::<RoomAggregate>(&with_admin_bob(&w))
            .when(RoomCommand::SetRole {
                by: w.bob,
                user: w.carol,
                role: Role::Admin,
            })
            .then_error(DomainError::InsufficientRole);
        given::<RoomAggregate>(&[group(&w, Visibility::Private)])
            .when(RoomCommand::SetRole {
                by: w.alice,
                user: w.bob,
                role: Role::Owner,
            })
            .then_error(DomainError::NotAllowed(
                "use the ownership transfer to change the owner",
            ));
    }

    #[test]
    fn admins_kick_members_but_not_their_equals_or_the_owner() {
        let w = world();
        let h = with_admin_bob(&w);
        given::<RoomAggregate>(&h)
            .when(RoomCommand::Kick {
                by: w.bob,
                user: w.carol,
            })
            .then(&[Event::MemberKicked {
                user_id: w.carol,
                by: w.bob,
            }]);
        given::<RoomAggregate>(&h)
            .when(RoomCommand::Kick {
                by: w.bob,
                user: w.alice,
            })
            .then_error(DomainError::InsufficientRole);
        given::<RoomAggregate>(&h)
            .when(RoomCommand::Kick {
                by: w.carol,
                user: w.bob,
            })
            .then_error(DomainError::InsufficientRole);
        // A kicked member may be invited again.
        let mut kicked = h.clone();
        kicked.push(Event::MemberKicked {
            user_id: w.carol,
            by: w.bob,
        });
        given::<RoomAggregate>(&kicked)
            .when(RoomCommand::Invite {
                by: w.alice,
                users: vec![w.carol],
                consent_needed: vec![],
            })
            .then(&[Event::MemberJoined {
                user_id: w.carol,
                invited_by: Some(w.alice),
            }]);
    }

    #[test]
    fn a_banned_user_cannot_rejoin_or_be_invited_until_unbanned() {
        let w = world();
        let mut h = vec![group(&w, Visibility::Public)];
        h.push(Event::MemberBanned {
            user_id: w.bob,
            by: w.alice,
        });
        let room = RoomAggregate::replay(&h);
        assert!(!room.is_member(w.bob));
        given::<RoomAggregate>(&h)
            .when(RoomCommand::Join { user: w.bob })
            .then_error(DomainError::Banned);
        given::<RoomAggregate>(&h)
            .when(RoomCommand::Invite {
                by: w.alice,
                users: vec![w.carol, w.bob],
                consent_needed: vec![],
            })
            .then_error(DomainError::Banned);
        given::<RoomAggregate>(&h)
            .when(RoomCommand::Ban {
                by: w.alice,
                user: w.bob,
            })
            .then(&[]);
        h.push(Event::MemberUnbanned {
            user_id: w.bob,
            by: w.alice,
        });
        given::<RoomAggregate>(&h)
            .when(RoomCommand::Join { user: w.bob })
            .then(&[Event::MemberJoined {
                user_id: w.bob,
                invited_by: None,
            }]);
    }

    #[test]
    fn ownership_moves_by_transfer_and_when_the_owner_leaves() {
        let w = world();
        let h = with_admin_bob(&w);
        given::<RoomAggregate>(&h)
            .when(RoomCommand::TransferOwnership {
                by: w.alice,
                to: w.carol,
            })
            .then(&[Event::OwnershipTransferred {
                from: w.alice,
                to: w.carol,
            }]);
        let mut moved = h.clone();
        moved.push(Event::OwnershipTransferred {
            from: w.alice,
            to: w.carol,
        });
        let room = RoomAggregate::replay(&moved);
        assert_eq!(
            (room.role(w.carol), room.role(w.alice)),
            (Role::Owner, Role::Admin)
        );
        // The owner leaving hands the room to the earliest admin.
        given::<RoomAggregate>(&h)
            .when(RoomCommand::Leave { user: w.alice })
            .then(&[
                Event::OwnershipTransferred {
                    from: w.alice,
                    to: w.bob,
                },
                Event::MemberLeft { user_id: w.alice },
            ]);
    }

    #[test]
    fn an_archived_room_is_read_only_and_a_deleted_one_is_gone() {
        let w = world();
        let mut h = vec![group(&w, Visibility::Private)];
        given::<RoomAggregate>(&h)
            .when(RoomCommand::Archive {
                by: w.bob,
                archived: true,
            })
            .then_error(DomainError::InsufficientRole);
        h.push(Event::RoomArchived { by: w.alice });
        given::<RoomAggregate>(&h)
            .when(RoomCommand::Send {
                sender: w.bob,
                message_id: MessageId::new(),
                body: body("hello?"),
                client_msg_id: None,
                reply_to: None,
                online: vec![],
            })
            .then_error(DomainError::RoomArchived);
        given::<RoomAggregate>(&h)
            .when(RoomCommand::ChangeSettings {
                by: w.alice,
                name: None,
                topic: Some(Topic::parse("t").unwrap()),
                visibility: None,
            })
            .then_error(DomainError::RoomArchived);
        h.push(Event::RoomDeleted { by: w.alice });
        given::<RoomAggregate>(&h)
            .when(RoomCommand::Join { user: w.carol })
            .then_error(DomainError::NotFound("room"));
        given::<RoomAggregate>(&h)
            .when(RoomCommand::Leave { user: w.bob })
            .then_error(DomainError::NotFound("room"));
    }

    #[test]
    fn settings_change_only_what_differs_and_only_by_admins() {
        let w = world();
        let h = with_admin_bob(&w);
        given::<RoomAggregate>(&h)
            .when(RoomCommand::ChangeSettings {
                by: w.bob,
                name: Some(RoomName::parse("renamed").unwrap()),
                topic: None,
                visibility: Some(Visibility::Private),
            })
            .then(&[Event::RoomSettingsChanged {
                by: w.bob,
                name: Some(RoomName::parse("renamed").unwrap()),
                topic: None,
                visibility: None,
            }]);
        given::<RoomAggregate>(&h)
            .when(RoomCommand::ChangeSettings {
                by: w.carol,
                name: Some(RoomName::parse("mine").unwrap()),
                topic: None,
                visibility: None,
            })
            .then_error(DomainError::InsufficientRole);
    }

    #[test]
    fn an_invitee_who_blocked_the_inviter_must_consent() {
        let w = world();
        let h = vec![group(&w, Visibility::Private)];
        let invite = RoomCommand::Invite {
            by: w.alice,
            users: vec![w.carol],
            consent_needed: vec![w.carol],
        };
        let pending = Event::InvitationPending {
            user_id: w.carol,
            invited_by: w.alice,
        };
        given::<RoomAggregate>(&h)
            .when(invite.clone())
            .then(std::slice::from_ref(&pending));
        let invited = [h[0].clone(), pending];
        given::<RoomAggregate>(&invited).when(invite).then(&[]);
        given::<RoomAggregate>(&invited)
            .when(RoomCommand::Join { user: w.carol })
            .then(&[Event::MemberJoined {
                user_id: w.carol,
                invited_by: Some(w.alice),
            }]);
        given::<RoomAggregate>(&invited)
            .when(RoomCommand::DeclineInvitation { user: w.carol })
            .then(&[Event::InvitationDeclined { user_id: w.carol }]);
        given::<RoomAggregate>(&h)
            .when(RoomCommand::DeclineInvitation { user: w.carol })
            .then_error(DomainError::NotFound("invitation"));
    }
}
