//! Events: past-tense facts, the only thing the log stores.
//!
//! Stored as JSON with a `type` tag. Each type has a schema version; [`Event::decode`] is
//! where an old version would be upcast before deserialising.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{MessageId, RoomId, SessionId, UserId};
use crate::mentions::Mention;
use crate::values::{
    DisplayName, Emoji, MessageBody, RoomName, StatusMessage, Topic, Username, Visibility,
};

/// Group rooms have a name and members who can invite others; a direct room is the one room
/// between exactly two people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    Direct,
    Group,
}

impl RoomKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Group => "group",
        }
    }
}

/// Why a login session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEndReason {
    /// The user logged out.
    Logout,
    /// A spent refresh token was presented again: the family is revoked.
    TokenReused,
    /// The user ended it from another session (`DELETE /v1/sessions/{id}`).
    Revoked,
    /// The user changed their password from another session.
    PasswordChanged,
    /// The account was deleted.
    AccountDeleted,
}

/// A member's standing in a group room. The creator is the owner; there is one owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Admin => "admin",
            Self::Owner => "owner",
        }
    }
}

/// Every event of every aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    // ---- user-<id>
    UserRegistered {
        user_id: UserId,
        username: Username,
        display_name: DisplayName,
        /// PHC string (argon2id). Never leaves the server.
        password_hash: String,
    },

    /// Legacy one-sided friend list (before friend requests): no longer written, read by
    /// nothing; kept so old logs still decode.
    FriendAdded {
        friend_id: UserId,
    },
    /// Legacy, see [`Event::FriendAdded`].
    FriendRemoved {
        friend_id: UserId,
    },

    // ---- receipts-<user id>: read markers, kept apart from the room so that reading never
    // contends with sending.
    ReadMarkerMoved {
        room_id: RoomId,
        user_id: UserId,
        /// Everything up to and including this seq has been read.
        seq: u64,
        /// The marker this move started from, as the reader's node saw it (absent in events
        /// written before read counts per message): receivers of the `receipt` frame count
        /// the messages in `(previous_seq, seq]` as newly read by this user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_seq: Option<u64>,
    },

    // ---- room-<id>
    RoomCreated {
        room_id: RoomId,
        kind: RoomKind,
        /// `None` for direct rooms: clients show the other person's name.
        name: Option<RoomName>,
        visibility: Visibility,
        created_by: UserId,
        /// Everyone who is a member from the start, the creator included.
        members: Vec<UserId>,
    },
    MemberJoined {
        user_id: UserId,
        /// Who invited them; `None` when they joined a public room themselves.
        invited_by: Option<UserId>,
    },
    MemberLeft {
        user_id: UserId,
    },
    MessageSent {
        message_id: MessageId,
        sender_id: UserId,
        body: MessageBody,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
        /// The root of the thread this message replies in (replies to a reply land in its
        /// root's thread: threads are one level deep).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<MessageId>,
        /// Who the body mentions (`@username` of a member, `@all`, `@here`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentions: Vec<Mention>,
    },
    MessageEdited {
        message_id: MessageId,
        sender_id: UserId,
        body: MessageBody,
        /// The mentions of the new body; they replace the old ones.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentions: Vec<Mention>,
    },
    MessageDeleted {
        message_id: MessageId,
        sender_id: UserId,
    },

    // ---- room-<id>: message features (issue 17: reactions, pins)
    ReactionAdded {
        message_id: MessageId,
        user_id: UserId,
        emoji: Emoji,
        /// How many users have reacted with this emoji to this message now (this one
        /// included), so a live frame carries the new count.
        count: u64,
    },
    ReactionRemoved {
        message_id: MessageId,
        user_id: UserId,
        emoji: Emoji,
        /// How many users are left reacting with this emoji.
        count: u64,
    },
    MessagePinned {
        message_id: MessageId,
        pinned_by: UserId,
    },
    MessageUnpinned {
        message_id: MessageId,
        unpinned_by: UserId,
    },

    // ---- room-<id>: administration (roles, removals, settings, archive, delete)
    /// The owner made a member an admin or an admin a member.
    MemberRoleChanged {
        user_id: UserId,
        role: Role,
        by: UserId,
    },
    /// `to` is the owner now; `from` stays as an admin (or has left, when they left).
    OwnershipTransferred {
        from: UserId,
        to: UserId,
    },
    /// An admin removed a member; they may be invited again.
    MemberKicked {
        user_id: UserId,
        by: UserId,
    },
    /// An admin removed a member (or barred a non-member) for good: they cannot join or be
    /// invited until unbanned.
    MemberBanned {
        user_id: UserId,
        by: UserId,
    },
    MemberUnbanned {
        user_id: UserId,
        by: UserId,
    },
    /// `user_id`, who has blocked `invited_by`, was invited: they join only if they accept.
    InvitationPending {
        user_id: UserId,
        invited_by: UserId,
    },
    InvitationDeclined {
        user_id: UserId,
    },
    /// Only the fields that changed are present.
    RoomSettingsChanged {
        by: UserId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<RoomName>,
        /// An empty topic clears it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<Topic>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        visibility: Option<Visibility>,
    },
    /// The room is read-only until unarchived.
    RoomArchived {
        by: UserId,
    },
    RoomUnarchived {
        by: UserId,
    },
    /// The room is gone: no member, no history, no search hit, ever again.
    RoomDeleted {
        by: UserId,
    },

    // ---- user-<id>: account management
    /// Only the fields that changed are present; an empty status message clears it.
    ProfileUpdated {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        display_name: Option<DisplayName>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status_message: Option<StatusMessage>,
    },
    PasswordChanged {
        /// PHC string (argon2id). Never leaves the server.
        password_hash: String,
    },
    /// The stream's user blocked `user_id`: no direct messages, invitations without consent
    /// or presence between them.
    UserBlocked {
        user_id: UserId,
    },
    UserUnblocked {
        user_id: UserId,
    },
    /// The account is withdrawn: no login, profile erased, shown as a deleted user. The
    /// username stays reserved (the account id is derived from it).
    AccountDeleted {},

    // ---- friendship-<pair>: friend requests with consent
    FriendRequested {
        from: UserId,
        to: UserId,
    },
    FriendRequestAccepted {
        from: UserId,
        to: UserId,
    },
    FriendRequestDeclined {
        from: UserId,
        to: UserId,
    },
    FriendRequestCanceled {
        from: UserId,
        to: UserId,
    },
    /// `by` ended the friendship with `other`.
    Unfriended {
        by: UserId,
        other: UserId,
    },

    // ---- session-<id>
    SessionStarted {
        session_id: SessionId,
        user_id: UserId,
        /// SHA-256 (hex) of the refresh token; the token itself is never stored.
        token_hash: String,
        expires_at: DateTime<Utc>,
    },
    SessionRefreshed {
        token_hash: String,
        expires_at: DateTime<Utc>,
    },
    SessionEnded {
        reason: SessionEndReason,
    },
}

