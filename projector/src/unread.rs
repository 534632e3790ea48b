//! Unread counts of the users who are watched (online on this node), kept in memory and moved
//! by the projector as it applies the log.
//!
//! A user costs nothing until someone [watches](crate::ReadModels::watch_unread) them. Watching
//! never waits: it queues the user for the **loader**, which takes every queued user at once and
//! reads their counts in one transaction on a *read* connection (never the projector's write
//! connection, which keeps applying meanwhile). That snapshot is at some committed position
//! `P`; the batches the projector applied after `P` while the load ran are kept in a short
//! journal and replayed onto the loaded counts, so they end exactly at the applied position. A
//! batch that began before the user was queued may have left out what only a watched user
//! needs (a read marker's new count); the loader then reads again from a snapshot at or after
//! that batch.
//!
//! Every batch the projector applies adjusts the loaded counts before it publishes its new
//! position:
//!
//! - `message_sent` at seq s: +1 for every watched member other than the sender whose read
//!   marker is below s;
//! - `message_deleted` of a standing message at seq s: −1 for the same members;
//! - a read-marker move: the member's marker and count as the read models have them right
//!   after the move (one indexed count over that member's unread messages);
//! - a join (or founding the room) adds the room with count 0; a leave drops it;
//! - edits change no count; an edit of a message a watched member has unread marks the room
//!   changed for them (its mentions may have changed, which the consumer reads);
//! - every other event changes no count.
//!
//! That is exactly what `queries::unread_counts` computes from the read models (the property
//! test in `tests/it/unread_property.rs` holds the two equal after every step). The changes a
//! batch makes are gathered while its transaction runs and applied once it has committed, with
//! the write connection still held: the counts only ever show committed positions.
//!
//! Each watched user has a version bumped by every change and an index of the rooms changed at
//! each version, so a consumer ([`UnreadWatch::take`]) reads only the rooms that changed since
//! it last looked, and is woken once per batch that changed any of its counts.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rusqlite::{Connection, Transaction};
use schema::{IdMap, IdSet, RoomId, UserId};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::{ReadModels, Result, queries};

/// Most users loaded in one read transaction.
const LOAD_BATCH: usize = 256;

/// The watched users' counts. Cheap to clone: clones share one cache.
#[derive(Debug, Clone, Default)]
pub(crate) struct UnreadCache(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Users were queued for the loader.
    queued: Notify,
    features: Mutex<Features>,
}

/// When the mention and thread counts (which stay in SQL, `features::counts`) may last have
/// changed, per room: a consumer that read them at a [mark](UnreadWatch::counts_mark) reads
/// them again only when one of its rooms changed since. Every committed batch with an event
/// that may change them ticks the clock; a plain message (no mention, not a reply) does not.
#[derive(Debug, Default)]
struct Features {
    clock: u64,
    /// The clock at the last batch with an event outside room streams other than a read
    /// marker (conservatively: it may change any room's counts).
    all: u64,
    rooms: IdMap<RoomId, u64>,
}

#[derive(Debug, Default)]
struct State {
    users: IdMap<UserId, Watched>,
    /// How many of `users` are loaded.
    loaded: usize,
    /// Room → the loaded watched users who are members.
    rooms: IdMap<RoomId, IdSet<UserId>>,
    /// The position of the last batch applied.
    applied: u64,
    /// Bumped by each new (not yet loaded) watched user.
    epoch: u64,
    /// Users waiting for the loader (and not taken by it yet).
    queue: Vec<UserId>,
    /// Users watched but not loaded (queued or being loaded).
    pending: IdSet<UserId>,
    /// While users are pending: the changes of the batches applied since, by position, for
    /// the loader to replay onto counts read from an older snapshot.
    journal: VecDeque<(u64, Arc<[Change]>)>,
    /// The epoch at which the batch being applied began; `None` between batches.
    batch_began: Option<u64>,
}

