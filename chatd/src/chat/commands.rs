//! Command machinery: load an aggregate, `decide`, append with the expected version, retry on
//! a version conflict, then wait for the local projections (read-your-writes).
//!
//! Rooms are cached per node and refreshed incrementally; commands on one room take turns on
//! this node (the slot's lock), and other nodes are caught by the expected version. (The
//! model is cqrs-es's `CqrsFramework::execute`.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventlog::{AppendResult, ErrorKind, ExpectedVersion, NewEvent};
use projector::queries;
use schema::events::Event;
use schema::room::{RoomAggregate, RoomCommand};
use schema::{Aggregate, RoomId, UserId, streams};
use uuid::Uuid;

use super::Chat;
use super::error::{ChatError, Result};

/// How long a command waits for the projections before answering anyway (the command is
/// durable either way; only the caller's next read could then be stale).
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at a command whose stream keeps moving under it.
const MAX_ATTEMPTS: usize = 10;
const STREAM_PAGE: usize = 1_000;

/// An aggregate with the stream version it reflects.
#[derive(Debug, Clone, Default)]
pub(super) struct Loaded<A> {
    pub(super) state: A,
    pub(super) version: u64,
    /// Global position of the last event folded in: reads must reach it to reflect `state`.
    pub(super) position: u64,
}

/// What a command did.
#[derive(Debug)]
pub(super) struct Executed {
    /// The events decided (empty when the command was already satisfied).
    pub(super) events: Vec<Event>,
    /// Where they landed; `None` when nothing was appended.
    pub(super) append: Option<AppendResult>,
    /// The position reads must reach to reflect the command.
    pub(super) position: u64,
}

pub(super) type RoomSlot = Arc<tokio::sync::Mutex<Option<Loaded<RoomAggregate>>>>;

/// Room aggregates by id, one slot each.
pub(super) type RoomCache = Mutex<HashMap<RoomId, RoomSlot>>;

fn event_id(event: &Event) -> Uuid {
    match event {
        // Deterministic for idempotent sends: a retry carries the same event id.
        Event::MessageSent { message_id, .. } => message_id.0,
        _ => Uuid::now_v7(),
    }
}

/// The events as the log takes them, carrying the trace of the request being handled so the
/// trace continues on every node that consumes them.
pub(super) fn to_new(events: &[Event]) -> Vec<NewEvent> {
    let metadata = NewEvent::trace_metadata(tracecontext::scoped().as_deref());
    events
        .iter()
        .map(|e| NewEvent {
            event_id: event_id(e),
            event_type: e.type_name().to_owned(),
            schema_version: e.schema_version(),
            data: e.encode(),
            metadata: metadata.clone(),
        })
        .collect()
}

impl Chat {
    /// Brings `loaded` up to the stream's current version.
    pub(super) async fn catch_up<A: Aggregate>(
        &self,
        stream: &str,
        loaded: &mut Option<Loaded<A>>,
    ) -> Result<()> {
        let current = loaded.get_or_insert_with(Loaded::default);
        loop {
            let batch = self
                .log
                .read_stream(stream, current.version + 1, STREAM_PAGE)
                .await?;
            let n = batch.len();
            for recorded in batch {
                let event = Event::decode(
                    &recorded.event_type,
                    recorded.schema_version,
                    &recorded.data,
                )
                .map_err(|e| ChatError::Internal(e.to_string()))?;
                current.state.evolve(&event);
                current.version = recorded.version;
                current.position = recorded.position;
            }
            if n < STREAM_PAGE {
                return Ok(());
            }
        }
    }

    /// Decides `command` against the aggregate in `stream` and appends the result, retrying on
    /// version conflicts. Does not wait for the projections (see [`Self::command`]).
    ///
    /// Cancel-safe: while the append is in flight the state is taken out of `loaded`, so if
    /// the caller is dropped (a client hung up) the next command reloads instead of deciding on
    /// a state that misses a durable write.
    pub(super) async fn execute<A: Aggregate>(
        &self,
        stream: &str,
        loaded: &mut Option<Loaded<A>>,
        command: &A::Command,
    ) -> Result<Executed> {
        if loaded.is_none() {
            self.catch_up(stream, loaded).await?;
        }
        for _ in 0..MAX_ATTEMPTS {
            let mut current = loaded.take().unwrap_or_default();
            let events = match current.state.decide(command) {
                Ok(events) => events,
                Err(e) => {
                    *loaded = Some(current);
                    return Err(e.into());
                }
            };
            if events.is_empty() {
                // Nothing to write, but the state we decided on must be visible to reads.
                let position = current.position;
                *loaded = Some(current);
                return Ok(Executed {
                    events,
                    append: None,
                    position,
                });
            }
            let expected = ExpectedVersion::at(current.version);
            match self.log.append(stream, expected, to_new(&events)).await {
                Ok(result) if result.duplicate => {
                    // An earlier attempt (perhaps cancelled before it could update the cache)
                    // stored these events: catch up to them.
                    *loaded = Some(current);
                    self.catch_up(stream, loaded).await?;
                    return Ok(Executed {
                        events,
                        append: Some(result),
                        position: result.last_position,
                    });
                }
                Ok(result) => {
                    for e in &events {
                        current.state.evolve(e);
                    }
                    current.version = result.last_version;
                    current.position = result.last_position;
                    *loaded = Some(current);
                    return Ok(Executed {
                        events,
                        append: Some(result),
                        position: result.last_position,
                    });
                }
                Err(e) if e.kind() == ErrorKind::VersionConflict => {
                    tracing::debug!(stream, "version conflict; reloading");
                    *loaded = Some(current);
                    self.catch_up(stream, loaded).await?;
                }
                // The outcome is unknown: leave `loaded` empty so the next command reloads.
                Err(e) => return Err(e.into()),
            }
        }
        Err(ChatError::Contention(stream.to_owned()))
    }

