//! Live frames: one definition per frame, used both to (de)serialise it (serde) and to describe
//! it in the OpenAPI document (poem-openapi), so the document cannot drift from the wire.
//!
//! WebSocket frames are JSON text frames with a `type`; SSE notifications carry their kind in
//! the SSE `event:` field and the JSON object in `data:`.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use eventlog::RecordedEvent;
use poem_openapi::{Object, Union};
use schema::events::Event;
use schema::mentions::Mention;
use schema::{RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::chat::Code;
use crate::chat::view::{Extras, MessageNow, event_view, with_extras};

/// Largest client frame accepted, in bytes; larger ones get an `error` frame.
pub const MAX_CLIENT_FRAME: usize = 16 * 1024;
/// Characters of a message body shown in an SSE `message` notification.
pub const PREVIEW_CHARS: usize = 100;

// ------------------------------------------------------------------ client → server

/// Replays every event after the given seqs, then keeps the connection live for all your
/// rooms. Rooms not named start live.
#[derive(Debug, Deserialize, Object)]
pub struct ResumeFrame {
    /// Room id → the last seq you hold.
    #[serde(default)]
    #[oai(default)]
    pub rooms: HashMap<Uuid, u64>,
}

/// Sends a message; answered by `ack` once durable, or `error` with `ref` = `client_msg_id`.
#[derive(Debug, Deserialize, Object)]
pub struct SendFrame {
    pub room_id: Uuid,
    /// 1–4,000 characters after trimming.
    pub body: String,
    /// Idempotency key: sending again with it returns the original `ack`.
    pub client_msg_id: String,
    /// The message this one replies to (its thread).
    #[serde(default)]
    pub reply_to: Option<Uuid>,
}

/// Moves your read marker forward.
#[derive(Debug, Deserialize, Object)]
pub struct ReadFrame {
    pub room_id: Uuid,
    pub seq: u64,
}

/// You are typing in a room (send it every few seconds while typing).
#[derive(Debug, Deserialize, Object)]
pub struct TypingRequest {
    pub room_id: Uuid,
}

/// Answered by `pong`.
#[derive(Debug, Deserialize, Object)]
pub struct PingFrame {}

/// Re-authenticates the connection with a fresh access token of the same session (send it
/// whenever you refresh your token): the connection then lives until that token expires
/// instead of being closed (4002 `token_expired`) when the one it was opened with does.
/// Refused with an `error` frame (`unauthorized`, `session_ended`) otherwise.
#[derive(Deserialize, Object)]
pub struct AuthFrame {
    pub access_token: String,
}

impl std::fmt::Debug for AuthFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthFrame { .. }") // the token is a secret
    }
}

/// A frame from the client.
#[derive(Debug, Deserialize, Union)]
#[serde(tag = "type", rename_all = "snake_case")]
#[oai(discriminator_name = "type")]
pub enum ClientFrame {
    #[oai(mapping = "resume")]
    Resume(ResumeFrame),
    #[oai(mapping = "send")]
    Send(SendFrame),
    #[oai(mapping = "read")]
    Read(ReadFrame),
    #[oai(mapping = "typing")]
    Typing(TypingRequest),
    #[oai(mapping = "ping")]
    Ping(PingFrame),
    #[oai(mapping = "auth")]
    Auth(AuthFrame),
}

const CLIENT_TYPES: [&str; 6] = ["resume", "send", "read", "typing", "ping", "auth"];

/// Why a client frame was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: Code,
    pub detail: String,
}