#[derive(Debug)]
struct Watched {
    /// Live [`UnreadWatch`]es of this user; the entry goes when the last one does.
    handles: usize,
    /// The position the counts are exact at; `None` until loaded.
    as_of: Option<u64>,
    /// The epoch the user was queued at, and the applied position then (no load snapshot can
    /// be older).
    registered: u64,
    floor: u64,
    /// A load must read from a snapshot at or after this position (a batch that began before
    /// the user was watched committed here).
    needs: u64,
    /// A load came while a batch that began before the watch was being applied: it may
    /// predate that batch, which gathered nothing for this user. Queued again at its commit.
    deferred: bool,
    /// The rooms the user belongs to.
    rooms: IdMap<RoomId, Slot>,
    /// Sum of the counts.
    total: u64,
    /// Bumped by each change; `baseline` is the version the counts were loaded at.
    version: u64,
    baseline: u64,
    /// Room → the version of its newest change, and the same pairs ordered by version.
    changed: IdMap<RoomId, u64>,
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
    fn new(registered: u64, floor: u64) -> Self {
        Self {
            handles: 0,
            as_of: None,
            registered,
            floor,
            needs: 0,
            deferred: false,
            rooms: IdMap::default(),
            total: 0,
            version: 0,
            baseline: 0,
            changed: IdMap::default(),
            by_version: BTreeMap::new(),
            awake: false,
            wake: watch::channel(0).0,
        }
    }

