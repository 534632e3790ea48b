//! Read models of the message features (issue 17): read counts per message, threads, reactions,
//! mentions and pins. Applied in the same transaction as the core read models; queried through
//! [`crate::ReadModels::read`] like [`crate::queries`].
//!
//! Read counts come from the members' read markers (watermarks) alone: a message's `unread_by`
//! is a range count over `members_by_read`, never a row per member per message.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use schema::events::Event;
use schema::mentions::Mention;
use schema::{MessageId, RoomId, UserId};
use uuid::Uuid;

use crate::Result;
use crate::queries::{UserView, micros};

/// Tables and indexes of the message features, created after the core schema.
pub(crate) const SCHEMA: &str = r#"
-- Read counts per message: members below a seq, by range.
CREATE INDEX members_by_read ON members (room_id, read_seq);

-- Threads: the root a reply belongs to; on a root, its live replies and the newest one.
ALTER TABLE messages ADD COLUMN reply_to BLOB;
ALTER TABLE messages ADD COLUMN reply_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN last_reply_seq INTEGER;
CREATE INDEX messages_by_thread ON messages (reply_to, seq) WHERE reply_to IS NOT NULL;
-- Who takes part in a thread: its root's sender and everyone who replied.
CREATE TABLE thread_participants (
    room_id BLOB NOT NULL,
    user_id BLOB NOT NULL,
    root_id BLOB NOT NULL,
    PRIMARY KEY (room_id, user_id, root_id)
) WITHOUT ROWID;

-- Mentions: @all/@here on the message, named members one row each.
ALTER TABLE messages ADD COLUMN mentions_all INTEGER NOT NULL DEFAULT 0;
-- Covers the counts by (room, seq): the rest of the marker's block, and a mention's message.
CREATE INDEX messages_by_room_mentions ON messages (room_id, seq, sender_id, deleted, mentions_all);
CREATE INDEX messages_mentioning_all ON messages (room_id, seq, sender_id, deleted)
    WHERE mentions_all = 1;
CREATE TABLE mentions (
    room_id BLOB NOT NULL,
    user_id BLOB NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id, seq)
) WITHOUT ROWID;
CREATE INDEX mentions_by_message ON mentions (room_id, seq);

CREATE TABLE reactions (
    message_id BLOB NOT NULL,
    emoji      TEXT NOT NULL,
    user_id    BLOB NOT NULL,
    reacted_at INTEGER NOT NULL,
    PRIMARY KEY (message_id, emoji, user_id)
) WITHOUT ROWID;

CREATE TABLE pins (
    room_id    BLOB NOT NULL,
    message_id BLOB NOT NULL,
    pinned_by  BLOB NOT NULL,
    pinned_at  INTEGER NOT NULL,
    PRIMARY KEY (room_id, message_id)
) WITHOUT ROWID;
"#;

/// The message an event of these features is about (for the timeline's `message_id`).
pub(crate) fn message_of(event: &Event) -> Option<MessageId> {
    match event {
        Event::ReactionAdded { message_id, .. }
        | Event::ReactionRemoved { message_id, .. }
        | Event::MessagePinned { message_id, .. }
        | Event::MessageUnpinned { message_id, .. } => Some(*message_id),
        _ => None,
    }
}

fn set_mentions(
    tx: &Transaction<'_>,
    room: Uuid,
    seq: i64,
    message: Uuid,
    mentions: &[Mention],
) -> Result<()> {
    tx.prepare_cached("DELETE FROM mentions WHERE room_id = ?1 AND seq = ?2")?
        .execute(params![room, seq])?;
    let all = mentions.iter().any(Mention::addresses_all);
    tx.prepare_cached("UPDATE messages SET mentions_all = ?2 WHERE message_id = ?1")?
        .execute(params![message, all])?;
    // Named members and those an `@here` resolved to, one row each.
    for user_id in mentions.iter().flat_map(Mention::named) {
        insert_mention(tx, room, *user_id, seq)?;
    }
    Ok(())
}

