//! The fan-out hub: one task owns every live connection and the membership of every room.
//!
//! It consumes the log (events arrive once durable) and, for each room event, serialises one
//! frame and hands the shared bytes to every connection of every member. Membership is kept
//! from the same events (a snapshot of the read models at their checkpoint, then the log from
//! that checkpoint), so a connection follows rooms its user joins or leaves while connected.
//!
//! Each connection has a bounded queue. A connection whose queue is full is dropped with
//! [`Disconnect::TooSlow`]; its client resumes from its last seq and loses nothing, and the
//! server's memory stays bounded.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use eventlog::EventLog;
use futures::StreamExt;
use projector::ReadModels;
use rusqlite::OptionalExtension;
use schema::events::Event;
use schema::{RoomId, UserId, streams};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::frames::EventFrame;

/// Why the hub let go of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Disconnect {
    /// Still connected (or closed by the client).
    None = 0,
    /// Its queue was full: the client must reconnect and resume.
    TooSlow = 1,
    /// The server is shutting down.
    Shutdown = 2,
}

/// Shared between the hub and a connection: why the hub dropped it.
#[derive(Debug, Default)]
pub struct DisconnectReason(AtomicU8);

impl DisconnectReason {
    fn set(&self, reason: Disconnect) {
        self.0.store(reason as u8, Ordering::Release);
    }

    pub fn get(&self) -> Disconnect {
        match self.0.load(Ordering::Acquire) {
            1 => Disconnect::TooSlow,
            2 => Disconnect::Shutdown,
            _ => Disconnect::None,
        }
    }
}

type ConnId = u64;

/// What a registered connection receives.
#[derive(Debug)]
pub struct Registration {
    pub frames: mpsc::Receiver<EventFrame>,
    pub reason: Arc<DisconnectReason>,
    pub id: ConnId,
}

enum Command {
    Register {
        user: UserId,
        reply: oneshot::Sender<Registration>,
    },
    Unregister {
        id: ConnId,
    },
}

/// A cheap handle to the hub task.
#[derive(Debug, Clone)]
pub struct Hub {
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Register { user, .. } => write!(f, "Register({user})"),
            Self::Unregister { id } => write!(f, "Unregister({id})"),
        }
    }
}

impl Hub {
    /// Registers a live connection of `user`: from now on it receives every event of every
    /// room the user belongs to. `None` when the hub has stopped.
    pub async fn register(&self, user: UserId) -> Option<Registration> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Register { user, reply })
            .await
            .ok()?;
        rx.await.ok()
    }

    pub async fn unregister(&self, id: ConnId) {
        let _ = self.commands.send(Command::Unregister { id }).await;
    }
}

struct Conn {
    user: UserId,
    out: mpsc::Sender<EventFrame>,
    reason: Arc<DisconnectReason>,
}

struct State {
    queue: usize,
    next_id: ConnId,
    conns: HashMap<ConnId, Conn>,
    by_user: HashMap<UserId, Vec<ConnId>>,
    members: HashMap<RoomId, HashSet<UserId>>,
}

impl State {
    fn drop_conn(&mut self, id: ConnId, reason: Disconnect) {
        if let Some(conn) = self.conns.remove(&id) {
            conn.reason.set(reason);
            if let Some(ids) = self.by_user.get_mut(&conn.user) {
                ids.retain(|c| *c != id);
                if ids.is_empty() {
                    self.by_user.remove(&conn.user);
                }
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Register { user, reply } => {
                let id = self.next_id;
                self.next_id += 1;
                let (out, frames) = mpsc::channel(self.queue);
                let reason = Arc::new(DisconnectReason::default());
                self.conns.insert(
                    id,
                    Conn {
                        user,
                        out,
                        reason: reason.clone(),
                    },
                );
                self.by_user.entry(user).or_default().push(id);
                if reply.send(Registration { frames, reason, id }).is_err() {
                    self.drop_conn(id, Disconnect::None);
                }
            }
            Command::Unregister { id } => self.drop_conn(id, Disconnect::None),
        }
    }

    fn deliver(&mut self, room: RoomId, recorded: &eventlog::RecordedEvent) {
        let Some(members) = self.members.get(&room) else {
            return;
        };
        let mut frame = None;
        let mut slow = Vec::new();
        for user in members {
            for id in self.by_user.get(user).into_iter().flatten() {
                let frame = frame.get_or_insert_with(|| EventFrame::new(room, recorded));
                if let Some(conn) = self.conns.get(id) {
                    match conn.out.try_send(frame.clone()) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => slow.push(*id),
                        Err(mpsc::error::TrySendError::Closed(_)) => slow.push(*id),
                    }
                }
            }
        }
        for id in slow {
            let closed = self.conns.get(&id).is_some_and(|c| c.out.is_closed());
            if !closed {
                tracing::info!(conn = id, "disconnecting a client that cannot keep up");
            }
            self.drop_conn(
                id,
                if closed {
                    Disconnect::None
                } else {
                    Disconnect::TooSlow
                },
            );
        }
    }

