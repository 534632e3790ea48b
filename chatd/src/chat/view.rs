//! The one client view of a room event: what REST history, the WebSocket (live and replay)
//! and SSE show for it. Built here and nowhere else.
//!
//! The view is the event's own fields (with its `type`) plus `seq` (its place in the room) and
//! `at` (when it became durable, RFC 3339 with microseconds). It renders as the read models
//! do: given the message's current state ([`Current`]), text the read side no longer holds is
//! not shown.

use chrono::{DateTime, SecondsFormat, Utc};
use schema::events::Event;
use serde_json::Value;

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
        obj.insert(
            "at".into(),
            at.to_rfc3339_opts(SecondsFormat::Micros, true).into(),
        );
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
}