fn insert_mention(tx: &Transaction<'_>, room: Uuid, user: UserId, seq: i64) -> Result<()> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO mentions (room_id, user_id, seq) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![room, user.0, seq])?;
    Ok(())
}

/// Recounts a thread root's live replies and its newest one.
fn recount_thread(tx: &Transaction<'_>, root: Uuid) -> Result<()> {
    tx.prepare_cached(
        "UPDATE messages SET
             reply_count = (SELECT count(*) FROM messages r WHERE r.reply_to = ?1 AND r.deleted = 0),
             last_reply_seq = (SELECT max(r.seq) FROM messages r WHERE r.reply_to = ?1 AND r.deleted = 0)
         WHERE message_id = ?1",
    )?
    .execute([root])?;
    Ok(())
}

/// Drops everything these read models hold of a deleted room (before the core tables, whose
/// `messages` rows find its reactions).
pub(crate) fn forget_room(tx: &Transaction<'_>, room: Uuid) -> Result<()> {
    tx.prepare_cached(
        "DELETE FROM reactions WHERE message_id IN (SELECT message_id FROM messages WHERE room_id = ?1)",
    )?
    .execute([room])?;
    for table in ["thread_participants", "mentions", "pins"] {
        tx.execute(&format!("DELETE FROM {table} WHERE room_id = ?1"), [room])?;
    }
    Ok(())
}

/// Applies a room event's effect on these read models (after the core ones).
pub(crate) fn apply(
    tx: &Transaction<'_>,
    room: Uuid,
    seq: i64,
    at: i64,
    event: &Event,
) -> Result<()> {
    match event {
        Event::MessageSent {
            sender_id,
            reply_to,
            mentions,
            ..
        } => {
            // The row (with its thread and `@all`) is new: only the named mentions to add.
            for user_id in mentions.iter().flat_map(Mention::named) {
                insert_mention(tx, room, *user_id, seq)?;
            }
            if let Some(root) = reply_to {
                recount_thread(tx, root.0)?;
                let mut join = tx.prepare_cached(
                    "INSERT OR IGNORE INTO thread_participants (room_id, user_id, root_id)
                     VALUES (?1, ?2, ?3)",
                )?;
                join.execute(params![room, sender_id.0, root.0])?;
                let root_sender: Option<Uuid> = tx
                    .prepare_cached("SELECT sender_id FROM messages WHERE message_id = ?1")?
                    .query_row([root.0], |r| r.get(0))
                    .optional()?;
                if let Some(s) = root_sender {
                    join.execute(params![room, s, root.0])?;
                }
            }
        }
        Event::MessageEdited {
            message_id,
            mentions,
            ..
        } => {
            let seq: Option<i64> = tx
                .prepare_cached("SELECT seq FROM messages WHERE message_id = ?1")?
                .query_row([message_id.0], |r| r.get(0))
                .optional()?;
            if let Some(seq) = seq {
                set_mentions(tx, room, seq, message_id.0, mentions)?;
            }
        }
        Event::MessageDeleted { message_id, .. } => {
            // A deleted message keeps no reactions, no pin and no mentions; a deleted reply
            // no longer counts in its thread.
            tx.prepare_cached("DELETE FROM reactions WHERE message_id = ?1")?
                .execute([message_id.0])?;
            tx.prepare_cached("DELETE FROM pins WHERE room_id = ?1 AND message_id = ?2")?
                .execute(params![room, message_id.0])?;
            let row: Option<(i64, Option<Uuid>)> = tx
                .prepare_cached("SELECT seq, reply_to FROM messages WHERE message_id = ?1")?
                .query_row([message_id.0], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if let Some((seq, reply_to)) = row {
                set_mentions(tx, room, seq, message_id.0, &[])?;
                if let Some(root) = reply_to {
                    recount_thread(tx, root)?;
                }
            }
        }
        Event::ReactionAdded {
            message_id,
            user_id,
            emoji,
            ..
        } => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO reactions (message_id, emoji, user_id, reacted_at)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![message_id.0, emoji.as_str(), user_id.0, at])?;
        }
        Event::ReactionRemoved {
            message_id,
            user_id,
            emoji,
            ..
        } => {
            tx.prepare_cached(
                "DELETE FROM reactions WHERE message_id = ?1 AND emoji = ?2 AND user_id = ?3",
            )?
            .execute(params![message_id.0, emoji.as_str(), user_id.0])?;
        }
        Event::MessagePinned {
            message_id,
            pinned_by,
        } => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO pins (room_id, message_id, pinned_by, pinned_at)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![room, message_id.0, pinned_by.0, at])?;
        }
        Event::MessageUnpinned { message_id, .. } => {
            tx.prepare_cached("DELETE FROM pins WHERE room_id = ?1 AND message_id = ?2")?
                .execute(params![room, message_id.0])?;
        }
        _ => {}
    }
    Ok(())
}

