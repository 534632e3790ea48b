//! Applying events to the read models. Pure SQL on one transaction; no decisions are made
//! here: every rule was checked when the event was appended.

use std::collections::BTreeMap;

use eventlog::RecordedEvent;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use schema::events::{Event, Role};
use schema::{RoomId, UserId, streams};
use uuid::Uuid;

use crate::Result;
use crate::unread::{self, Change, UnreadCache};

const CHECKPOINT: &str = "read_models";

pub(crate) fn checkpoint(conn: &Connection) -> Result<u64> {
    let pos: Option<i64> = conn
        .prepare_cached("SELECT position FROM checkpoint WHERE name = ?1")?
        .query_row([CHECKPOINT], |r| r.get(0))
        .optional()?;
    Ok(pos.map_or(0, |p| p as u64))
}

/// Applies a batch and moves the checkpoint to its last position, atomically. Events at or
/// below the stored checkpoint are skipped, so re-delivery after a crash is harmless. Once the
/// transaction has committed, the batch's changes to watched unread counts go to `cache`.
pub(crate) fn apply_batch(
    conn: &mut Connection,
    batch: &[std::sync::Arc<RecordedEvent>],
    cache: &UnreadCache,
) -> Result<u64> {
    let mut unread = unread::Batch::new(cache);
    let mut sends = Sends::default();
    let tx = crate::store::begin(conn)?;
    let mut position = checkpoint(&tx)?;
    for recorded in batch {
        if recorded.position <= position {
            continue;
        }
        let span = tracecontext::continuing(
            recorded.live_traceparent(),
            || tracing::info_span!("projection.apply", projection = "read_model", event.position = recorded.position, event.type = %recorded.event_type),
        );
        let _entered = span.enter();
        apply_one(&tx, &mut unread, &mut sends, recorded)?;
        position = recorded.position;
    }
    sends.write(&tx)?;
    tx.prepare_cached(
        "INSERT INTO checkpoint (name, position) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET position = excluded.position",
    )?
    .execute(params![CHECKPOINT, position as i64])?;
    tx.commit()?;
    unread.commit(position);
    Ok(position)
}

/// What the sends of a batch change in rows shared by many of them: each room's row (its
/// newest message) and its live-message counts. Kept here and written once per row at the end
/// of the batch, or before any other event (which may read or change those rows): a busy
/// room's row and count blocks are then updated once per transaction, not once per send.
#[derive(Default)]
struct Sends {
    /// Room → seq, time and id of its newest message.
    newest: BTreeMap<Uuid, (i64, i64, Uuid)>,
    /// (room, block) → change of its live count.
    live: BTreeMap<(Uuid, i64), i64>,
    /// (room, sender, block) → change of the sender's live count.
    live_by_sender: BTreeMap<(Uuid, Uuid, i64), i64>,
}

impl Sends {
    fn newest(&mut self, room: Uuid, seq: i64, at: i64, message: Uuid) {
        self.newest.insert(room, (seq, at, message));
    }

    fn counted(&mut self, room: Uuid, seq: i64, sender: Uuid) {
        let block = seq >> crate::queries::BLOCK_BITS;
        *self.live.entry((room, block)).or_default() += 1;
        *self
            .live_by_sender
            .entry((room, sender, block))
            .or_default() += 1;
    }

    /// Writes what is kept, and forgets it.
    fn write(&mut self, tx: &Transaction<'_>) -> Result<()> {
        if !self.newest.is_empty() {
            let mut update = tx.prepare_cached(
                "UPDATE rooms SET last_seq = ?2, last_activity_at = ?3, last_message_id = ?4
                 WHERE room_id = ?1",
            )?;
            for (room, (seq, at, message)) in std::mem::take(&mut self.newest) {
                update.execute(params![room, seq, at, message])?;
            }
        }
        for ((room, block), by) in std::mem::take(&mut self.live) {
            count_block(tx, room, block, by)?;
        }
        for ((room, sender, block), by) in std::mem::take(&mut self.live_by_sender) {
            count_sender_block(tx, room, sender, block, by)?;
        }
        Ok(())
    }
}

