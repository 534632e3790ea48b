//! What "unread" means, as a pure fold over the log.
//!
//! A member's unread count in a room is the number of messages with a seq above their read
//! marker, not sent by them, and not deleted. Joining (or being a founding member) puts the
//! marker at the join event, so history from before the join is not unread. The marker only
//! moves forward. Leaving forgets the marker; rejoining starts afresh at the new join.
//!
//! The projector computes the same numbers with indexed SQL; tests fold the same events
//! through [`UnreadModel`] and demand equality.

use std::collections::{BTreeMap, HashMap};

use crate::events::Event;
use crate::ids::{MessageId, RoomId, UserId};

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
                ..
            } => {
                room.messages.insert(seq, (*sender_id, false));
                room.seq_of.insert(*message_id, seq);
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

    /// The unread count of every (member, room).
    pub fn counts(&self) -> BTreeMap<(UserId, RoomId), u64> {
        let mut out = BTreeMap::new();
        for (room_id, room) in &self.rooms {
            for (user, marker) in &room.members {
                let n = room
                    .messages
                    .range(marker + 1..)
                    .filter(|(_, (sender, deleted))| sender != user && !deleted)
                    .count();
                out.insert((*user, *room_id), n as u64);
            }
        }
        out
    }
}