// ------------------------------------------------------------------ queries

/// Unread messages that mention the member: `me` is their `members` row. Counted from the
/// mentions' side, in time proportional to the unread mentions (not to the unread messages):
/// the member's `mentions` rows after the marker, and the messages to everyone
/// (`messages_mentioning_all`); a message is in one or the other.
pub(crate) const MENTIONS: &str = "((SELECT count(*) FROM mentions n
        JOIN messages x ON x.room_id = n.room_id AND x.seq = n.seq
        WHERE n.room_id = me.room_id AND n.user_id = me.user_id AND n.seq > me.read_seq
          AND x.sender_id != me.user_id AND x.deleted = 0 AND x.mentions_all = 0)
      + (SELECT count(*) FROM messages x
         WHERE x.room_id = me.room_id AND x.mentions_all = 1 AND x.seq > me.read_seq
           AND x.sender_id != me.user_id AND x.deleted = 0))";

/// Unread replies in the threads the member takes part in.
pub(crate) const THREAD_UNREAD: &str = "(SELECT count(*) FROM thread_participants p
    JOIN messages x ON x.reply_to = p.root_id
    WHERE p.room_id = me.room_id AND p.user_id = me.user_id
      AND x.seq > me.read_seq AND x.sender_id != me.user_id AND x.deleted = 0)";

/// A member's counts in one room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Unread messages (as [`crate::queries::unread_counts`]).
    pub unread: u64,
    /// Unread messages mentioning the member (by name, `@all` or `@here`).
    pub mentions: u64,
    /// Unread replies in threads the member takes part in.
    pub thread_unread: u64,
}

