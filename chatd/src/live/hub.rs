//! The fan-out hub, in shards: each shard is a task that owns the live connections and the
//! presence [`Tracker`] (who is online, who is typing) of a share of the users (by user id,
//! [`HubSettings::shards`], one per two cores by default), and a whole copy of the [`Audience`] (the
//! membership of every room, who follows whom). So fan-out uses every core, and no lock is
//! shared between shards on the way of an event.
//!
//! Each shard consumes the log itself (events arrive once durable; on one node the log's
//! shared follower hands every shard the same recorded event) and, for each room event,
//! serialises one frame and hands the shared bytes to every connection of every member it
//! owns. Membership and friend lists are kept from the same events (a snapshot of the read
//! models at their checkpoint, then the log from that checkpoint), so a connection follows
//! rooms its user joins or leaves while connected. A user's connections all live in one shard,
//! so per connection the frames keep log order, as with one hub.
//!
//! Presence and typing are decided by the shard of the user they are about (coalescing,
//! grace), which then tells the other shards to carry them out for their connections; messages
//! from other nodes arrive at the first shard, which routes them to the user's shard.
//!
//! Frames go out in batches: the hub takes every event the follower has ready (up to
//! [`MAX_EVENTS_PER_TURN`]), gathers each connection's frames of that turn, and hands each
//! connection one batch, so a burst of events wakes a connection once and costs it one write.
//!
//! Each connection has a bounded queue (counted in frames). A connection whose queue is full
//! when a durable event must go out is dropped with [`Disconnect::TooSlow`]; its client resumes
//! from its last seq and loses nothing, and the server's memory stays bounded. Ephemeral frames
//! (typing, presence) are simply not queued for a full connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use eventlog::EventLog;
use futures::{FutureExt, StreamExt};
use projector::ReadModels;
use projector::queries::{self, Relations};
use schema::events::Event;
use schema::{IdMap, RoomId, SessionId, UserId, streams};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::audience::Audience;
use super::frames::{
    EventFrame, FriendFrame, InvitationFrame, PresenceFrame, ReceiptFrame, ServerFrame, TypingFrame,
};
use super::peers::{Outbox, PeerMessage, Peers, SYNC_EVERY};
use super::presence::{Effect, LocalUsers, TYPING_EVERY, Tracker};
use crate::chat::auth::Revoked;
use crate::chat::view::Extras;
use crate::chat::{Auth, Presence};
use crate::ops::metered_log::Failures;
use crate::ops::metrics::names;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use uuid::Uuid;

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
    /// The connection's session has ended (logout, refresh-token reuse, revocation).
    SessionEnded = 3,
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
            3 => Disconnect::SessionEnded,
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
    Event(Arc<EventFrame>),
    /// An ephemeral frame (typing, presence), ready to send.
    Notice(Utf8Bytes),
}

/// Events the hub takes from the follower in one turn before it hands the turn's frames out.
pub const MAX_EVENTS_PER_TURN: usize = 256;

/// A connection's side of its queue: the frames the hub handed it, in order, one batch per
/// turn of the hub.
#[derive(Debug)]
pub struct Frames {
    rx: mpsc::UnboundedReceiver<Vec<Outbound>>,
    /// Frames queued (shared with the hub, which bounds it).
    queued: Arc<AtomicUsize>,
    batch: std::vec::IntoIter<Outbound>,
}

impl Frames {
    /// The next frame; `None` once the hub has let go of the connection and every frame
    /// queued before has been taken. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Outbound> {
        loop {
            if let Some(item) = self.batch.next() {
                return Some(item);
            }
            let batch = self.rx.recv().await?;
            self.take(batch);
        }
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Result<Outbound, mpsc::error::TryRecvError> {
        loop {
            if let Some(item) = self.batch.next() {
                return Ok(item);
            }
            let batch = self.rx.try_recv()?;
            self.take(batch);
        }
    }

    fn take(&mut self, batch: Vec<Outbound>) {
        self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        self.batch = batch.into_iter();
    }
}

/// A registered connection. Dropping it unregisters (and may start the offline grace).
#[derive(Debug)]
pub struct Registration {
    pub frames: Frames,
    pub reason: Arc<DisconnectReason>,
    id: ConnId,
    hub: Hub,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let id = self.id;
        // A connection's id tells its shard (see `Connections::open`).
        let shard = self.hub.commands[id as usize % self.hub.commands.len()].clone();
        if shard.try_send(Command::Unregister { id }).is_err()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = shard.send(Command::Unregister { id }).await;
            });
        }
    }
}