    fn apply(&mut self, recorded: &eventlog::RecordedEvent) {
        let Some(room) = streams::room_of(&recorded.stream) else {
            return;
        };
        let event = match Event::decode(
            &recorded.event_type,
            recorded.schema_version,
            &recorded.data,
        ) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, position = recorded.position, "hub cannot decode an event");
                return;
            }
        };
        // Joins take effect before delivery (the newcomer sees their join), leaves after (the
        // leaver sees their leave).
        match &event {
            Event::RoomCreated { members, .. } => {
                self.members
                    .entry(room)
                    .or_default()
                    .extend(members.iter().copied());
            }
            Event::MemberJoined { user_id, .. } => {
                self.members.entry(room).or_default().insert(*user_id);
            }
            _ => {}
        }
        self.deliver(room, recorded);
        if let (Event::MemberLeft { user_id }, Some(m)) = (&event, self.members.get_mut(&room)) {
            m.remove(user_id);
        }
    }
}

/// Memberships and the position they reflect, read in one snapshot.
fn snapshot(
    c: &rusqlite::Connection,
) -> projector::Result<(u64, HashMap<RoomId, HashSet<UserId>>)> {
    let tx = c.unchecked_transaction()?;
    let position: Option<i64> = tx
        .query_row(
            "SELECT position FROM checkpoint WHERE name = 'read_models'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let mut members: HashMap<RoomId, HashSet<UserId>> = HashMap::new();
    {
        let mut stmt = tx.prepare("SELECT room_id, user_id FROM members")?;
        let rows = stmt.query_map([], |r| Ok((RoomId(r.get(0)?), UserId(r.get(1)?))))?;
        for row in rows {
            let (room, user) = row?;
            members.entry(room).or_default().insert(user);
        }
    }
    tx.commit()?;
    Ok((position.map_or(0, |p| p as u64), members))
}

/// Starts the hub: returns its handle and the task to run until `shutdown`.
pub async fn start(
    log: Arc<dyn EventLog>,
    models: &ReadModels,
    queue: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    Hub,
    impl Future<Output = anyhow::Result<()>> + Send + 'static,
)> {
    let (position, members) = models.read(snapshot).await?;
    let (tx, mut commands) = mpsc::channel(1024);
    let mut state = State {
        queue,
        next_id: 1,
        conns: HashMap::new(),
        by_user: HashMap::new(),
        members,
    };
    let run = async move {
        let mut events = log.subscribe(position);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(command) = commands.recv() => state.command(command),
                next = events.next() => match next {
                    Some(Ok(recorded)) => state.apply(&recorded),
                    Some(Err(e)) => {
                        for id in state.conns.keys().copied().collect::<Vec<_>>() {
                            state.drop_conn(id, Disconnect::Shutdown);
                        }
                        return Err(anyhow::anyhow!("hub lost the log: {e}"));
                    }
                    None => break,
                },
            }
        }
        for id in state.conns.keys().copied().collect::<Vec<_>>() {
            state.drop_conn(id, Disconnect::Shutdown);
        }
        Ok(())
    };
    Ok((Hub { commands: tx }, run))
}
