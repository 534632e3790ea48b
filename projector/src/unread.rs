//! Unread counts of the users who are watched (online on this node), kept in memory and moved
//! by the projector as it applies the log.
//!
//! A user costs nothing until someone [watches](crate::ReadModels::watch_unread) them. The
//! first watch loads their counts with one query on the projector's write connection, so the
//! baseline is exactly the applied position; from then on every batch the projector applies
//! adjusts them before it publishes its new position:
//!
//! - `message_sent` at seq s: +1 for every watched member other than the sender whose read
//!   marker is below s;
//! - `message_deleted` of a standing message at seq s: −1 for the same members;
//! - a read-marker move: the member's marker and count as the read models have them right
//!   after the move (one indexed count over that member's unread messages);
//! - a join (or founding the room) adds the room with count 0; a leave drops it;
//! - edits, and every other event, change no count.
//!
//! That is exactly what `queries::unread_counts` computes from the read models (the property
//! test in `tests/it/unread_property.rs` holds the two equal after every step). The changes a
//! batch makes are gathered while its transaction runs and applied once it has committed, with
//! the write connection still held: the counts only ever show committed positions.
//!
//! Each watched user has a version bumped by every change and an index of the rooms changed at
//! each version, so a consumer ([`UnreadWatch::take`]) reads only the rooms that changed since
//! it last looked, and is woken once per batch that changed any of its counts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rusqlite::{Connection, Transaction};
use schema::{RoomId, UserId};
use tokio::sync::watch;

use crate::{Result, queries};

/// The watched users' counts. Cheap to clone: clones share one cache.
#[derive(Debug, Clone, Default)]
pub(crate) struct UnreadCache(Arc<Mutex<State>>);

#[derive(Debug, Default)]
struct State {
    users: HashMap<UserId, Watched>,
    /// How many of `users` are loaded.
    loaded: usize,
    /// Room → the loaded watched users who are members.
    rooms: HashMap<RoomId, HashSet<UserId>>,
}

#[derive(Debug)]
struct Watched {
    /// Live [`UnreadWatch`]es of this user; the entry goes when the last one does.
    handles: usize,
    /// False between the first watch and the load of the counts.
    loaded: bool,
    /// The rooms the user belongs to.
    rooms: HashMap<RoomId, Slot>,
    /// Sum of the counts.
    total: u64,
    /// Bumped by each change; `baseline` is the version the counts were loaded at.
    version: u64,
    baseline: u64,
    /// Room → the version of its newest change, and the same pairs ordered by version.
    changed: HashMap<RoomId, u64>,
    by_version: BTreeMap<u64, RoomId>,
    /// Woken (or queued to be, at the end of the batch) and no take since: further changes
    /// need no wake, the take to come reads them.
    awake: bool,
    wake: watch::Sender<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    marker: u64,
    count: u64,
}

impl Watched {
    fn new() -> Self {
        Self {
            handles: 0,
            loaded: false,
            rooms: HashMap::new(),
            total: 0,
            version: 0,
            baseline: 0,
            changed: HashMap::new(),
            by_version: BTreeMap::new(),
            awake: false,
            wake: watch::channel(0).0,
        }
    }

    /// Records that `room`'s count changed; true when the user must now be queued for waking.
    fn touch(&mut self, room: RoomId) -> bool {
        self.version += 1;
        if let Some(old) = self.changed.insert(room, self.version) {
            self.by_version.remove(&old);
        }
        self.by_version.insert(self.version, room);
        !std::mem::replace(&mut self.awake, true)
    }

    fn set(&mut self, room: RoomId, count: u64) -> bool {
        let Some(slot) = self.rooms.get_mut(&room) else {
            return false;
        };
        if slot.count == count {
            return false;
        }
        self.total = self.total.saturating_sub(slot.count) + count;
        slot.count = count;
        self.touch(room)
    }
}

/// A change to the counts found while applying the batch.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// Messages (seq, sender), in log order, with no other change of the room between them:
    /// the sends of a burst are applied to each watcher once.
    Sent {
        room: RoomId,
        messages: Vec<(u64, UserId)>,
    },
    /// The standing message at `seq` by `sender` was deleted.
    Deleted {
        room: RoomId,
        seq: u64,
        sender: UserId,
    },
    /// `user` became a member; their marker starts at the join event.
    Joined {
        room: RoomId,
        user: UserId,
        seq: u64,
    },
    Left {
        room: RoomId,
        user: UserId,
    },
    /// `user`'s marker moved; `marker` and `count` are the read models' right after.
    Read {
        room: RoomId,
        user: UserId,
        marker: u64,
        count: u64,
    },
}

