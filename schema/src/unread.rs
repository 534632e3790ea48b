//! What "unread" means, as a pure fold over the log.
//!
//! A member's unread count in a room is the number of messages with a seq above their read
//! marker, not sent by them, and not deleted. Joining (or being a founding member) puts the
//! marker at the join event, so history from before the join is not unread. The marker only
//! moves forward. Leaving forgets the marker; rejoining starts afresh at the new join.
//!
//! The same fold defines the message features' counts: a message's `unread_by` (the members
//! other than its sender whose marker is below its seq) and a member's mention count (their
//! unread messages that mention them, by name or with `@all`/`@here`).
//!
//! The projector computes the same numbers with indexed SQL; tests fold the same events
//! through [`UnreadModel`] and demand equality.

use std::collections::{BTreeMap, HashMap};

use crate::events::Event;
use crate::ids::{MessageId, RoomId, UserId};
use crate::mentions::Mention;

#[derive(Debug, Clone, Default)]
pub struct UnreadModel {
    rooms: HashMap<RoomId, RoomState>,
}

#[derive(Debug, Clone, Default)]
struct RoomState {
    /// Member -> read marker.
    members: HashMap<UserId, u64>,
    /// seq -> (sender, deleted)
    messages: BTreeMap<u64, (UserId, bool)>,
    /// seq -> the message's current mentions.
    mentions: HashMap<u64, Vec<Mention>>,
    seq_of: HashMap<MessageId, u64>,
}

impl UnreadModel {
    /// Applies one event. `room` and `seq` are the room and version of room-stream events
    /// (`None` for events of other streams).
    pub fn apply(&mut self, room: Option<(RoomId, u64)>, event: &Event) {
        if let Event::ReadMarkerMoved {
            room_id,
            user_id,
            seq,
            ..
        } = event
        {
            if let Some(marker) = self
                .rooms
                .get_mut(room_id)
                .and_then(|r| r.members.get_mut(user_id))
            {
                *marker = (*marker).max(*seq);
            }
            return;
        }
        let Some((room_id, seq)) = room else { return };
        let room = self.rooms.entry(room_id).or_default();
        match event {
            Event::RoomCreated { members, .. } => {
                for m in members {
                    room.members.insert(*m, seq);
                }
            }
            Event::MemberJoined { user_id, .. } => {
                room.members.entry(*user_id).or_insert(seq);
            }
            Event::MemberLeft { user_id } => {
                room.members.remove(user_id);
            }
            Event::MessageSent {
                message_id,
                sender_id,
                mentions,
                ..
            } => {
                room.messages.insert(seq, (*sender_id, false));
                room.seq_of.insert(*message_id, seq);
                room.mentions.insert(seq, mentions.clone());
            }
            Event::MessageEdited {
                message_id,
                mentions,
                ..
            } => {
                if let Some(s) = room.seq_of.get(message_id) {
                    room.mentions.insert(*s, mentions.clone());
                }
            }
            Event::MessageDeleted { message_id, .. } => {
                if let Some(m) = room
                    .seq_of
                    .get(message_id)
                    .and_then(|s| room.messages.get_mut(s))
                {
                    m.1 = true;
                }
            }
            _ => {}
        }
    }

    /// How many members other than its sender have not read message `seq` of `room` (`None`
    /// for no such message).
    pub fn unread_by(&self, room: RoomId, seq: u64) -> Option<u64> {
        let r = self.rooms.get(&room)?;
        let (sender, _) = r.messages.get(&seq)?;
        Some(
            r.members
                .iter()
                .filter(|(m, marker)| *m != sender && **marker < seq)
                .count() as u64,
        )
    }

    /// The seqs of every message of `room`, deleted ones included.
    pub fn message_seqs(&self, room: RoomId) -> Vec<u64> {
        self.rooms
            .get(&room)
            .map(|r| r.messages.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The mention count of every (member, room): unread messages that mention them.
    pub fn mention_counts(&self) -> BTreeMap<(UserId, RoomId), u64> {
        self.unread_where(|room, user, seq| {
            room.mentions
                .get(&seq)
                .is_some_and(|m| m.iter().any(|m| m.addresses(user)))
        })
    }

    /// The unread count of every (member, room).
    pub fn counts(&self) -> BTreeMap<(UserId, RoomId), u64> {
        self.unread_where(|_, _, _| true)
    }

    /// Per (member, room): their unread messages (after their marker, not their own, not
    /// deleted) for which `keep(room, member, seq)` holds.
    fn unread_where(
        &self,
        keep: impl Fn(&RoomState, UserId, u64) -> bool,
    ) -> BTreeMap<(UserId, RoomId), u64> {
        let mut out = BTreeMap::new();
        for (room_id, room) in &self.rooms {
            for (user, marker) in &room.members {
                let n = room
                    .messages
                    .range(marker + 1..)
                    .filter(|(seq, (sender, deleted))| {
                        sender != user && !deleted && keep(room, *user, **seq)
                    })
                    .count();
                out.insert((*user, *room_id), n as u64);
            }
        }
        out
    }
}
