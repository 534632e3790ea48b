//! The one client view of a room event: what REST history, the WebSocket (live, resume and
//! gap-fill) and SSE (live and `Last-Event-ID` replay) show for it. Built here and nowhere
//! else.
//!
//! The view is the event's own fields (with its `type`) plus `seq` (its place in the room) and
//! `at` (when it became durable, RFC 3339 with microseconds). It renders as the read models
//! do: an event about a message shows the message as it is *now* ([`MessageNow`]): a deleted
//! message's `message_sent` and `message_edited` events have no `body`; an edited message's
//! `message_sent` and earlier `message_edited` events show its current text. Text the read
//! side no longer holds is never shown again, whichever way an event is read.
//!
//! Live events go out as recorded: they are the newest state when they are delivered.
//!
//! A `message_sent` item also carries the message's state now ([`Extras`]): `unread_by`,
//! `reply_count`, `last_reply`, `reactions` and `pinned`. History and replays take it from the
//! read models; a live frame of a new message shows the state of a message just sent.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, SecondsFormat, Utc};
use eventlog::RecordedEvent;
use projector::features::{LastReply, MessageState, ReactionCount};
pub use projector::queries::MessageNow;
use schema::events::Event;
use schema::{MessageId, RoomId, streams};
use serde_json::{Value, json};

use super::{Chat, Result};

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

/// The view of `event`, recorded at `at` as seq `seq` of its room; `now` is what the read side
/// holds of its message now (`None`: as recorded).
pub fn event_view(event: &Event, seq: u64, at: DateTime<Utc>, now: Option<&MessageNow>) -> Value {
    // Plain data with string keys always serialises.
    let json = serde_json::to_value(event).unwrap_or_default();
    stored_event_view(json, seq, at, now)
}

/// [`event_view`] of an event the read models store as JSON (with its `type`), which may lack
/// fields the read side has dropped.
pub fn stored_event_view(
    mut event: Value,
    seq: u64,
    at: DateTime<Utc>,
    now: Option<&MessageNow>,
) -> Value {
    if let Some(obj) = event.as_object_mut() {
        match now {
            Some(MessageNow::Deleted) => {
                obj.remove("body");
            }
            Some(MessageNow::Text(text)) => {
                if let Some(body) = obj.get_mut("body") {
                    *body = text.as_str().into();
                }
            }
            None => {}
        }
        obj.insert("seq".into(), seq.into());
        obj.insert("at".into(), rfc3339(at).into());
    }
    event
}

/// The message an event is about, if any.
fn message_of(event: &Event) -> Option<MessageId> {
    match event {
        Event::MessageSent { message_id, .. }
        | Event::MessageEdited { message_id, .. }
        | Event::MessageDeleted { message_id, .. } => Some(*message_id),
        _ => None,
    }
}

/// What the read side holds now about the messages some events of one room are about.
#[derive(Debug, Default)]
pub struct MessagesNow(HashMap<MessageId, MessageNow>);

impl MessagesNow {
    /// The current state of the message `event` is about.
    pub fn of(&self, event: &Event) -> Option<&MessageNow> {
        self.0.get(&message_of(event)?)
    }

    /// Applies a later event of the room to the messages in `wanted`.
    fn apply(&mut self, event: &Event, wanted: &HashSet<MessageId>) {
        let (id, now) = match event {
            Event::MessageSent {
                message_id, body, ..
            }
            | Event::MessageEdited {
                message_id, body, ..
            } => (message_id, MessageNow::Text(body.as_str().to_owned())),
            Event::MessageDeleted { message_id, .. } => (message_id, MessageNow::Deleted),
            _ => return,
        };
        if wanted.contains(id) {
            self.0.insert(*id, now);
        }
    }
}

/// Room events read past the read models at a time, when folding them in.
const FOLD_PAGE: usize = 500;