/// The changes one batch makes, gathered inside its transaction.
#[derive(Debug)]
pub(crate) struct Batch<'a> {
    cache: &'a UnreadCache,
    /// Whether any user's counts are loaded. Fixed for the batch: loads need the write
    /// connection, which the batch holds (unwatching may only make it an overestimate).
    active: bool,
    changes: Vec<Change>,
    /// Room → the index in `changes` of its `Sent` that later sends may still join.
    open: HashMap<RoomId, usize>,
}

impl<'a> Batch<'a> {
    pub(crate) fn new(cache: &'a UnreadCache) -> Self {
        let active = cache.lock().loaded > 0;
        Self {
            cache,
            active,
            changes: Vec::new(),
            open: HashMap::new(),
        }
    }

    /// Whether events may change some watched count (no one watched: nothing to gather).
    pub(crate) fn active(&self) -> bool {
        self.active
    }

    /// Whether `user`'s counts are loaded. Membership is not checked here: a join earlier in
    /// the batch is not in the cache yet; [`UnreadCache::apply`] checks it in order.
    pub(crate) fn watches(&self, user: UserId) -> bool {
        self.active && self.cache.lock().users.get(&user).is_some_and(|w| w.loaded)
    }

    pub(crate) fn push(&mut self, change: Change) {
        if self.active {
            self.open.remove(&change.room());
            self.changes.push(change);
        }
    }

    pub(crate) fn sent(&mut self, room: RoomId, seq: u64, sender: UserId) {
        if !self.active {
            return;
        }
        if let Some(&i) = self.open.get(&room)
            && let Some(Change::Sent { messages, .. }) = self.changes.get_mut(i)
        {
            messages.push((seq, sender));
            return;
        }
        self.open.insert(room, self.changes.len());
        self.changes.push(Change::Sent {
            room,
            messages: vec![(seq, sender)],
        });
    }

    /// Call once the batch has committed, still holding the write connection.
    pub(crate) fn commit(self) {
        if !self.changes.is_empty() {
            self.cache.apply(&self.changes);
        }
    }
}

impl UnreadCache {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing in here panics while the lock is held (no unchecked arithmetic, no I/O).
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a handle for `user` (not yet loaded if it is the first).
    pub(crate) fn watch(&self, user: UserId) -> UnreadWatch {
        let mut state = self.lock();
        let watched = state.users.entry(user).or_insert_with(Watched::new);
        watched.handles += 1;
        let mut wake = watched.wake.subscribe();
        // The first `changed` resolves at once: the baseline is waiting to be taken.
        wake.mark_changed();
        UnreadWatch {
            cache: self.clone(),
            user,
            seen: 0,
            wake,
        }
    }

    fn unwatch(&self, user: UserId) {
        let mut state = self.lock();
        let State {
            users,
            loaded,
            rooms,
        } = &mut *state;
        let Some(watched) = users.get_mut(&user) else {
            return;
        };
        watched.handles = watched.handles.saturating_sub(1);
        if watched.handles > 0 {
            return;
        }
        let Some(watched) = users.remove(&user) else {
            return;
        };
        if watched.loaded {
            *loaded -= 1;
        }
        for room in watched.rooms.keys() {
            if let Some(members) = rooms.get_mut(room) {
                members.remove(&user);
                if members.is_empty() {
                    rooms.remove(room);
                }
            }
        }
    }

    /// Loads `user`'s counts if they are watched and not loaded yet. Must run on the write
    /// connection, between batches, so the counts are exactly those at the applied position.
    pub(crate) fn load(&self, conn: &Connection, user: UserId) -> Result<()> {
        if self.lock().users.get(&user).is_none_or(|w| w.loaded) {
            return Ok(());
        }
        let rows = queries::unread_state(conn, user)?;
        let mut state = self.lock();
        let State {
            users,
            loaded,
            rooms,
        } = &mut *state;
        // Unwatched meanwhile, or loaded by a concurrent watch of the same user.
        let Some(watched) = users.get_mut(&user).filter(|w| !w.loaded) else {
            return Ok(());
        };
        *loaded += 1;
        for (room, marker, count) in rows {
            watched.rooms.insert(room, Slot { marker, count });
            watched.total += count;
            rooms.entry(room).or_default().insert(user);
        }
        watched.loaded = true;
        watched.version += 1;
        watched.baseline = watched.version;
        watched.wake.send_replace(watched.version);
        Ok(())
    }