/// The event's type without its data, for matching and metrics.
pub type EventKind = &'static str;

impl Event {
    /// The `type` tag, as stored in the log next to the payload.
    pub fn type_name(&self) -> EventKind {
        match self {
            Self::UserRegistered { .. } => "user_registered",
            Self::FriendAdded { .. } => "friend_added",
            Self::FriendRemoved { .. } => "friend_removed",
            Self::ReadMarkerMoved { .. } => "read_marker_moved",
            Self::RoomCreated { .. } => "room_created",
            Self::MemberJoined { .. } => "member_joined",
            Self::MemberLeft { .. } => "member_left",
            Self::MessageSent { .. } => "message_sent",
            Self::MessageEdited { .. } => "message_edited",
            Self::MessageDeleted { .. } => "message_deleted",
            Self::ReactionAdded { .. } => "reaction_added",
            Self::ReactionRemoved { .. } => "reaction_removed",
            Self::MessagePinned { .. } => "message_pinned",
            Self::MessageUnpinned { .. } => "message_unpinned",
            Self::MemberRoleChanged { .. } => "member_role_changed",
            Self::OwnershipTransferred { .. } => "ownership_transferred",
            Self::MemberKicked { .. } => "member_kicked",
            Self::MemberBanned { .. } => "member_banned",
            Self::MemberUnbanned { .. } => "member_unbanned",
            Self::InvitationPending { .. } => "invitation_pending",
            Self::InvitationDeclined { .. } => "invitation_declined",
            Self::RoomSettingsChanged { .. } => "room_settings_changed",
            Self::RoomArchived { .. } => "room_archived",
            Self::RoomUnarchived { .. } => "room_unarchived",
            Self::RoomDeleted { .. } => "room_deleted",
            Self::ProfileUpdated { .. } => "profile_updated",
            Self::PasswordChanged { .. } => "password_changed",
            Self::UserBlocked { .. } => "user_blocked",
            Self::UserUnblocked { .. } => "user_unblocked",
            Self::AccountDeleted { .. } => "account_deleted",
            Self::FriendRequested { .. } => "friend_requested",
            Self::FriendRequestAccepted { .. } => "friend_request_accepted",
            Self::FriendRequestDeclined { .. } => "friend_request_declined",
            Self::FriendRequestCanceled { .. } => "friend_request_canceled",
            Self::Unfriended { .. } => "unfriended",
            Self::SessionStarted { .. } => "session_started",
            Self::SessionRefreshed { .. } => "session_refreshed",
            Self::SessionEnded { .. } => "session_ended",
        }
    }

