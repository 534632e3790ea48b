//! The application service: turns requests into commands on aggregates and queries on the
//! read models. HTTP-free; the `http` module maps its errors to statuses in one table.
//!
//! Command path: load the aggregate (rooms are cached per node and refreshed incrementally),
//! `decide`, append with the expected version, `evolve` the cache, then wait for the local
//! projections to reach the append (read-your-writes). A version conflict — another node or
//! request got there first — reloads and decides again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventlog::{AppendResult, ErrorKind, EventLog, ExpectedVersion, NewEvent};
use projector::queries::{self, Page, RoomSummary, UserView};
use projector::{Progress, ReadModels};
use schema::events::{Event, RoomKind};
use schema::room::{Room, RoomCommand};
use schema::session::{Session, SessionCommand};
use schema::user::{User, UserCommand};
use schema::{
    Aggregate, DisplayName, DomainError, MessageBody, MessageId, Password, RoomId, RoomName,
    SessionId, UserId, Username, Visibility, streams,
};
use uuid::Uuid;

use crate::auth::{self, Auth};
use crate::live::presence::Presence;

/// How long a command waits for the projections before answering anyway (the command is
/// durable either way; only the caller's next read could then be stale).
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at a command whose stream keeps moving under it.
const MAX_ATTEMPTS: usize = 10;
const STREAM_PAGE: usize = 1_000;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A domain rule refused the command or a value was invalid.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// Unknown username or wrong password (deliberately not told apart).
    #[error("wrong username or password")]
    InvalidCredentials,
    /// Users named in the request do not exist.
    #[error("unknown users: {0:?}")]
    UnknownUsers(Vec<UserId>),
    /// The stream kept changing; the client may retry.
    #[error("too much contention on {0}; retry")]
    Contention(String),
    /// The event log failed.
    #[error(transparent)]
    Log(#[from] eventlog::Error),
    /// The read models failed.
    #[error(transparent)]
    ReadModel(#[from] projector::Error),
    /// The query or cursor was refused, or the search index failed.
    #[error(transparent)]
    Search(#[from] search::Error),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// Anything else: a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// An aggregate with the stream version it reflects.
#[derive(Debug, Clone, Default)]
struct Loaded<A> {
    state: A,
    version: u64,
    /// Global position of the last event folded in: reads must reach it to reflect `state`.
    position: u64,
}

/// What a command did.
#[derive(Debug)]
struct Executed {
    /// The events decided (empty when the command was already satisfied).
    events: Vec<Event>,
    /// Where they landed; `None` when nothing was appended.
    append: Option<AppendResult>,
    /// The position reads must reach to reflect the command.
    position: u64,
}

type RoomSlot = Arc<tokio::sync::Mutex<Option<Loaded<Room>>>>;

/// Tokens handed out at login and refresh.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
    pub user_id: UserId,
}

/// Someone, with whether they are online right now.
#[derive(Debug, Clone)]
pub struct Person {
    pub user: UserView,
    pub online: bool,
}

/// A room with its members.
#[derive(Debug, Clone)]
pub struct RoomDetail {
    pub summary: RoomSummary,
    pub members: Vec<Person>,
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
            .ok_or_else(|| ServiceError::Internal("a message change appended nothing".into()))?;
        Ok(Self {
            message_id,
            seq: a.last_version,
            at: a.recorded_at,
        })
    }
}

#[derive(Debug)]
pub struct Chat {
    log: Arc<dyn EventLog>,
    models: ReadModels,
    progress: Progress,
    auth: Auth,
    presence: Presence,
    /// Room aggregates by id. Commands on one room run one at a time on this node (the slot's
    /// lock), so they do not conflict with each other; other nodes are caught by the expected
    /// version.
    rooms: Mutex<HashMap<RoomId, RoomSlot>>,
}

fn event_id(event: &Event) -> Uuid {
    match event {
        // Deterministic for idempotent sends: a retry carries the same event id.
        Event::MessageSent { message_id, .. } => message_id.0,
        _ => Uuid::now_v7(),
    }
}

tokio::task_local! {
    /// The W3C `traceparent` of the request being handled, if its caller sent one. Events
    /// appended while handling it carry it in their metadata, and the JetStream backend in a
    /// `traceparent` header, so the trace continues on every node that consumes them.
    pub static TRACE_PARENT: Option<String>;
}

/// `traceparent` if it is a well-formed W3C trace context (version 00).
pub fn valid_traceparent(v: &str) -> Option<String> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        [version, trace, span, flags]
            if *version == "00"
                && hex(trace, 32)
                && hex(span, 16)
                && hex(flags, 2)
                && trace.bytes().any(|b| b != b'0')
                && span.bytes().any(|b| b != b'0') =>
        {
            Some(v.trim().to_ascii_lowercase())
        }
        _ => None,
    }
}

