//! Unread pushes for one connection. The connection watches its user's unread counts, which the
//! projector keeps in memory and moves as it applies the log (`projector::UnreadWatch`); when
//! they change it waits [`COALESCE`] (a burst of messages is one push) and reports the rooms
//! whose count changed. A flush reads only the rooms that changed, and never the database.

use std::collections::HashMap;
use std::time::Duration;

use projector::{UnreadChanges, UnreadWatch};
use schema::{RoomId, UserId};

use crate::chat::Chat;
use crate::live::frames::UnreadFrame;

/// Pushes for one connection are at most this frequent (a burst of messages is one push).
pub const COALESCE: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub struct UnreadPush {
    watch: UnreadWatch,
    /// The counts last pushed, of rooms with unread messages.
    last: HashMap<RoomId, u64>,
}

impl UnreadPush {
    /// Watches `user`'s counts (for as long as the push lives); never waits.
    pub fn watch(chat: &Chat, user: UserId) -> Self {
        Self {
            watch: chat.watch_unread(user),
            last: HashMap::new(),
        }
    }

    /// Resolves when the counts changed since the last push; the first time when they are
    /// loaded (the baseline). Cancel-safe.
    pub async fn changed(&mut self) {
        self.watch.changed().await;
    }

    /// The rooms whose count changed since the last push, each with the new total, as of the
    /// read models' position (so `GET /v1/unread` agrees). The first push is the baseline:
    /// every room with unread messages. A room the user left is reported once with 0.
    pub fn changes(&mut self) -> Vec<UnreadFrame> {
        let UnreadChanges { total, rooms } = self.watch.take();
        let mut frames = Vec::new();
        for (room, count) in rooms {
            let before = if count == 0 {
                self.last.remove(&room)
            } else {
                self.last.insert(room, count)
            };
            if before.unwrap_or(0) != count {
                frames.push(UnreadFrame {
                    room_id: room.0,
                    unread_count: count,
                    total,
                });
            }
        }
        frames
    }
}