impl ClientFrame {
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        if text.len() > MAX_CLIENT_FRAME {
            return Err(FrameError {
                code: Code::FrameTooLarge,
                detail: format!("frames are limited to {MAX_CLIENT_FRAME} bytes"),
            });
        }
        let value: Value = serde_json::from_str(text).map_err(|e| FrameError {
            code: Code::BadFrame,
            detail: format!("not JSON: {e}"),
        })?;
        match value.get("type").and_then(Value::as_str) {
            Some(t) if CLIENT_TYPES.contains(&t) => {}
            Some(t) => {
                return Err(FrameError {
                    code: Code::UnknownType,
                    detail: format!("unknown frame type {t:?}"),
                });
            }
            None => {
                return Err(FrameError {
                    code: Code::BadFrame,
                    detail: "a frame needs a string `type`".into(),
                });
            }
        }
        serde_json::from_value(value).map_err(|e| FrameError {
            code: Code::BadFrame,
            detail: e.to_string(),
        })
    }
}

// ------------------------------------------------------------------ server → client

/// A room event. Per room: seq order, no gaps, no duplicates.
#[derive(Debug, Serialize, Object)]
pub struct EventBody {
    pub room_id: Uuid,
    pub seq: u64,
    /// The event as an item of `GET /v1/rooms/{room_id}/messages`: `type`, `seq`, `at` and
    /// the event's own fields.
    pub event: Value,
}

/// Your `send` is durable.
#[derive(Debug, Serialize, Object)]
pub struct AckFrame {
    pub client_msg_id: String,
    pub message_id: Uuid,
    pub seq: u64,
}

/// A frame was refused; the connection stays open.
#[derive(Debug, Serialize, Object)]
pub struct ErrorFrame {
    /// The `client_msg_id` or room id the error is about, when there is one.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    #[oai(rename = "ref")]
    pub reference: Option<String>,
    /// A stable code: a REST error code or `bad_frame`, `unknown_type`, `frame_too_large`,
    /// `rate_limited`.
    pub code: String,
    pub detail: String,
}

/// Answer to `ping`.
#[derive(Debug, Serialize, Object)]
pub struct PongFrame {}

/// Your unread count in a room changed (also an SSE `unread` event).
#[derive(Debug, Clone, Serialize, Object)]
pub struct UnreadFrame {
    pub room_id: Uuid,
    pub unread_count: u64,
    /// Your unread messages over all rooms.
    pub total: u64,
    /// Your unread messages here that mention you (by name, `@all` or `@here`).
    pub mention_count: u64,
    /// Your unread mentions over all rooms.
    pub mention_total: u64,
    /// Unread replies here in threads you take part in (you wrote the root or a reply).
    pub thread_unread_count: u64,
}

/// A member of one of your rooms moved their read marker: the messages with seq in
/// `(previous_seq, seq]` not sent by `user_id` have one reader more (`unread_by` one less).
#[derive(Debug, Clone, Serialize, Object)]
pub struct ReceiptFrame {
    pub room_id: Uuid,
    pub user_id: Uuid,
    /// Everything up to and including this seq has been read by `user_id`.
    pub seq: u64,
    /// Where their marker was before, as far as the server that moved it knew. Two devices
    /// reading at once may report overlapping ranges: count each user's range from the
    /// highest `seq` you have seen of theirs.
    pub previous_seq: Option<u64>,
}

/// Someone is typing in one of your rooms (show it for about 5 seconds).
#[derive(Debug, Serialize, Object)]
pub struct TypingFrame {
    pub room_id: Uuid,
    pub user_id: Uuid,
}

/// A friend or a member of one of your rooms came online or went offline.
#[derive(Debug, Serialize, Object)]
pub struct PresenceFrame {
    pub user_id: Uuid,
    pub online: bool,
}

/// A friendship changed: `status` is where it stands now, as you see it.
#[derive(Debug, Serialize, Object)]
pub struct FriendFrame {
    /// The other person.
    pub user_id: Uuid,
    /// `incoming_request` (they asked you), `outgoing_request` (you asked them), `friends`,
    /// or `none` (declined, cancelled or ended).
    pub status: String,
}

/// Someone you have blocked invited you into a room: join (`POST /v1/rooms/{room_id}/join`)
/// to accept, or decline.
#[derive(Debug, Serialize, Object)]
pub struct InvitationFrame {
    pub room_id: Uuid,
    pub invited_by: Uuid,
}