fn apply_one(
    tx: &Transaction<'_>,
    unread: &mut unread::Batch<'_>,
    sends: &mut Sends,
    recorded: &RecordedEvent,
) -> Result<()> {
    let event = Event::decode(
        &recorded.event_type,
        recorded.schema_version,
        &recorded.data,
    )?;
    if !matches!(event, Event::MessageSent { .. }) {
        sends.write(tx)?;
    }
    let at = recorded.recorded_at.timestamp_micros();
    if let Some(room) = streams::room_of(&recorded.stream) {
        let seq = recorded.version as i64;
        let room = room.0;
        // The stored JSON is the client-facing shape of the event (it already has "type").
        let json = std::str::from_utf8(&recorded.data).unwrap_or("{}");
        let message_id = match &event {
            Event::MessageSent { message_id, .. }
            | Event::MessageEdited { message_id, .. }
            | Event::MessageDeleted { message_id, .. } => Some(message_id.0),
            e => crate::features::message_of(e).map(|m| m.0),
        };
        tx.prepare_cached(
            "INSERT OR IGNORE INTO timeline (room_id, seq, event, recorded_at, message_id)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![room, seq, json, at, message_id])?;
        match &event {
            // A message is also the room list's newest message: one update for both, at the
            // end of the batch.
            Event::MessageSent { message_id, .. } => sends.newest(room, seq, at, message_id.0),
            Event::RoomCreated { .. } => {}
            _ => {
                tx.prepare_cached(
                    "UPDATE rooms SET last_seq = ?2, last_activity_at = ?3 WHERE room_id = ?1",
                )?
                .execute(params![room, seq, at])?;
            }
        }
        apply_room_event(tx, unread, sends, room, seq, at, &event)?;
        crate::features::apply(tx, room, seq, at, &event)?;
        // A plain message changes no one's mention or thread count (its unread counts are
        // moved in memory); anything else in the room may.
        let plain = matches!(&event, Event::MessageSent { reply_to: None, mentions, .. } if mentions.is_empty());
        if !plain {
            unread.counts_may_change(Some(RoomId(room)));
        }
    } else {
        match &event {
            Event::ReadMarkerMoved { room_id, .. } => unread.counts_may_change(Some(*room_id)),
            // Sessions, profiles, friends and blocks touch no member, message or thread.
            Event::SessionStarted { .. }
            | Event::SessionRefreshed { .. }
            | Event::SessionEnded { .. }
            | Event::UserRegistered { .. }
            | Event::ProfileUpdated { .. }
            | Event::PasswordChanged { .. }
            | Event::UserBlocked { .. }
            | Event::UserUnblocked { .. }
            | Event::FriendAdded { .. }
            | Event::FriendRemoved { .. }
            | Event::FriendRequested { .. }
            | Event::FriendRequestAccepted { .. }
            | Event::FriendRequestDeclined { .. }
            | Event::FriendRequestCanceled { .. }
            | Event::Unfriended { .. } => {}
            _ => unread.counts_may_change(None),
        }
        apply_other_event(tx, unread, &recorded.stream, at, &event)?;
    }
    Ok(())
}

fn apply_room_event(
    tx: &Transaction<'_>,
    unread: &mut unread::Batch<'_>,
    sends: &mut Sends,
    room: uuid::Uuid,
    seq: i64,
    at: i64,
    event: &Event,
) -> Result<()> {
    match event {
        Event::RoomCreated {
            kind,
            name,
            visibility,
            created_by,
            members,
            ..
        } => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO rooms (room_id, kind, name, visibility, created_by, created_at,
                     last_seq, last_activity_at, member_count)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6, 0)",
            )?
            .execute(params![
                room,
                kind.as_str(),
                name.as_ref().map(|n| n.as_str()),
                visibility_str(*visibility),
                created_by.0,
                at,
                seq
            ])?;
            for m in members {
                add_member(tx, unread, room, *m, seq)?;
            }
            if *kind == schema::events::RoomKind::Group {
                set_role(tx, room, created_by.0, Role::Owner)?;
            }
        }
        Event::MemberJoined { user_id, .. } => {
            add_member(tx, unread, room, *user_id, seq)?;
            tx.prepare_cached("DELETE FROM invitations WHERE room_id = ?1 AND user_id = ?2")?
                .execute(params![room, user_id.0])?;
        }
        Event::MemberLeft { user_id } | Event::MemberKicked { user_id, .. } => {
            remove_member(tx, unread, room, *user_id)?;
        }
        Event::MemberBanned { user_id, .. } => {
            remove_member(tx, unread, room, *user_id)?;
            tx.prepare_cached("INSERT OR IGNORE INTO bans (room_id, user_id) VALUES (?1, ?2)")?
                .execute(params![room, user_id.0])?;
            tx.prepare_cached("DELETE FROM invitations WHERE room_id = ?1 AND user_id = ?2")?
                .execute(params![room, user_id.0])?;
        }
        Event::MemberUnbanned { user_id, .. } => {
            tx.prepare_cached("DELETE FROM bans WHERE room_id = ?1 AND user_id = ?2")?
                .execute(params![room, user_id.0])?;
        }
        Event::InvitationPending {
            user_id,
            invited_by,
        } => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO invitations (room_id, user_id, invited_by, at)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![room, user_id.0, invited_by.0, at])?;
        }
        Event::InvitationDeclined { user_id } => {
            tx.prepare_cached("DELETE FROM invitations WHERE room_id = ?1 AND user_id = ?2")?
                .execute(params![room, user_id.0])?;
        }
        Event::MemberRoleChanged { user_id, role, .. } => set_role(tx, room, user_id.0, *role)?,
        Event::OwnershipTransferred { from, to } => {
            set_role(tx, room, from.0, Role::Admin)?;
            set_role(tx, room, to.0, Role::Owner)?;
        }
        Event::RoomSettingsChanged {
            name,
            topic,
            visibility,
            ..
        } => {
            if let Some(name) = name {
                tx.prepare_cached("UPDATE rooms SET name = ?2 WHERE room_id = ?1")?
                    .execute(params![room, name.as_str()])?;
            }
            if let Some(topic) = topic {
                let topic = Some(topic.as_str()).filter(|t| !t.is_empty());
                tx.prepare_cached("UPDATE rooms SET topic = ?2 WHERE room_id = ?1")?
                    .execute(params![room, topic])?;
            }
            if let Some(v) = visibility {
                tx.prepare_cached("UPDATE rooms SET visibility = ?2 WHERE room_id = ?1")?
                    .execute(params![room, visibility_str(*v)])?;
            }
        }
        Event::RoomArchived { .. } | Event::RoomUnarchived { .. } => {
            let archived = matches!(event, Event::RoomArchived { .. });
            tx.prepare_cached("UPDATE rooms SET archived = ?2 WHERE room_id = ?1")?
                .execute(params![room, archived])?;
        }
        // Nothing of a deleted room stays on the read side (the log keeps it, as an audit
        // trail).
        Event::RoomDeleted { .. } => {
            unread.push(Change::RoomDeleted { room: RoomId(room) });
            crate::features::forget_room(tx, room)?;
            for table in [
                "rooms",
                "members",
                "live_blocks",
                "live_blocks_by_sender",
                "timeline",
                "messages",
                "bans",
                "invitations",
            ] {
                tx.execute(&format!("DELETE FROM {table} WHERE room_id = ?1"), [room])?;
            }
        }
        Event::MessageSent {
            message_id,
            sender_id,
            body,
            reply_to,
            mentions,
            ..
        } => {
            // The whole row in one insert (thread and `@all` included): an update after it
            // would rewrite the row's index entries a second time.
            let all = mentions
                .iter()
                .any(schema::mentions::Mention::addresses_all);
            let n = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO messages
                         (message_id, room_id, seq, sender_id, body, sent_at, reply_to, mentions_all)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    message_id.0,
                    room,
                    seq,
                    sender_id.0,
                    body.as_str(),
                    at,
                    reply_to.map(|r| r.0),
                    all
                ])?;
            if n == 1 {
                unread.sent(RoomId(room), seq as u64, *sender_id);
                sends.counted(room, seq, sender_id.0);
            }
        }
        Event::MessageEdited {
            message_id, body, ..
        } => {
            unread::edited(tx, unread, RoomId(room), message_id.0)?;
            tx.prepare_cached(
                "UPDATE messages SET body = ?2, edited_at = ?3 WHERE message_id = ?1",
            )?
            .execute(params![message_id.0, body.as_str(), at])?;
        }
        Event::MessageDeleted { message_id, .. } => {
            unread::deleted(tx, unread, RoomId(room), message_id.0)?;
            let live = tx
                .prepare_cached(
                    "SELECT seq, sender_id FROM messages WHERE message_id = ?1 AND deleted = 0",
                )?
                .query_row([message_id.0], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Uuid>(1)?))
                })
                .optional()?;
            if let Some((seq, sender)) = live {
                let block = seq >> crate::queries::BLOCK_BITS;
                count_block(tx, room, block, -1)?;
                count_sender_block(tx, room, sender, block, -1)?;
            }
            // A deleted message's text leaves the read side: its row and every version of it
            // in the timeline (the log keeps the history, as an audit trail).
            tx.prepare_cached("UPDATE messages SET deleted = 1, body = '' WHERE message_id = ?1")?
                .execute(params![message_id.0])?;
            tx.prepare_cached(
                "UPDATE timeline SET event = json_remove(event, '$.body')
                 WHERE message_id = ?1 AND room_id = ?2",
            )?
            .execute(params![message_id.0, room])?;
            // The room list shows the newest message still standing.
            tx.prepare_cached(
                "UPDATE rooms SET last_message_id = (
                     SELECT message_id FROM messages
                     WHERE room_id = ?1 AND deleted = 0 ORDER BY seq DESC LIMIT 1)
                 WHERE room_id = ?1 AND last_message_id = ?2",
            )?
            .execute(params![room, message_id.0])?;
        }
        _ => {}
    }
    Ok(())
}

