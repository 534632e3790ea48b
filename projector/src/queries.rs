//! Read queries over the read models. Each takes a connection so callers run them through
//! [`crate::ReadModels::read`]; every one is an index seek or range, never a scan.

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params};
use schema::{MessageId, RoomId, SessionId, UserId};
use uuid::Uuid;

use crate::Result;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserView {
    pub user_id: UserId,
    /// Empty for a deleted account.
    pub username: String,
    pub display_name: String,
    pub status_message: Option<String>,
    /// The account was deleted: shown as a deleted user.
    pub deleted: bool,
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
    pub topic: Option<String>,
    /// Read-only.
    pub archived: bool,
}

/// One room event as stored for clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    pub seq: u64,
    /// The event's JSON object (with its `type`), as recorded (a deleted message's text
    /// removed).
    pub event: String,
    pub recorded_at: DateTime<Utc>,
    /// For an event about a message: what the read side holds of that message now.
    pub message: Option<MessageNow>,
}

/// What the read side holds now about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageNow {
    /// Its text after every edit.
    Text(String),
    /// Deleted: its text is gone.
    Deleted,
}

impl MessageNow {
    pub(crate) fn from_row(body: Option<String>, deleted: Option<bool>) -> Option<Self> {
        match (body, deleted) {
            (_, Some(true)) => Some(Self::Deleted),
            (Some(body), Some(false)) => Some(Self::Text(body)),
            _ => None,
        }
    }
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

/// Columns for [`user_row`], of `users u`.
pub(crate) const USER_COLUMNS: &str =
    "u.user_id, u.username, u.display_name, u.status_message, u.deleted";

pub(crate) fn user_row(r: &Row<'_>) -> rusqlite::Result<UserView> {
    Ok(UserView {
        user_id: UserId(r.get(0)?),
        username: r.get(1)?,
        display_name: r.get(2)?,
        status_message: r.get(3)?,
        deleted: r.get(4)?,
    })
}

pub fn user(c: &Connection, id: UserId) -> Result<Option<UserView>> {
    Ok(c.prepare_cached(&format!(
        "SELECT {USER_COLUMNS} FROM users u WHERE u.user_id = ?1"
    ))?
    .query_row([id.0], user_row)
    .optional()?)
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
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {USER_COLUMNS} FROM users u
         WHERE u.username_lc >= ?1 AND u.username_lc < ?2 AND u.deleted = 0
         ORDER BY u.username_lc LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![lower, upper, limit as i64], user_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn is_member(c: &Connection, room: RoomId, user: UserId) -> Result<bool> {
    Ok(
        c.prepare_cached("SELECT 1 FROM members WHERE room_id = ?1 AND user_id = ?2")?
            .exists(params![room.0, user.0])?,
    )
}

/// Seqs per block of [`crate::store`]'s `live_blocks` are `1 << BLOCK_BITS`. Debug builds
/// (every test) use blocks of 4 seqs, so that tests cross block boundaries all the time;
/// release builds 256. The read-model version includes it: a file built with the other size is
/// rebuilt from the log.
macro_rules! block_bits {
    () => {
        if_debug!("2", "8")
    };
}
#[cfg(debug_assertions)]
macro_rules! if_debug {
    ($debug:literal, $release:literal) => {
        $debug
    };
}
#[cfg(not(debug_assertions))]
macro_rules! if_debug {
    ($debug:literal, $release:literal) => {
        $release
    };
}

/// See [`block_bits`].
pub(crate) const BLOCK_BITS: u32 = if cfg!(debug_assertions) { 2 } else { 8 };

/// Messages after the member's marker, not their own, not deleted, in time independent of
/// how many there are: the rest of the marker's block is counted message by message (at most
/// a block, in the covering index `messages_by_room_mentions`); the blocks after it add their
/// live counts (`live_blocks`), less the member's own (`live_blocks_by_sender`). `me` is the
/// viewer's `members` row.
pub(crate) const UNREAD: &str = concat!(
    "((SELECT count(*) FROM messages x
        WHERE x.room_id = me.room_id AND x.seq > me.read_seq
          AND x.seq < ((me.read_seq >> ",
    block_bits!(),
    ") + 1) << ",
    block_bits!(),
    "
          AND x.sender_id != me.user_id AND x.deleted = 0)
      + (SELECT coalesce(sum(b.live), 0) FROM live_blocks b
         WHERE b.room_id = me.room_id AND b.block > me.read_seq >> ",
    block_bits!(),
    ")
      - (SELECT coalesce(sum(s.live), 0) FROM live_blocks_by_sender s
         WHERE s.room_id = me.room_id AND s.sender_id = me.user_id AND s.block > me.read_seq >> ",
    block_bits!(),
    "))"
);

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
        m.message_id, m.seq, m.sender_id, m.body, m.sent_at, {UNREAD}, {}, r.topic, r.archived",
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
        topic: r.get(14)?,
        archived: r.get(15)?,
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
                r.last_activity_at, NULL, NULL, NULL, NULL, NULL, 0, 0, r.topic, r.archived
         FROM rooms r
         WHERE r.visibility = 'public' AND r.kind = 'group' AND r.archived = 0
           AND r.name LIKE ?1 ESCAPE '\\'
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
    Ok(unread_state(c, user)?
        .into_iter()
        .map(|(room, _, count)| (room, count))
        .collect())
}

/// Every room of `user` with their read marker and unread count, by room.
pub(crate) fn unread_state(c: &Connection, user: UserId) -> Result<Vec<(RoomId, u64, u64)>> {
    let sql = format!(
        "SELECT me.room_id, me.read_seq, {UNREAD} FROM members me WHERE me.user_id = ?1
         ORDER BY me.room_id"
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt.query_map([user.0], |r| {
        Ok((
            RoomId(r.get(0)?),
            r.get::<_, i64>(1)? as u64,
            r.get::<_, i64>(2)? as u64,
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The member's read marker and unread count in one room; `None` for non-members.
pub(crate) fn unread_in(c: &Connection, room: RoomId, user: UserId) -> Result<Option<(u64, u64)>> {
    let sql = format!(
        "SELECT me.read_seq, {UNREAD} FROM members me WHERE me.room_id = ?1 AND me.user_id = ?2"
    );
    Ok(c.prepare_cached(&sql)?
        .query_row(params![room.0, user.0], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })
        .optional()?)
}

/// The seq and sender of a message of `room` that is not deleted.
pub(crate) fn standing_message(
    c: &Connection,
    room: RoomId,
    message: Uuid,
) -> Result<Option<(u64, UserId)>> {
    Ok(c.prepare_cached(
        "SELECT seq, sender_id FROM messages WHERE message_id = ?1 AND room_id = ?2 AND deleted = 0",
    )?
    .query_row(params![message, room.0], |r| {
        Ok((r.get::<_, i64>(0)? as u64, UserId(r.get(1)?)))
    })
    .optional()?)
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

/// `user`'s friends (accepted friend requests), by username.
pub fn friends(c: &Connection, user: UserId) -> Result<Vec<UserView>> {
    users_where(
        c,
        "friends f JOIN users u ON u.user_id = f.friend_id WHERE f.user_id = ?1",
        user,
    )
}

/// The people `user` has blocked, by username.
pub fn blocked_users(c: &Connection, user: UserId) -> Result<Vec<UserView>> {
    users_where(
        c,
        "blocks b JOIN users u ON u.user_id = b.blocked_id WHERE b.user_id = ?1",
        user,
    )
}

/// Friend requests `user` has received (from others) or sent (to others), by username.
pub fn friend_requests(c: &Connection, user: UserId, incoming: bool) -> Result<Vec<UserView>> {
    let from = if incoming {
        "friend_requests q JOIN users u ON u.user_id = q.from_id WHERE q.to_id = ?1"
    } else {
        "friend_requests q JOIN users u ON u.user_id = q.to_id WHERE q.from_id = ?1"
    };
    users_where(c, from, user)
}

fn users_where(c: &Connection, from_where: &str, user: UserId) -> Result<Vec<UserView>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {USER_COLUMNS} FROM {from_where} ORDER BY u.username_lc"
    ))?;
    let rows = stmt.query_map([user.0], user_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Whether `a` has blocked `b` or `b` has blocked `a`.
pub fn blocked_either(c: &Connection, a: UserId, b: UserId) -> Result<bool> {
    Ok(c.prepare_cached(
        "SELECT 1 FROM blocks WHERE (user_id = ?1 AND blocked_id = ?2)
                 OR (user_id = ?2 AND blocked_id = ?1)",
    )?
    .exists(params![a.0, b.0])?)
}

/// Everyone `user` has blocked or been blocked by.
pub fn block_partners(c: &Connection, user: UserId) -> Result<std::collections::HashSet<UserId>> {
    let mut stmt = c.prepare_cached(
        "SELECT blocked_id FROM blocks WHERE user_id = ?1
         UNION SELECT user_id FROM blocks WHERE blocked_id = ?1",
    )?;
    let rows = stmt.query_map([user.0], |r| Ok(UserId(r.get(0)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Those of `users` who have blocked `by`.
pub fn blocking(c: &Connection, users: &[UserId], by: UserId) -> Result<Vec<UserId>> {
    let mut stmt =
        c.prepare_cached("SELECT 1 FROM blocks WHERE user_id = ?1 AND blocked_id = ?2")?;
    let mut found = Vec::new();
    for u in users {
        if stmt.exists(params![u.0, by.0])? {
            found.push(*u);
        }
    }
    Ok(found)
}

/// The room's members, in the order they joined.
pub fn members(c: &Connection, room: RoomId) -> Result<Vec<UserView>> {
    Ok(member_page(c, room, None, i64::MAX as usize)?
        .into_iter()
        .map(|m| m.user)
        .collect())
}

/// A member with their role and where they come in the member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub user: UserView,
    /// `owner`, `admin` or `member`.
    pub role: String,
    /// The seq of their joining: with the user id, the member list's order and cursor.
    pub joined_seq: u64,
}

/// Up to `limit` members in the order they joined, after `after` (a `(joined_seq, user)`
/// cursor from the previous page).
pub fn member_page(
    c: &Connection,
    room: RoomId,
    after: Option<(u64, UserId)>,
    limit: usize,
) -> Result<Vec<MemberView>> {
    let (seq, user) = after.map_or((-1, Uuid::nil()), |(s, u)| (s as i64, u.0));
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {USER_COLUMNS}, m.role, m.joined_seq FROM members m
         JOIN users u ON u.user_id = m.user_id
         WHERE m.room_id = ?1 AND (m.joined_seq, m.user_id) > (?2, ?3)
         ORDER BY m.joined_seq, m.user_id LIMIT ?4"
    ))?;
    let rows = stmt.query_map(
        params![room.0, seq, user, limit.min(i64::MAX as usize) as i64],
        |r| {
            Ok(MemberView {
                user: user_row(r)?,
                role: r.get(5)?,
                joined_seq: r.get::<_, i64>(6)? as u64,
            })
        },
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A login session that has not ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    pub session_id: schema::SessionId,
    pub started_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// `user`'s sessions that have not ended (expired ones included until they are pruned by
/// an end), newest first.
pub fn sessions(c: &Connection, user: UserId) -> Result<Vec<SessionView>> {
    let mut stmt = c.prepare_cached(
        "SELECT session_id, started_at, last_used_at, expires_at FROM sessions
         WHERE user_id = ?1 ORDER BY started_at DESC, session_id",
    )?;
    let rows = stmt.query_map([user.0], |r| {
        Ok(SessionView {
            session_id: schema::SessionId(r.get(0)?),
            started_at: micros(r.get(1)?),
            last_used_at: micros(r.get(2)?),
            expires_at: micros(r.get(3)?),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// An invitation waiting for `user`'s consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvitationView {
    pub room_id: RoomId,
    pub room_name: Option<String>,
    pub invited_by: UserId,
    pub at: DateTime<Utc>,
}

pub fn invitations(c: &Connection, user: UserId) -> Result<Vec<InvitationView>> {
    let mut stmt = c.prepare_cached(
        "SELECT i.room_id, r.name, i.invited_by, i.at FROM invitations i
         JOIN rooms r ON r.room_id = i.room_id WHERE i.user_id = ?1 ORDER BY i.at, i.room_id",
    )?;
    let rows = stmt.query_map([user.0], |r| {
        Ok(InvitationView {
            room_id: RoomId(r.get(0)?),
            room_name: r.get(1)?,
            invited_by: UserId(r.get(2)?),
            at: micros(r.get(3)?),
        })
    })?;
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
            message: MessageNow::from_row(r.get(3)?, r.get(4)?),
        })
    };
    // Each message event with its message's current state.
    const COLUMNS: &str = "SELECT t.seq, t.event, t.recorded_at, m.body, m.deleted FROM timeline t
         LEFT JOIN messages m ON m.message_id = t.message_id";
    let mut events: Vec<TimelineEntry> = match after {
        Some(after) => c
            .prepare_cached(&format!(
                "{COLUMNS}
                 WHERE t.room_id = ?1 AND t.seq > ?2 AND t.seq < ?3 ORDER BY t.seq ASC LIMIT ?4"
            ))?
            .query_map(
                params![room.0, after.min(i64::MAX as u64) as i64, upper, take],
                entry,
            )?
            .collect::<rusqlite::Result<_>>()?,
        None => c
            .prepare_cached(&format!(
                "{COLUMNS}
                 WHERE t.room_id = ?1 AND t.seq < ?2 ORDER BY t.seq DESC LIMIT ?3"
            ))?
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

/// The room's newest projected seq (0 when the room is not projected yet) and what the read
/// side holds now about those of `messages` it knows, read in one snapshot: the events of the
/// room after that seq are what the read side has not applied yet.
pub fn messages_now(
    c: &Connection,
    room: RoomId,
    messages: &[MessageId],
) -> Result<(u64, Vec<(MessageId, MessageNow)>)> {
    let tx = c.unchecked_transaction()?;
    let seq: Option<i64> = tx
        .prepare_cached("SELECT last_seq FROM rooms WHERE room_id = ?1")?
        .query_row([room.0], |r| r.get(0))
        .optional()?;
    let mut stmt = tx.prepare_cached(
        "SELECT body, deleted FROM messages WHERE message_id = ?1 AND room_id = ?2",
    )?;
    let mut found = Vec::new();
    for id in messages {
        let row = stmt
            .query_row(params![id.0, room.0], |r| {
                Ok(MessageNow::from_row(r.get(0)?, r.get(1)?))
            })
            .optional()?;
        if let Some(Some(now)) = row {
            found.push((*id, now));
        }
    }
    drop(stmt);
    tx.commit()?;
    Ok((seq.map_or(0, |s| s as u64), found))
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

/// Every membership, friendship and block, with the log position they reflect: what
/// live fan-out starts from before it follows the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Relations {
    pub position: u64,
    /// (room, member).
    pub members: Vec<(RoomId, UserId)>,
    /// (user, a friend of theirs), both directions.
    pub friends: Vec<(UserId, UserId)>,
    /// Sessions that have ended, and when.
    pub ended_sessions: Vec<(SessionId, DateTime<Utc>)>,
    /// (user, someone they blocked).
    pub blocks: Vec<(UserId, UserId)>,
}

/// [`Relations`], read in one snapshot (scans the tables: once per start).
pub fn relations(c: &Connection) -> Result<Relations> {
    let tx = c.unchecked_transaction()?;
    let position = crate::apply::checkpoint(&tx)?;
    let members = tx
        .prepare("SELECT room_id, user_id FROM members")?
        .query_map([], |r| Ok((RoomId(r.get(0)?), UserId(r.get(1)?))))?
        .collect::<rusqlite::Result<_>>()?;
    let pairs = |sql: &str| -> Result<Vec<(UserId, UserId)>> {
        Ok(tx
            .prepare(sql)?
            .query_map([], |r| Ok((UserId(r.get(0)?), UserId(r.get(1)?))))?
            .collect::<rusqlite::Result<_>>()?)
    };
    let friends = pairs("SELECT user_id, friend_id FROM friends")?;
    let blocks = pairs("SELECT user_id, blocked_id FROM blocks")?;
    let ended_sessions = tx
        .prepare("SELECT session_id, ended_at FROM ended_sessions")?
        .query_map([], |r| Ok((SessionId(r.get(0)?), micros(r.get(1)?))))?
        .collect::<rusqlite::Result<_>>()?;
    tx.commit()?;
    Ok(Relations {
        position,
        members,
        friends,
        ended_sessions,
        blocks,
    })
}