    /// Applies a committed batch's changes in log order and wakes each changed user once.
    fn apply(&self, changes: &[Change]) {
        let mut state = self.lock();
        let State { users, rooms, .. } = &mut *state;
        let mut woken = Vec::new();
        for change in changes {
            match *change {
                Change::Sent { room, ref messages } => {
                    let Some(members) = rooms.get(&room) else {
                        continue;
                    };
                    let Some(&(first, _)) = messages.first() else {
                        continue;
                    };
                    let mut own = HashMap::<UserId, u64>::new();
                    for (_, sender) in messages {
                        *own.entry(*sender).or_default() += 1;
                    }
                    for user in members {
                        let Some(watched) = users.get_mut(user) else {
                            continue;
                        };
                        let Some(slot) = watched.rooms.get_mut(&room) else {
                            continue;
                        };
                        // Markers are normally below every new message; count one by one
                        // where not.
                        let unread = if slot.marker < first {
                            messages.len() as u64 - own.get(user).copied().unwrap_or(0)
                        } else {
                            messages
                                .iter()
                                .filter(|(seq, sender)| *seq > slot.marker && sender != user)
                                .count() as u64
                        };
                        if unread == 0 {
                            continue;
                        }
                        slot.count += unread;
                        watched.total += unread;
                        if watched.touch(room) {
                            woken.push(*user);
                        }
                    }
                }
                Change::Deleted { room, seq, sender } => {
                    let Some(members) = rooms.get(&room) else {
                        continue;
                    };
                    for user in members {
                        if *user == sender {
                            continue;
                        }
                        let Some(watched) = users.get_mut(user) else {
                            continue;
                        };
                        let Some(slot) = watched.rooms.get_mut(&room) else {
                            continue;
                        };
                        if slot.marker >= seq {
                            continue;
                        }
                        debug_assert!(slot.count > 0, "a deleted unread message was counted");
                        slot.count = slot.count.saturating_sub(1);
                        watched.total = watched.total.saturating_sub(1);
                        if watched.touch(room) {
                            woken.push(*user);
                        }
                    }
                }
                Change::Joined { room, user, seq } => {
                    if let Some(watched) = users.get_mut(&user).filter(|w| w.loaded) {
                        watched.rooms.entry(room).or_insert(Slot {
                            marker: seq,
                            count: 0,
                        });
                        rooms.entry(room).or_default().insert(user);
                    }
                }
                Change::Left { room, user } => {
                    let Some(watched) = users.get_mut(&user).filter(|w| w.loaded) else {
                        continue;
                    };
                    let Some(slot) = watched.rooms.remove(&room) else {
                        continue;
                    };
                    if let Some(members) = rooms.get_mut(&room) {
                        members.remove(&user);
                        if members.is_empty() {
                            rooms.remove(&room);
                        }
                    }
                    watched.total = watched.total.saturating_sub(slot.count);
                    if watched.touch(room) {
                        woken.push(user);
                    }
                }
                Change::Read {
                    room,
                    user,
                    marker,
                    count,
                } => {
                    let Some(watched) = users.get_mut(&user).filter(|w| w.loaded) else {
                        continue;
                    };
                    if let Some(slot) = watched.rooms.get_mut(&room) {
                        slot.marker = marker;
                    }
                    if watched.set(room, count) {
                        woken.push(user);
                    }
                }
            }
        }
        for user in woken {
            if let Some(watched) = users.get_mut(&user) {
                watched.wake.send_replace(watched.version);
            }
        }
    }
}

impl Change {
    fn room(&self) -> RoomId {
        match self {
            Self::Sent { room, .. }
            | Self::Deleted { room, .. }
            | Self::Joined { room, .. }
            | Self::Left { room, .. }
            | Self::Read { room, .. } => *room,
        }
    }
}

/// The changed counts [`UnreadWatch::take`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnreadChanges {
    /// The user's unread messages over all rooms.
    pub total: u64,
    /// The rooms whose count changed, with the new count (0 for rooms the user left). The
    /// first take after watching is the baseline: every room with unread messages.
    pub rooms: Vec<(RoomId, u64)>,
}

/// A watch on one user's unread counts; dropping it unwatches (the last one frees the user's
/// counts).
#[derive(Debug)]
pub struct UnreadWatch {
    cache: UnreadCache,
    user: UserId,
    /// The version this handle last took.
    seen: u64,
    wake: watch::Receiver<u64>,
}

impl UnreadWatch {
    pub fn user(&self) -> UserId {
        self.user
    }

    /// Resolves when there are changes this handle has not taken (at once for a new handle:
    /// the baseline). Cancel-safe.
    pub async fn changed(&mut self) {
        if self.wake.changed().await.is_err() {
            // The sender lives as long as any handle of the user, this one included.
            std::future::pending::<()>().await;
        }
    }

    /// The rooms whose count changed since the last take, at the projector's applied position.
    pub fn take(&mut self) -> UnreadChanges {
        self.wake.borrow_and_update();
        let mut state = self.cache.lock();
        let Some(watched) = state.users.get_mut(&self.user).filter(|w| w.loaded) else {
            return UnreadChanges::default();
        };
        // Other handles of the user may not have taken yet: they are still marked changed.
        watched.awake = false;
        let rooms = if self.seen < watched.baseline {
            watched
                .rooms
                .iter()
                .filter(|(_, slot)| slot.count > 0)
                .map(|(room, slot)| (*room, slot.count))
                .collect()
        } else {
            watched
                .by_version
                .range(self.seen + 1..)
                .map(|(_, room)| (*room, watched.rooms.get(room).map_or(0, |s| s.count)))
                .collect()
        };
        self.seen = watched.version;
        UnreadChanges {
            total: watched.total,
            rooms,
        }
    }
}