/// Every count of every room `user` belongs to: one query, however many rooms.
pub fn counts(c: &Connection, user: UserId) -> Result<Vec<(RoomId, Counts)>> {
    let sql = format!(
        "SELECT me.room_id, {}, {MENTIONS}, {THREAD_UNREAD} FROM members me
         WHERE me.user_id = ?1 ORDER BY me.room_id",
        crate::queries::UNREAD
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt.query_map([user.0], |r| {
        Ok((
            RoomId(r.get(0)?),
            Counts {
                unread: r.get::<_, i64>(1)? as u64,
                mentions: r.get::<_, i64>(2)? as u64,
                thread_unread: r.get::<_, i64>(3)? as u64,
            },
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every member's mention count in every room (for tests and audits; scans all members).
pub fn all_mention_counts(
    c: &Connection,
) -> Result<std::collections::BTreeMap<(UserId, RoomId), u64>> {
    crate::queries::per_member(c, MENTIONS)
}

/// How many members other than `sender` have their read marker below `seq`.
pub fn unread_by(c: &Connection, room: RoomId, seq: u64, sender: UserId) -> Result<u64> {
    Ok(c.prepare_cached(
        "SELECT count(*) FROM members WHERE room_id = ?1 AND read_seq < ?2 AND user_id != ?3",
    )?
    .query_row(params![room.0, seq as i64, sender.0], |r| {
        r.get::<_, i64>(0)
    })? as u64)
}

/// One emoji's reactions on a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReactionCount {
    pub emoji: String,
    pub count: u64,
    /// Whether the viewer is among them.
    pub me: bool,
}

/// The newest live reply of a thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastReply {
    pub message_id: MessageId,
    pub seq: u64,
    pub sender_id: UserId,
    pub sent_at: DateTime<Utc>,
}

/// What the read side knows about a message beyond its events, as `viewer` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageState {
    pub message_id: MessageId,
    pub seq: u64,
    pub sender_id: UserId,
    pub deleted: bool,
    /// Members other than the sender whose read marker is below the message.
    pub unread_by: u64,
    pub reply_to: Option<MessageId>,
    pub reply_count: u64,
    pub last_reply: Option<LastReply>,
    /// By emoji, most used first.
    pub reactions: Vec<ReactionCount>,
    pub pinned: bool,
}

/// The state of message `id` in `room` as `viewer` sees it; `None` if there is no such message.
pub fn message_state(
    c: &Connection,
    room: RoomId,
    id: MessageId,
    viewer: UserId,
) -> Result<Option<MessageState>> {
    let row = c
        .prepare_cached(
            "SELECT m.seq, m.sender_id, m.deleted, m.reply_to, m.reply_count, m.last_reply_seq,
                    l.message_id, l.sender_id, l.sent_at,
                    EXISTS (SELECT 1 FROM pins p WHERE p.room_id = m.room_id AND p.message_id = m.message_id)
             FROM messages m
             LEFT JOIN messages l ON l.room_id = m.room_id AND l.seq = m.last_reply_seq
             WHERE m.message_id = ?1 AND m.room_id = ?2",
        )?
        .query_row(params![id.0, room.0], |r| {
            let last_reply = match r.get::<_, Option<i64>>(5)? {
                Some(seq) => Some(LastReply {
                    message_id: MessageId(r.get(6)?),
                    seq: seq as u64,
                    sender_id: UserId(r.get(7)?),
                    sent_at: micros(r.get(8)?),
                }),
                None => None,
            };
            Ok((
                r.get::<_, i64>(0)? as u64,
                UserId(r.get(1)?),
                r.get::<_, bool>(2)?,
                r.get::<_, Option<Uuid>>(3)?.map(MessageId),
                r.get::<_, i64>(4)? as u64,
                last_reply,
                r.get::<_, bool>(9)?,
            ))
        })
        .optional()?;
    let Some((seq, sender_id, deleted, reply_to, reply_count, last_reply, pinned)) = row else {
        return Ok(None);
    };
    let reactions = c
        .prepare_cached(
            "SELECT emoji, count(*), max(user_id = ?2) FROM reactions WHERE message_id = ?1
             GROUP BY emoji ORDER BY count(*) DESC, min(reacted_at), emoji",
        )?
        .query_map(params![id.0, viewer.0], |r| {
            Ok(ReactionCount {
                emoji: r.get(0)?,
                count: r.get::<_, i64>(1)? as u64,
                me: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(MessageState {
        message_id: id,
        seq,
        sender_id,
        deleted,
        unread_by: unread_by(c, room, seq, sender_id)?,
        reply_to,
        reply_count,
        last_reply,
        reactions,
        pinned,
    }))
}

/// Who has read message seq `seq` of `room` sent by `sender`: the members (the sender aside)
/// whose marker is at or past it and who were members when it was sent, by when they joined.
pub fn readers(c: &Connection, room: RoomId, seq: u64, sender: UserId) -> Result<Vec<UserView>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {} FROM members m
         JOIN users u ON u.user_id = m.user_id
         WHERE m.room_id = ?1 AND m.read_seq >= ?2 AND m.joined_seq < ?2 AND m.user_id != ?3
         ORDER BY m.joined_seq, u.username_lc",
        crate::queries::USER_COLUMNS
    ))?;
    let rows = stmt.query_map(
        params![room.0, seq as i64, sender.0],
        crate::queries::user_row,
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Message ids of a thread's live replies, oldest first within the page (paged like
/// [`crate::queries::history`]: `before`/`after` are seqs).
pub fn thread(
    c: &Connection,
    root: MessageId,
    before: Option<u64>,
    after: Option<u64>,
    limit: usize,
) -> Result<(Vec<MessageId>, bool)> {
    let upper = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
    let take = limit as i64 + 1;
    let id = |r: &rusqlite::Row<'_>| Ok(MessageId(r.get(0)?));
    let mut ids: Vec<MessageId> = match after {
        Some(after) => c
            .prepare_cached(
                "SELECT message_id FROM messages WHERE reply_to = ?1 AND seq > ?2 AND seq < ?3
                 AND deleted = 0 ORDER BY seq ASC LIMIT ?4",
            )?
            .query_map(
                params![root.0, after.min(i64::MAX as u64) as i64, upper, take],
                id,
            )?
            .collect::<rusqlite::Result<_>>()?,
        None => c
            .prepare_cached(
                "SELECT message_id FROM messages WHERE reply_to = ?1 AND seq < ?2 AND deleted = 0
                 ORDER BY seq DESC LIMIT ?3",
            )?
            .query_map(params![root.0, upper, take], id)?
            .collect::<rusqlite::Result<_>>()?,
    };
    let has_more = ids.len() > limit;
    ids.truncate(limit);
    if after.is_none() {
        ids.reverse();
    }
    Ok((ids, has_more))
}

/// A pinned message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub message_id: MessageId,
    pub seq: u64,
    pub sender_id: UserId,
    pub body: String,
    pub sent_at: DateTime<Utc>,
    pub pinned_by: UserId,
    pub pinned_at: DateTime<Utc>,
}

/// The room's pinned messages, newest pin first.
pub fn pins(c: &Connection, room: RoomId) -> Result<Vec<Pin>> {
    let mut stmt = c.prepare_cached(
        "SELECT m.message_id, m.seq, m.sender_id, m.body, m.sent_at, p.pinned_by, p.pinned_at
         FROM pins p JOIN messages m ON m.message_id = p.message_id
         WHERE p.room_id = ?1 AND m.deleted = 0 ORDER BY p.pinned_at DESC, m.seq DESC",
    )?;
    let rows = stmt.query_map([room.0], |r| {
        Ok(Pin {
            message_id: MessageId(r.get(0)?),
            seq: r.get::<_, i64>(1)? as u64,
            sender_id: UserId(r.get(2)?),
            body: r.get(3)?,
            sent_at: micros(r.get(4)?),
            pinned_by: UserId(r.get(5)?),
            pinned_at: micros(r.get(6)?),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The timeline entry of message `id`'s `message_sent` event: (seq, JSON, recorded at).
pub fn sent_event(
    c: &Connection,
    room: RoomId,
    id: MessageId,
) -> Result<Option<crate::queries::TimelineEntry>> {
    Ok(c.prepare_cached(
        "SELECT t.seq, t.event, t.recorded_at, m.body, m.deleted FROM messages m
         JOIN timeline t ON t.room_id = m.room_id AND t.seq = m.seq
         WHERE m.message_id = ?1 AND m.room_id = ?2",
    )?
    .query_row(params![id.0, room.0], |r| {
        Ok(crate::queries::TimelineEntry {
            seq: r.get::<_, i64>(0)? as u64,
            event: r.get(1)?,
            recorded_at: micros(r.get(2)?),
            message: crate::queries::MessageNow::from_row(r.get(3)?, r.get(4)?),
        })
    })
    .optional()?)
}
