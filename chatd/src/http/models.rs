//! Request and response bodies. Requests refuse unknown fields, so a typo in a field name is
//! a 400 rather than a silently ignored value.

use std::borrow::Cow;
use std::ops::Deref;

use chrono::{DateTime, Utc};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use poem_openapi::{Enum, Object};
use projector::queries::{MessageView, RoomSummary, UserView};
use serde_json::Value;
use uuid::Uuid;

use crate::chat::{Changed, Person, RoomDetail, Sent, Tokens};

/// A JSON string and nothing else. poem-openapi's `String` also accepts numbers and booleans
/// (`{"name": 1}` would become "1"); request fields use this so a wrong type is a 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Type for Text {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new("string")))
    }

    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for Text {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(s)) => Ok(Self(s)),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ToJSON for Text {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct RegisterRequest {
    /// 3–32 characters: ASCII letters, digits, `_`, `.`, `-`. Unique regardless of case.
    pub username: Text,
    /// 8–256 characters.
    pub password: Text,
    /// Up to 64 characters; defaults to the username.
    pub display_name: Option<Text>,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: Text,
    pub password: Text,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: Text,
}

#[derive(Debug, Object)]
pub struct TokenResponse {
    /// Bearer token for every other endpoint; short-lived.
    pub access_token: String,
    /// Single use: exchange it at `/v1/auth/refresh` for a new pair. Presenting a used one
    /// again revokes the whole session.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub user_id: Uuid,
}

impl From<Tokens> for TokenResponse {
    fn from(t: Tokens) -> Self {
        Self {
            access_token: t.access_token,
            refresh_token: t.refresh_token,
            token_type: "Bearer".into(),
            expires_in: t.expires_in,
            user_id: t.user_id.0,
        }
    }
}

#[derive(Debug, Object)]
pub struct User {
    pub user_id: Uuid,
    /// Empty for a deleted account (the name stays reserved but is not shown).
    pub username: String,
    /// `Deleted user` for a deleted account.
    pub display_name: String,
    /// Up to 140 characters; absent when not set.
    #[oai(skip_serializing_if_is_none)]
    pub status_message: Option<String>,
    /// The account was deleted: show its messages as from a deleted user.
    pub deleted: bool,
}

impl From<UserView> for User {
    fn from(u: UserView) -> Self {
        Self {
            user_id: u.user_id.0,
            username: u.username,
            display_name: u.display_name,
            status_message: u.status_message,
            deleted: u.deleted,
        }
    }
}

#[derive(Debug, Object)]
pub struct Member {
    pub user_id: Uuid,
    pub username: String,
    pub display_name: String,
    /// Whether the user has a live connection (WebSocket or SSE) on any device. Changes are
    /// pushed to friends and room members as `presence` frames.
    pub online: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum Visibility {
    /// Members join only by invitation.
    Private,
    /// Anyone may join.
    Public,
}

impl From<Visibility> for schema::Visibility {
    fn from(v: Visibility) -> Self {
        match v {
            Visibility::Private => Self::Private,
            Visibility::Public => Self::Public,
        }
    }
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct CreateRoomRequest {
    /// 1–100 characters.
    pub name: Text,
    /// Other members to add (the creator is always a member); at most 1,000.
    #[oai(default)]
    pub member_ids: Vec<Uuid>,
    /// Default `private`.
    pub visibility: Option<Visibility>,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct DirectRoomRequest {
    /// The other person.
    pub user_id: Uuid,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct InviteRequest {
    /// Users to add; at most 1,000. Existing members are ignored.
    pub user_ids: Vec<Uuid>,
}

#[derive(Debug, Object)]
pub struct LastMessage {
    pub message_id: Uuid,
    pub seq: u64,
    pub sender_id: Uuid,
    pub body: String,
    pub sent_at: DateTime<Utc>,
}

impl From<MessageView> for LastMessage {
    fn from(m: MessageView) -> Self {
        Self {
            message_id: m.message_id.0,
            seq: m.seq,
            sender_id: m.sender_id.0,
            body: m.body,
            sent_at: m.sent_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct Room {
    pub room_id: Uuid,
    /// `direct` or `group`.
    pub kind: String,
    /// The group's name; for a direct room, the other person's display name. Absent when
    /// unknown.
    #[oai(skip_serializing_if_is_none)]
    pub name: Option<String>,
    /// `private` or `public`.
    pub visibility: String,
    pub member_count: u64,
    /// Seq of the room's newest event.
    pub last_seq: u64,
    pub last_activity_at: DateTime<Utc>,
    /// The newest message not deleted; absent when there is none.
    #[oai(skip_serializing_if_is_none)]
    pub last_message: Option<LastMessage>,
    /// Messages after the caller's read marker, not sent by the caller, not deleted.
    pub unread_count: u64,
    /// Those of them that mention the caller (by name, `@all` or `@here`).
    pub mention_count: u64,
    /// The group's topic; absent when not set.
    #[oai(skip_serializing_if_is_none)]
    pub topic: Option<String>,
    /// Read-only: sends, edits, invites and setting changes are refused (409
    /// `room_archived`) until the owner unarchives it.
    pub archived: bool,
}

impl From<RoomSummary> for Room {
    fn from(r: RoomSummary) -> Self {
        Self {
            room_id: r.room_id.0,
            kind: r.kind,
            name: r.name,
            visibility: r.visibility,
            member_count: r.member_count,
            last_seq: r.last_seq,
            last_activity_at: r.last_activity_at,
            last_message: r.last_message.map(Into::into),
            unread_count: r.unread_count,
            mention_count: r.mention_count,
            topic: r.topic,
            archived: r.archived,
        }
    }
}

#[derive(Debug, Object)]
pub struct RoomWithMembers {
    #[oai(flatten)]
    pub room: Room,
    pub members: Vec<Member>,
}

impl From<Person> for Member {
    fn from(p: Person) -> Self {
        Self {
            user_id: p.user.user_id.0,
            username: p.user.username,
            display_name: p.user.display_name,
            online: p.online,
        }
    }
}

impl From<RoomDetail> for RoomWithMembers {
    fn from(d: RoomDetail) -> Self {
        Self {
            room: d.summary.into(),
            members: d.members.into_iter().map(Into::into).collect(),
        }
    }
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct SendRequest {
    /// 1–4,000 characters after trimming.
    pub body: Text,
    /// Idempotency key (1–128 characters), unique per sender and room. Sending again with the
    /// same key returns the original message and stores nothing — at any later time.
    /// A UUIDv7 is recommended: its time prefix keeps the server's writes ordered.
    pub client_msg_id: Option<Text>,
    /// Reply to this message of the room: the new message joins its thread (a reply to a
    /// reply joins the root's thread). 400 `validation_failed` if there is no such message.
    pub reply_to: Option<Uuid>,
}

#[derive(Debug, Object)]
pub struct SendResponse {
    pub message_id: Uuid,
    pub seq: u64,
    pub sent_at: DateTime<Utc>,
}

impl From<Sent> for SendResponse {
    fn from(s: Sent) -> Self {
        Self {
            message_id: s.message_id.0,
            seq: s.seq,
            sent_at: s.sent_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct HistoryPage {
    /// Room events, oldest first. Each has `seq`, `type` (`room_created`, `member_joined`,
    /// `member_left`, `message_sent`, `message_edited`, `message_deleted`, `reaction_added`,
    /// `reaction_removed`, `message_pinned`, `message_unpinned`, and the administration events
    /// `member_role_changed`, `ownership_transferred`, `member_kicked`, `member_banned`,
    /// `member_unbanned`, `invitation_pending`, `invitation_declined`,
    /// `room_settings_changed`, `room_archived`, `room_unarchived`, `room_deleted`), `at`
    /// (when it was stored, RFC 3339) and the event's own fields. An event about a message
    /// shows the message as it is now: no `body` once it is deleted, its current `body` once
    /// edited (also in its `message_sent` and earlier `message_edited` events). A
    /// `message_sent` item also has the message's state now: `unread_by` (members other than
    /// the sender whose read marker is below it), `reply_count` and `last_reply`
    /// (`{message_id, seq, sender_id, sent_at}` or null) of its thread, `reactions`
    /// (`[{emoji, count, me}]`, most used first) and `pinned`; its `reply_to` (the thread root
    /// it replies in) and `mentions` (`[{kind: user|all|here, user_id?, user_ids?}]`,
    /// `user_ids` being the members an `@here` addressed: those online when it was sent) are
    /// event fields, present when set.
    pub events: Vec<serde_json::Value>,
    /// More events exist beyond this page (older ones, or newer ones when paging with
    /// `after_seq`).
    pub has_more: bool,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct EditRequest {
    /// The new text: 1–4,000 characters after trimming.
    pub body: Text,
}

#[derive(Debug, Object)]
pub struct ChangeResponse {
    pub message_id: Uuid,
    /// Seq of the `message_edited` / `message_deleted` event.
    pub seq: u64,
    pub at: DateTime<Utc>,
}

impl From<Changed> for ChangeResponse {
    fn from(c: Changed) -> Self {
        Self {
            message_id: c.message_id.0,
            seq: c.seq,
            at: c.at,
        }
    }
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct ReadRequest {
    /// Everything up to and including this seq has been read. At most the room's newest seq;
    /// a marker never moves back (a smaller seq is accepted and changes nothing).
    pub seq: u64,
}

#[derive(Debug, Object)]
pub struct RoomUnread {
    pub room_id: Uuid,
    pub unread_count: u64,
    /// Unread messages that mention you (by name, `@all` or `@here`).
    pub mention_count: u64,
    /// Unread replies in threads you take part in (you wrote the root or a reply).
    pub thread_unread_count: u64,
}

#[derive(Debug, Object)]
pub struct UnreadResponse {
    /// Sum over all rooms.
    pub total: u64,
    /// Unread mentions over all rooms.
    pub mention_total: u64,
    /// Unread thread replies over all rooms.
    pub thread_unread_total: u64,
    /// Rooms with at least one unread message.
    pub rooms: Vec<RoomUnread>,
}

#[derive(Debug, Object)]
pub struct ReadersResponse {
    pub message_id: Uuid,
    pub seq: u64,
    /// Members other than the sender whose read marker is below the message.
    pub unread_by: u64,
    /// Members other than the sender who were in the room when it was sent and have read it,
    /// in the order they joined.
    pub readers: Vec<User>,
}

impl From<crate::chat::features::Readers> for ReadersResponse {
    fn from(r: crate::chat::features::Readers) -> Self {
        Self {
            message_id: r.message_id.0,
            seq: r.seq,
            unread_by: r.unread_by,
            readers: r.readers.into_iter().map(Into::into).collect(),
        }
    }
}

#[derive(Debug, Object)]
pub struct ThreadPage {
    /// The root message, as a `message_sent` item of the history (with `reply_count`).
    pub root: serde_json::Value,
    /// Its live replies, `message_sent` items, oldest first.
    pub replies: Vec<serde_json::Value>,
    /// More replies exist beyond this page (older ones, or newer ones when paging with
    /// `after_seq`).
    pub has_more: bool,
}

#[derive(Debug, Object)]
pub struct PinnedMessage {
    pub message_id: Uuid,
    pub seq: u64,
    pub sender_id: Uuid,
    pub body: String,
    pub sent_at: DateTime<Utc>,
    pub pinned_by: Uuid,
    pub pinned_at: DateTime<Utc>,
}

impl From<projector::features::Pin> for PinnedMessage {
    fn from(p: projector::features::Pin) -> Self {
        Self {
            message_id: p.message_id.0,
            seq: p.seq,
            sender_id: p.sender_id.0,
            body: p.body,
            sent_at: p.sent_at,
            pinned_by: p.pinned_by.0,
            pinned_at: p.pinned_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct PinsResponse {
    /// Newest pin first; deleted messages are never listed.
    pub pins: Vec<PinnedMessage>,
}
