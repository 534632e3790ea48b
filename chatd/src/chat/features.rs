//! The message features (issue 17): reactions, pins, read counts per message and their
//! readers, threads. Commands go through the room aggregate like every other; reads come from
//! the read models ([`projector::features`]) and render through [`super::view`].

use projector::features::{self, Pin};
use projector::queries::UserView;
use rusqlite::Connection;
use schema::room::RoomCommand;
use schema::{DomainError, Emoji, MessageId, RoomId, UserId};

use super::Chat;
use super::error::Result;
use super::messages::{History, message_states};
use super::view::{Extras, stored_event_view, with_extras};

/// Who has read a message.
#[derive(Debug, Clone)]
pub struct Readers {
    pub message_id: MessageId,
    pub seq: u64,
    /// Members (the sender aside) whose marker is below the message.
    pub unread_by: u64,
    /// Members (the sender aside) who were in the room when it was sent and have read it.
    pub readers: Vec<UserView>,
}

/// A thread: its root and a page of its replies.
#[derive(Debug, Clone)]
pub struct Thread {
    pub root: serde_json::Value,
    pub replies: History,
}

fn not_found() -> super::ChatError {
    DomainError::NotFound("message").into()
}

/// The view of message `id`'s `message_sent` event with its state, as `viewer` sees it.
fn message_item(
    c: &Connection,
    room: RoomId,
    id: MessageId,
    viewer: UserId,
) -> projector::Result<Option<serde_json::Value>> {
    let Some(entry) = features::sent_event(c, room, id)? else {
        return Ok(None);
    };
    let state = message_states(c, room, viewer, std::slice::from_ref(&entry))?
        .pop()
        .flatten();
    let stored = serde_json::from_str(&entry.event).unwrap_or_default();
    let view = stored_event_view(stored, entry.seq, entry.recorded_at, entry.message.as_ref());
    Ok(Some(match state {
        Some(s) => with_extras(view, &Extras::from(s)),
        None => view,
    }))
}

impl Chat {
    /// Adds (`add`) or takes back the caller's `emoji` reaction to a message; already so:
    /// nothing changes.
    pub async fn react(
        &self,
        actor: UserId,
        room: RoomId,
        message_id: MessageId,
        emoji: Emoji,
        add: bool,
    ) -> Result<()> {
        let user = actor;
        let command = if add {
            RoomCommand::React {
                user,
                message_id,
                emoji,
            }
        } else {
            RoomCommand::Unreact {
                user,
                message_id,
                emoji,
            }
        };
        self.room_command(room, command).await.map(|_| ())
    }

    /// Pins (`pin`) or unpins a message in its room; already so: nothing changes.
    pub async fn pin(
        &self,
        actor: UserId,
        room: RoomId,
        message_id: MessageId,
        pin: bool,
    ) -> Result<()> {
        let user = actor;
        let command = if pin {
            RoomCommand::Pin { user, message_id }
        } else {
            RoomCommand::Unpin { user, message_id }
        };
        self.room_command(room, command).await.map(|_| ())
    }

    /// The room's pinned messages, newest pin first. Members only.
    pub async fn pins(&self, actor: UserId, room: RoomId) -> Result<Vec<Pin>> {
        self.require_member(actor, room).await?;
        Ok(self.models.read(move |c| features::pins(c, room)).await?)
    }

    /// Who has read message `id`. Members only; a deleted message has no readers to show.
    pub async fn readers(&self, actor: UserId, room: RoomId, id: MessageId) -> Result<Readers> {
        self.require_member(actor, room).await?;
        let found = self
            .models
            .read(move |c| {
                let Some(state) = features::message_state(c, room, id, actor)? else {
                    return Ok(None);
                };
                if state.deleted {
                    return Ok(None);
                }
                let readers = features::readers(c, room, state.seq, state.sender_id)?;
                Ok(Some(Readers {
                    message_id: id,
                    seq: state.seq,
                    unread_by: state.unread_by,
                    readers,
                }))
            })
            .await?;
        found.ok_or_else(not_found)
    }

    /// The thread rooted at message `root`: the root and a page of its live replies (paged by
    /// seq like [`Chat::history`]). Members only.
    pub async fn thread(
        &self,
        actor: UserId,
        room: RoomId,
        root: MessageId,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Thread> {
        self.require_member(actor, room).await?;
        let found = self
            .models
            .read(move |c| {
                let Some(root_item) = message_item(c, room, root, actor)? else {
                    return Ok(None);
                };
                let (ids, has_more) = features::thread(c, root, before, after, limit)?;
                let mut events = Vec::with_capacity(ids.len());
                for id in ids {
                    events.extend(message_item(c, room, id, actor)?);
                }
                Ok(Some(Thread {
                    root: root_item,
                    replies: History { events, has_more },
                }))
            })
            .await?;
        found.ok_or_else(not_found)
    }

    /// The state of each of `messages` (id, seq, sender) of `room` as `viewer` sees it now, for
    /// events replayed from the log. A message the read models do not hold yet is as fresh as
    /// a live one: unread by every member but its sender whose marker is below it.
    pub async fn extras(
        &self,
        room: RoomId,
        viewer: UserId,
        messages: Vec<(MessageId, u64, UserId)>,
    ) -> Result<Vec<Extras>> {
        Ok(self
            .models
            .read(move |c| {
                messages
                    .into_iter()
                    .map(|(id, seq, sender)| {
                        Ok(match features::message_state(c, room, id, viewer)? {
                            Some(state) => Extras::from(state),
                            None => Extras::fresh(features::unread_by(c, room, seq, sender)?),
                        })
                    })
                    .collect()
            })
            .await?)
    }
}
