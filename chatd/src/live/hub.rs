//! The fan-out hub: one task owns every live connection, the membership of every room, who
//! follows whom (friend lists) and who is online.
//!
//! It consumes the log (events arrive once durable) and, for each room event, serialises one
//! frame and hands the shared bytes to every connection of every member. Membership and friend
//! lists are kept from the same events (a snapshot of the read models at their checkpoint, then
//! the log from that checkpoint), so a connection follows rooms its user joins or leaves while
//! connected.
//!
//! Each connection has a bounded queue. A connection whose queue is full when a durable event
//! must go out is dropped with [`Disconnect::TooSlow`]; its client resumes from its last seq and
//! loses nothing, and the server's memory stays bounded. Ephemeral frames (typing, presence)
//! are simply not queued for a full connection.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use eventlog::EventLog;
use futures::StreamExt;
use projector::ReadModels;
use rusqlite::OptionalExtension;
use schema::events::Event;
use schema::{RoomId, UserId, streams};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::frames::{EventFrame, PresenceFrame, ServerFrame, TypingFrame};
use super::peers::{Outbox, PEER_TIMEOUT, PeerMessage, Peers, SYNC_EVERY};
use super::presence::Presence;
use crate::metrics::{Failures, names};
use uuid::Uuid;

/// A user's typing is forwarded at most once per this interval per room.
pub const TYPING_EVERY: Duration = Duration::from_secs(1);

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

/// What kind of client a connection serves: SSE clients get notifications only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    WebSocket,
    Sse,
}

/// What the hub hands a connection.
#[derive(Debug)]
pub enum Outbound {
    /// A durable room event.
    Event(EventFrame),
    /// An ephemeral frame (typing, presence), ready to send.
    Notice(Arc<str>),
    /// The user's read marker moved (on any device): their unread counts may have changed
    /// once the read models reach `position`.
    ReadMoved { position: u64 },
}

/// A registered connection. Dropping it unregisters (and may start the offline grace).
#[derive(Debug)]
pub struct Registration {
    pub frames: mpsc::Receiver<Outbound>,
    pub reason: Arc<DisconnectReason>,
    id: ConnId,
    hub: Hub,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let (hub, id) = (self.hub.clone(), self.id);
        if hub.commands.try_send(Command::Unregister { id }).is_err()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = hub.commands.send(Command::Unregister { id }).await;
            });
        }
    }
}

enum Command {
    Register {
        user: UserId,
        kind: ConnKind,
        reply: oneshot::Sender<(ConnId, mpsc::Receiver<Outbound>, Arc<DisconnectReason>)>,
    },
    Unregister {
        id: ConnId,
    },
    Typing {
        user: UserId,
        room: RoomId,
        reply: oneshot::Sender<bool>,
    },
}

/// A cheap handle to the hub task.
#[derive(Debug, Clone)]
pub struct Hub {
    commands: mpsc::Sender<Command>,
    /// The position of the last log event the hub has delivered.
    position: watch::Receiver<u64>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Register { user, .. } => write!(f, "Register({user})"),
            Self::Unregister { id } => write!(f, "Unregister({id})"),
            Self::Typing { user, room, .. } => write!(f, "Typing({user}, {room})"),
        }
    }
}

impl Hub {
    /// The position of the last log event the hub has handed to connections.
    pub fn position(&self) -> watch::Receiver<u64> {
        self.position.clone()
    }

    /// Registers a live connection of `user`: from now on it receives every event of every
    /// room the user belongs to. `None` when the hub has stopped.
    pub async fn register(&self, user: UserId, kind: ConnKind) -> Option<Registration> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Register { user, kind, reply })
            .await
            .ok()?;
        let (id, frames, reason) = rx.await.ok()?;
        Some(Registration {
            frames,
            reason,
            id,
            hub: self.clone(),
        })
    }

    /// Tells the other members of `room` that `user` is typing (coalesced). False when the
    /// user is not a member (as far as the hub knows).
    pub async fn typing(&self, user: UserId, room: RoomId) -> bool {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Typing { user, room, reply })
            .await
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

