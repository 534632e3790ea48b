//! Stream names. One stream per aggregate instance.

use crate::ids::{RoomId, SessionId, UserId};

/// Prefix of every room stream; projections use it to tell room events apart.
pub const ROOM_PREFIX: &str = "room-";

pub fn user(id: UserId) -> String {
    format!("user-{id}")
}

pub fn room(id: RoomId) -> String {
    format!("{ROOM_PREFIX}{id}")
}

/// A user's read markers across all rooms.
pub fn receipts(user: UserId) -> String {
    format!("receipts-{user}")
}

pub fn session(id: SessionId) -> String {
    format!("session-{id}")
}

/// The friendship of two people: one stream per pair, whoever asked first, so a request and
/// its answer are checked by one optimistic append.
pub fn friendship(a: UserId, b: UserId) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("friendship-{lo}-{hi}")
}

/// The user a `user-<id>` stream belongs to.
pub fn user_of(stream: &str) -> Option<UserId> {
    stream.strip_prefix("user-")?.parse().ok().map(UserId)
}

/// The session a `session-<id>` stream belongs to.
pub fn session_of(stream: &str) -> Option<SessionId> {
    stream.strip_prefix("session-")?.parse().ok().map(SessionId)
}

/// The room a stream belongs to, if it is a room stream.
pub fn room_of(stream: &str) -> Option<RoomId> {
    stream.strip_prefix(ROOM_PREFIX)?.parse().ok().map(RoomId)
}
