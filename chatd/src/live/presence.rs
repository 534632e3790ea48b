//! Who is online and who is typing, as a pure state machine the hub drives: it is told of
//! connections opening and closing, of other nodes' messages and of the time, and answers with
//! [`Effect`]s (announce, tell the other nodes, forward typing) for the hub to carry out. No
//! I/O; the clock is a parameter, so tests step it.
//!
//! A user is online while they have a live connection on this node or on any other node
//! heard from within [`PEER_TIMEOUT`]. Going online is announced at once; going offline only
//! after the user has had no connection here for the grace period, so a flapping connection
//! never makes them blink offline.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use schema::{RoomId, UserId};
use uuid::Uuid;

use super::peers::{PEER_TIMEOUT, PeerMessage};
use crate::chat::Presence;

/// A user's typing is forwarded at most once per this interval per room.
pub const TYPING_EVERY: Duration = Duration::from_secs(1);

/// What the hub must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Tell the users who watch `user` that they came online or went offline.
    Announce { user: UserId, online: bool },
    /// Tell the other nodes.
    Publish(PeerMessage),
    /// Tell the other members of `room` connected here that `user` is typing.
    Typing { room: RoomId, user: UserId },
}

/// The users online because of a connection on this node. Shared by the hub's shards, each of
/// which changes only its own users (and one of which tells the other nodes the whole set).
#[derive(Debug, Clone, Default)]
pub struct LocalUsers(Arc<Mutex<HashSet<UserId>>>);

impl LocalUsers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<UserId>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(&self, user: UserId) -> bool {
        self.lock().insert(user)
    }

    fn remove(&self, user: UserId) -> bool {
        self.lock().remove(&user)
    }

    fn contains(&self, user: UserId) -> bool {
        self.lock().contains(&user)
    }

    /// Everyone in the set now.
    pub fn all(&self) -> Vec<UserId> {
        self.lock().iter().copied().collect()
    }
}

#[derive(Debug)]
pub struct Tracker {
    /// The announced set, which the REST handlers read.
    presence: Presence,
    offline_grace: Duration,
    /// Users whose last connection closed, in the order their grace ends; an entry counts only
    /// while it matches the user's deadline in `offline_at` (a reconnect removes it).
    going_offline: VecDeque<(Instant, UserId)>,
    offline_at: HashMap<UserId, Instant>,
    typing_last: HashMap<(RoomId, UserId), Instant>,
    /// Users announced online because of a connection on this node.
    local: LocalUsers,
    /// Other nodes' online users, and when each node was last heard from.
    remote: HashMap<Uuid, (HashSet<UserId>, Instant)>,
    /// Whether this tracker logs a peer node falling silent (one of a node's trackers does).
    speaks: bool,
}

impl Tracker {
    pub fn new(presence: Presence, offline_grace: Duration) -> Self {
        Self::sharing(presence, offline_grace, LocalUsers::default(), true)
    }

    /// A tracker of some of the node's users, recording them in `local` with the others';
    /// `speaks` for the one of them that logs what concerns the whole node.
    pub fn sharing(
        presence: Presence,
        offline_grace: Duration,
        local: LocalUsers,
        speaks: bool,
    ) -> Self {
        Self {
            presence,
            offline_grace,
            going_offline: VecDeque::new(),
            offline_at: HashMap::new(),
            typing_last: HashMap::new(),
            local,
            remote: HashMap::new(),
            speaks,
        }
    }

    /// The users online because of a connection on this node (for the periodic sync).
    pub fn local(&self) -> Vec<UserId> {
        self.local.all()
    }