enum Command {
    Register {
        user: UserId,
        session: SessionId,
        kind: ConnKind,
        reply: oneshot::Sender<(ConnId, Frames, Arc<DisconnectReason>)>,
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

/// A cheap handle to the hub's shards.
#[derive(Debug, Clone)]
pub struct Hub {
    /// Each shard's commands, by shard.
    commands: Arc<[mpsc::Sender<Command>]>,
    /// The position of the last log event every shard has delivered.
    position: watch::Receiver<u64>,
}

/// The shard that owns `user`'s connections and presence, of `shards`.
fn shard_of(user: UserId, shards: usize) -> usize {
    // Ids are random in their low bits (v4 and v7 alike).
    (user.0.as_u128() % shards as u128) as usize
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

    /// Registers a live connection of `user` in `session`: from now on it receives every
    /// event of every room the user belongs to, until the session ends. `None` when the hub
    /// has stopped.
    pub async fn register(
        &self,
        user: UserId,
        session: SessionId,
        kind: ConnKind,
    ) -> Option<Registration> {
        let (reply, rx) = oneshot::channel();
        self.commands[shard_of(user, self.commands.len())]
            .send(Command::Register {
                user,
                session,
                kind,
                reply,
            })
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
        if self.commands[shard_of(user, self.commands.len())]
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
    session: SessionId,
    kind: ConnKind,
    out: mpsc::UnboundedSender<Vec<Outbound>>,
    /// Frames handed to the connection and not yet taken (at most the queue's size).
    queued: Arc<AtomicUsize>,
    /// This turn's frames, handed over at its end ([`Connections::hand_over`]).
    pending: Vec<(Outbound, Delivery)>,
    reason: Arc<DisconnectReason>,
}

/// Where a shard stands among the hub's shards.
#[derive(Debug, Clone, Copy)]
struct Place {
    shard: usize,
    shards: usize,
}

impl Place {
    #[cfg(test)]
    const ALONE: Self = Self {
        shard: 0,
        shards: 1,
    };

    fn owns(&self, user: UserId) -> bool {
        shard_of(user, self.shards) == self.shard
    }
}

/// What a shard tells the others.
#[derive(Debug)]
enum Internal {
    /// A presence or typing effect decided by the shard of the user it is about: carried out
    /// for the connections of this shard.
    Effect(Effect),
    /// A message from another node about this shard's users.
    Peer(Uuid, PeerMessage),
}

/// A shard's way to the others (none when it is the only one). Unbounded: shards never wait
/// for each other, and what goes through is rare (presence and typing).
struct Router {
    shards: Arc<[mpsc::UnboundedSender<Internal>]>,
}

/// A shard's state: the connections of its users, who receives what ([`Audience`], a whole
/// copy in every shard, kept from the log) and its users' presence ([`Tracker`]). Changed only
/// by the shard's task; no I/O besides handing frames to connection queues (and messages to
/// the peer outbox and the other shards).
struct State {
    place: Place,
    router: Option<Router>,
    conns: Connections,
    audience: Audience,
    presence: Tracker,
    /// To the other nodes, on the scale-out backend.
    outbox: Option<Outbox>,
    failures: Arc<Failures>,
    /// Ended sessions (shared with request authentication).
    auth: Auth,
}

/// The live connections of a shard's users, by id and by user.
struct Connections {
    queue: usize,
    /// The next id, and the step between ids: a shard's ids are its index modulo the number
    /// of shards, so a connection's id tells its shard.
    next_id: ConnId,
    id_step: ConnId,
    by_id: IdMap<ConnId, Conn>,
    by_user: IdMap<UserId, Vec<ConnId>>,
    /// Connections with frames pending this turn.
    dirty: Vec<ConnId>,
}

#[derive(Clone, Copy)]
enum Delivery {
    /// Must arrive: a full queue disconnects the client (it resumes from the log).
    Durable,
    /// May be skipped for a full queue.
    Ephemeral,
}

impl Connections {
    fn new(queue: usize, place: Place) -> Self {
        Self {
            queue,
            next_id: (place.shards + place.shard) as ConnId,
            id_step: place.shards as ConnId,
            by_id: IdMap::default(),
            by_user: IdMap::default(),
            dirty: Vec::new(),
        }
    }

    fn is_connected(&self, user: UserId) -> bool {
        self.by_user.contains_key(&user)
    }

    fn open(
        &mut self,
        user: UserId,
        session: SessionId,
        kind: ConnKind,
    ) -> (ConnId, Frames, Arc<DisconnectReason>) {
        let id = self.next_id;
        self.next_id += self.id_step;
        let (out, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let reason = Arc::new(DisconnectReason::default());
        self.by_id.insert(
            id,
            Conn {
                user,
                session,
                kind,
                out,
                queued: queued.clone(),
                pending: Vec::new(),
                reason: reason.clone(),
            },
        );
        self.by_user.entry(user).or_default().push(id);
        let frames = Frames {
            rx,
            queued,
            batch: Vec::new().into_iter(),
        };
        (id, frames, reason)
    }

    /// Forgets a connection; its user when it was their last one.
    fn close(&mut self, id: ConnId, reason: Disconnect) -> Option<UserId> {
        let conn = self.by_id.remove(&id)?;
        conn.reason.set(reason);
        if !conn.pending.is_empty() {
            // What this turn had for it still goes out before the end (one turn's worth).
            let batch = conn.pending.into_iter().map(|(item, _)| item).collect();
            let _ = conn.out.send(batch);
        }
        let ids = self.by_user.get_mut(&conn.user)?;
        ids.retain(|c| *c != id);
        if !ids.is_empty() {
            return None;
        }
        self.by_user.remove(&conn.user);
        Some(conn.user)
    }

    /// Adds a frame to the batch of this turn of each of `user`'s connections (of `kind`
    /// only, if given); `item` makes it, once per connection.
    fn send(
        &mut self,
        user: UserId,
        kind: Option<ConnKind>,
        delivery: Delivery,
        mut item: impl FnMut() -> Outbound,
    ) {
        let Some(ids) = self.by_user.get(&user) else {
            return;
        };
        for id in ids {
            let Some(conn) = self.by_id.get_mut(id) else {
                continue;
            };
            if kind.is_some_and(|k| k != conn.kind) {
                continue;
            }
            if conn.pending.is_empty() {
                self.dirty.push(*id);
            }
            conn.pending.push((item(), delivery));
        }
    }

    /// Hands every connection its batch of this turn. A connection whose queue cannot take
    /// its batch gets its durable frames only (ephemeral ones are skipped); if even those do
    /// not fit, or it has gone, it is returned as too slow.
    fn hand_over(&mut self) -> Vec<ConnId> {
        let mut slow = Vec::new();
        for id in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.by_id.get_mut(&id) else {
                continue;
            };
            let mut pending = std::mem::take(&mut conn.pending);
            let queued = conn.queued.load(Ordering::Acquire);
            if queued + pending.len() > self.queue {
                pending.retain(|(_, delivery)| matches!(delivery, Delivery::Durable));
                if pending.is_empty() {
                    continue;
                }
                if queued + pending.len() > self.queue {
                    slow.push(id);
                    continue;
                }
            }
            let batch: Vec<Outbound> = pending.into_iter().map(|(item, _)| item).collect();
            let n = batch.len();
            conn.queued.fetch_add(n, Ordering::AcqRel);
            if conn.out.send(batch).is_err() {
                slow.push(id);
            }
        }
        slow
    }

    /// Frames queued for all connections.
    fn queued(&self) -> usize {
        self.by_id
            .values()
            .map(|c| c.queued.load(Ordering::Relaxed))
            .sum()
    }
}

impl State {
    fn new(
        relations: &Relations,
        presence: Tracker,
        settings: &HubSettings,
        outbox: Option<Outbox>,
        place: Place,
        router: Option<Router>,
    ) -> Self {
        Self {
            place,
            router,
            conns: Connections::new(settings.queue, place),
            audience: Audience::new(relations),
            presence,
            outbox,
            failures: settings.failures.clone(),
            auth: settings.auth.clone(),
        }
    }

    /// A session ended: its connections are closed.
    fn end_session(&mut self, session: SessionId) {
        let ids: Vec<ConnId> = self
            .conns
            .by_id
            .iter()
            .filter(|(_, c)| c.session == session)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.drop_conn(id, Disconnect::SessionEnded);
        }
    }

    fn drop_slow(&mut self, slow: Vec<ConnId>) {
        for id in slow {
            let closed = self.conns.by_id.get(&id).is_some_and(|c| c.out.is_closed());
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
        if let Some(user) = self.conns.close(id, reason) {
            if reason == Disconnect::Shutdown {
                self.presence.shut_down(user);
            } else {
                self.presence.last_closed(user, Instant::now());
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Register {
                user,
                session,
                kind,
                reply,
            } => {
                let (id, frames, reason) = self.conns.open(user, session, kind);
                if reply.send((id, frames, reason)).is_err() {
                    self.drop_conn(id, Disconnect::None);
                } else if self.auth.revoked().contains(session) {
                    // The session ended after the token was checked.
                    self.drop_conn(id, Disconnect::SessionEnded);
                } else {
                    let effects = self.presence.connected(user);
                    self.carry_out(effects);
                }
            }
            Command::Unregister { id } => self.drop_conn(id, Disconnect::None),
            Command::Typing { user, room, reply } => {
                let member = self.audience.is_member(room, user);
                let _ = reply.send(member);
                if member {
                    let effects = self.presence.typing(user, room, true, Instant::now());
                    self.carry_out(effects);
                }
            }
        }
    }

    /// Does what the presence tracker decided: here, and (announcements, typing) in the other
    /// shards, for their connections.
    fn carry_out(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            if let (Some(router), Effect::Announce { .. } | Effect::Typing { .. }) =
                (&self.router, &effect)
            {
                for (shard, tx) in router.shards.iter().enumerate() {
                    if shard != self.place.shard {
                        let _ = tx.send(Internal::Effect(effect.clone()));
                    }
                }
            }
            self.carry_out_here(effect);
        }
    }

    /// Does an effect for this shard's connections.
    fn carry_out_here(&mut self, effect: Effect) {
        match effect {
            Effect::Announce { user, online } => {
                let text = ServerFrame::Presence(PresenceFrame {
                    user_id: user.0,
                    online,
                })
                .text();
                let watchers = self.audience.watchers(user, |u| self.conns.is_connected(u));
                self.notify(watchers, &text.into());
            }
            Effect::Publish(message) => self.publish(message),
            Effect::Typing { room, user } => {
                let text = ServerFrame::Typing(TypingFrame {
                    room_id: room.0,
                    user_id: user.0,
                })
                .text();
                let others: Vec<UserId> = self
                    .audience
                    .members(room)
                    .filter(|m| *m != user && self.conns.is_connected(*m))
                    .collect();
                self.notify(others, &text.into());
            }
        }
    }

    /// Sends an ephemeral frame to the WebSocket connections of `users`.
    fn notify(&mut self, users: impl IntoIterator<Item = UserId>, text: &Utf8Bytes) {
        self.notify_as(users, text, Delivery::Ephemeral);
    }

    fn notify_as(
        &mut self,
        users: impl IntoIterator<Item = UserId>,
        text: &Utf8Bytes,
        delivery: Delivery,
    ) {
        for user in users {
            self.conns
                .send(user, Some(ConnKind::WebSocket), delivery, || {
                    Outbound::Notice(text.clone())
                });
        }
    }

    /// Ends the turn: every connection gets the frames of the turn in one batch.
    fn hand_over(&mut self) {
        let slow = self.conns.hand_over();
        if !slow.is_empty() {
            self.drop_slow(slow);
        }
    }

    /// Time passed: presence expiries, and connections whose task ended without
    /// unregistering (a cancelled registration).
    fn tick(&mut self, now: Instant) {
        let conns = &self.conns;
        let effects = self.presence.tick(now, |u| conns.is_connected(u));
        self.carry_out(effects);
        let gone: Vec<ConnId> = self
            .conns
            .by_id
            .iter()
            .filter(|(_, c)| c.out.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.drop_conn(id, Disconnect::None);
        }
    }

    fn publish(&self, message: PeerMessage) {
        if let Some(outbox) = &self.outbox {
            outbox.send(message);
        }
    }

    /// A message from another node: to the tracker of the shard of the user it is about (a
    /// sync, split by shard, to every shard).
    fn peer(&mut self, node: Uuid, message: PeerMessage) {
        let Some(router) = &self.router else {
            return self.peer_here(node, message);
        };
        let place = self.place;
        match message {
            PeerMessage::Presence { user, .. } | PeerMessage::Typing { user, .. }
                if !place.owns(user) =>
            {
                let _ =
                    router.shards[shard_of(user, place.shards)].send(Internal::Peer(node, message));
            }
            PeerMessage::Sync { users } => {
                let mut split = vec![Vec::new(); place.shards];
                for user in users {
                    split[shard_of(user, place.shards)].push(user);
                }
                let mine = std::mem::take(&mut split[place.shard]);
                for (shard, users) in split.into_iter().enumerate() {
                    if shard != place.shard {
                        let _ = router.shards[shard]
                            .send(Internal::Peer(node, PeerMessage::Sync { users }));
                    }
                }
                self.peer_here(node, PeerMessage::Sync { users: mine });
            }
            message => self.peer_here(node, message),
        }
    }

    fn peer_here(&mut self, node: Uuid, message: PeerMessage) {
        let effects = self.presence.peer(node, message, Instant::now());
        self.carry_out(effects);
    }

    /// What another shard said.
    fn internal(&mut self, message: Internal) {
        match message {
            Internal::Effect(effect) => self.carry_out_here(effect),
            Internal::Peer(node, message) => self.peer_here(node, message),
        }
    }

    fn deliver(&mut self, room: RoomId, recorded: &eventlog::RecordedEvent, event: &Event) {
        // A message just sent is unread by every other member (no marker can be past it).
        let extras = match event {
            Event::MessageSent { sender_id, .. } => Some(Extras::fresh(
                self.audience
                    .members(room)
                    .filter(|m| m != sender_id)
                    .count() as u64,
            )),
            _ => None,
        };
        let mut frame = None;
        // Walk the smaller side: a big room's members, or the users connected here.
        let recipients: Vec<UserId> = if self.conns.by_user.len() < self.audience.member_count(room)
        {
            let connected = self.conns.by_user.keys();
            connected
                .filter(|u| self.audience.is_member(room, **u))
                .copied()
                .collect()
        } else {
            let members = self.audience.members(room);
            members.filter(|u| self.conns.is_connected(*u)).collect()
        };
        for user in recipients {
            self.conns.send(user, None, Delivery::Durable, || {
                let frame = frame.get_or_insert_with(|| {
                    Arc::new(EventFrame::new(
                        room,
                        recorded,
                        event,
                        None,
                        extras.as_ref(),
                    ))
                });
                Outbound::Event(frame.clone())
            });
        }
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
                Event::UserBlocked { user_id } | Event::UserUnblocked { user_id } => {
                    if let Some(user) = streams::user_of(&recorded.stream) {
                        let on = matches!(event, Event::UserBlocked { .. });
                        self.audience.block(user, user_id, on);
                    }
                }
                Event::FriendRequested { from, to }
                | Event::FriendRequestAccepted { from, to }
                | Event::FriendRequestDeclined { from, to }
                | Event::FriendRequestCanceled { from, to } => {
                    let (for_from, for_to) = match event {
                        Event::FriendRequested { .. } => ("outgoing_request", "incoming_request"),
                        Event::FriendRequestAccepted { .. } => {
                            self.audience.follow(from, to);
                            self.audience.follow(to, from);
                            ("friends", "friends")
                        }
                        _ => ("none", "none"),
                    };
                    self.tell_friend(from, to, for_from);
                    self.tell_friend(to, from, for_to);
                }
                Event::Unfriended { by, other } => {
                    self.audience.unfollow(by, other);
                    self.audience.unfollow(other, by);
                    self.tell_friend(by, other, "none");
                    self.tell_friend(other, by, "none");
                }
                Event::SessionEnded { .. } => {
                    if let Some(session) = Revoked::ended_by(&recorded.stream, &event) {
                        self.auth.end_session(session, recorded.recorded_at);
                        self.end_session(session);
                    }
                }
                Event::ReadMarkerMoved {
                    room_id,
                    user_id,
                    seq,
                    previous_seq,
                } if self.audience.is_member(room_id, user_id) => {
                    // The room's members see the read counts of its messages change. Missing
                    // one would leave counts wrong, so a full queue disconnects as for events.
                    let text = ServerFrame::Receipt(ReceiptFrame {
                        room_id: room_id.0,
                        user_id: user_id.0,
                        seq,
                        previous_seq,
                    })
                    .text();
                    let members: Vec<UserId> = self
                        .audience
                        .members(room_id)
                        .filter(|m| self.conns.is_connected(*m))
                        .collect();
                    self.notify_as(members, &text.into(), Delivery::Durable);
                }
                _ => {}
            }
            return;
        };
        // Joins take effect before delivery (the newcomer sees their join), removals after (who
        // leaves, is kicked or banned, sees it, and nothing after it).
        match &event {
            Event::RoomCreated { members, .. } => {
                for user in members {
                    self.audience.join(room, *user);
                }
            }
            Event::MemberJoined { user_id, .. } => self.audience.join(room, *user_id),
            _ => {}
        }
        self.deliver(room, recorded, &event);
        if let Some(user) = schema::room::removed_member(&event) {
            self.audience.leave(room, user);
        }
        match event {
            Event::RoomDeleted { .. } => self.audience.close(room),
            Event::InvitationPending {
                user_id,
                invited_by,
            } => {
                let text = ServerFrame::Invitation(InvitationFrame {
                    room_id: room.0,
                    invited_by: invited_by.0,
                })
                .text();
                self.notify([user_id], &text.into());
            }
            _ => {}
        }
    }

    /// Tells `user`'s WebSocket connections where their friendship with `other` stands.
    fn tell_friend(&mut self, user: UserId, other: UserId, status: &str) {
        let text = ServerFrame::Friend(FriendFrame {
            user_id: other.0,
            status: status.to_owned(),
        })
        .text();
        self.notify([user], &text.into());
    }

    /// Lets go of every connection (the server is stopping, or the hub lost the log).
    fn shut_down(&mut self) {
        for id in self.conns.by_id.keys().copied().collect::<Vec<_>>() {
            self.drop_conn(id, Disconnect::Shutdown);
        }
    }
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
    /// Whose ended sessions the hub records as it follows the log (see [`Revoked`]).
    ///
    /// [`Revoked`]: crate::chat::auth::Revoked
    pub auth: Auth,
    /// Shards of the hub: tasks that each own the connections and presence of a share of the
    /// users (by user id) and follow the log themselves, so fan-out uses every core.
    pub shards: usize,
}

/// Starts the hub: returns its handle and the task to run until `shutdown`. The task runs
/// [`HubSettings::shards`] shards, each a task of its own.
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
    let relations = models.read(queries::relations).await?;
    for (session, at) in &relations.ended_sessions {
        settings.auth.end_session(*session, *at);
    }
    let shards = settings.shards.max(1);
    let mut incoming = Some(match &settings.peers {
        Some(peers) => peers.incoming().await?,
        None => futures::stream::pending().boxed(),
    });
    let outbox = settings.peers.as_ref().map(Peers::outbox);
    let local = LocalUsers::default();
    let (internal_tx, internal_rx): (Vec<_>, Vec<_>) =
        (0..shards).map(|_| mpsc::unbounded_channel()).unzip();
    let internal_tx: Arc<[_]> = internal_tx.into();
    let (commands_tx, commands_rx): (Vec<_>, Vec<_>) =
        (0..shards).map(|_| mpsc::channel(1024)).unzip();
    let positions = Arc::new(Positions::new(shards, relations.position));
    let position_rx = positions.tx.subscribe();
    let stop = shutdown.child_token();
    let mut runs = Vec::with_capacity(shards);
    for (shard, (commands, internal)) in commands_rx.into_iter().zip(internal_rx).enumerate() {
        let place = Place { shard, shards };
        let state = State::new(
            &relations,
            Tracker::sharing(
                presence.clone(),
                settings.offline_grace,
                local.clone(),
                shard == 0,
            ),
            &settings,
            outbox.clone(),
            place,
            (shards > 1).then(|| Router {
                shards: internal_tx.clone(),
            }),
        );
        let shard = Shard {
            state,
            commands,
            internal,
            // The first shard hears the other nodes and routes what it hears.
            incoming: incoming
                .take()
                .unwrap_or_else(|| futures::stream::pending().boxed()),
            positions: positions.clone(),
            tick_every: (settings.offline_grace / 4).clamp(Duration::from_millis(10), TYPING_EVERY),
        };
        runs.push(shard.run(log.clone(), relations.position, stop.clone()));
    }
    let run = async move {
        let mut tasks = JoinSet::new();
        for run in runs {
            tasks.spawn(run);
        }
        // The first failure stops the others and is the hub's.
        let mut result = Ok(());
        while let Some(done) = tasks.join_next().await {
            let done = done.map_err(anyhow::Error::from).and_then(|r| r);
            if let Err(e) = done
                && result.is_ok()
            {
                stop.cancel();
                result = Err(e);
            }
        }
        result
    };
    Ok((
        Hub {
            commands: commands_tx.into(),
            position: position_rx,
        },
        run,
    ))
}