impl Chat {
    /// The messages `events` (of `room`, read from the log) are about, as they stand now: the
    /// read models' state, with the room's events they have not applied yet folded in, so a
    /// lagging projection cannot show text that is already gone from the log's point of view.
    pub async fn messages_now<'a>(
        &self,
        room: RoomId,
        events: impl IntoIterator<Item = &'a Event>,
    ) -> Result<MessagesNow> {
        let wanted: HashSet<MessageId> = events.into_iter().filter_map(message_of).collect();
        if wanted.is_empty() {
            return Ok(MessagesNow::default());
        }
        let (projected, known) = {
            let ids: Vec<MessageId> = wanted.iter().copied().collect();
            self.models
                .read(move |c| projector::queries::messages_now(c, room, &ids))
                .await?
        };
        let mut now = MessagesNow(known.into_iter().collect());
        let stream = streams::room(room);
        let mut next = projected + 1;
        loop {
            let page: Vec<RecordedEvent> = self.log.read_stream(&stream, next, FOLD_PAGE).await?;
            for recorded in &page {
                if let Ok(event) = Event::decode(
                    &recorded.event_type,
                    recorded.schema_version,
                    &recorded.data,
                ) {
                    now.apply(&event, &wanted);
                }
                next = recorded.version + 1;
            }
            if page.len() < FOLD_PAGE {
                return Ok(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::{MessageBody, UserId};

    fn sent(text: &str) -> Event {
        Event::MessageSent {
            message_id: MessageId::new(),
            sender_id: UserId::new(),
            body: MessageBody::parse(text).unwrap(),
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
        let v = event_view(&sent("hello"), 7, at, None);
        assert_eq!(v["type"], "message_sent");
        assert_eq!(v["body"], "hello");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["at"], "2026-05-01T09:12:44.531000Z");
        // The same as the view of the stored JSON: one shape whichever way it is read.
        let stored = serde_json::from_slice(&sent("hello").encode()).unwrap();
        let from_store = stored_event_view(stored, 7, at, None);
        assert_eq!(
            from_store.as_object().unwrap().keys().collect::<Vec<_>>(),
            v.as_object().unwrap().keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_deleted_message_shows_no_text_and_an_edited_one_its_current_text() {
        let v = event_view(&sent("hello"), 1, Utc::now(), Some(&MessageNow::Deleted));
        assert!(v.get("body").is_none());
        assert_eq!(v["type"], "message_sent");
        let now = MessageNow::Text("better".into());
        let v = event_view(&sent("hello"), 1, Utc::now(), Some(&now));
        assert_eq!(v["body"], "better");
        // Events without a body get none.
        let left = Event::MemberLeft {
            user_id: UserId::new(),
        };
        assert!(
            event_view(&left, 2, Utc::now(), Some(&now))
                .get("body")
                .is_none()
        );
    }

    #[test]
    fn later_events_move_the_state_of_the_messages_asked_about_only() {
        let first = sent("one");
        let Event::MessageSent {
            message_id,
            sender_id,
            ..
        } = first.clone()
        else {
            unreachable!()
        };
        let wanted = HashSet::from([message_id]);
        let mut now = MessagesNow::default();
        now.apply(&first, &wanted);
        assert_eq!(now.of(&first), Some(&MessageNow::Text("one".into())));
        now.apply(
            &Event::MessageEdited {
                message_id,
                sender_id,
                body: MessageBody::parse("two").unwrap(),
                mentions: vec![],
            },
            &wanted,
        );
        assert_eq!(now.of(&first), Some(&MessageNow::Text("two".into())));
        now.apply(
            &Event::MessageDeleted {
                message_id,
                sender_id,
            },
            &wanted,
        );
        assert_eq!(now.of(&first), Some(&MessageNow::Deleted));
        let other = sent("elsewhere");
        now.apply(&other, &wanted);
        assert_eq!(now.of(&other), None, "not asked about");
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
        let v = with_extras(event_view(&sent("hello"), 1, Utc::now(), None), &extras);
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
        let v = with_extras(event_view(&left, 2, Utc::now(), None), &extras);
        assert!(v.get("unread_by").is_none());
    }
}