    /// A connection of `user` opened on this node.
    pub fn connected(&mut self, user: UserId) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.offline_at.remove(&user);
        if self.local.insert(user) {
            effects.push(Effect::Publish(PeerMessage::Presence {
                user,
                online: true,
            }));
        }
        if self.presence.set(user, true) {
            effects.push(Effect::Announce { user, online: true });
        }
        effects
    }

    /// The last connection of `user` on this node closed: offline once the grace has passed
    /// without a new one ([`Self::tick`]).
    pub fn last_closed(&mut self, user: UserId, now: Instant) {
        let at = now + self.offline_grace;
        self.offline_at.insert(user, at);
        self.going_offline.push_back((at, user));
    }

    /// The server is shutting down: `user` is offline here at once, unannounced (other nodes
    /// keep them for [`PEER_TIMEOUT`], enough to reconnect elsewhere without blinking).
    pub fn shut_down(&mut self, user: UserId) {
        self.local.remove(user);
        self.presence.set(user, false);
    }

    /// Time passed: users whose grace has ended without a new connection (`connected` says
    /// whether they have one here) go offline; nodes not heard from count as having no one
    /// online; typing coalescing forgets what is old.
    pub fn tick(&mut self, now: Instant, connected: impl Fn(UserId) -> bool) -> Vec<Effect> {
        let mut effects = Vec::new();
        while let Some(&(at, user)) = self.going_offline.front() {
            if at > now {
                break;
            }
            self.going_offline.pop_front();
            if self.offline_at.get(&user) != Some(&at) {
                continue; // reconnected (and maybe left again later) meanwhile
            }
            self.offline_at.remove(&user);
            if !connected(user) && self.local.remove(user) {
                effects.push(Effect::Publish(PeerMessage::Presence {
                    user,
                    online: false,
                }));
                effects.extend(self.recompute(user));
            }
        }
        let gone: Vec<Uuid> = self
            .remote
            .iter()
            .filter(|(_, (_, seen))| now.duration_since(*seen) > PEER_TIMEOUT)
            .map(|(node, _)| *node)
            .collect();
        for node in gone {
            if self.speaks {
                tracing::warn!(%node, "no word from a peer node; its users count as offline");
            }
            if let Some((users, _)) = self.remote.remove(&node) {
                for user in users {
                    effects.extend(self.recompute(user));
                }
            }
        }
        self.typing_last
            .retain(|_, at| now.duration_since(*at) < TYPING_EVERY);
        effects
    }

    /// Announces `user`'s presence if it changed: online while connected here or on any
    /// other node.
    fn recompute(&mut self, user: UserId) -> Option<Effect> {
        let online =
            self.local.contains(user) || self.remote.values().any(|(u, _)| u.contains(&user));
        self.presence
            .set(user, online)
            .then_some(Effect::Announce { user, online })
    }

    /// A message from another node.
    pub fn peer(&mut self, node: Uuid, message: PeerMessage, now: Instant) -> Vec<Effect> {
        let entry = self
            .remote
            .entry(node)
            .or_insert_with(|| (HashSet::new(), now));
        entry.1 = now;
        match message {
            PeerMessage::Typing { room, user } => self.typing(user, room, false, now),
            PeerMessage::Presence { user, online } => {
                if online {
                    entry.0.insert(user);
                } else {
                    entry.0.remove(&user);
                }
                self.recompute(user).into_iter().collect()
            }
            PeerMessage::Sync { users } => {
                let new: HashSet<UserId> = users.into_iter().collect();
                let old = std::mem::replace(&mut entry.0, new.clone());
                old.symmetric_difference(&new)
                    .copied()
                    .collect::<Vec<_>>()
                    .into_iter()
                    .filter_map(|user| self.recompute(user))
                    .collect()
            }
        }
    }

    /// `user` (a member) is typing in `room`: forwarded (and, if it started here, told to the
    /// other nodes) at most once per [`TYPING_EVERY`].
    pub fn typing(&mut self, user: UserId, room: RoomId, local: bool, now: Instant) -> Vec<Effect> {
        match self.typing_last.get(&(room, user)) {
            Some(at) if now.duration_since(*at) < TYPING_EVERY => return Vec::new(),
            _ => {}
        }
        self.typing_last.insert((room, user), now);
        let mut effects = Vec::new();
        if local {
            effects.push(Effect::Publish(PeerMessage::Typing { room, user }));
        }
        effects.push(Effect::Typing { room, user });
        effects
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(5);

    fn tracker() -> Tracker {
        Tracker::new(Presence::default(), GRACE)
    }

    fn announce(user: UserId, online: bool) -> Effect {
        Effect::Announce { user, online }
    }

    fn publish(user: UserId, online: bool) -> Effect {
        Effect::Publish(PeerMessage::Presence { user, online })
    }

    #[test]
    fn online_at_once_offline_after_the_grace() {
        let (mut t, u, t0) = (tracker(), UserId::new(), Instant::now());
        assert_eq!(t.connected(u), vec![publish(u, true), announce(u, true)]);
        // A second device: nothing new.
        assert_eq!(t.connected(u), vec![]);
        t.last_closed(u, t0);
        assert_eq!(t.tick(t0 + GRACE / 2, |_| false), vec![]);
        assert!(t.presence.is_online(u));
        assert_eq!(
            t.tick(t0 + GRACE, |_| false),
            vec![publish(u, false), announce(u, false)]
        );
        assert!(!t.presence.is_online(u));
    }

    #[test]
    fn a_reconnect_within_the_grace_is_not_announced() {
        let (mut t, u, t0) = (tracker(), UserId::new(), Instant::now());
        t.connected(u);
        t.last_closed(u, t0);
        assert_eq!(t.connected(u), vec![]);
        assert_eq!(t.tick(t0 + 2 * GRACE, |_| true), vec![]);
        // Closed again later: the old deadline does not count, the new one does.
        t.last_closed(u, t0 + 3 * GRACE);
        assert_eq!(t.tick(t0 + 3 * GRACE, |_| false), vec![]);
        assert_eq!(
            t.tick(t0 + 4 * GRACE, |_| false),
            vec![publish(u, false), announce(u, false)]
        );
    }

    #[test]
    fn shutting_down_is_silent() {
        let (mut t, u) = (tracker(), UserId::new());
        t.connected(u);
        t.shut_down(u);
        assert!(!t.presence.is_online(u));
        assert_eq!(t.tick(Instant::now() + 2 * GRACE, |_| false), vec![]);
    }

    #[test]
    fn other_nodes_keep_users_online_until_they_fall_silent() {
        let (mut t, u, node, t0) = (tracker(), UserId::new(), Uuid::new_v4(), Instant::now());
        let online = PeerMessage::Presence {
            user: u,
            online: true,
        };
        assert_eq!(t.peer(node, online.clone(), t0), vec![announce(u, true)]);
        assert_eq!(t.peer(node, online, t0), vec![]);
        // Here too, then gone from here: still online on the other node.
        t.connected(u);
        t.last_closed(u, t0);
        assert_eq!(t.tick(t0 + GRACE, |_| false), vec![publish(u, false)]);
        assert!(t.presence.is_online(u));
        // A sync without them, then one with them again.
        let sync = |users| PeerMessage::Sync { users };
        assert_eq!(t.peer(node, sync(vec![]), t0), vec![announce(u, false)]);
        assert_eq!(t.peer(node, sync(vec![u]), t0), vec![announce(u, true)]);
        // The node falls silent.
        assert_eq!(
            t.tick(t0 + PEER_TIMEOUT + GRACE, |_| false),
            vec![announce(u, false)]
        );
    }

    #[test]
    fn typing_is_coalesced_and_only_local_typing_is_published() {
        let (mut t, u, room, t0) = (tracker(), UserId::new(), RoomId::new(), Instant::now());
        let forward = Effect::Typing { room, user: u };
        assert_eq!(
            t.typing(u, room, true, t0),
            vec![
                Effect::Publish(PeerMessage::Typing { room, user: u }),
                forward.clone()
            ]
        );
        assert_eq!(t.typing(u, room, true, t0 + TYPING_EVERY / 2), vec![]);
        assert_eq!(t.typing(u, room, false, t0 + TYPING_EVERY), vec![forward]);
    }
}