    /// [`Self::execute`], then wait until the local projections show the result.
    pub(super) async fn command<A: Aggregate>(
        &self,
        stream: &str,
        loaded: &mut Option<Loaded<A>>,
        command: &A::Command,
    ) -> Result<Executed> {
        let executed = self.execute(stream, loaded, command).await?;
        // An ended session's tokens stop working on this node at once (the others learn it
        // from the log).
        self.auth.observe(stream, &executed.events);
        self.await_projection(executed.position).await;
        Ok(executed)
    }

    /// Waits (boundedly) until the read models reflect the log up to `position`.
    pub async fn await_projection(&self, position: u64) {
        if let Err(e) = self
            .progress
            .wait_for(position, READ_YOUR_WRITES_TIMEOUT)
            .await
        {
            tracing::warn!(position, error = %e, "answering before the projections caught up");
        }
    }

    /// Runs a command on a room. Commands on one room take turns on this node (the slot's
    /// lock) so they do not conflict with each other; the lock is released before waiting for
    /// the projections, so a slow projector does not hold up the room.
    pub(super) async fn room_command(
        &self,
        room: RoomId,
        command: RoomCommand,
    ) -> Result<Executed> {
        self.room_command_by(room, command, None).await
    }

    /// [`Self::room_command`]; with `dm_sender`, refused with `blocked` when the room is a
    /// direct room whose other member is in a block with the sender (checked under the room's
    /// lock from the cached state, so a group room costs nothing more).
    pub(super) async fn room_command_by(
        &self,
        room: RoomId,
        command: RoomCommand,
        dm_sender: Option<UserId>,
    ) -> Result<Executed> {
        let slot = self.room_slot(room);
        let executed = {
            let mut loaded = slot.lock().await;
            let result = match self
                .refuse_blocked_dm(room, &mut loaded, &command, dm_sender)
                .await
            {
                Ok(()) => {
                    self.execute(&streams::room(room), &mut loaded, &command)
                        .await
                }
                Err(e) => Err(e),
            };
            let exists = loaded.as_ref().is_some_and(|l| l.state.created.is_some());
            drop(loaded);
            if !exists {
                // Don't let requests for made-up room ids grow the cache.
                self.forget_room(room, &slot);
            }
            result?
        };
        self.await_projection(executed.position).await;
        Ok(executed)
    }

    async fn refuse_blocked_dm(
        &self,
        room: RoomId,
        loaded: &mut Option<Loaded<RoomAggregate>>,
        command: &RoomCommand,
        sender: Option<UserId>,
    ) -> Result<()> {
        let Some(sender) = sender else {
            return Ok(());
        };
        if loaded.is_none() {
            self.catch_up(&streams::room(room), loaded).await?;
        }
        let state = loaded.as_ref().map(|l| &l.state);
        // A retry of a send that was stored gets its original answer, as in the aggregate.
        if let RoomCommand::Send { message_id, .. } = command
            && state.is_some_and(|s| {
                s.messages
                    .get(message_id)
                    .is_some_and(|m| m.sender_id == sender)
            })
        {
            return Ok(());
        }
        let direct = state
            .and_then(|s| s.created)
            .is_some_and(|c| c.kind == schema::events::RoomKind::Direct);
        let peer = state
            .filter(|_| direct)
            .and_then(|s| s.members.iter().copied().find(|m| *m != sender));
        match peer {
            Some(peer) if self.blocked_either(sender, peer).await? => {
                Err(schema::DomainError::Blocked.into())
            }
            _ => Ok(()),
        }
    }

    fn room_slot(&self, room: RoomId) -> RoomSlot {
        // A poisoned map only means another request panicked mid-insert; the map is still valid.
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms.entry(room).or_default().clone()
    }

    fn forget_room(&self, room: RoomId, slot: &RoomSlot) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if rooms.get(&room).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            rooms.remove(&room);
        }
    }

    pub(super) async fn require_users(&self, ids: Vec<UserId>) -> Result<()> {
        let wanted = ids.clone();
        let found = self
            .models
            .read(move |c| queries::existing_users(c, &wanted))
            .await?;
        let missing: Vec<UserId> = ids.into_iter().filter(|id| !found.contains(id)).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ChatError::UnknownUsers(missing))
        }
    }
}
