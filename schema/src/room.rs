//! The room aggregate (`room-<id>`). The stream version of a room is the `seq` clients see.

use std::collections::{HashMap, HashSet};

use crate::events::{Event, RoomKind};
use crate::ids::{MessageId, RoomId, UserId};
use crate::values::{MessageBody, RoomName, Visibility, limits};
use crate::{Aggregate, DomainError, Result};

#[derive(Debug, Clone, Default)]
pub struct RoomAggregate {
    pub created: Option<Created>,
    pub members: HashSet<UserId>,
    /// Sender and deletion state of every message, for edit and delete rules.
    pub messages: HashMap<MessageId, MessageState>,
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
    Invite {
        by: UserId,
        users: Vec<UserId>,
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
}

impl RoomAggregate {
    pub fn is_member(&self, user: UserId) -> bool {
        self.members.contains(&user)
    }

    fn existing(&self) -> Result<Created> {
        self.created.ok_or(DomainError::NotFound("room"))
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
            RoomCommand::Invite { by, users } => {
                check_request_size("user_ids", users.len())?;
                let created = self.member(*by)?;
                if created.kind == RoomKind::Direct {
                    return Err(DomainError::NotAllowed(
                        "a direct room has exactly two members",
                    ));
                }
                let mut seen = HashSet::new();
                Ok(users
                    .iter()
                    .filter(|u| !self.is_member(**u) && seen.insert(**u))
                    .map(|u| Event::MemberJoined {
                        user_id: *u,
                        invited_by: Some(*by),
                    })
                    .collect())
            }
            RoomCommand::Join { user } => {
                let created = self.existing()?;
                if self.is_member(*user) {
                    return Ok(vec![]);
                }
                if created.visibility != Visibility::Public || created.kind == RoomKind::Direct {
                    return Err(DomainError::RoomNotPublic);
                }
                Ok(vec![Event::MemberJoined {
                    user_id: *user,
                    invited_by: None,
                }])
            }
            RoomCommand::Leave { user } => {
                let created = self.member(*user)?;
                if created.kind == RoomKind::Direct {
                    return Err(DomainError::NotAllowed("a direct room cannot be left"));
                }
                Ok(vec![Event::MemberLeft { user_id: *user }])
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
                Ok(vec![Event::MessageEdited {
                    message_id: *message_id,
                    sender_id: *sender,
                    body: body.clone(),
                }])
            }
            RoomCommand::Delete { sender, message_id } => {
                self.own_message(*sender, *message_id)?;
                Ok(vec![Event::MessageDeleted {
                    message_id: *message_id,
                    sender_id: *sender,
                }])
            }
        }
    }

    fn evolve(&mut self, event: &Event) {
        match event {
            Event::RoomCreated {
                room_id,
                kind,
                visibility,
                members,
                ..
            } => {
                self.created = Some(Created {
                    room_id: *room_id,
                    kind: *kind,
                    visibility: *visibility,
                });
                self.members.extend(members.iter().copied());
            }
            Event::MemberJoined { user_id, .. } => {
                self.members.insert(*user_id);
            }
            Event::MemberLeft { user_id } => {
                self.members.remove(user_id);
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
            })
            .then(&[Event::MemberJoined {
                user_id: w.carol,
                invited_by: Some(w.alice),
            }]);
        given::<RoomAggregate>(&[group(&w, Visibility::Private)])
            .when(RoomCommand::Invite {
                by: w.carol,
                users: vec![w.carol],
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
}