struct Conn {
    user: UserId,
    kind: ConnKind,
    out: mpsc::Sender<Outbound>,
    reason: Arc<DisconnectReason>,
}

struct State {
    queue: usize,
    next_id: ConnId,
    conns: HashMap<ConnId, Conn>,
    by_user: HashMap<UserId, Vec<ConnId>>,
    members: HashMap<RoomId, HashSet<UserId>>,
    rooms_of: HashMap<UserId, HashSet<RoomId>>,
    /// user → the users who have them on their friend list.
    followers: HashMap<UserId, HashSet<UserId>>,
    presence: Presence,
    offline_grace: Duration,
    /// Users whose last connection closed, in the order their grace ends; an entry counts only
    /// while it matches the user's deadline in `offline_at` (a reconnect removes it).
    going_offline: VecDeque<(Instant, UserId)>,
    offline_at: HashMap<UserId, Instant>,
    typing_last: HashMap<(RoomId, UserId), Instant>,
    /// Users announced online because of a connection on this node.
    local: HashSet<UserId>,
    /// Other nodes' online users, and when each node was last heard from.
    remote: HashMap<Uuid, (HashSet<UserId>, Instant)>,
    /// To the other nodes, on the scale-out backend.
    outbox: Option<Outbox>,
    failures: Arc<Failures>,
}

enum Delivery {
    /// Must arrive: a full queue disconnects the client (it resumes from the log).
    Durable,
    /// May be skipped for a full queue.
    Ephemeral,
}