/// Moves the live-message count of a room's block by `by`.
fn count_block(tx: &Transaction<'_>, room: Uuid, block: i64, by: i64) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO live_blocks (room_id, block, live) VALUES (?1, ?2, ?3)
         ON CONFLICT (room_id, block) DO UPDATE SET live = live + excluded.live",
    )?
    .execute(params![room, block, by])?;
    Ok(())
}

/// Moves the live-message count of a sender's messages in a room's block by `by`.
fn count_sender_block(
    tx: &Transaction<'_>,
    room: Uuid,
    sender: Uuid,
    block: i64,
    by: i64,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO live_blocks_by_sender (room_id, sender_id, block, live) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (room_id, sender_id, block) DO UPDATE SET live = live + excluded.live",
    )?
    .execute(params![room, sender, block, by])?;
    Ok(())
}

/// Events of user, receipt, friendship and session streams.
fn apply_other_event(
    tx: &Transaction<'_>,
    unread: &mut unread::Batch<'_>,
    stream: &str,
    at: i64,
    event: &Event,
) -> Result<()> {
    match event {
        Event::UserRegistered {
            user_id,
            username,
            display_name,
            ..
        } => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO users (user_id, username, username_lc, display_name, registered_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![user_id.0, username.as_str(), username.canonical(), display_name.as_str(), at])?;
        }
        Event::ProfileUpdated {
            display_name,
            status_message,
        } => {
            if let Some(user) = streams::user_of(stream) {
                if let Some(name) = display_name {
                    tx.prepare_cached("UPDATE users SET display_name = ?2 WHERE user_id = ?1")?
                        .execute(params![user.0, name.as_str()])?;
                }
                if let Some(status) = status_message {
                    let status = Some(status.as_str()).filter(|s| !s.is_empty());
                    tx.prepare_cached("UPDATE users SET status_message = ?2 WHERE user_id = ?1")?
                        .execute(params![user.0, status])?;
                }
            }
        }
        Event::UserBlocked { user_id } => {
            if let Some(user) = streams::user_of(stream) {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO blocks (user_id, blocked_id) VALUES (?1, ?2)",
                )?
                .execute(params![user.0, user_id.0])?;
            }
        }
        Event::UserUnblocked { user_id } => {
            if let Some(user) = streams::user_of(stream) {
                tx.prepare_cached("DELETE FROM blocks WHERE user_id = ?1 AND blocked_id = ?2")?
                    .execute(params![user.0, user_id.0])?;
            }
        }
        // The profile is erased; the username stays reserved (username_lc) but is not shown.
        Event::AccountDeleted {} => {
            if let Some(user) = streams::user_of(stream) {
                tx.prepare_cached(
                    "UPDATE users SET username = '', display_name = ?2, status_message = NULL,
                         deleted = 1 WHERE user_id = ?1",
                )?
                .execute(params![user.0, DELETED_USER])?;
                for sql in [
                    "DELETE FROM blocks WHERE user_id = ?1 OR blocked_id = ?1",
                    "DELETE FROM friends WHERE user_id = ?1 OR friend_id = ?1",
                    "DELETE FROM friend_requests WHERE from_id = ?1 OR to_id = ?1",
                    "DELETE FROM invitations WHERE user_id = ?1",
                ] {
                    tx.prepare_cached(sql)?.execute([user.0])?;
                }
            }
        }
        Event::FriendRequested { from, to } => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO friend_requests (from_id, to_id, at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![from.0, to.0, at])?;
        }
        Event::FriendRequestAccepted { from, to }
        | Event::FriendRequestDeclined { from, to }
        | Event::FriendRequestCanceled { from, to } => {
            tx.prepare_cached("DELETE FROM friend_requests WHERE from_id = ?1 AND to_id = ?2")?
                .execute(params![from.0, to.0])?;
            if matches!(event, Event::FriendRequestAccepted { .. }) {
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO friends (user_id, friend_id) VALUES (?1, ?2)",
                )?;
                insert.execute(params![from.0, to.0])?;
                insert.execute(params![to.0, from.0])?;
            }
        }
        Event::Unfriended { by, other } => {
            let mut delete =
                tx.prepare_cached("DELETE FROM friends WHERE user_id = ?1 AND friend_id = ?2")?;
            delete.execute(params![by.0, other.0])?;
            delete.execute(params![other.0, by.0])?;
        }
        Event::SessionStarted {
            session_id,
            user_id,
            expires_at,
            ..
        } => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO sessions (session_id, user_id, started_at, last_used_at, expires_at)
                 VALUES (?1, ?2, ?3, ?3, ?4)",
            )?
            .execute(params![session_id.0, user_id.0, at, expires_at.timestamp_micros()])?;
        }
        Event::SessionRefreshed { expires_at, .. } => {
            if let Some(session) = streams::session_of(stream) {
                tx.prepare_cached(
                    "UPDATE sessions SET last_used_at = ?2, expires_at = ?3 WHERE session_id = ?1",
                )?
                .execute(params![session.0, at, expires_at.timestamp_micros()])?;
            }
        }
        Event::SessionEnded { .. } => {
            if let Some(session) = streams::session_of(stream) {
                tx.prepare_cached("DELETE FROM sessions WHERE session_id = ?1")?
                    .execute([session.0])?;
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO ended_sessions (session_id, ended_at) VALUES (?1, ?2)",
                )?
                .execute(params![session.0, at])?;
            }
        }
        // Markers only move forward, and only for current members (a read that raced a leave
        // is dropped with the membership).
        Event::ReadMarkerMoved {
            room_id,
            user_id,
            seq,
            ..
        } => {
            tx.prepare_cached(
                "UPDATE members SET read_seq = max(read_seq, ?3) WHERE room_id = ?1 AND user_id = ?2",
            )?
            .execute(params![room_id.0, user_id.0, *seq as i64])?;
            unread::read(tx, unread, *room_id, *user_id)?;
        }
        _ => {}
    }
    Ok(())
}