impl Drop for UnreadWatch {
    fn drop(&mut self) {
        self.cache.unwatch(self.user);
    }
}

/// Gathers what a room event does to watched counts; runs inside the batch's transaction,
/// before the event's own read-model changes for deletes (it reads the message as it stood).
pub(crate) fn deleted(
    tx: &Transaction<'_>,
    batch: &mut Batch<'_>,
    room: RoomId,
    message: uuid::Uuid,
) -> Result<()> {
    if !batch.active() {
        return Ok(());
    }
    if let Some((seq, sender)) = queries::standing_message(tx, room, message)? {
        batch.push(Change::Deleted { room, seq, sender });
    }
    Ok(())
}

/// Gathers a read-marker move of a watched user; runs after the move is applied in the
/// transaction.
pub(crate) fn read(
    tx: &Transaction<'_>,
    batch: &mut Batch<'_>,
    room: RoomId,
    user: UserId,
) -> Result<()> {
    if !batch.watches(user) {
        return Ok(());
    }
    if let Some((marker, count)) = queries::unread_in(tx, room, user)? {
        batch.push(Change::Read {
            room,
            user,
            marker,
            count,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The bookkeeping of versions and handles; counts against SQL are tested in
    //! `tests/it/unread_property.rs`.
    #![allow(clippy::unwrap_used)]

    use futures::FutureExt;

    use super::*;

    fn loaded(cache: &UnreadCache, user: UserId, rooms: &[(RoomId, u64, u64)]) {
        let mut state = cache.lock();
        let State {
            users,
            loaded: n,
            rooms: index,
        } = &mut *state;
        *n += 1;
        let w = users.get_mut(&user).unwrap();
        for &(room, marker, count) in rooms {
            w.rooms.insert(room, Slot { marker, count });
            w.total += count;
            index.entry(room).or_default().insert(user);
        }
        w.loaded = true;
        w.version += 1;
        w.baseline = w.version;
    }

    #[test]
    fn takes_return_the_baseline_then_only_changed_rooms() {
        let cache = UnreadCache::default();
        let (me, other) = (UserId::new(), UserId::new());
        let (a, b, c) = (RoomId::new(), RoomId::new(), RoomId::new());
        let mut first = cache.watch(me);
        loaded(&cache, me, &[(a, 0, 2), (b, 0, 0), (c, 5, 1)]);
        let mut baseline = first.take().rooms;
        baseline.sort();
        let mut want = vec![(a, 2), (c, 1)];
        want.sort();
        assert_eq!(baseline, want);
        assert_eq!(
            first.take(),
            UnreadChanges {
                total: 3,
                rooms: vec![]
            }
        );

        cache.apply(&[
            Change::Sent {
                room: b,
                messages: vec![(1, other), (2, me), (3, other)],
            },
            // At the marker (read already) and one past it, in one run.
            Change::Sent {
                room: c,
                messages: vec![(5, other), (6, other)],
            },
        ]);
        assert_eq!(
            first.take(),
            UnreadChanges {
                total: 6,
                rooms: vec![(b, 2), (c, 2)]
            }
        );

        // A change wakes a handle once; later ones wait for its take without another wake.
        assert!(
            first.changed().now_or_never().is_none(),
            "the take answered the last wake"
        );
        let send = |seq| Change::Sent {
            room: b,
            messages: vec![(seq, other)],
        };
        cache.apply(&[send(4)]);
        cache.apply(&[send(5)]);
        assert!(first.changed().now_or_never().is_some());
        cache.apply(&[send(6)]);
        assert!(first.changed().now_or_never().is_none());
        assert_eq!(
            first.take(),
            UnreadChanges {
                total: 9,
                rooms: vec![(b, 5)]
            }
        );
        cache.apply(&[send(7)]);
        assert!(first.changed().now_or_never().is_some());
        first.take();

        // A second handle starts from the baseline; the first sees only the leave.
        let mut second = cache.watch(me);
        cache.apply(&[Change::Left { room: a, user: me }]);
        assert_eq!(
            first.take(),
            UnreadChanges {
                total: 8,
                rooms: vec![(a, 0)]
            }
        );
        let mut all = second.take().rooms;
        all.sort();
        let mut want = vec![(b, 6), (c, 2)];
        want.sort();
        assert_eq!(all, want);

        // The last handle frees the user and the room index.
        drop(first);
        drop(second);
        assert!(cache.lock().users.is_empty());
        assert!(cache.lock().rooms.is_empty());
    }
}