impl State {
    fn send(&self, id: ConnId, item: Outbound, delivery: Delivery, slow: &mut Vec<ConnId>) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        match conn.out.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if matches!(delivery, Delivery::Durable) {
                    slow.push(id);
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => slow.push(id),
        }
    }

    fn drop_slow(&mut self, slow: Vec<ConnId>) {
        for id in slow {
            let closed = self.conns.get(&id).is_some_and(|c| c.out.is_closed());
            if !closed {
                tracing::info!(conn = id, "disconnecting a client that cannot keep up");
                metrics::counter!(names::FANOUT_FORCED_DISCONNECTS, "reason" => "too_slow")
                    .increment(1);
                self.failures
                    .forced_disconnects
                    .fetch_add(1, Ordering::Relaxed);
            }
            let reason = if closed {
                Disconnect::None
            } else {
                Disconnect::TooSlow
            };
            self.drop_conn(id, reason);
        }
    }

    fn drop_conn(&mut self, id: ConnId, reason: Disconnect) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        conn.reason.set(reason);
        let Some(ids) = self.by_user.get_mut(&conn.user) else {
            return;
        };
        ids.retain(|c| *c != id);
        if ids.is_empty() {
            self.by_user.remove(&conn.user);
            if reason == Disconnect::Shutdown {
                // Other nodes keep this node's users for PEER_TIMEOUT: enough for them to
                // reconnect elsewhere without blinking offline.
                self.local.remove(&conn.user);
                self.presence.set(conn.user, false);
            } else {
                let at = Instant::now() + self.offline_grace;
                self.offline_at.insert(conn.user, at);
                self.going_offline.push_back((at, conn.user));
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Register { user, kind, reply } => {
                let id = self.next_id;
                self.next_id += 1;
                let (out, frames) = mpsc::channel(self.queue);
                let reason = Arc::new(DisconnectReason::default());
                self.conns.insert(
                    id,
                    Conn {
                        user,
                        kind,
                        out,
                        reason: reason.clone(),
                    },
                );
                self.by_user.entry(user).or_default().push(id);
                self.offline_at.remove(&user);
                if reply.send((id, frames, reason)).is_err() {
                    self.drop_conn(id, Disconnect::None);
                } else {
                    if self.local.insert(user) {
                        self.publish(PeerMessage::Presence { user, online: true });
                    }
                    if self.presence.set(user, true) {
                        self.announce(user, true);
                    }
                }
            }
            Command::Unregister { id } => self.drop_conn(id, Disconnect::None),
            Command::Typing { user, room, reply } => {
                let member = self.members.get(&room).is_some_and(|m| m.contains(&user));
                let _ = reply.send(member);
                if member {
                    self.typing(user, room, true);
                }
            }
        }
    }

    /// The connected users who see `user`'s presence: their followers and the members of
    /// their rooms.
    fn watchers(&self, user: UserId) -> HashSet<UserId> {
        let mut watchers: HashSet<UserId> = self
            .followers
            .get(&user)
            .into_iter()
            .flatten()
            .filter(|u| self.by_user.contains_key(u))
            .copied()
            .collect();
        for room in self.rooms_of.get(&user).into_iter().flatten() {
            for member in self.members.get(room).into_iter().flatten() {
                if self.by_user.contains_key(member) {
                    watchers.insert(*member);
                }
            }
        }
        watchers.remove(&user);
        watchers
    }

    /// Sends an ephemeral frame to the WebSocket connections of `users`.
    fn notify(&mut self, users: impl IntoIterator<Item = UserId>, text: &Arc<str>) {
        let mut slow = Vec::new();
        for user in users {
            for &id in self.by_user.get(&user).into_iter().flatten() {
                if self
                    .conns
                    .get(&id)
                    .is_some_and(|c| c.kind == ConnKind::WebSocket)
                {
                    self.send(
                        id,
                        Outbound::Notice(text.clone()),
                        Delivery::Ephemeral,
                        &mut slow,
                    );
                }
            }
        }
        self.drop_slow(slow);
    }

    fn announce(&mut self, user: UserId, online: bool) {
        let text: Arc<str> = ServerFrame::Presence(PresenceFrame {
            user_id: user.0,
            online,
        })
        .text()
        .into();
        let watchers = self.watchers(user);
        self.notify(watchers, &text);
    }

    /// Announces offline the users whose grace has ended without a new connection.
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, user)) = self.going_offline.front() {
            if at > now {
                break;
            }
            self.going_offline.pop_front();
            if self.offline_at.get(&user) != Some(&at) {
                continue; // reconnected (and maybe left again later) meanwhile
            }
            self.offline_at.remove(&user);
            if !self.by_user.contains_key(&user) && self.local.remove(&user) {
                self.publish(PeerMessage::Presence {
                    user,
                    online: false,
                });
                self.recompute(user);
            }
        }
        // Nodes not heard from: their users are offline as far as this node can tell.
        let gone: Vec<Uuid> = self
            .remote
            .iter()
            .filter(|(_, (_, seen))| now.duration_since(*seen) > PEER_TIMEOUT)
            .map(|(node, _)| *node)
            .collect();
        for node in gone {
            tracing::warn!(%node, "no word from a peer node; its users count as offline");
            if let Some((users, _)) = self.remote.remove(&node) {
                for user in users {
                    self.recompute(user);
                }
            }
        }
        // Connections whose task ended without unregistering (a cancelled registration).
        let gone: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.out.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.drop_conn(id, Disconnect::None);
        }
        self.typing_last
            .retain(|_, at| now.duration_since(*at) < TYPING_EVERY);
    }

    fn publish(&self, message: PeerMessage) {
        if let Some(outbox) = &self.outbox {
            outbox.send(message);
        }
    }

    /// Announces `user`'s presence if it changed: online while connected here or on any
    /// other node.
    fn recompute(&mut self, user: UserId) {
        let online =
            self.local.contains(&user) || self.remote.values().any(|(u, _)| u.contains(&user));
        if self.presence.set(user, online) {
            self.announce(user, online);
        }
    }

    /// A message from another node.
    fn peer(&mut self, node: Uuid, message: PeerMessage) {
        let now = Instant::now();
        let entry = self
            .remote
            .entry(node)
            .or_insert_with(|| (HashSet::new(), now));
        entry.1 = now;
        match message {
            PeerMessage::Typing { room, user } => self.typing(user, room, false),
            PeerMessage::Presence { user, online } => {
                if online {
                    entry.0.insert(user);
                } else {
                    entry.0.remove(&user);
                }
                self.recompute(user);
            }
            PeerMessage::Sync { users } => {
                let new: HashSet<UserId> = users.into_iter().collect();
                let old = std::mem::replace(&mut entry.0, new.clone());
                for user in old.symmetric_difference(&new).copied().collect::<Vec<_>>() {
                    self.recompute(user);
                }
            }
        }
    }

    /// Forwards typing to the room's members connected here (and, if it started here, to the
    /// other nodes), at most once per [`TYPING_EVERY`].
    fn typing(&mut self, user: UserId, room: RoomId, local: bool) {
        let now = Instant::now();
        match self.typing_last.get(&(room, user)) {
            Some(at) if now.duration_since(*at) < TYPING_EVERY => return,
            _ => {}
        }
        self.typing_last.insert((room, user), now);
        if local {
            self.publish(PeerMessage::Typing { room, user });
        }
        let text: Arc<str> = ServerFrame::Typing(TypingFrame {
            room_id: room.0,
            user_id: user.0,
        })
        .text()
        .into();
        let others: Vec<UserId> = self
            .members
            .get(&room)
            .into_iter()
            .flatten()
            .filter(|m| **m != user && self.by_user.contains_key(m))
            .copied()
            .collect();
        self.notify(others, &text);
    }

    fn deliver(&mut self, room: RoomId, recorded: &eventlog::RecordedEvent) {
        let Some(members) = self.members.get(&room) else {
            return;
        };
        let mut frame = None;
        let mut slow = Vec::new();
        for user in members {
            for &id in self.by_user.get(user).into_iter().flatten() {
                let frame = frame.get_or_insert_with(|| EventFrame::new(room, recorded));
                self.send(
                    id,
                    Outbound::Event(frame.clone()),
                    Delivery::Durable,
                    &mut slow,
                );
            }
        }
        self.drop_slow(slow);
    }

    fn join(&mut self, room: RoomId, user: UserId) {
        self.members.entry(room).or_default().insert(user);
        self.rooms_of.entry(user).or_default().insert(room);
    }

    fn leave(&mut self, room: RoomId, user: UserId) {
        remove_from(&mut self.members, room, &user);
        remove_from(&mut self.rooms_of, user, &room);
    }

    fn apply(&mut self, recorded: &eventlog::RecordedEvent) {
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
        let Some(room) = streams::room_of(&recorded.stream) else {
            match event {
                Event::FriendAdded { friend_id } => {
                    if let Some(user) = streams::user_of(&recorded.stream) {
                        self.followers.entry(friend_id).or_default().insert(user);
                    }
                }
                Event::FriendRemoved { friend_id } => {
                    if let Some(user) = streams::user_of(&recorded.stream) {
                        remove_from(&mut self.followers, friend_id, &user);
                    }
                }
                Event::ReadMarkerMoved { user_id, .. } => {
                    let mut slow = Vec::new();
                    for &id in self.by_user.get(&user_id).into_iter().flatten() {
                        let item = Outbound::ReadMoved {
                            position: recorded.position,
                        };
                        self.send(id, item, Delivery::Durable, &mut slow);
                    }
                    self.drop_slow(slow);
                }
                _ => {}
            }
            return;
        };
        // Joins take effect before delivery (the newcomer sees their join), leaves after (the
        // leaver sees their leave).
        match &event {
            Event::RoomCreated { members, .. } => {
                for user in members {
                    self.join(room, *user);
                }
            }
            Event::MemberJoined { user_id, .. } => self.join(room, *user_id),
            _ => {}
        }
        self.deliver(room, recorded);
        if let Event::MemberLeft { user_id } = event {
            self.leave(room, user_id);
        }
    }
}

