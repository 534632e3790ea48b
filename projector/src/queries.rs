//! Read queries over the read models. Each takes a connection so callers run them through
//! [`crate::ReadModels::read`]; every one is an index seek or range, never a scan.

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params};
use schema::{MessageId, RoomId, UserId};
use uuid::Uuid;

use crate::Result;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserView {
    pub user_id: UserId,
    pub username: String,
    pub display_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    pub message_id: MessageId,
    pub seq: u64,
    pub sender_id: UserId,
    pub body: String,
    pub sent_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSummary {
    pub room_id: RoomId,
    /// `direct` or `group`.
    pub kind: String,
    /// A group's name, or for a direct room the other person's display name.
    pub name: Option<String>,
    /// `private` or `public`.
    pub visibility: String,
    pub member_count: u64,
    pub last_seq: u64,
    pub last_activity_at: DateTime<Utc>,
    pub last_message: Option<MessageView>,
    /// The viewer's unread messages here (0 where the viewer is not a member).
    pub unread_count: u64,
    /// Those of them that mention the viewer.
    pub mention_count: u64,
}

/// One room event as stored for clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    pub seq: u64,
    /// The event's JSON object (with its `type`).
    pub event: String,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub events: Vec<TimelineEntry>,
    /// More events exist beyond the page in the direction it was read.
    pub has_more: bool,
}

pub(crate) fn micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

pub(crate) fn user_row(r: &Row<'_>) -> rusqlite::Result<UserView> {
    Ok(UserView {
        user_id: UserId(r.get(0)?),
        username: r.get(1)?,
        display_name: r.get(2)?,
    })
}

pub fn user(c: &Connection, id: UserId) -> Result<Option<UserView>> {
    Ok(
        c.prepare_cached("SELECT user_id, username, display_name FROM users WHERE user_id = ?1")?
            .query_row([id.0], user_row)
            .optional()?,
    )
}

/// The users among `ids` that exist, in no particular order.
pub fn existing_users(c: &Connection, ids: &[UserId]) -> Result<Vec<UserId>> {
    let mut stmt = c.prepare_cached("SELECT 1 FROM users WHERE user_id = ?1")?;
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        if stmt.exists([id.0])? {
            found.push(*id);
        }
    }
    Ok(found)
}