    /// Schema version of this event's payload. Bump it when a type's shape changes and teach
    /// [`Event::decode`] to upcast the older version.
    pub fn schema_version(&self) -> u32 {
        1
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_vec(self).expect("events serialise")
    }

    /// Decodes a stored payload of the given type and schema version.
    pub fn decode(type_name: &str, schema_version: u32, data: &[u8]) -> Result<Self, DecodeError> {
        match schema_version {
            1 => serde_json::from_slice(data).map_err(|e| DecodeError {
                type_name: type_name.to_owned(),
                reason: e.to_string(),
            }),
            v => Err(DecodeError {
                type_name: type_name.to_owned(),
                reason: format!("unknown schema version {v}"),
            }),
        }
    }
}

/// A stored event could not be read back: a bug or a newer writer, never user input.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot decode {type_name} event: {reason}")]
pub struct DecodeError {
    pub type_name: String,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_type_tag() {
        let e = Event::MessageSent {
            message_id: MessageId::new(),
            sender_id: UserId::new(),
            body: MessageBody::parse("안녕").unwrap(),
            client_msg_id: None,
            reply_to: None,
            mentions: vec![],
        };
        let bytes = e.encode();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["type"], "message_sent");
        assert_eq!(v["type"], e.type_name());
        assert_eq!(Event::decode(e.type_name(), 1, &bytes).unwrap(), e);
        assert!(Event::decode(e.type_name(), 99, &bytes).is_err());
    }

    #[test]
    fn events_written_before_replies_and_mentions_still_decode() {
        let old = br#"{"type":"message_sent","message_id":"0190a0f0-0000-7000-8000-000000000001","sender_id":"0190a0f0-0000-7000-8000-000000000002","body":"hi"}"#;
        match Event::decode("message_sent", 1, old).unwrap() {
            Event::MessageSent {
                reply_to, mentions, ..
            } => assert!(reply_to.is_none() && mentions.is_empty()),
            other => panic!("{other:?}"),
        }
        let old_marker = br#"{"type":"read_marker_moved","room_id":"0190a0f0-0000-7000-8000-000000000001","user_id":"0190a0f0-0000-7000-8000-000000000002","seq":4}"#;
        assert!(matches!(
            Event::decode("read_marker_moved", 1, old_marker).unwrap(),
            Event::ReadMarkerMoved {
                previous_seq: None,
                seq: 4,
                ..
            }
        ));
    }
}