/// Removes `item` from the set at `key`, and the set when it becomes empty.
fn remove_from<K: std::hash::Hash + Eq, V: std::hash::Hash + Eq>(
    map: &mut HashMap<K, HashSet<V>>,
    key: K,
    item: &V,
) {
    if let Some(set) = map.get_mut(&key) {
        set.remove(item);
        if set.is_empty() {
            map.remove(&key);
        }
    }
}

struct Snapshot {
    position: u64,
    members: Vec<(RoomId, UserId)>,
    friends: Vec<(UserId, UserId)>,
}

/// Memberships, friend lists and the position they reflect, read in one snapshot.
fn snapshot(c: &rusqlite::Connection) -> projector::Result<Snapshot> {
    let tx = c.unchecked_transaction()?;
    let position: Option<i64> = tx
        .query_row(
            "SELECT position FROM checkpoint WHERE name = 'read_models'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let members = tx
        .prepare("SELECT room_id, user_id FROM members")?
        .query_map([], |r| Ok((RoomId(r.get(0)?), UserId(r.get(1)?))))?
        .collect::<rusqlite::Result<_>>()?;
    let friends = tx
        .prepare("SELECT user_id, friend_id FROM friends")?
        .query_map([], |r| Ok((UserId(r.get(0)?), UserId(r.get(1)?))))?
        .collect::<rusqlite::Result<_>>()?;
    tx.commit()?;
    Ok(Snapshot {
        position: position.map_or(0, |p| p as u64),
        members,
        friends,
    })
}

/// How the hub is set up.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Frames queued per connection before it counts as too slow.
    pub queue: usize,
    /// How long a user stays announced online after their last connection closed.
    pub offline_grace: Duration,
    /// The other nodes, on the scale-out backend.
    pub peers: Option<Peers>,
    /// Where forced disconnects are counted for the alert rules.
    pub failures: Arc<Failures>,
}