/// Users whose username starts with `prefix` (case-insensitive), alphabetically.
pub fn search_users(c: &Connection, prefix: &str, limit: usize) -> Result<Vec<UserView>> {
    let lower = prefix.to_ascii_lowercase();
    // Usernames are ASCII letters, digits and `_.-`, all below '~', so [p, p~) is the prefix range.
    let upper = format!("{lower}~");
    let mut stmt = c.prepare_cached(
        "SELECT user_id, username, display_name FROM users
         WHERE username_lc >= ?1 AND username_lc < ?2 ORDER BY username_lc LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![lower, upper, limit as i64], user_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn is_member(c: &Connection, room: RoomId, user: UserId) -> Result<bool> {
    Ok(
        c.prepare_cached("SELECT 1 FROM members WHERE room_id = ?1 AND user_id = ?2")?
            .exists(params![room.0, user.0])?,
    )
}

pub fn room_exists(c: &Connection, room: RoomId) -> Result<bool> {
    Ok(c.prepare_cached("SELECT 1 FROM rooms WHERE room_id = ?1")?
        .exists([room.0])?)
}

/// Messages after the member's marker, not their own, not deleted: a range scan of the
/// covering index `messages_by_room`. `me` is the viewer's `members` row.
pub(crate) const UNREAD: &str = "(SELECT count(*) FROM messages x
    WHERE x.room_id = me.room_id AND x.seq > me.read_seq
      AND x.sender_id != me.user_id AND x.deleted = 0)";

/// Columns for [`room_row`]; needs `r` (rooms), `m` (last message) and `me` (the viewer's
/// membership), with the viewer as `?1`.
fn room_columns() -> String {
    format!(
        "r.room_id, r.kind,
        CASE WHEN r.kind = 'direct' THEN (
            SELECT u.display_name FROM members o JOIN users u ON u.user_id = o.user_id
            WHERE o.room_id = r.room_id AND o.user_id != ?1 LIMIT 1)
        ELSE r.name END,
        r.visibility, r.member_count, r.last_seq, r.last_activity_at,
        m.message_id, m.seq, m.sender_id, m.body, m.sent_at, {UNREAD}, {}",
        crate::features::MENTIONS
    )
}

fn room_row(r: &Row<'_>) -> rusqlite::Result<RoomSummary> {
    let message_id: Option<Uuid> = r.get(7)?;
    let last_message = match message_id {
        None => None,
        Some(id) => Some(MessageView {
            message_id: MessageId(id),
            seq: r.get::<_, i64>(8)? as u64,
            sender_id: UserId(r.get(9)?),
            body: r.get(10)?,
            sent_at: micros(r.get(11)?),
        }),
    };
    Ok(RoomSummary {
        room_id: RoomId(r.get(0)?),
        kind: r.get(1)?,
        name: r.get(2)?,
        visibility: r.get(3)?,
        member_count: r.get::<_, i64>(4)? as u64,
        last_seq: r.get::<_, i64>(5)? as u64,
        last_activity_at: micros(r.get(6)?),
        last_message,
        unread_count: r.get::<_, i64>(12)? as u64,
        mention_count: r.get::<_, i64>(13)? as u64,
    })
}

/// The rooms `user` belongs to, most recent activity first.
pub fn room_list(c: &Connection, user: UserId) -> Result<Vec<RoomSummary>> {
    let sql = format!(
        "SELECT {} FROM members me
         JOIN rooms r ON r.room_id = me.room_id
         LEFT JOIN messages m ON m.message_id = r.last_message_id
         WHERE me.user_id = ?1
         ORDER BY r.last_activity_at DESC, r.room_id",
        room_columns()
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt.query_map([user.0], room_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// One room as its member `viewer` sees it (the viewer decides a direct room's name).
pub fn room(c: &Connection, room: RoomId, viewer: UserId) -> Result<Option<RoomSummary>> {
    let sql = format!(
        "SELECT {} FROM members me
         JOIN rooms r ON r.room_id = me.room_id
         LEFT JOIN messages m ON m.message_id = r.last_message_id
         WHERE me.room_id = ?2 AND me.user_id = ?1",
        room_columns()
    );
    Ok(c.prepare_cached(&sql)?
        .query_row(params![viewer.0, room.0], room_row)
        .optional()?)
}

/// Public group rooms whose name contains `q` (case-insensitive for ASCII), biggest first.
pub fn public_rooms(c: &Connection, q: &str, limit: usize) -> Result<Vec<RoomSummary>> {
    let pattern = format!(
        "%{}%",
        q.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    let mut stmt = c.prepare_cached(
        "SELECT r.room_id, r.kind, r.name, r.visibility, r.member_count, r.last_seq,
                r.last_activity_at, NULL, NULL, NULL, NULL, NULL, 0, 0
         FROM rooms r
         WHERE r.visibility = 'public' AND r.kind = 'group' AND r.name LIKE ?1 ESCAPE '\\'
         ORDER BY r.member_count DESC, r.last_activity_at DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![pattern, limit as i64], room_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The member's read marker and the room's newest seq; `None` for non-members.
pub fn read_state(c: &Connection, room: RoomId, user: UserId) -> Result<Option<(u64, u64)>> {
    Ok(c.prepare_cached(
        "SELECT me.read_seq, r.last_seq FROM members me JOIN rooms r ON r.room_id = me.room_id
         WHERE me.room_id = ?1 AND me.user_id = ?2",
    )?
    .query_row(params![room.0, user.0], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
    })
    .optional()?)
}

/// Unread counts of every room `user` belongs to: one indexed query, however many rooms.
pub fn unread_counts(c: &Connection, user: UserId) -> Result<Vec<(RoomId, u64)>> {
    let sql = format!(
        "SELECT me.room_id, {UNREAD} FROM members me WHERE me.user_id = ?1 ORDER BY me.room_id"
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt.query_map([user.0], |r| {
        Ok((RoomId(r.get(0)?), r.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every member's unread count in every room (for tests and audits; scans all members).
pub fn all_unread_counts(
    c: &Connection,
) -> Result<std::collections::BTreeMap<(UserId, RoomId), u64>> {
    per_member(c, UNREAD)
}

/// `count`, an SQL count over the member's row `me`, for every member of every room.
pub(crate) fn per_member(
    c: &Connection,
    count: &str,
) -> Result<std::collections::BTreeMap<(UserId, RoomId), u64>> {
    let sql = format!("SELECT me.user_id, me.room_id, {count} FROM members me");
    let mut stmt = c.prepare(&sql)?;
    let rows = stmt.query_map([], |r| {
        Ok((
            (UserId(r.get(0)?), RoomId(r.get(1)?)),
            r.get::<_, i64>(2)? as u64,
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The people on `user`'s friend list, by username.
pub fn friends(c: &Connection, user: UserId) -> Result<Vec<UserView>> {
    let mut stmt = c.prepare_cached(
        "SELECT u.user_id, u.username, u.display_name FROM friends f
         JOIN users u ON u.user_id = f.friend_id
         WHERE f.user_id = ?1 ORDER BY u.username_lc",
    )?;
    let rows = stmt.query_map([user.0], user_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The room's members, in the order they joined.
pub fn members(c: &Connection, room: RoomId) -> Result<Vec<UserView>> {
    let mut stmt = c.prepare_cached(
        "SELECT u.user_id, u.username, u.display_name FROM members m
         JOIN users u ON u.user_id = m.user_id
         WHERE m.room_id = ?1 ORDER BY m.joined_seq, u.username_lc",
    )?;
    let rows = stmt.query_map([room.0], user_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A page of a room's timeline, oldest first within the page.
///
/// - neither bound: the newest `limit` events; `has_more` means older ones exist;
/// - `before`: the newest `limit` events with seq < before; `has_more` means older ones exist;
/// - `after` (optionally with `before`): the oldest `limit` events with seq > after (and
///   < before); `has_more` means newer ones exist within the range.
pub fn history(
    c: &Connection,
    room: RoomId,
    before: Option<u64>,
    after: Option<u64>,
    limit: usize,
) -> Result<Page> {
    let upper = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
    let take = limit as i64 + 1;
    let entry = |r: &Row<'_>| {
        Ok(TimelineEntry {
            seq: r.get::<_, i64>(0)? as u64,
            event: r.get(1)?,
            recorded_at: micros(r.get(2)?),
        })
    };
    let mut events: Vec<TimelineEntry> = match after {
        Some(after) => c
            .prepare_cached(
                "SELECT seq, event, recorded_at FROM timeline
                 WHERE room_id = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq ASC LIMIT ?4",
            )?
            .query_map(
                params![room.0, after.min(i64::MAX as u64) as i64, upper, take],
                entry,
            )?
            .collect::<rusqlite::Result<_>>()?,
        None => c
            .prepare_cached(
                "SELECT seq, event, recorded_at FROM timeline
                 WHERE room_id = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
            )?
            .query_map(params![room.0, upper, take], entry)?
            .collect::<rusqlite::Result<_>>()?,
    };
    let has_more = events.len() > limit;
    events.truncate(limit);
    if after.is_none() {
        events.reverse();
    }
    Ok(Page { events, has_more })
}

/// The rooms `user` belongs to and the log position that reflects, read in one snapshot.
pub fn rooms_at_checkpoint(c: &Connection, user: UserId) -> Result<(u64, Vec<RoomId>)> {
    let tx = c.unchecked_transaction()?;
    let position = crate::apply::checkpoint(&tx)?;
    let rooms = tx
        .prepare_cached("SELECT room_id FROM members WHERE user_id = ?1")?
        .query_map([user.0], |r| Ok(RoomId(r.get(0)?)))?
        .collect::<rusqlite::Result<_>>()?;
    tx.commit()?;
    Ok((position, rooms))
}

/// Every membership and every friend-list entry, with the log position they reflect: what
/// live fan-out starts from before it follows the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Relations {
    pub position: u64,
    /// (room, member).
    pub members: Vec<(RoomId, UserId)>,
    /// (user, a friend on their list).
    pub friends: Vec<(UserId, UserId)>,
}

/// [`Relations`], read in one snapshot (scans both tables: once per start).
pub fn relations(c: &Connection) -> Result<Relations> {
    let tx = c.unchecked_transaction()?;
    let position = crate::apply::checkpoint(&tx)?;
    let members = tx
        .prepare("SELECT room_id, user_id FROM members")?
        .query_map([], |r| Ok((RoomId(r.get(0)?), UserId(r.get(1)?))))?
        .collect::<rusqlite::Result<_>>()?;
    let friends = tx
        .prepare("SELECT user_id, friend_id FROM friends")?
        .query_map([], |r| Ok((UserId(r.get(0)?), UserId(r.get(1)?))))?
        .collect::<rusqlite::Result<_>>()?;
    tx.commit()?;
    Ok(Relations {
        position,
        members,
        friends,
    })
}
