//! The one client view of a room event: what REST history, the WebSocket (live and replay)
//! and SSE show for it. Built here and nowhere else.
//!
//! The view is the event's own fields (with its `type`) plus `seq` (its place in the room) and
//! `at` (when it became durable, RFC 3339 with microseconds). It renders as the read models
//! do: given the message's current state ([`Current`]), text the read side no longer holds is
//! not shown.
//!
//! A `message_sent` item also carries the message's state now ([`Extras`]): `unread_by`,
//! `reply_count`, `last_reply`, `reactions` and `pinned`. History and replays take it from the
//! read models; a live frame of a new message shows the state of a message just sent.

use chrono::{DateTime, SecondsFormat, Utc};
use projector::features::{LastReply, MessageState, ReactionCount};
use schema::events::Event;
use serde_json::{Value, json};

/// The state of a message beyond its own event, as one viewer sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extras {
    /// Members other than the sender whose read marker is below the message.
    pub unread_by: u64,
    /// Live replies in the thread this message is the root of.
    pub reply_count: u64,
    pub last_reply: Option<LastReply>,
    /// By emoji, most used first; `me`: whether the viewer is among them.
    pub reactions: Vec<ReactionCount>,
    pub pinned: bool,
}

impl Extras {
    /// A message just sent: nobody but its sender has read it, nothing else has happened yet.
    pub fn fresh(unread_by: u64) -> Self {
        Self {
            unread_by,
            ..Self::default()
        }
    }
}

impl From<MessageState> for Extras {
    fn from(m: MessageState) -> Self {
        Self {
            unread_by: m.unread_by,
            reply_count: m.reply_count,
            last_reply: m.last_reply,
            reactions: m.reactions,
            pinned: m.pinned,
        }
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Adds `extras` to the view of a `message_sent` event (other views are left alone).
pub fn with_extras(mut view: Value, extras: &Extras) -> Value {
    let Some(obj) = view.as_object_mut() else {
        return view;
    };
    if obj.get("type").and_then(Value::as_str) != Some("message_sent") {
        return view;
    }
    obj.insert("unread_by".into(), extras.unread_by.into());
    obj.insert("reply_count".into(), extras.reply_count.into());
    obj.insert(
        "last_reply".into(),
        extras.last_reply.as_ref().map_or(Value::Null, |r| {
            json!({
                "message_id": r.message_id,
                "seq": r.seq,
                "sender_id": r.sender_id,
                "sent_at": rfc3339(r.sent_at),
            })
        }),
    );
    obj.insert(
        "reactions".into(),
        extras
            .reactions
            .iter()
            .map(|r| json!({"emoji": r.emoji, "count": r.count, "me": r.me}))
            .collect(),
    );
    obj.insert("pinned".into(), extras.pinned.into());
    view
}

/// What the read models hold now about the message an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Current {
    /// Show the event as it was recorded (a live event, or a view already taken from the read
    /// models).
    AsRecorded,
    /// The message has been deleted since: its text is gone from the read side.
    Deleted,
}

/// The view of `event`, recorded at `at` as seq `seq` of its room.
pub fn event_view(event: &Event, seq: u64, at: DateTime<Utc>, current: Current) -> Value {
    // Plain data with string keys always serialises.
    let json = serde_json::to_value(event).unwrap_or_default();
    stored_event_view(json, seq, at, current)
}

/// [`event_view`] of an event the read models store as JSON (with its `type`), which may lack
/// fields the read side has dropped.
pub fn stored_event_view(mut event: Value, seq: u64, at: DateTime<Utc>, current: Current) -> Value {
    if let Some(obj) = event.as_object_mut() {
        if current == Current::Deleted {
            obj.remove("body");
        }
        obj.insert("seq".into(), seq.into());
        obj.insert("at".into(), rfc3339(at).into());
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::{MessageBody, MessageId, UserId};

    fn sent() -> Event {
        Event::MessageSent {
            message_id: MessageId::new(),
            sender_id: UserId::new(),
            body: MessageBody::parse("hello").unwrap(),
            client_msg_id: None,
            reply_to: None,
            mentions: vec![],
        }
    }

    #[test]
    fn the_view_is_the_event_with_seq_and_time() {
        let at = DateTime::parse_from_rfc3339("2026-05-01T09:12:44.531Z")
            .unwrap()
            .to_utc();
        let v = event_view(&sent(), 7, at, Current::AsRecorded);
        assert_eq!(v["type"], "message_sent");
        assert_eq!(v["body"], "hello");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["at"], "2026-05-01T09:12:44.531000Z");
        // The same as the view of the stored JSON: one shape whichever way it is read.
        let stored = serde_json::from_slice(&sent().encode()).unwrap();
        let from_store = stored_event_view(stored, 7, at, Current::AsRecorded);
        assert_eq!(
            from_store.as_object().unwrap().keys().collect::<Vec<_>>(),
            v.as_object().unwrap().keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_deleted_message_shows_no_text() {
        let v = event_view(&sent(), 1, Utc::now(), Current::Deleted);
        assert!(v.get("body").is_none());
        assert_eq!(v["type"], "message_sent");
    }

    #[test]
    fn message_items_carry_their_state_and_others_do_not() {
        let extras = Extras {
            unread_by: 2,
            reply_count: 1,
            last_reply: None,
            reactions: vec![ReactionCount {
                emoji: "👍".into(),
                count: 3,
                me: true,
            }],
            pinned: true,
        };
        let v = with_extras(
            event_view(&sent(), 1, Utc::now(), Current::AsRecorded),
            &extras,
        );
        assert_eq!(v["unread_by"], 2);
        assert_eq!(v["reply_count"], 1);
        assert_eq!(v["last_reply"], Value::Null);
        assert_eq!(
            v["reactions"],
            json!([{"emoji": "👍", "count": 3, "me": true}])
        );
        assert_eq!(v["pinned"], true);
        let left = Event::MemberLeft {
            user_id: UserId::new(),
        };
        let v = with_extras(
            event_view(&left, 2, Utc::now(), Current::AsRecorded),
            &extras,
        );
        assert!(v.get("unread_by").is_none());
    }
}