    /// Whether a batch committed at `position` moves these counts: they are loaded, from a
    /// snapshot older than it (a snapshot may be newer than the batches applied so far).
    fn follows(&self, position: u64) -> bool {
        self.as_of.is_some_and(|at| at < position)
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
    /// The standing message at `seq` by `sender` was edited: no count changes, but its
    /// mentions may have, so the members who have it unread are told the room changed (their
    /// push reads the mention counts again).
    Edited {
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
    /// The room is gone, with every membership.
    RoomDeleted {
        room: RoomId,
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
    /// Whether any user is watched. Fixed for the batch: users watched later are read by the
    /// loader from a snapshot at or after this batch.
    active: bool,
    /// The watch epoch when the batch began.
    epoch: u64,
    changes: Vec<Change>,
    /// Room → the index in `changes` of its `Sent` that later sends may still join.
    open: HashMap<RoomId, usize>,
    /// Rooms whose mention or thread counts may change (see [`Features`]); `None`: any room.
    touched: Vec<Option<RoomId>>,
}

impl<'a> Batch<'a> {
    pub(crate) fn new(cache: &'a UnreadCache) -> Self {
        let mut state = cache.lock();
        let (active, epoch) = (state.loaded > 0 || !state.pending.is_empty(), state.epoch);
        state.batch_began = Some(epoch);
        drop(state);
        Self {
            cache,
            active,
            epoch,
            changes: Vec::new(),
            open: HashMap::new(),
            touched: Vec::new(),
        }
    }

    /// The event may change the mention or thread counts of `room`'s members (`None`: of any
    /// room's). Gathered whether or not anyone is watched.
    pub(crate) fn counts_may_change(&mut self, room: Option<RoomId>) {
        if self.touched.last() != Some(&room) {
            self.touched.push(room);
        }
    }

    /// Whether events may change some watched count (no one watched: nothing to gather).
    pub(crate) fn active(&self) -> bool {
        self.active
    }

    /// Whether `user` is watched (loaded or waiting for the loader). Membership is not checked
    /// here: a join earlier in the batch is not in the cache yet; [`UnreadCache`] checks it
    /// in order.
    pub(crate) fn watches(&self, user: UserId) -> bool {
        self.active && self.cache.lock().users.contains_key(&user)
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

    /// Call once the batch has committed at `position`, still holding the write connection.
    pub(crate) fn commit(self, position: u64) {
        if !self.touched.is_empty() {
            let mut features = self
                .cache
                .0
                .features
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            features.clock += 1;
            let clock = features.clock;
            for room in self.touched {
                match room {
                    Some(room) => {
                        features.rooms.insert(room, clock);
                    }
                    None => features.all = clock,
                }
            }
        }
        self.cache.committed(position, self.epoch, self.changes);
    }
}

impl UnreadCache {
    fn features(&self) -> MutexGuard<'_, Features> {
        self.0
            .features
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing in here panics while the lock is held (no unchecked arithmetic, no I/O).
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a handle for `user`; the first one queues the user for the loader.
    pub(crate) fn watch(&self, user: UserId) -> UnreadWatch {
        let mut state = self.lock();
        let State {
            users,
            applied,
            epoch,
            queue,
            pending,
            ..
        } = &mut *state;
        let watched = users.entry(user).or_insert_with(|| {
            *epoch += 1;
            pending.insert(user);
            queue.push(user);
            self.0.queued.notify_one();
            Watched::new(*epoch, *applied)
        });
        watched.handles += 1;
        let mut wake = watched.wake.subscribe();
        if watched.as_of.is_some() {
            // Loaded already: the baseline is waiting to be taken.
            wake.mark_changed();
        }
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
            pending,
            ..
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
        if watched.as_of.is_some() {
            *loaded -= 1;
        } else {
            pending.remove(&user);
        }
        for room in watched.rooms.keys() {
            if let Some(members) = rooms.get_mut(room) {
                members.remove(&user);
                if members.is_empty() {
                    rooms.remove(room);
                }
            }
        }
        state.trim_journal();
    }

    /// Takes up to `max` queued users (with the epoch they were queued at) for loading.
    fn to_load(&self, max: usize) -> Vec<(UserId, u64)> {
        let mut state = self.lock();
        let State {
            users,
            queue,
            pending,
            ..
        } = &mut *state;
        let mut seen = HashSet::new();
        let mut taken = Vec::new();
        while taken.len() < max
            && let Some(user) = queue.pop()
        {
            if pending.contains(&user)
                && seen.insert(user)
                && let Some(w) = users.get(&user)
            {
                taken.push((user, w.registered));
            }
        }
        taken
    }

    /// Installs counts read from a snapshot at `position`, bringing each to the applied
    /// position with the journal; users whose snapshot is too old go back in the queue.
    fn install(&self, position: u64, loads: Vec<Loaded>) {
        let mut state = self.lock();
        let mut requeued = false;
        for (user, registered, rows) in loads {
            let State {
                users,
                loaded,
                rooms,
                applied,
                queue,
                pending,
                journal,
                batch_began,
                ..
            } = &mut *state;
            // Unwatched meanwhile (perhaps watched again: that watch has its own load).
            let Some(w) = users
                .get_mut(&user)
                .filter(|w| w.as_of.is_none() && w.registered == registered)
            else {
                continue;
            };
            if batch_began.is_some_and(|began| began < w.registered) {
                // The snapshot may be older than the batch under way, whose commit is not in
                // the journal yet: load again once it is committed (see `committed`).
                w.deferred = true;
                continue;
            }
            if w.needs > position {
                queue.push(user);
                requeued = true;
                continue;
            }
            w.as_of = Some(position);
            for (room, marker, count) in rows {
                w.rooms.insert(room, Slot { marker, count });
                w.total += count;
                rooms.entry(room).or_default().insert(user);
            }
            *loaded += 1;
            pending.remove(&user);
            for (at, changes) in journal.iter().filter(|(at, _)| *at > position) {
                apply(users, rooms, changes, *at, Some(user));
            }
            if let Some(w) = users.get_mut(&user) {
                w.as_of = Some(position.max(*applied));
                w.version += 1;
                w.baseline = w.version;
                w.awake = true;
                w.wake.send_replace(w.version);
            }
        }
        state.trim_journal();
        drop(state);
        if requeued {
            self.0.queued.notify_one();
        }
    }

    /// A batch committed at `position`: its changes move the loaded counts (each changed user
    /// is woken once), and the journal keeps them for loads under way.
    fn committed(&self, position: u64, epoch: u64, changes: Vec<Change>) {
        let mut state = self.lock();
        let State {
            users,
            rooms,
            applied,
            queue,
            pending,
            journal,
            batch_began,
            ..
        } = &mut *state;
        *batch_began = None;
        for user in pending.iter() {
            let Some(w) = users.get_mut(user) else {
                continue;
            };
            if w.registered > epoch {
                // Watched after this batch began: it may lack what only watched users get.
                w.needs = w.needs.max(position);
            }
            if std::mem::take(&mut w.deferred) {
                queue.push(*user);
                self.0.queued.notify_one();
            }
        }
        if changes.is_empty() || position <= *applied {
            // Nothing new (a batch the read models had applied already changes nothing).
            *applied = (*applied).max(position);
            return;
        }
        *applied = position;
        let woken = apply(users, rooms, &changes, position, None);
        if !pending.is_empty() {
            journal.push_back((position, changes.into()));
        }
        for user in woken {
            if let Some(w) = users.get_mut(&user) {
                w.wake.send_replace(w.version);
            }
        }
    }

    fn is_loaded(&self, user: UserId) -> bool {
        self.lock()
            .users
            .get(&user)
            .is_some_and(|w| w.as_of.is_some())
    }
}

impl State {
    /// Drops journal entries no pending load can need (every pending snapshot is at least as
    /// new as the applied position when its user was queued).
    fn trim_journal(&mut self) {
        let floor = self
            .pending
            .iter()
            .filter_map(|u| self.users.get(u).map(|w| w.floor))
            .min();
        match floor {
            None => self.journal.clear(),
            Some(floor) => {
                while self.journal.front().is_some_and(|(at, _)| *at <= floor) {
                    self.journal.pop_front();
                }
            }
        }
    }
}

/// Applies a batch's changes (committed at `position`) in log order to the loaded users whose
/// counts are older — only to `only` when given (a load catching up on the journal). Returns
/// the users to wake.
fn apply(
    users: &mut IdMap<UserId, Watched>,
    rooms: &mut IdMap<RoomId, IdSet<UserId>>,
    changes: &[Change],
    position: u64,
    only: Option<UserId>,
) -> Vec<UserId> {
    let wanted = |user: &UserId| only.is_none_or(|o| o == *user);
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
                for user in members.iter().filter(|u| wanted(u)) {
                    let Some(watched) = users.get_mut(user).filter(|w| w.follows(position)) else {
                        continue;
                    };
                    let Some(slot) = watched.rooms.get_mut(&room) else {
                        continue;
                    };
                    // Markers are normally below every new message; count one by one where
                    // not.
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
                for user in members.iter().filter(|u| wanted(u) && **u != sender) {
                    let Some(watched) = users.get_mut(user).filter(|w| w.follows(position)) else {
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
            Change::Edited { room, seq, sender } => {
                let Some(members) = rooms.get(&room) else {
                    continue;
                };
                for user in members.iter().filter(|u| wanted(u) && **u != sender) {
                    let Some(watched) = users.get_mut(user).filter(|w| w.follows(position)) else {
                        continue;
                    };
                    if watched.rooms.get(&room).is_some_and(|s| s.marker < seq)
                        && watched.touch(room)
                    {
                        woken.push(*user);
                    }
                }
            }
            Change::Joined { room, user, seq } => {
                if !wanted(&user) {
                    continue;
                }
                if let Some(watched) = users.get_mut(&user).filter(|w| w.follows(position)) {
                    watched.rooms.entry(room).or_insert(Slot {
                        marker: seq,
                        count: 0,
                    });
                    rooms.entry(room).or_default().insert(user);
                }
            }
            Change::Left { room, user } => {
                if !wanted(&user) {
                    continue;
                }
                let Some(watched) = users.get_mut(&user).filter(|w| w.follows(position)) else {
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
            Change::RoomDeleted { room } => {
                let Some(members) = rooms.get_mut(&room) else {
                    continue;
                };
                let gone: Vec<UserId> = members.iter().filter(|u| wanted(u)).copied().collect();
                for user in gone {
                    let Some(watched) = users.get_mut(&user).filter(|w| w.follows(position)) else {
                        continue;
                    };
                    members.remove(&user);
                    if let Some(slot) = watched.rooms.remove(&room) {
                        watched.total = watched.total.saturating_sub(slot.count);
                        if watched.touch(room) {
                            woken.push(user);
                        }
                    }
                }
                if members.is_empty() {
                    rooms.remove(&room);
                }
            }
            Change::Read {
                room,
                user,
                marker,
                count,
            } => {
                if !wanted(&user) {
                    continue;
                }
                let Some(watched) = users.get_mut(&user).filter(|w| w.follows(position)) else {
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
    woken
}

impl Change {
    fn room(&self) -> RoomId {
        match self {
            Self::Sent { room, .. }
            | Self::Deleted { room, .. }
            | Self::Edited { room, .. }
            | Self::Joined { room, .. }
            | Self::Left { room, .. }
            | Self::RoomDeleted { room }
            | Self::Read { room, .. } => *room,
        }
    }
}

/// Loads the counts of queued users until `shutdown`: every user queued at the time in one
/// read transaction, on a read connection, so the projector never waits for it.
pub(crate) async fn load_watched(models: ReadModels, shutdown: CancellationToken) -> Result<()> {
    let cache = models.unread_cache().clone();
    loop {
        let users = cache.to_load(LOAD_BATCH);
        if users.is_empty() {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = cache.0.queued.notified() => continue,
            }
        }
        let (position, loads) = models.read(move |c| snapshot(c, users)).await?;
        cache.install(position, loads);
    }
}

/// A loaded user: who, the epoch they were queued at, and (room, read marker, count) per room.
type Loaded = (UserId, u64, Vec<(RoomId, u64, u64)>);

/// The checkpoint and the counts of `users`, from one snapshot.
fn snapshot(c: &Connection, users: Vec<(UserId, u64)>) -> Result<(u64, Vec<Loaded>)> {
    let tx = c.unchecked_transaction()?;
    let position = crate::apply::checkpoint(&tx)?;
    let mut loads = Vec::with_capacity(users.len());
    for (user, registered) in users {
        loads.push((user, registered, queries::unread_state(&tx, user)?));
    }
    Ok((position, loads))
}

/// The changed counts [`UnreadWatch::take`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnreadChanges {
    /// The user's unread messages over all rooms.
    pub total: u64,
    /// The rooms whose count changed, with the new count (0 for rooms the user left). The
    /// first take after the counts are loaded is the baseline: every room with unread
    /// messages.
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

    /// Resolves when there are changes this handle has not taken (the first time: when the
    /// counts are loaded, the baseline). Cancel-safe.
    pub async fn changed(&mut self) {
        if self.wake.changed().await.is_err() {
            // The sender lives as long as any handle of the user, this one included.
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once the user's counts are loaded (without taking anything).
    pub async fn loaded(&self) {
        let mut wake = self.wake.clone();
        while !self.cache.is_loaded(self.user) {
            if wake.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The rooms whose count changed since the last take, at the projector's applied position
    /// (nothing while the counts are being loaded).
    pub fn take(&mut self) -> UnreadChanges {
        self.wake.borrow_and_update();
        let mut state = self.cache.lock();
        let Some(watched) = state
            .users
            .get_mut(&self.user)
            .filter(|w| w.as_of.is_some())
        else {
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

impl UnreadWatch {
    /// A mark for [`Self::counts_changed_since`]; take it *before* reading the mention and
    /// thread counts (a batch ticks the clock only after it has committed).
    pub fn counts_mark(&self) -> u64 {
        self.cache.features().clock
    }

    /// Whether the mention or thread counts of any of `rooms` may have changed since `mark`
    /// (events committed after it).
    pub fn counts_changed_since(&self, mark: u64, rooms: impl IntoIterator<Item = RoomId>) -> bool {
        let features = self.cache.features();
        features.all > mark
            || rooms
                .into_iter()
                .any(|room| features.rooms.get(&room).is_some_and(|&at| at > mark))
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

/// Gathers an edit of a standing message (its mentions may change); runs inside the batch's
/// transaction.
pub(crate) fn edited(
    tx: &Transaction<'_>,
    batch: &mut Batch<'_>,
    room: RoomId,
    message: uuid::Uuid,
) -> Result<()> {
    if !batch.active() {
        return Ok(());
    }
    if let Some((seq, sender)) = queries::standing_message(tx, room, message)? {
        batch.push(Change::Edited { room, seq, sender });
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
    //! The bookkeeping of versions, handles and loads; counts against SQL are tested in
    //! `tests/it/unread_property.rs`.
    #![allow(clippy::unwrap_used)]

    use futures::FutureExt;

    use super::*;

    /// Loads `user` as the loader would, from a snapshot at `position`.
    fn load(cache: &UnreadCache, position: u64, user: UserId, rows: &[(RoomId, u64, u64)]) {
        let taken = cache.to_load(LOAD_BATCH);
        let (_, registered) = taken.iter().find(|(u, _)| *u == user).copied().unwrap();
        cache.install(position, vec![(user, registered, rows.to_vec())]);
    }

    #[test]
    fn takes_return_the_baseline_then_only_changed_rooms() {
        let cache = UnreadCache::default();
        let (me, other) = (UserId::new(), UserId::new());
        let (a, b, c) = (RoomId::new(), RoomId::new(), RoomId::new());
        let mut first = cache.watch(me);
        assert!(first.changed().now_or_never().is_none(), "not loaded yet");
        assert_eq!(first.take(), UnreadChanges::default());
        load(&cache, 0, me, &[(a, 0, 2), (b, 0, 0), (c, 5, 1)]);
        assert!(first.changed().now_or_never().is_some(), "loaded: woken");
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

        cache.committed(
            1,
            0,
            vec![
                Change::Sent {
                    room: b,
                    messages: vec![(1, other), (2, me), (3, other)],
                },
                // At the marker (read already) and one past it, in one run.
                Change::Sent {
                    room: c,
                    messages: vec![(5, other), (6, other)],
                },
            ],
        );
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
        let send = |seq| {
            vec![Change::Sent {
                room: b,
                messages: vec![(seq, other)],
            }]
        };
        cache.committed(2, 0, send(4));
        cache.committed(3, 0, send(5));
        assert!(first.changed().now_or_never().is_some());
        cache.committed(4, 0, send(6));
        assert!(first.changed().now_or_never().is_none());
        assert_eq!(
            first.take(),
            UnreadChanges {
                total: 9,
                rooms: vec![(b, 5)]
            }
        );
        // A batch at or below the position the counts are exact at is not applied twice.
        cache.committed(4, 0, send(6));
        assert_eq!(first.take().total, 9);
        cache.committed(5, 0, send(7));
        assert!(first.changed().now_or_never().is_some());
        first.take();

        // A second handle starts from the baseline; the first sees only the leave.
        let mut second = cache.watch(me);
        cache.committed(6, 0, vec![Change::Left { room: a, user: me }]);
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

    #[test]
    fn a_load_from_an_older_snapshot_catches_up_on_the_journal() {
        let cache = UnreadCache::default();
        let (me, other) = (UserId::new(), UserId::new());
        let room = RoomId::new();
        cache.committed(10, 0, Vec::new());
        let mut watch = cache.watch(me);
        let epoch = cache.lock().epoch;
        // Two batches apply while the loader reads a snapshot at 10.
        let sent = |seq| Change::Sent {
            room,
            messages: vec![(seq, other)],
        };
        cache.committed(11, epoch, vec![sent(4)]);
        cache.committed(
            12,
            epoch,
            vec![
                sent(5),
                Change::Read {
                    room,
                    user: me,
                    marker: 4,
                    count: 1,
                },
                sent(6),
                sent(7),
            ],
        );
        assert_eq!(cache.lock().journal.len(), 2);
        load(&cache, 10, me, &[(room, 1, 2)]);
        // 2 at 10, +1 at 11, +1 then read (1) then +2 at 12.
        assert_eq!(watch.take().rooms, vec![(room, 3)]);
        assert!(cache.lock().journal.is_empty(), "no load pending");
        // The next batch moves the counts once.
        cache.committed(13, epoch, vec![sent(8)]);
        assert_eq!(watch.take().rooms, vec![(room, 4)]);
    }

    #[test]
    fn a_batch_begun_before_the_watch_forces_a_newer_snapshot() {
        let cache = UnreadCache::default();
        let me = UserId::new();
        let room = RoomId::new();
        // The batch began (epoch 0) with no one watched, so it gathered nothing; the user is
        // watched, then the batch commits at 7.
        let mut watch = cache.watch(me);
        cache.committed(7, 0, Vec::new());
        // A snapshot at 6 is too old: the user goes back in the queue.
        load(&cache, 6, me, &[(room, 0, 5)]);
        assert!(watch.changed().now_or_never().is_none());
        assert_eq!(watch.take(), UnreadChanges::default());
        load(&cache, 7, me, &[(room, 0, 4)]);
        assert_eq!(watch.take().rooms, vec![(room, 4)]);
    }

    #[test]
    fn a_load_read_while_an_earlier_batch_is_uncommitted_waits_for_its_commit() {
        let cache = UnreadCache::default();
        let me = UserId::new();
        let room = RoomId::new();
        // A batch begins with no one watched: it gathers nothing. The user is watched, and
        // the loader reads a snapshot before the batch commits (at 7, with a message to them).
        let batch = Batch::new(&cache);
        let mut watch = cache.watch(me);
        load(&cache, 6, me, &[(room, 0, 5)]);
        // Not installed: the snapshot lacks the batch, and nothing would bring it.
        assert!(watch.changed().now_or_never().is_none());
        assert_eq!(watch.take(), UnreadChanges::default());
        batch.commit(7);
        // Queued again at the commit, and loaded from a snapshot that has it.
        load(&cache, 7, me, &[(room, 0, 6)]);
        assert!(watch.changed().now_or_never().is_some());
        assert_eq!(watch.take().rooms, vec![(room, 6)]);
    }

    #[test]
    fn a_load_for_an_earlier_watch_of_the_same_user_is_dropped() {
        let cache = UnreadCache::default();
        let me = UserId::new();
        let room = RoomId::new();
        let old = cache.watch(me);
        let taken = cache.to_load(LOAD_BATCH);
        drop(old);
        let mut new = cache.watch(me);
        cache.install(0, vec![(me, taken[0].1, vec![(room, 0, 9)])]);
        assert_eq!(
            new.take(),
            UnreadChanges::default(),
            "not from the old load"
        );
        load(&cache, 0, me, &[(room, 0, 1)]);
        assert_eq!(new.take().rooms, vec![(room, 1)]);
    }

    #[test]
    fn an_edit_marks_the_room_changed_for_members_who_have_it_unread() {
        let cache = UnreadCache::default();
        let (me, you) = (UserId::new(), UserId::new());
        let room = RoomId::new();
        let mut mine = cache.watch(me);
        let mut yours = cache.watch(you);
        let taken: HashMap<UserId, u64> = cache.to_load(LOAD_BATCH).into_iter().collect();
        cache.install(
            0,
            vec![
                (me, taken[&me], vec![(room, 3, 2)]),
                (you, taken[&you], vec![(room, 5, 0)]),
            ],
        );
        mine.take();
        yours.take();
        let edited = |at, seq, sender| {
            cache.committed(at, 0, vec![Change::Edited { room, seq, sender }]);
        };
        // Unread for me (marker 3 < 4): the room is reported, its count unchanged. You have
        // read it (marker 5).
        edited(1, 4, you);
        assert!(mine.changed().now_or_never().is_some());
        assert_eq!(
            mine.take(),
            UnreadChanges {
                total: 2,
                rooms: vec![(room, 2)]
            }
        );
        assert!(yours.changed().now_or_never().is_none());
        // My own message, or one I have read: nothing.
        edited(2, 4, me);
        edited(3, 3, you);
        assert!(mine.changed().now_or_never().is_none());
        assert_eq!(mine.take().rooms, vec![]);
    }

    #[test]
    fn a_deleted_room_drops_from_every_watched_member() {
        let cache = UnreadCache::default();
        let (me, you) = (UserId::new(), UserId::new());
        let (room, other) = (RoomId::new(), RoomId::new());
        let mut mine = cache.watch(me);
        let mut yours = cache.watch(you);
        // One load for both, as the loader takes every queued user at once.
        let taken: HashMap<UserId, u64> = cache.to_load(LOAD_BATCH).into_iter().collect();
        cache.install(
            0,
            vec![
                (me, taken[&me], vec![(room, 0, 2), (other, 0, 1)]),
                (you, taken[&you], vec![(room, 0, 4)]),
            ],
        );
        mine.take();
        yours.take();
        cache.committed(1, 0, vec![Change::RoomDeleted { room }]);
        assert_eq!(
            mine.take(),
            UnreadChanges {
                total: 1,
                rooms: vec![(room, 0)]
            }
        );
        assert_eq!(
            yours.take(),
            UnreadChanges {
                total: 0,
                rooms: vec![(room, 0)]
            }
        );
        assert!(!cache.lock().rooms.contains_key(&room));
    }
}
