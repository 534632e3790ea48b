//! Unread pushes for one connection: events mark the counts dirty; a flush (coalesced, at most
//! every [`COALESCE`]) waits for the read models to reach the newest marked position, reads the
//! caller's counts in one query and reports the rooms whose count changed since the last push.

use std::collections::HashMap;
use std::time::Duration;

use schema::{RoomId, UserId};

use crate::chat::messages::total;
use crate::chat::{Chat, Result};
use crate::live::frames::UnreadFrame;
use projector::features::Counts;

/// Pushes for one connection are at most this frequent (a burst of messages is one push).
pub const COALESCE: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
pub struct UnreadPush {
    /// Newest log position that may have changed the counts, not yet pushed.
    dirty: Option<u64>,
    last: HashMap<RoomId, Counts>,
}

impl UnreadPush {
    pub fn mark(&mut self, position: u64) {
        self.dirty = Some(self.dirty.map_or(position, |d| d.max(position)));
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty.is_some()
    }

    /// The rooms whose count changed since the last push, each with the new total. Before the
    /// first push every count counts as 0, so the first push is the baseline: every room with
    /// unread messages. A room the user left is reported once with 0.
    ///
    /// `None` (still dirty) while the read models have not reached the marked position: the
    /// caller tries again at its next flush rather than waiting.
    pub async fn changes(&mut self, chat: &Chat, user: UserId) -> Result<Option<Vec<UnreadFrame>>> {
        let Some(position) = self.dirty else {
            return Ok(Some(Vec::new()));
        };
        if chat.projected() < position {
            return Ok(None);
        }
        let counts = chat.unread_by_room(user).await?;
        self.dirty = None;
        let totals = total(counts.iter().map(|(_, n)| n));
        let frame = |room: RoomId, n: Counts| UnreadFrame {
            room_id: room.0,
            unread_count: n.unread,
            total: totals.unread,
            mention_count: n.mentions,
            mention_total: totals.mentions,
            thread_unread_count: n.thread_unread,
        };
        let mut frames = Vec::new();
        let mut now = HashMap::with_capacity(counts.len());
        for (room, count) in counts {
            if self.last.get(&room).copied().unwrap_or_default() != count {
                frames.push(frame(room, count));
            }
            now.insert(room, count);
        }
        for (room, count) in &self.last {
            if *count != Counts::default() && !now.contains_key(room) {
                frames.push(frame(*room, Counts::default()));
            }
        }
        self.last = now;
        Ok(Some(frames))
    }
}
