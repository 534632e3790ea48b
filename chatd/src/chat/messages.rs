//! Messages: sending (idempotent by `client_msg_id`), editing, deleting, history, read markers
//! and unread counts.

use chrono::{DateTime, Utc};
use eventlog::{AppendResult, ExpectedVersion};
use projector::features::Counts;
use projector::{features, queries};
use schema::events::Event;
use schema::room::RoomCommand;
use schema::{DomainError, MessageBody, MessageId, RoomId, UserId, streams};

use super::Chat;
use super::commands::{Consistency, Executed, to_new};
use super::error::{ChatError, Result};
use super::view::{Extras, stored_event_view, with_extras};
use crate::ops::metrics::names;

/// A page of a room's events, as clients see them ([`super::view`]), oldest first.
#[derive(Debug, Clone)]
pub struct History {
    pub events: Vec<serde_json::Value>,
    /// More events exist beyond this page in the direction it was read.
    pub has_more: bool,
}

/// Where a sent message landed.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub message_id: MessageId,
    pub seq: u64,
    pub sent_at: DateTime<Utc>,
    /// A retry of an earlier send: nothing new was stored.
    pub duplicate: bool,
}

/// Where an edit or delete landed.
#[derive(Debug, Clone, Copy)]
pub struct Changed {
    pub message_id: MessageId,
    pub seq: u64,
    pub at: DateTime<Utc>,
}

impl Changed {
    fn from_append(message_id: MessageId, append: Option<AppendResult>) -> Result<Self> {
        let a = append
            .ok_or_else(|| ChatError::Internal("a message change appended nothing".into()))?;
        Ok(Self {
            message_id,
            seq: a.last_version,
            at: a.recorded_at,
        })
    }
}

impl Chat {
    /// Sends a message and answers once the caller's reads show it (read-your-writes).
    pub async fn send(
        &self,
        actor: UserId,
        room: RoomId,
        body: MessageBody,
        client_msg_id: Option<String>,
        reply_to: Option<MessageId>,
    ) -> Result<Sent> {
        self.send_with(
            actor,
            room,
            body,
            client_msg_id,
            reply_to,
            Consistency::ReadYourWrites,
        )
        .await
    }

    /// [`Self::send`], answering when `consistency` says.
    pub async fn send_with(
        &self,
        actor: UserId,
        room: RoomId,
        body: MessageBody,
        client_msg_id: Option<String>,
        reply_to: Option<MessageId>,
        consistency: Consistency,
    ) -> Result<Sent> {
        let message_id = match &client_msg_id {
            Some(key) => MessageId::for_client_msg(room, actor, key),
            None => MessageId::new(),
        };

        let online = self.online_for_here(room, &body).await?;
        let command = RoomCommand::Send {
            sender: actor,
            message_id,
            body,
            client_msg_id,
            reply_to,
            online,
        };
        // No direct messages between people where one has blocked the other.
        let append = self
            .room_command_with(room, command, Some(actor), consistency)
            .await?
            .append;
        let append = append.ok_or_else(|| ChatError::Internal("a send appended nothing".into()))?;
        if !append.duplicate {
            metrics::counter!(names::MESSAGES_SENT).increment(1);
        }
        Ok(Sent {
            message_id,
            seq: append.first_version,
            sent_at: append.recorded_at,
            duplicate: append.duplicate,
        })
    }

    /// Whom an `@here` in `body` addresses: the room's members online now (presence is
    /// cluster-wide), resolved here because the log knows no presence; the aggregate keeps
    /// the members among them and stores the list on the event. Empty without `@here`.
    async fn online_for_here(&self, room: RoomId, body: &MessageBody) -> Result<Vec<UserId>> {
        if !schema::mentions::has_here(body.as_str()) {
            return Ok(Vec::new());
        }
        let members = self.models.read(move |c| queries::members(c, room)).await?;
        Ok(members
            .into_iter()
            .map(|m| m.user_id)
            .filter(|u| self.presence.is_online(*u))
            .collect())
    }

    /// Edits one of the caller's own messages. Returns the edit event's seq and time.
    pub async fn edit(
        &self,
        actor: UserId,
        room: RoomId,
        message_id: MessageId,
        body: MessageBody,
    ) -> Result<Changed> {
        let online = self.online_for_here(room, &body).await?;
        let Executed { append, .. } = self
            .room_command(
                room,
                RoomCommand::Edit {
                    sender: actor,
                    message_id,
                    body,
                    online,
                },
            )
            .await?;
        Changed::from_append(message_id, append)
    }