/// A frame from the server.
#[derive(Debug, Serialize, Union)]
#[serde(tag = "type", rename_all = "snake_case")]
#[oai(discriminator_name = "type")]
pub enum ServerFrame {
    #[oai(mapping = "event")]
    Event(EventBody),
    #[oai(mapping = "ack")]
    Ack(AckFrame),
    #[oai(mapping = "error")]
    Error(ErrorFrame),
    #[oai(mapping = "pong")]
    Pong(PongFrame),
    #[oai(mapping = "unread")]
    Unread(UnreadFrame),
    #[oai(mapping = "typing")]
    Typing(TypingFrame),
    #[oai(mapping = "presence")]
    Presence(PresenceFrame),
    #[oai(mapping = "receipt")]
    Receipt(ReceiptFrame),
    #[oai(mapping = "friend")]
    Friend(FriendFrame),
    #[oai(mapping = "invitation")]
    Invitation(InvitationFrame),
}

impl ServerFrame {
    pub fn text(&self) -> String {
        serde_json::to_string(self).expect("frames serialise")
    }

    pub fn error(reference: Option<String>, code: Code, detail: &str) -> Self {
        Self::Error(ErrorFrame {
            reference,
            code: code.as_str().to_owned(),
            detail: detail.to_owned(),
        })
    }
}

// ------------------------------------------------------------------ SSE notifications

/// A new message in one of your rooms (SSE `message` event; its SSE `id` is the log
/// position, for `Last-Event-ID`). Your own messages are not notified.
#[derive(Debug, Clone, Serialize, Object)]
pub struct MessageNotice {
    pub room_id: Uuid,
    pub seq: u64,
    pub sender_id: Uuid,
    /// The first 100 characters of the body.
    pub preview: String,
    #[serde(skip)]
    #[oai(skip)]
    pub position: u64,
}

impl MessageNotice {
    /// The notice of a `message_sent` event of `room`, from the event's client `view` (so it
    /// shows what the view shows): none for other events, or once the message is deleted.
    pub fn of(room: RoomId, recorded: &RecordedEvent, event: &Event, view: &Value) -> Option<Self> {
        let Event::MessageSent { sender_id, .. } = event else {
            return None;
        };
        let body = view.get("body")?.as_str()?;
        Some(Self {
            room_id: room.0,
            seq: recorded.version,
            sender_id: sender_id.0,
            preview: body.chars().take(PREVIEW_CHARS).collect(),
            position: recorded.position,
        })
    }
}

/// The last event of a stream the server ends (SSE `closed` event): `code` says why —
/// `session_ended` (log in again) or `token_expired` (reconnect with a fresh token).
#[derive(Debug, Clone, Serialize, Object)]
pub struct ClosedNotice {
    pub code: String,
    pub detail: String,
}

impl ClosedNotice {
    pub fn new(code: Code, detail: &str) -> Self {
        Self {
            code: code.as_str().to_owned(),
            detail: detail.to_owned(),
        }
    }
}

/// An SSE notification: the SSE `event:` is `unread`, `message`, `mention` (a new message
/// that mentions you, after its `message`, with the same id) or `closed`, `data:` is the
/// object.
#[derive(Debug, Clone, Union)]
pub enum Notification {
    Unread(UnreadFrame),
    Message(MessageNotice),
    Mention(MessageNotice),
    Closed(ClosedNotice),
}

// ------------------------------------------------------------------ shared fan-out frames

/// A room event ready to go out: serialised once, shared by every recipient.
#[derive(Debug, Clone)]
pub struct EventFrame {
    pub room: RoomId,
    pub seq: u64,
    /// Position in the log (the SSE event id).
    pub position: u64,
    pub text: Utf8Bytes,
    /// For `member_left`, `member_kicked`, `member_banned`: who is no longer a member.
    pub leaver: Option<UserId>,
    /// `room_deleted`: nobody is a member any more.
    pub room_deleted: bool,
    /// For `message_sent`: the SSE notification.
    pub notice: Option<Arc<MessageNotice>>,
    /// For `message_sent`: whom it mentions.
    pub mentions: Option<Arc<[Mention]>>,
}

