//! Unread pushes for one connection. The connection watches its user's unread counts, which the
//! projector keeps in memory and moves as it applies the log (`projector::UnreadWatch`); when
//! they change it waits [`COALESCE`] (a burst of messages is one push) and reports the rooms
//! whose count changed. The unread counts come from memory; the mention and thread counts of
//! the same push are read from the read models by SQL, as `GET /v1/unread` does, and kept:
//! they are read again only when an event that may change them (anything but a plain message:
//! a mention, a reply, an edit, a delete, a read marker, a join or leave) has been applied to
//! one of the user's rooms since (`UnreadWatch::counts_changed_since`), so a stream of plain
//! messages costs no query. An edit of a message the user has unread marks its room changed
//! without changing its count: the push then reports the room if its mention count moved (an
//! edit added or removed a mention).

use std::collections::HashMap;
use std::time::Duration;

use projector::{UnreadChanges, UnreadWatch};
use schema::{RoomId, UserId};

use projector::features::Counts;

use crate::chat::messages::total;
use crate::chat::{Chat, Result};
use crate::live::frames::UnreadFrame;

/// Pushes for one connection are at most this frequent (a burst of messages is one push).
pub const COALESCE: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub struct UnreadPush {
    watch: UnreadWatch,
    /// The counts last pushed, of rooms with unread messages: unread and mention count.
    last: HashMap<RoomId, (u64, u64)>,
    /// The mention and thread counts last read, of every room of the user's, and the mark
    /// they were read at.
    counts: Option<(u64, HashMap<RoomId, Counts>)>,
}

impl UnreadPush {
    /// Watches `user`'s counts (for as long as the push lives); never waits.
    pub fn watch(chat: &Chat, user: UserId) -> Self {
        Self {
            watch: chat.watch_unread(user),
            last: HashMap::new(),
            counts: None,
        }
    }

    /// Resolves when the counts changed since the last push; the first time when they are
    /// loaded (the baseline). Cancel-safe.
    pub async fn changed(&mut self) {
        self.watch.changed().await;
    }

    /// The rooms whose count changed since the last push, each with the new total, as of the
    /// read models' position (so `GET /v1/unread` agrees), with their mention and thread
    /// counts. The first push is the baseline: every room with unread messages. A room the
    /// user left is reported once with 0.
    pub async fn changes(&mut self, chat: &Chat) -> Result<Vec<UnreadFrame>> {
        let UnreadChanges {
            total: unread_total,
            rooms,
        } = self.watch.take();
        // Rooms whose unread count changed, and rooms with unread messages marked changed
        // without it (an edit): reported only if their mention count moved.
        let mut changed = Vec::new();
        let mut touched = Vec::new();
        for (room, count) in rooms {
            let before = self.last.get(&room).map_or(0, |(c, _)| *c);
            if before != count {
                changed.push((room, count));
            } else if count > 0 {
                touched.push((room, count));
            }
        }
        if changed.is_empty() && touched.is_empty() {
            return Ok(Vec::new());
        }
        let fresh = self.counts.as_ref().is_some_and(|(mark, counts)| {
            changed.iter().all(|(room, _)| counts.contains_key(room))
                && !self
                    .watch
                    .counts_changed_since(*mark, counts.keys().copied())
        });
        if !fresh {
            let mark = self.watch.counts_mark();
            let counts = chat
                .unread_by_room(self.watch.user())
                .await?
                .into_iter()
                .collect();
            self.counts = Some((mark, counts));
        }
        let counts = self.counts.as_ref().map(|(_, c)| c).expect("read above");
        let totals = total(counts.values());
        let mentions = |room: &RoomId| counts.get(room).map_or(0, |n| n.mentions);
        changed.extend(
            touched
                .into_iter()
                .filter(|(room, _)| self.last.get(room).map(|(_, m)| *m) != Some(mentions(room))),
        );
        for &(room, count) in &changed {
            if count == 0 {
                self.last.remove(&room);
            } else {
                self.last.insert(room, (count, mentions(&room)));
            }
        }
        Ok(changed
            .into_iter()
            .map(|(room, count)| {
                let n = counts.get(&room).copied().unwrap_or_default();
                UnreadFrame {
                    room_id: room.0,
                    unread_count: count,
                    total: unread_total,
                    mention_count: if count == 0 { 0 } else { n.mentions },
                    mention_total: totals.mentions,
                    thread_unread_count: if count == 0 { 0 } else { n.thread_unread },
                }
            })
            .collect())
    }
}