    /// Deletes one of the caller's own messages. Returns the delete event's seq and time.
    pub async fn delete(
        &self,
        actor: UserId,
        room: RoomId,
        message_id: MessageId,
    ) -> Result<Changed> {
        let Executed { append, .. } = self
            .room_command(
                room,
                RoomCommand::Delete {
                    sender: actor,
                    message_id,
                },
            )
            .await?;
        Changed::from_append(message_id, append)
    }

    /// Moves the caller's read marker forward to `seq` (never back). Appended to the caller's
    /// receipts stream with no expected version, so it never contends with sends in the room.
    /// Answered when `consistency` says (a marker checked against read models that do not show
    /// the caller's last move yet appends once more; the projection keeps the highest).
    pub async fn mark_read(
        &self,
        actor: UserId,
        room: RoomId,
        seq: u64,
        consistency: Consistency,
    ) -> Result<()> {
        let state = self
            .models
            .read(move |c| queries::read_state(c, room, actor))
            .await?;
        let Some((marker, last_seq)) = state else {
            self.require_member(actor, room).await?;
            return Err(DomainError::NotAMember.into());
        };
        if seq > last_seq {
            return Err(DomainError::Invalid {
                field: "seq",
                reason: format!("the room's newest event is seq {last_seq}"),
            }
            .into());
        }
        if seq <= marker {
            return Ok(());
        }
        let event = Event::ReadMarkerMoved {
            room_id: room,
            user_id: actor,
            seq,
            previous_seq: Some(marker),
        };
        let result = self
            .log
            .append(
                &streams::receipts(actor),
                ExpectedVersion::Any,
                to_new(&[event]),
            )
            .await?;
        self.settle(consistency, result.last_position).await;
        Ok(())
    }

    /// Follows `user`'s unread counts in memory (see `projector::UnreadWatch`): for live
    /// connections, which push every change. Never waits (the counts are loaded in the
    /// background; the watch wakes when they are).
    pub fn watch_unread(&self, user: UserId) -> projector::UnreadWatch {
        self.models.watch_unread(user)
    }

    /// Unread, mention and thread counts of every room of the caller's.
    pub async fn unread_by_room(&self, actor: UserId) -> Result<Vec<(RoomId, Counts)>> {
        Ok(self
            .models
            .read(move |c| features::counts(c, actor))
            .await?)
    }

    /// The counts of the caller's rooms with unread messages, and their totals.
    pub async fn unread(&self, actor: UserId) -> Result<(Counts, Vec<(RoomId, Counts)>)> {
        let counts = self.unread_by_room(actor).await?;
        let rooms: Vec<(RoomId, Counts)> =
            counts.into_iter().filter(|(_, n)| n.unread > 0).collect();
        Ok((total(rooms.iter().map(|(_, n)| n)), rooms))
    }

    pub async fn history(
        &self,
        actor: UserId,
        room: RoomId,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<History> {
        self.require_member(actor, room).await?;
        let (page, states) = self
            .models
            .read(move |c| {
                let page = queries::history(c, room, before, after, limit)?;
                let states = message_states(c, room, actor, &page.events)?;
                Ok((page, states))
            })
            .await?;
        let events = page
            .events
            .into_iter()
            .zip(states)
            .map(|(e, state)| {
                let stored = serde_json::from_str(&e.event).unwrap_or_default();
                let view = stored_event_view(stored, e.seq, e.recorded_at, e.message.as_ref());
                match state {
                    Some(state) => with_extras(view, &Extras::from(state)),
                    None => view,
                }
            })
            .collect();
        Ok(History {
            events,
            has_more: page.has_more,
        })
    }
}

/// The sum of some rooms' counts.
pub fn total<'a>(counts: impl Iterator<Item = &'a Counts>) -> Counts {
    counts.fold(Counts::default(), |t, c| Counts {
        unread: t.unread + c.unread,
        mentions: t.mentions + c.mentions,
        thread_unread: t.thread_unread + c.thread_unread,
    })
}

/// The state of the message each `message_sent` entry is about, as `viewer` sees it (`None`
/// for other entries).
pub(super) fn message_states(
    c: &rusqlite::Connection,
    room: RoomId,
    viewer: UserId,
    entries: &[queries::TimelineEntry],
) -> projector::Result<Vec<Option<features::MessageState>>> {
    entries
        .iter()
        .map(|e| {
            let Some(id) = sent_message_id(&e.event) else {
                return Ok(None);
            };
            features::message_state(c, room, id, viewer)
        })
        .collect()
}

/// The message id of a stored `message_sent` event.
fn sent_message_id(stored: &str) -> Option<MessageId> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "type")]
        kind: String,
        message_id: Option<uuid::Uuid>,
    }
    let probe: Probe = serde_json::from_str(stored).ok()?;
    (probe.kind == "message_sent")
        .then_some(probe.message_id?)
        .map(MessageId)
}
