//! The room aggregate (`room-<id>`). The stream version of a room is the `seq` clients see.

use std::collections::{HashMap, HashSet};

use crate::events::{Event, Role, RoomKind};
use crate::ids::{MessageId, RoomId, UserId};
use crate::values::{MessageBody, RoomName, Topic, Visibility, limits};
use crate::{Aggregate, DomainError, Result};

#[derive(Debug, Clone, Default)]
pub struct RoomAggregate {
    pub created: Option<Created>,
    pub members: HashSet<UserId>,
    /// Sender and deletion state of every message, for edit and delete rules.
    pub messages: HashMap<MessageId, MessageState>,
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
    },
    Edit {
        sender: UserId,
        message_id: MessageId,
        body: MessageBody,
    },
    Delete {
        sender: UserId,
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
            } => {
                // A retry of a send that was stored is answered with the original (the log
                // deduplicates by id) even if the sender has left since.
                let retry = self
                    .messages
                    .get(message_id)
                    .is_some_and(|m| m.sender_id == *sender);
                if !retry {
                    self.member(*sender)?;
                    self.writable()?;
                }
                Ok(vec![Event::MessageSent {
                    message_id: *message_id,
                    sender_id: *sender,
                    body: body.clone(),
                    client_msg_id: client_msg_id.clone(),
                }])
            }
            RoomCommand::Edit {
                sender,
                message_id,
                body,
            } => {
                self.own_message(*sender, *message_id)?;
                self.writable()?;
                Ok(vec![Event::MessageEdited {
                    message_id: *message_id,
                    sender_id: *sender,
                    body: body.clone(),
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
                ..
            } => {
                self.messages.insert(
                    *message_id,
                    MessageState {
                        sender_id: *sender_id,
                        deleted: false,
                    },
                );
            }
            Event::MessageDeleted { message_id, .. } => {
                if let Some(m) = self.messages.get_mut(message_id) {
                    m.deleted = true;
                }
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
            })
            .then_error(DomainError::NotFound("message"));
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