/// How far each shard has delivered (the hub's position is the least of them), and how many
/// frames each has queued.
struct Positions {
    each: Box<[AtomicU64]>,
    tx: watch::Sender<u64>,
    queued: Box<[AtomicUsize]>,
}

impl Positions {
    fn new(shards: usize, at: u64) -> Self {
        Self {
            each: (0..shards).map(|_| AtomicU64::new(at)).collect(),
            tx: watch::channel(at).0,
            queued: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Records a shard's queued frames; the sum of every shard's.
    fn queued(&self, shard: usize, queued: usize) -> usize {
        self.queued[shard].store(queued, Ordering::Relaxed);
        self.queued.iter().map(|q| q.load(Ordering::Relaxed)).sum()
    }

    fn reached(&self, shard: usize, position: u64) {
        self.each[shard].store(position, Ordering::Release);
        let least = self
            .each
            .iter()
            .map(|p| p.load(Ordering::Acquire))
            .min()
            .unwrap_or(position);
        self.tx.send_if_modified(|p| {
            let moved = least > *p;
            if moved {
                *p = least;
            }
            moved
        });
    }
}

/// One shard of the hub: its state and what drives it.
struct Shard {
    state: State,
    commands: mpsc::Receiver<Command>,
    internal: mpsc::UnboundedReceiver<Internal>,
    incoming: futures::stream::BoxStream<'static, (Uuid, PeerMessage)>,
    positions: Arc<Positions>,
    tick_every: Duration,
}

impl Shard {
    async fn run(
        self,
        log: Arc<dyn EventLog>,
        from: u64,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let Self {
            mut state,
            mut commands,
            mut internal,
            mut incoming,
            positions,
            tick_every,
        } = self;
        let shard = state.place.shard;
        let mut position = from;
        let mut events = log.subscribe(position);
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sync = tokio::time::interval(SYNC_EVERY);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                _ = tick.tick() => {
                    state.tick(Instant::now());
                    let queued = positions.queued(shard, state.conns.queued());
                    if shard == 0 {
                        metrics::gauge!(names::FANOUT_QUEUE_DEPTH).set(queued as f64);
                    }
                }
                // One shard tells the other nodes who is online here (every shard's users).
                _ = sync.tick(), if shard == 0 && state.outbox.is_some() => {
                    let users = state.presence.local();
                    state.publish(PeerMessage::Sync { users });
                }
                Some((node, message)) = incoming.next() => state.peer(node, message),
                Some(message) = internal.recv() => state.internal(message),
                Some(command) = commands.recv() => state.command(command),
                next = events.next() => {
                    // This event and every other one ready now: one turn, one batch each.
                    let mut next = Some(next);
                    let mut taken = 0;
                    while let Some(item) = next.take() {
                        match item {
                            Some(Ok(recorded)) => {
                                let span = tracecontext::continuing(recorded.live_traceparent(), || {
                                    tracing::info_span!("fanout", event.position = recorded.position, event.type = %recorded.event_type, hub.shard = shard)
                                });
                                span.in_scope(|| state.apply(&recorded));
                                position = recorded.position;
                            }
                            Some(Err(e)) => {
                                state.hand_over();
                                state.shut_down();
                                return Err(anyhow::anyhow!("hub lost the log: {e}"));
                            }
                            None => {
                                state.hand_over();
                                state.shut_down();
                                return Ok(());
                            }
                        }
                        taken += 1;
                        if taken < MAX_EVENTS_PER_TURN {
                            next = events.next().now_or_never();
                        }
                    }
                    state.hand_over();
                    positions.reached(shard, position);
                    continue;
                }
            }
            state.hand_over();
        }
        state.shut_down();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use schema::{MessageBody, MessageId};

    fn state_settings(queue: usize) -> HubSettings {
        HubSettings {
            queue,
            offline_grace: Duration::from_secs(5),
            peers: None,
            failures: Arc::default(),
            auth: Auth::new(&[7; 32], Duration::from_secs(60), 1, (1024, 1)).unwrap(),
            shards: 1,
        }
    }

    fn state(queue: usize, members: Vec<(RoomId, UserId)>) -> State {
        let settings = state_settings(queue);
        let relations = Relations {
            position: 0,
            members,
            friends: Vec::new(),
            ended_sessions: Vec::new(),
            blocks: Vec::new(),
        };
        let tracker = Tracker::new(Presence::default(), settings.offline_grace);
        State::new(&relations, tracker, &settings, None, Place::ALONE, None)
    }

    fn register(state: &mut State, user: UserId) -> (Frames, Arc<DisconnectReason>) {
        let (reply, mut rx) = oneshot::channel();
        state.command(Command::Register {
            user,
            session: SessionId::new(),
            kind: ConnKind::WebSocket,
            reply,
        });
        state.hand_over();
        let (_, frames, reason) = rx.try_recv().unwrap();
        (frames, reason)
    }

    /// One event, one turn.
    fn apply(state: &mut State, recorded: &eventlog::RecordedEvent) {
        state.apply(recorded);
        state.hand_over();
    }

    fn recorded(room: RoomId, version: u64, event: &Event) -> eventlog::RecordedEvent {
        eventlog::RecordedEvent {
            stream: streams::room(room),
            version,
            position: version,
            event_id: Uuid::now_v7(),
            event_type: event.type_name().to_owned(),
            schema_version: event.schema_version(),
            data: event.encode(),
            metadata: Vec::new(),
            recorded_at: Utc::now(),
        }
    }

    fn sent(sender: UserId) -> Event {
        Event::MessageSent {
            message_id: MessageId::new(),
            sender_id: sender,
            body: MessageBody::parse("hi").unwrap(),
            client_msg_id: None,
            reply_to: None,
            mentions: vec![],
        }
    }

    #[test]
    fn members_get_room_events_and_a_joiner_sees_their_join() {
        let (room, alice, bob) = (RoomId::new(), UserId::new(), UserId::new());
        let mut state = state(8, vec![(room, alice)]);
        let (mut a, _) = register(&mut state, alice);
        let (mut b, _) = register(&mut state, bob);
        // Bob's registration made him online: a presence notice to nobody (no shared room).
        assert!(a.try_recv().is_err());
        apply(&mut state, &recorded(room, 1, &sent(alice)));
        assert!(matches!(a.try_recv(), Ok(Outbound::Event(f)) if f.seq == 1));
        assert!(b.try_recv().is_err(), "not a member yet");
        let joined = Event::MemberJoined {
            user_id: bob,
            invited_by: Some(alice),
        };
        apply(&mut state, &recorded(room, 2, &joined));
        assert!(matches!(b.try_recv(), Ok(Outbound::Event(f)) if f.seq == 2));
        assert!(matches!(a.try_recv(), Ok(Outbound::Event(f)) if f.seq == 2));
        apply(
            &mut state,
            &recorded(room, 3, &Event::MemberLeft { user_id: bob }),
        );
        assert!(matches!(b.try_recv(), Ok(Outbound::Event(f)) if f.leaver == Some(bob)));
        apply(&mut state, &recorded(room, 4, &sent(alice)));
        assert!(b.try_recv().is_err(), "left");
    }

    #[test]
    fn a_client_that_cannot_keep_up_is_dropped_as_too_slow() {
        let (room, alice) = (RoomId::new(), UserId::new());
        let mut state = state(2, vec![(room, alice)]);
        let (mut frames, reason) = register(&mut state, alice);
        for seq in 1..=3 {
            apply(&mut state, &recorded(room, seq, &sent(alice)));
        }
        assert_eq!(reason.get(), Disconnect::TooSlow);
        assert_eq!(state.failures.forced_disconnects.load(Ordering::Relaxed), 1);
        assert!(!state.conns.is_connected(alice));
        // What was queued is still there; then the queue ends.
        assert!(frames.try_recv().is_ok() && frames.try_recv().is_ok());
        assert!(matches!(
            frames.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }

    #[test]
    fn a_turn_reaches_each_connection_as_one_batch_in_log_order() {
        let (room, alice, bob) = (RoomId::new(), UserId::new(), UserId::new());
        let mut state = state(8, vec![(room, alice), (room, bob)]);
        let (mut a, _) = register(&mut state, alice);
        while a.try_recv().is_ok() {}
        for seq in 1..=3 {
            state.apply(&recorded(room, seq, &sent(bob)));
        }
        assert!(
            a.try_recv().is_err(),
            "nothing goes out before the turn ends"
        );
        state.hand_over();
        let batch = a.rx.try_recv().expect("one batch");
        let seqs: Vec<u64> = batch
            .iter()
            .map(|item| match item {
                Outbound::Event(f) => f.seq,
                Outbound::Notice(text) => panic!("unexpected notice {text}"),
            })
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert!(a.rx.try_recv().is_err(), "one batch for the turn");
    }

    #[test]
    fn a_turn_larger_than_the_queue_drops_the_connection_but_ephemeral_frames_are_skipped() {
        let (room, alice, bob) = (RoomId::new(), UserId::new(), UserId::new());
        let mut state = state(2, vec![(room, alice), (room, bob)]);
        let (mut a, reason) = register(&mut state, alice);
        while a.try_recv().is_ok() {}
        // Two queued typing notices fill Alice's queue; a third is skipped, not fatal.
        let typing = |state: &mut State| {
            let (reply, _rx) = oneshot::channel();
            state.command(Command::Typing {
                user: bob,
                room,
                reply,
            });
            state.hand_over();
        };
        for _ in 0..3 {
            typing(&mut state);
            state.presence = Tracker::new(Presence::default(), Duration::from_secs(5));
        }
        assert_eq!(reason.get(), Disconnect::None);
        assert!(state.conns.is_connected(alice));
        // A durable frame that does not fit disconnects.
        apply(&mut state, &recorded(room, 1, &sent(bob)));
        assert_eq!(reason.get(), Disconnect::TooSlow);
        assert!(!state.conns.is_connected(alice));
    }

    #[test]
    fn typing_reaches_the_other_connected_members_and_non_members_are_refused() {
        let (room, alice, bob, carol) =
            (RoomId::new(), UserId::new(), UserId::new(), UserId::new());
        let mut state = state(8, vec![(room, alice), (room, bob)]);
        let (mut a, _) = register(&mut state, alice);
        let (mut b, _) = register(&mut state, bob);
        let (mut c, _) = register(&mut state, carol);
        // Bob coming online was announced to Alice (they share a room); drain the notices.
        while a.try_recv().is_ok() {}
        let typing = |state: &mut State, user| {
            let (reply, mut rx) = oneshot::channel();
            state.command(Command::Typing { user, room, reply });
            state.hand_over();
            rx.try_recv().unwrap()
        };
        assert!(typing(&mut state, alice));
        match b.try_recv() {
            Ok(Outbound::Notice(text)) => {
                assert!(text.contains(r#""type":"typing""#), "{text}");
                assert!(text.contains(&alice.0.to_string()), "{text}");
            }
            other => panic!("bob got {other:?}"),
        }
        assert!(a.try_recv().is_err(), "not to the typist");
        assert!(c.try_recv().is_err(), "not to a non-member");
        assert!(!typing(&mut state, carol), "carol is not a member");
        assert!(a.try_recv().is_err() && b.try_recv().is_err());
    }

    #[test]
    fn shutting_down_lets_go_of_every_connection_with_the_reason() {
        let (room, alice, bob) = (RoomId::new(), UserId::new(), UserId::new());
        let mut state = state(8, vec![(room, alice)]);
        let (mut a, a_reason) = register(&mut state, alice);
        let (_b, b_reason) = register(&mut state, bob);
        state.shut_down();
        assert_eq!(a_reason.get(), Disconnect::Shutdown);
        assert_eq!(b_reason.get(), Disconnect::Shutdown);
        assert!(!state.conns.is_connected(alice) && !state.conns.is_connected(bob));
        while let Ok(item) = a.try_recv() {
            assert!(
                matches!(item, Outbound::Notice(_)),
                "only presence was queued"
            );
        }
        assert!(matches!(
            a.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }

    #[test]
    fn a_room_bigger_than_the_connected_set_reaches_its_connected_members_only() {
        let room = RoomId::new();
        let members: Vec<UserId> = (0..5).map(|_| UserId::new()).collect();
        let outsider = UserId::new();
        let mut state = state(8, members.iter().map(|m| (room, *m)).collect());
        let (mut a, _) = register(&mut state, members[0]);
        let (mut o, _) = register(&mut state, outsider);
        while a.try_recv().is_ok() {}
        apply(&mut state, &recorded(room, 1, &sent(members[1])));
        assert!(matches!(a.try_recv(), Ok(Outbound::Event(f)) if f.seq == 1));
        assert!(o.try_recv().is_err(), "not a member");
    }

    /// Two shards, each owning one of two room mates: room events reach both from their own
    /// shard, and presence and typing decided in one shard reach the other's connections.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shards_deliver_their_own_users_and_tell_each_other_of_presence_and_typing() {
        use eventlog::{ExpectedVersion, NewEvent};
        use schema::events::RoomKind;
        use schema::values::Visibility;

        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn EventLog> = Arc::new(
            eventlog::sqlite::SqliteLog::open(dir.path().join("events.db"))
                .await
                .unwrap(),
        );
        let models = ReadModels::open(dir.path().join("models.db"), 0).unwrap();
        let in_shard = |shard| loop {
            let user = UserId::new();
            if shard_of(user, 2) == shard {
                break user;
            }
        };
        let (alice, bob, room) = (in_shard(0), in_shard(1), RoomId::new());
        let settings = HubSettings {
            shards: 2,
            ..state_settings(64)
        };
        let stop = CancellationToken::new();
        let (hub, run) = start(
            log.clone(),
            &models,
            Presence::default(),
            settings,
            stop.clone(),
        )
        .await
        .unwrap();
        let run = tokio::spawn(run);
        let append = |version: u64, event: Event| {
            let log = log.clone();
            async move {
                let new = NewEvent {
                    event_id: Uuid::now_v7(),
                    event_type: event.type_name().to_owned(),
                    schema_version: event.schema_version(),
                    data: event.encode(),
                    metadata: Vec::new(),
                };
                log.append(
                    &streams::room(room),
                    ExpectedVersion::at(version),
                    vec![new],
                )
                .await
                .unwrap()
                .last_position
            }
        };
        let created = Event::RoomCreated {
            room_id: room,
            kind: RoomKind::Group,
            name: None,
            visibility: Visibility::Private,
            created_by: alice,
            members: vec![alice, bob],
        };
        let at = append(0, created).await;
        let mut position = hub.position();
        position.wait_for(|p| *p >= at).await.unwrap();

        async fn next(frames: &mut Frames) -> Outbound {
            tokio::time::timeout(Duration::from_secs(10), frames.recv())
                .await
                .expect("a frame in time")
                .expect("still registered")
        }
        let notice = |item: Outbound| match item {
            Outbound::Notice(text) => text.to_string(),
            other => panic!("expected a notice, got {other:?}"),
        };
        let mut a = hub
            .register(alice, SessionId::new(), ConnKind::WebSocket)
            .await
            .unwrap();
        let mut b = hub
            .register(bob, SessionId::new(), ConnKind::WebSocket)
            .await
            .unwrap();
        // Bob's shard announces him online; Alice's shard tells her.
        let online = notice(next(&mut a.frames).await);
        assert!(online.contains(r#""type":"presence""#), "{online}");
        assert!(online.contains(&bob.0.to_string()), "{online}");
        // Bob types (his shard checks and coalesces); Alice hears it from hers.
        assert!(hub.typing(bob, room).await);
        let typing = notice(next(&mut a.frames).await);
        assert!(typing.contains(r#""type":"typing""#), "{typing}");
        assert!(typing.contains(&bob.0.to_string()), "{typing}");
        // A message reaches both, each from their own shard.
        let at = append(1, sent(alice)).await;
        for frames in [&mut a.frames, &mut b.frames] {
            loop {
                match next(frames).await {
                    Outbound::Event(f) => {
                        assert_eq!(f.seq, 2);
                        break;
                    }
                    Outbound::Notice(_) => {} // Alice's presence, for Bob
                }
            }
        }
        position.wait_for(|p| *p >= at).await.unwrap();
        // Connection ids tell their shard.
        assert_eq!((a.id % 2, b.id % 2), (0, 1));

        stop.cancel();
        run.await.unwrap().unwrap();
    }
}