fn to_new(events: &[Event]) -> Vec<NewEvent> {
    let metadata = TRACE_PARENT
        .try_with(|t| t.clone())
        .ok()
        .flatten()
        .map(|tp| {
            serde_json::json!({ "traceparent": tp })
                .to_string()
                .into_bytes()
        })
        .unwrap_or_default();
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
    pub fn new(
        log: Arc<dyn EventLog>,
        models: ReadModels,
        progress: Progress,
        auth: Auth,
        presence: Presence,
    ) -> Self {
        Self {
            log,
            models,
            progress,
            auth,
            presence,
            rooms: Mutex::new(HashMap::new()),
        }
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    // ---------------------------------------------------------------- command plumbing

    /// Brings `loaded` up to the stream's current version.
    async fn catch_up<A: Aggregate>(
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
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
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
    async fn execute<A: Aggregate>(
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
        Err(ServiceError::Contention(stream.to_owned()))
    }

    /// [`Self::execute`], then wait until the local projections show the result.
    async fn command<A: Aggregate>(
        &self,
        stream: &str,
        loaded: &mut Option<Loaded<A>>,
        command: &A::Command,
    ) -> Result<Executed> {
        let executed = self.execute(stream, loaded, command).await?;
        self.await_projection(executed.position).await;
        Ok(executed)
    }

    /// The log position the read models reflect.
    pub fn projected(&self) -> u64 {
        self.progress.position()
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
    async fn room_command(&self, room: RoomId, command: RoomCommand) -> Result<Executed> {
        let slot = self.room_slot(room);
        let executed = {
            let mut loaded = slot.lock().await;
            let result = self
                .execute(&streams::room(room), &mut loaded, &command)
                .await;
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

    async fn require_users(&self, ids: Vec<UserId>) -> Result<()> {
        let wanted = ids.clone();
        let found = self
            .models
            .read(move |c| queries::existing_users(c, &wanted))
            .await?;
        let missing: Vec<UserId> = ids.into_iter().filter(|id| !found.contains(id)).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ServiceError::UnknownUsers(missing))
        }
    }

    // ---------------------------------------------------------------- accounts

    pub async fn register(
        &self,
        username: Username,
        password: Password,
        display_name: Option<DisplayName>,
    ) -> Result<UserView> {
        let user_id = UserId::for_username(&username);
        let stream = streams::user(user_id);
        let mut loaded = None;
        self.catch_up::<User>(&stream, &mut loaded).await?;
        // Check before the expensive hash; the append below re-checks atomically.
        if loaded
            .as_ref()
            .is_some_and(|l| l.state.registered.is_some())
        {
            return Err(DomainError::UsernameTaken.into());
        }
        let password_hash = self
            .auth
            .hash_password(password)
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let display_name = display_name.unwrap_or_else(|| DisplayName::from(&username));
        let command = UserCommand::Register {
            username: username.clone(),
            display_name: display_name.clone(),
            password_hash,
        };
        self.command(&stream, &mut loaded, &command).await?;
        Ok(UserView {
            user_id,
            username: username.as_str().to_owned(),
            display_name: display_name.as_str().to_owned(),
        })
    }

    pub async fn login(&self, username: &str, password: String) -> Result<Tokens> {
        let registered = match Username::parse(username) {
            Ok(name) => {
                let mut loaded = None;
                self.catch_up::<User>(&streams::user(UserId::for_username(&name)), &mut loaded)
                    .await?;
                loaded.and_then(|l| l.state.registered)
            }
            Err(_) => None,
        };
        let hash = registered.as_ref().map(|r| r.password_hash.clone());
        if !self.auth.verify_password(password, hash).await {
            return Err(ServiceError::InvalidCredentials);
        }
        let user = registered.ok_or(ServiceError::InvalidCredentials)?;
        self.start_session(user.user_id).await
    }

    async fn start_session(&self, user_id: UserId) -> Result<Tokens> {
        let session_id = SessionId::new();
        let refresh_token = auth::new_refresh_token(session_id);
        let command = SessionCommand::Start {
            session_id,
            user_id,
            token_hash: auth::token_hash(&refresh_token),
            expires_at: self.auth.refresh_expiry(Utc::now()),
        };
        self.command::<Session>(&streams::session(session_id), &mut None, &command)
            .await?;
        Ok(self.tokens(user_id, session_id, refresh_token))
    }

    fn tokens(&self, user_id: UserId, session_id: SessionId, refresh_token: String) -> Tokens {
        Tokens {
            access_token: self.auth.issue_access(user_id, session_id),
            refresh_token,
            expires_in: self.auth.access_ttl().as_secs(),
            user_id,
        }
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens> {
        let session_id =
            auth::refresh_token_session(refresh_token).ok_or(DomainError::InvalidRefreshToken)?;
        let new_token = auth::new_refresh_token(session_id);
        let now = Utc::now();
        let command = SessionCommand::Refresh {
            presented_hash: auth::token_hash(refresh_token),
            new_hash: auth::token_hash(&new_token),
            now,
            expires_at: self.auth.refresh_expiry(now),
        };
        let mut loaded = None;
        let Executed { events, .. } = self
            .command::<Session>(&streams::session(session_id), &mut loaded, &command)
            .await?;
        Session::refresh_outcome(&events)?;
        let user_id = loaded
            .and_then(|l| l.state.user_id)
            .ok_or(DomainError::InvalidRefreshToken)?;
        Ok(self.tokens(user_id, session_id, new_token))
    }

    pub async fn logout(&self, refresh_token: &str) -> Result<()> {
        let session_id =
            auth::refresh_token_session(refresh_token).ok_or(DomainError::InvalidRefreshToken)?;
        let command = SessionCommand::End {
            presented_hash: auth::token_hash(refresh_token),
        };
        // The session is over either way (a spent token revokes it): 204.
        self.command::<Session>(&streams::session(session_id), &mut None, &command)
            .await?;
        Ok(())
    }

    async fn user_command(&self, actor: UserId, command: UserCommand) -> Result<()> {
        self.command::<User>(&streams::user(actor), &mut None, &command)
            .await?;
        Ok(())
    }

    pub async fn add_friend(&self, actor: UserId, friend: UserId) -> Result<()> {
        if actor != friend {
            self.require_users(vec![friend]).await?;
        }
        self.user_command(actor, UserCommand::AddFriend { friend })
            .await
    }

    pub async fn remove_friend(&self, actor: UserId, friend: UserId) -> Result<()> {
        self.user_command(actor, UserCommand::RemoveFriend { friend })
            .await
    }

    pub async fn friends(&self, actor: UserId) -> Result<Vec<Person>> {
        let friends = self
            .models
            .read(move |c| queries::friends(c, actor))
            .await?;
        Ok(self.with_presence(friends))
    }

    fn with_presence(&self, users: Vec<UserView>) -> Vec<Person> {
        users
            .into_iter()
            .map(|user| Person {
                online: self.presence.is_online(user.user_id),
                user,
            })
            .collect()
    }

    /// Who is online (as announced to their contacts).
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    pub async fn user(&self, id: UserId) -> Result<Option<UserView>> {
        Ok(self.models.read(move |c| queries::user(c, id)).await?)
    }

    pub async fn search_users(&self, prefix: String, limit: usize) -> Result<Vec<UserView>> {
        Ok(self
            .models
            .read(move |c| queries::search_users(c, &prefix, limit))
            .await?)
    }

    // ---------------------------------------------------------------- rooms

    pub async fn create_room(
        &self,
        actor: UserId,
        name: RoomName,
        members: Vec<UserId>,
        visibility: Visibility,
    ) -> Result<RoomDetail> {
        // Refuse before looking a thousand users up.
        schema::room::check_request_size("member_ids", members.len())?;
        self.require_users(members.clone()).await?;
        let room_id = RoomId::new();
        let command = RoomCommand::Create {
            room_id,
            kind: RoomKind::Group,
            name: Some(name),
            visibility,
            creator: actor,
            members,
        };
        self.room_command(room_id, command).await?;
        self.room_detail(actor, room_id).await
    }

    /// The direct room between `actor` and `other`, created on first use. The flag says
    /// whether this call created it.
    pub async fn direct_room(&self, actor: UserId, other: UserId) -> Result<(RoomDetail, bool)> {
        if actor == other {
            return Err(DomainError::DirectWithSelf.into());
        }
        self.require_users(vec![other]).await?;
        let room_id = RoomId::direct(actor, other);
        let command = RoomCommand::Create {
            room_id,
            kind: RoomKind::Direct,
            name: None,
            visibility: Visibility::Private,
            creator: actor,
            members: vec![other],
        };
        let Executed { events, append, .. } = self.room_command(room_id, command).await?;
        let created = !events.is_empty() && append.is_some_and(|a| !a.duplicate);
        Ok((self.room_detail(actor, room_id).await?, created))
    }

    pub async fn public_rooms(&self, q: String, limit: usize) -> Result<Vec<RoomSummary>> {
        Ok(self
            .models
            .read(move |c| queries::public_rooms(c, &q, limit))
            .await?)
    }

    /// Joins a public room (no-op for a member; 403 `room_not_public` for a private one).
    pub async fn join(&self, actor: UserId, room: RoomId) -> Result<()> {
        self.room_command(room, RoomCommand::Join { user: actor })
            .await?;
        Ok(())
    }

    /// The caller's rooms and the log position that reflects, in one snapshot.
    pub async fn rooms_at_checkpoint(&self, actor: UserId) -> Result<(u64, Vec<RoomId>)> {
        Ok(self
            .models
            .read(move |c| queries::rooms_at_checkpoint(c, actor))
            .await?)
    }

    pub async fn rooms_of(&self, actor: UserId) -> Result<Vec<RoomSummary>> {
        Ok(self
            .models
            .read(move |c| queries::room_list(c, actor))
            .await?)
    }

    /// The event log, for live delivery's catch-up reads (which must not wait for the
    /// projections).
    pub fn log(&self) -> &dyn EventLog {
        self.log.as_ref()
    }

    /// Refuses unless the room exists (404) and `actor` is a member (403).
    pub async fn require_member(&self, actor: UserId, room: RoomId) -> Result<()> {
        let (exists, member) = self
            .models
            .read(move |c| {
                Ok((
                    queries::room_exists(c, room)?,
                    queries::is_member(c, room, actor)?,
                ))
            })
            .await?;
        match (exists, member) {
            (false, _) => Err(DomainError::NotFound("room").into()),
            (true, false) => Err(DomainError::NotAMember.into()),
            (true, true) => Ok(()),
        }
    }

    pub async fn room_detail(&self, actor: UserId, room: RoomId) -> Result<RoomDetail> {
        self.require_member(actor, room).await?;
        let (summary, members) = self
            .models
            .read(move |c| Ok((queries::room(c, room, actor)?, queries::members(c, room)?)))
            .await?;
        let summary = summary.ok_or(DomainError::NotFound("room"))?;
        Ok(RoomDetail {
            summary,
            members: self.with_presence(members),
        })
    }

    pub async fn invite(&self, actor: UserId, room: RoomId, users: Vec<UserId>) -> Result<()> {
        schema::room::check_request_size("user_ids", users.len())?;
        self.require_users(users.clone()).await?;
        self.room_command(room, RoomCommand::Invite { by: actor, users })
            .await?;
        Ok(())
    }

    pub async fn leave(&self, actor: UserId, room: RoomId) -> Result<()> {
        self.room_command(room, RoomCommand::Leave { user: actor })
            .await?;
        Ok(())
    }

    // ---------------------------------------------------------------- messages

    pub async fn send(
        &self,
        actor: UserId,
        room: RoomId,
        body: MessageBody,
        client_msg_id: Option<String>,
    ) -> Result<Sent> {
        let message_id = match &client_msg_id {
            Some(key) => MessageId::for_client_msg(room, actor, key),
            None => MessageId::new(),
        };
        let command = RoomCommand::Send {
            sender: actor,
            message_id,
            body,
            client_msg_id,
        };
        let append = self.room_command(room, command).await?.append;
        let append =
            append.ok_or_else(|| ServiceError::Internal("a send appended nothing".into()))?;
        if !append.duplicate {
            metrics::counter!(crate::metrics::names::MESSAGES_SENT).increment(1);
        }
        Ok(Sent {
            message_id,
            seq: append.first_version,
            sent_at: append.recorded_at,
            duplicate: append.duplicate,
        })
    }

    /// Edits one of the caller's own messages. Returns the edit event's seq and time.
    pub async fn edit(
        &self,
        actor: UserId,
        room: RoomId,
        message_id: MessageId,
        body: MessageBody,
    ) -> Result<Changed> {
        let Executed { append, .. } = self
            .room_command(
                room,
                RoomCommand::Edit {
                    sender: actor,
                    message_id,
                    body,
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
    pub async fn mark_read(&self, actor: UserId, room: RoomId, seq: u64) -> Result<()> {
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
        };
        let result = self
            .log
            .append(
                &streams::receipts(actor),
                ExpectedVersion::Any,
                to_new(&[event]),
            )
            .await?;
        self.await_projection(result.last_position).await;
        Ok(())
    }

    /// Unread counts of every room of the caller's.
    pub async fn unread_by_room(&self, actor: UserId) -> Result<Vec<(RoomId, u64)>> {
        Ok(self
            .models
            .read(move |c| queries::unread_counts(c, actor))
            .await?)
    }

    /// Unread counts of the caller's rooms that have any, and their total.
    pub async fn unread(&self, actor: UserId) -> Result<(u64, Vec<(RoomId, u64)>)> {
        let counts = self.unread_by_room(actor).await?;
        let rooms: Vec<(RoomId, u64)> = counts.into_iter().filter(|(_, n)| *n > 0).collect();
        Ok((rooms.iter().map(|(_, n)| n).sum(), rooms))
    }

    pub async fn history(
        &self,
        actor: UserId,
        room: RoomId,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page> {
        self.require_member(actor, room).await?;
        Ok(self
            .models
            .read(move |c| queries::history(c, room, before, after, limit))
            .await?)
    }
}