/// What a deleted account's name shows as.
pub const DELETED_USER: &str = "Deleted user";

fn remove_member(
    tx: &Transaction<'_>,
    unread: &mut unread::Batch<'_>,
    room: uuid::Uuid,
    user: UserId,
) -> Result<()> {
    let n = tx
        .prepare_cached("DELETE FROM members WHERE room_id = ?1 AND user_id = ?2")?
        .execute(params![room, user.0])?;
    if n == 1 {
        unread.push(Change::Left {
            room: RoomId(room),
            user,
        });
    }
    tx.prepare_cached("UPDATE rooms SET member_count = member_count - ?2 WHERE room_id = ?1")?
        .execute(params![room, n as i64])?;
    Ok(())
}

fn set_role(tx: &Transaction<'_>, room: uuid::Uuid, user: uuid::Uuid, role: Role) -> Result<()> {
    tx.prepare_cached("UPDATE members SET role = ?3 WHERE room_id = ?1 AND user_id = ?2")?
        .execute(params![room, user, role.as_str()])?;
    Ok(())
}

fn add_member(
    tx: &Transaction<'_>,
    unread: &mut unread::Batch<'_>,
    room: uuid::Uuid,
    user: UserId,
    seq: i64,
) -> Result<()> {
    let n = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO members (room_id, user_id, joined_seq, read_seq) VALUES (?1, ?2, ?3, ?3)",
        )?
        .execute(params![room, user.0, seq])?;
    if n == 1 {
        unread.push(Change::Joined {
            room: RoomId(room),
            user,
            seq: seq as u64,
        });
    }
    tx.prepare_cached("UPDATE rooms SET member_count = member_count + ?2 WHERE room_id = ?1")?
        .execute(params![room, n as i64])?;
    Ok(())
}

pub(crate) fn visibility_str(v: schema::Visibility) -> &'static str {
    match v {
        schema::Visibility::Private => "private",
        schema::Visibility::Public => "public",
    }
}