/// Starts the hub: returns its handle and the task to run until `shutdown`.
pub async fn start(
    log: Arc<dyn EventLog>,
    models: &ReadModels,
    presence: Presence,
    settings: HubSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    Hub,
    impl Future<Output = anyhow::Result<()>> + Send + 'static,
)> {
    let snap = models.read(snapshot).await?;
    let (tx, mut commands) = mpsc::channel(1024);
    let mut state = State {
        queue: settings.queue,
        next_id: 1,
        conns: HashMap::new(),
        by_user: HashMap::new(),
        members: HashMap::new(),
        rooms_of: HashMap::new(),
        followers: HashMap::new(),
        presence,
        offline_grace: settings.offline_grace,
        going_offline: VecDeque::new(),
        offline_at: HashMap::new(),
        typing_last: HashMap::new(),
        local: HashSet::new(),
        remote: HashMap::new(),
        outbox: settings.peers.as_ref().map(Peers::outbox),
        failures: settings.failures.clone(),
    };
    let mut incoming = match &settings.peers {
        Some(peers) => peers.incoming().await?,
        None => futures::stream::pending().boxed(),
    };
    for (room, user) in snap.members {
        state.join(room, user);
    }
    for (user, friend) in snap.friends {
        state.followers.entry(friend).or_default().insert(user);
    }
    let position = snap.position;
    let (position_tx, position_rx) = watch::channel(position);
    let tick_every = (settings.offline_grace / 4).clamp(Duration::from_millis(10), TYPING_EVERY);
    let run = async move {
        let mut events = log.subscribe(position);
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sync = tokio::time::interval(SYNC_EVERY);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    state.expire(Instant::now());
                    let queued: usize = state
                        .conns
                        .values()
                        .map(|c| c.out.max_capacity() - c.out.capacity())
                        .sum();
                    metrics::gauge!(names::FANOUT_QUEUE_DEPTH).set(queued as f64);
                }
                _ = sync.tick(), if state.outbox.is_some() => {
                    let users = state.local.iter().copied().collect();
                    state.publish(PeerMessage::Sync { users });
                }
                Some((node, message)) = incoming.next() => state.peer(node, message),
                Some(command) = commands.recv() => state.command(command),
                next = events.next() => match next {
                    Some(Ok(recorded)) => {
                        let span = observability::trace::continuing(recorded.live_traceparent(), || {
                            tracing::info_span!("fanout", event.position = recorded.position, event.type = %recorded.event_type)
                        });
                        span.in_scope(|| state.apply(&recorded));
                        position_tx.send_replace(recorded.position);
                    }
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
    Ok((
        Hub {
            commands: tx,
            position: position_rx,
        },
        run,
    ))
}