impl EventFrame {
    /// `{"type":"event","room_id","seq","event":{…the event's view…}}`, and what the event
    /// means for leaves and notifications (read from the typed event). `now`: the current
    /// state of the event's message, for an event read back from the log ([`event_view`]);
    /// `None` for a live event. `extras`: the state of a `message_sent`'s message, for its
    /// view.
    pub fn new(
        room: RoomId,
        recorded: &RecordedEvent,
        event: &Event,
        now: Option<&MessageNow>,
        extras: Option<&Extras>,
    ) -> Self {
        let leaver = schema::room::removed_member(event);
        let room_deleted = matches!(event, Event::RoomDeleted { .. });
        let mentions = match event {
            Event::MessageSent { mentions, .. } => Some(mentions.as_slice().into()),
            _ => None,
        };
        let view = event_view(event, recorded.version, recorded.recorded_at, now);
        let notice = MessageNotice::of(room, recorded, event, &view).map(Arc::new);
        let frame = ServerFrame::Event(EventBody {
            room_id: room.0,
            seq: recorded.version,
            event: match extras {
                Some(extras) => with_extras(view, extras),
                None => view,
            },
        });
        Self {
            room,
            seq: recorded.version,
            position: recorded.position,
            text: frame.text().into(),
            leaver,
            room_deleted,
            notice,
            mentions,
        }
    }

    /// The SSE `mention` notification for `user`, if this is a message from someone else that
    /// mentions them.
    pub fn mention_of(&self, user: UserId) -> Option<MessageNotice> {
        let notice = self.notice.as_ref()?;
        let mentioned = self
            .mentions
            .as_ref()
            .is_some_and(|m| m.iter().any(|m| m.addresses(user)));
        (mentioned && notice.sender_id != user.0).then(|| (**notice).clone())
    }

    /// Whether `user` is no longer a member of the room after this event.
    pub fn removes(&self, user: UserId) -> bool {
        self.room_deleted || self.leaver == Some(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_and_errors_have_codes() {
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping(_))
        ));
        let room = Uuid::now_v7();
        let resume = format!(r#"{{"type":"resume","rooms":{{"{room}":7}}}}"#);
        match ClientFrame::parse(&resume) {
            Ok(ClientFrame::Resume(r)) => assert_eq!(r.rooms.get(&room), Some(&7)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"resume"}"#),
            Ok(ClientFrame::Resume(r)) if r.rooms.is_empty()
        ));
        assert_eq!(ClientFrame::parse("nope").unwrap_err().code, Code::BadFrame);
        assert_eq!(
            ClientFrame::parse(r#"{"type":"dance"}"#).unwrap_err().code,
            Code::UnknownType
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"read"}"#).unwrap_err().code,
            Code::BadFrame
        );
        assert_eq!(
            ClientFrame::parse(r#"{"kind":"ping"}"#).unwrap_err().code,
            Code::BadFrame
        );
        let huge = format!(
            r#"{{"type":"ping","pad":"{}"}}"#,
            "x".repeat(MAX_CLIENT_FRAME)
        );
        assert_eq!(
            ClientFrame::parse(&huge).unwrap_err().code,
            Code::FrameTooLarge
        );
    }

    #[test]
    fn server_frames_carry_their_type_tag() {
        let v: Value = serde_json::from_str(&ServerFrame::Pong(PongFrame {}).text()).unwrap();
        assert_eq!(v, serde_json::json!({"type": "pong"}));
        let v: Value =
            serde_json::from_str(&ServerFrame::error(None, Code::BadFrame, "x").text()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "error", "code": "bad_frame", "detail": "x"})
        );
        let v: Value =
            serde_json::from_str(&ServerFrame::error(Some("k".into()), Code::Internal, "d").text())
                .unwrap();
        assert_eq!(v["ref"], "k");
    }
}
