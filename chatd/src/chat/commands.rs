//! Command machinery: load an aggregate, `decide`, append with the expected version, retry on
//! a version conflict, then wait for the local projections (read-your-writes).
//!
//! Rooms are held per node by their actors ([`super::room_actor`]), which decide and append
//! a room's commands in batches; other nodes are caught by the expected version. Users'
//! commands are rare and go through [`Chat::command`] one by one. (The model is cqrs-es's
//! `CqrsFramework::execute`.)

use std::time::Duration;

use eventlog::{AppendResult, ErrorKind, EventLog, ExpectedVersion, NewEvent};
use projector::queries;
use schema::events::Event;
use schema::room::RoomCommand;
use schema::{Aggregate, RoomId, UserId};
use uuid::Uuid;

use super::Chat;
use super::error::{ChatError, Result};

/// How long a command waits for the projections before answering anyway (the command is
/// durable either way; only the caller's next read could then be stale).
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at a command whose stream keeps moving under it.
const MAX_ATTEMPTS: usize = 10;
const STREAM_PAGE: usize = 1_000;

/// What the answer to a command waits for. Either way it comes only once the command's events
/// are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Also until this node's read models show them, so the caller's next read does
    /// (read-your-writes, bounded by a timeout).
    #[default]
    ReadYourWrites,
    /// Not for the read models; the user's next read (`GET`) waits for them instead
    /// ([`Chat::fence_reads`]).
    Durable(UserId),
}

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
    to_new_with(events, tracecontext::scoped().as_deref())
}

/// [`to_new`] for the request whose trace is `traceparent`.
pub(super) fn to_new_with(events: &[Event], traceparent: Option<&str>) -> Vec<NewEvent> {
    let metadata = NewEvent::trace_metadata(traceparent);
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

/// Brings `loaded` up to the stream's current version.
pub(super) async fn catch_up<A: Aggregate>(
    log: &dyn EventLog,
    stream: &str,
    loaded: &mut Option<Loaded<A>>,
) -> Result<()> {
    let current = loaded.get_or_insert_with(Loaded::default);
    loop {
        let batch = log
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

impl Chat {
    /// Brings `loaded` up to the stream's current version.
    pub(super) async fn catch_up<A: Aggregate>(
        &self,
        stream: &str,
        loaded: &mut Option<Loaded<A>>,
    ) -> Result<()> {
        catch_up(self.log.as_ref(), stream, loaded).await
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

    /// Waits (boundedly) until the read models show every command of `user`'s that was
    /// answered at durability ([`Consistency::Durable`]), so their next read shows it.
    pub async fn fence_reads(&self, user: UserId) {
        if let Err(e) = self.fence.wait(user, READ_YOUR_WRITES_TIMEOUT).await {
            tracing::warn!(user = %user, error = %e, "reading before the projections caught up");
        }
    }

    /// Runs a command on a room (through its actor), then waits until the local projections
    /// show the result.
    pub(super) async fn room_command(
        &self,
        room: RoomId,
        command: RoomCommand,
    ) -> Result<Executed> {
        self.room_command_with(room, command, None, Consistency::ReadYourWrites)
            .await
    }

    /// [`Self::room_command`]; with `dm_sender`, refused with `blocked` when the room is a
    /// direct room whose other member is in a block with the sender (checked by the room's
    /// actor from its state, so a group room costs nothing more); answered when `consistency`
    /// says.
    pub(super) async fn room_command_with(
        &self,
        room: RoomId,
        command: RoomCommand,
        dm_sender: Option<UserId>,
        consistency: Consistency,
    ) -> Result<Executed> {
        let executed = self.rooms.execute(room, command, dm_sender).await?;
        self.settle(consistency, executed.position).await;
        Ok(executed)
    }

    /// What a command answered at `position` waits for, as `consistency` says.
    pub(super) async fn settle(&self, consistency: Consistency, position: u64) {
        match consistency {
            Consistency::ReadYourWrites => self.await_projection(position).await,
            Consistency::Durable(actor) => self.fence.record(actor, position),
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
