//! Applying events to the read models. Pure SQL on one transaction; no decisions are made
//! here: every rule was checked when the event was appended.

use eventlog::RecordedEvent;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use schema::events::Event;
use schema::streams;

use crate::Result;

const CHECKPOINT: &str = "read_models";

pub(crate) fn checkpoint(conn: &Connection) -> Result<u64> {
    let pos: Option<i64> = conn
        .query_row(
            "SELECT position FROM checkpoint WHERE name = ?1",
            [CHECKPOINT],
            |r| r.get(0),
        )
        .optional()?;
    Ok(pos.map_or(0, |p| p as u64))
}

/// Applies a batch and moves the checkpoint to its last position, atomically. Events at or
/// below the stored checkpoint are skipped, so re-delivery after a crash is harmless.
pub(crate) fn apply_batch(
    conn: &mut Connection,
    batch: &[std::sync::Arc<RecordedEvent>],
) -> Result<u64> {
    let tx = conn.transaction()?;
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
        apply_one(&tx, recorded)?;
        position = recorded.position;
    }
    tx.execute(
        "INSERT INTO checkpoint (name, position) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        params![CHECKPOINT, position as i64],
    )?;
    tx.commit()?;
    Ok(position)
}

fn apply_one(tx: &Transaction<'_>, recorded: &RecordedEvent) -> Result<()> {
    let event = Event::decode(
        &recorded.event_type,
        recorded.schema_version,
        &recorded.data,
    )?;
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
        if !matches!(event, Event::RoomCreated { .. }) {
            tx.prepare_cached(
                "UPDATE rooms SET last_seq = ?2, last_activity_at = ?3 WHERE room_id = ?1",
            )?
            .execute(params![room, seq, at])?;
        }
        apply_room_event(tx, room, seq, at, &event)?;
        crate::features::apply(tx, room, seq, at, &event)?;
    } else {
        apply_other_event(tx, &recorded.stream, at, &event)?;
    }
    Ok(())
}

fn apply_room_event(
    tx: &Transaction<'_>,
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
                add_member(tx, room, m.0, seq)?;
            }
        }
        Event::MemberJoined { user_id, .. } => add_member(tx, room, user_id.0, seq)?,
        Event::MemberLeft { user_id } => {
            let n = tx
                .prepare_cached("DELETE FROM members WHERE room_id = ?1 AND user_id = ?2")?
                .execute(params![room, user_id.0])?;
            tx.prepare_cached(
                "UPDATE rooms SET member_count = member_count - ?2 WHERE room_id = ?1",
            )?
            .execute(params![room, n as i64])?;
        }
        Event::MessageSent {
            message_id,
            sender_id,
            body,
            ..
        } => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO messages (message_id, room_id, seq, sender_id, body, sent_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![message_id.0, room, seq, sender_id.0, body.as_str(), at])?;
            tx.prepare_cached("UPDATE rooms SET last_message_id = ?2 WHERE room_id = ?1")?
                .execute(params![room, message_id.0])?;
        }
        Event::MessageEdited {
            message_id, body, ..
        } => {
            tx.prepare_cached(
                "UPDATE messages SET body = ?2, edited_at = ?3 WHERE message_id = ?1",
            )?
            .execute(params![message_id.0, body.as_str(), at])?;
        }
        Event::MessageDeleted { message_id, .. } => {
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

/// Events of user and receipt streams.
fn apply_other_event(tx: &Transaction<'_>, stream: &str, at: i64, event: &Event) -> Result<()> {
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
        Event::FriendAdded { friend_id } => {
            if let Some(user) = streams::user_of(stream) {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO friends (user_id, friend_id) VALUES (?1, ?2)",
                )?
                .execute(params![user.0, friend_id.0])?;
            }
        }
        Event::FriendRemoved { friend_id } => {
            if let Some(user) = streams::user_of(stream) {
                tx.prepare_cached("DELETE FROM friends WHERE user_id = ?1 AND friend_id = ?2")?
                    .execute(params![user.0, friend_id.0])?;
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
        }
        _ => {}
    }
    Ok(())
}

fn add_member(tx: &Transaction<'_>, room: uuid::Uuid, user: uuid::Uuid, seq: i64) -> Result<()> {
    let n = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO members (room_id, user_id, joined_seq, read_seq) VALUES (?1, ?2, ?3, ?3)",
        )?
        .execute(params![room, user, seq])?;
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
