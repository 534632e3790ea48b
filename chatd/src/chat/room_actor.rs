//! Room actors: one task per active room owns its aggregate and decides its commands in
//! batches, so a hot room costs one durable append per batch, not one per message.
//!
//! A command for a room goes to the room's mailbox (bounded: a caller waits when it is full).
//! The actor takes everything waiting, decides it against the aggregate it holds, appends the
//! accepted commands' events with **one** [`EventLog::append_batch`] at one expected version,
//! and answers each caller once that batch is durable. A rejected command is answered at once
//! and is not part of the batch; each command's events are their own group, so the log's
//! idempotency (a retried send) works command by command. When another node appended to the
//! room meanwhile, the batch conflicts, and the actor catches up and decides it again. So the
//! actor does not read the log before each batch (on JetStream that is a round trip): only a
//! refusal or a no-op, which no append would check, is confirmed on a state read afresh.
//!
//! What goes into one batch are commands decided against the same state, whose decisions do
//! not depend on one another: consecutive sends (of distinct message ids) — sending never
//! changes whether another send is allowed. Any other command (create, join, invite, leave,
//! edit, delete) is a batch of its own, so its decision sees every earlier event, exactly as
//! when commands took turns. The order of a room's commands on this node is the mailbox's.
//!
//! An actor that has been idle for [`IDLE`] stops and forgets its aggregate; so does one
//! whose room does not exist (requests naming made-up rooms must not grow the map). The number
//! of actors is bounded too (`CHAT_ROOM_CACHE`): starting one more than that retires the least
//! recently used, which stops as soon as the commands already given to it are done. An
//! actor's state is only a cache of the log, so nothing is lost: the next command starts a new
//! actor, which loads the room again. Actors also stop when the [`RoomActors`] is dropped
//! (their mailboxes close).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use eventlog::{AppendResult, ErrorKind, EventLog, ExpectedVersion};
use projector::{ReadModels, queries};
use schema::events::{Event, RoomKind};
use schema::room::{RoomAggregate, RoomCommand};
use schema::{Aggregate, DomainError, RoomId, UserId, streams};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::commands::{Executed, Loaded, catch_up, to_new_with};
use super::error::{ChatError, Result};

/// Commands a room's mailbox holds before senders wait.
const MAILBOX: usize = 1_024;
/// Most commands decided and appended as one batch (JetStream's atomic batches take up to
/// 1,000 messages; a send is one).
const MAX_BATCH: usize = 256;
/// How long an actor with nothing to do keeps its room loaded.
const IDLE: Duration = Duration::from_secs(30);
/// Attempts at a batch whose stream keeps moving under it (other nodes appending).
const MAX_ATTEMPTS: usize = 10;

/// One command waiting for its room's actor.
struct Job {
    command: RoomCommand,
    /// Refuse with `blocked` if this is a direct room whose other member is in a block with
    /// this sender.
    dm_sender: Option<UserId>,
    /// The caller's trace, for the events' metadata ...
    traceparent: Option<String>,
    /// ... and its span, to parent the append.
    span: tracing::Span,
    reply: oneshot::Sender<Result<Executed>>,
}

/// The mailboxes of the actors commands go to, by room, least recently used first.
#[derive(Debug)]
struct Running {
    /// Each actor's mailbox, with the number telling actors of one room apart and when it
    /// was last given a command.
    rooms: HashMap<RoomId, Slot>,
    /// The rooms by when they were last used.
    by_use: BTreeMap<u64, RoomId>,
    /// The most entries; one more retires the least recently used.
    capacity: usize,
    clock: u64,
}

#[derive(Debug)]
struct Slot {
    id: u64,
    used: u64,
    tx: mpsc::Sender<Job>,
}

impl Running {
    /// `room`'s mailbox, now its most recently used.
    fn touch(&mut self, room: RoomId) -> Option<mpsc::Sender<Job>> {
        self.clock += 1;
        let slot = self.rooms.get_mut(&room)?;
        self.by_use.remove(&slot.used);
        slot.used = self.clock;
        self.by_use.insert(self.clock, room);
        Some(slot.tx.clone())
    }

    /// Adds a new actor's mailbox, first dropping the least recently used ones beyond the
    /// capacity (their actors stop once the commands they have are done).
    fn insert(&mut self, room: RoomId, id: u64, tx: mpsc::Sender<Job>) {
        while self.rooms.len() >= self.capacity {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            self.rooms.remove(&oldest);
        }
        self.clock += 1;
        self.by_use.insert(self.clock, room);
        let used = self.clock;
        self.rooms.insert(room, Slot { id, used, tx });
    }

    /// Removes `room`'s entry if `is_it` says it is the one meant.
    fn remove_if(&mut self, room: RoomId, is_it: impl FnOnce(&Slot) -> bool) {
        if self.rooms.get(&room).is_some_and(is_it)
            && let Some(slot) = self.rooms.remove(&room)
        {
            self.by_use.remove(&slot.used);
        }
    }
}

type Mailboxes = Arc<Mutex<Running>>;

/// The running room actors, by room. One per node, owned by [`super::Chat`].
#[derive(Debug)]
pub(super) struct RoomActors {
    log: Arc<dyn EventLog>,
    /// For the block check of direct messages.
    models: ReadModels,
    actors: Mailboxes,
    next_id: AtomicU64,
    /// Actor tasks alive, including retired ones finishing their last commands.
    alive: Arc<AtomicUsize>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is one map operation: a panic cannot leave it half-done.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RoomActors {
    /// `capacity`: the most actors (rooms held in memory) at once.
    pub(super) fn new(log: Arc<dyn EventLog>, models: ReadModels, capacity: usize) -> Self {
        let running = Running {
            rooms: HashMap::new(),
            by_use: BTreeMap::new(),
            capacity: capacity.max(1),
            clock: 0,
        };
        Self {
            log,
            models,
            actors: Arc::new(Mutex::new(running)),
            next_id: AtomicU64::new(0),
            alive: Arc::default(),
        }
    }

    /// Actor tasks alive (rooms held in memory).
    #[cfg(test)]
    fn alive(&self) -> usize {
        self.alive.load(Ordering::Relaxed)
    }

    /// Runs `command` on `room` and answers once its events are durable (or it was refused).
    pub(super) async fn execute(
        &self,
        room: RoomId,
        command: RoomCommand,
        dm_sender: Option<UserId>,
    ) -> Result<Executed> {
        let (reply, answer) = oneshot::channel();
        let mut job = Job {
            command,
            dm_sender,
            traceparent: tracecontext::scoped(),
            span: tracing::Span::current(),
            reply,
        };
        loop {
            let mailbox = self.mailbox(room);
            match mailbox.send(job).await {
                Ok(()) => break,
                // That actor stopped (idle, or it panicked) after we took its mailbox: start
                // another.
                Err(mpsc::error::SendError(back)) => {
                    job = back;
                    lock(&self.actors).remove_if(room, |s| s.tx.same_channel(&mailbox));
                }
            }
        }
        answer
            .await
            .map_err(|_| ChatError::Internal("the room's actor stopped".into()))?
    }

    /// The mailbox of `room`'s actor, starting one if none runs.
    fn mailbox(&self, room: RoomId) -> mpsc::Sender<Job> {
        let mut actors = lock(&self.actors);
        if let Some(tx) = actors.touch(room) {
            return tx;
        }
        let (tx, rx) = mpsc::channel(MAILBOX);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        actors.insert(room, id, tx.clone());
        let actor = Actor {
            room,
            stream: streams::room(room),
            log: self.log.clone(),
            models: self.models.clone(),
            actors: self.actors.clone(),
            id,
            loaded: None,
            _alive: Alive::new(self.alive.clone()),
        };
        tokio::spawn(actor.run(rx));
        tx
    }

    /// Rooms with a running actor (for tests of eviction).
    #[cfg(test)]
    fn running(&self) -> usize {
        lock(&self.actors).rooms.len()
    }
}

/// Counts an actor task while it lives.
struct Alive(Arc<AtomicUsize>);

impl Alive {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Actor {
    room: RoomId,
    stream: String,
    log: Arc<dyn EventLog>,
    models: ReadModels,
    actors: Mailboxes,
    id: u64,
    /// The room as of its last event this actor knows; `None` until loaded, and after an
    /// append whose outcome is unknown (then it is loaded again).
    loaded: Option<Loaded<RoomAggregate>>,
    _alive: Alive,
}

impl Actor {
    async fn run(mut self, mut mailbox: mpsc::Receiver<Job>) {
        let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
        loop {
            if jobs.is_empty() {
                let received = tokio::select! {
                    n = mailbox.recv_many(&mut jobs, MAX_BATCH) => n,
                    () = tokio::time::sleep(IDLE) => 0,
                };
                if received == 0 && self.retire(&mut mailbox, &mut jobs) {
                    break;
                }
            } else {
                // Take what arrived meanwhile, up to a batch.
                while jobs.len() < MAX_BATCH {
                    match mailbox.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
            }
            let batch = take_batch(&mut jobs);
            if !batch.is_empty() {
                self.decide_and_append(batch).await;
            }
            let exists = self
                .loaded
                .as_ref()
                .is_none_or(|l| l.state.created.is_some());
            if !exists && jobs.is_empty() && mailbox.is_empty() {
                // Do not keep actors for rooms that do not exist (made-up ids).
                if self.retire(&mut mailbox, &mut jobs) {
                    break;
                }
            }
        }
    }

    /// Leaves the map (if still this room's actor there) and closes the mailbox. Returns
    /// false when jobs are left to do first: ones that arrived before the mailbox closed.
    fn retire(&self, mailbox: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>) -> bool {
        lock(&self.actors).remove_if(self.room, |s| s.id == self.id);
        // Senders holding the mailbox from before now fail and start a new actor; what they
        // put in before the close is still ours.
        mailbox.close();
        while let Ok(job) = mailbox.try_recv() {
            jobs.push(job);
        }
        jobs.is_empty()
    }

    /// Decides `batch` (commands that can be decided against one state) and appends the
    /// accepted ones as one batch, answering every caller.
    async fn decide_and_append(&mut self, batch: Vec<Job>) {
        // The append joins the first caller's trace.
        let span = batch[0].span.clone();
        self.decide_and_append_in(batch).instrument(span).await;
    }

    ///
    /// The state held is trusted for what is appended (the append is conditional on its
    /// version: if the room moved, it conflicts and the batch is decided again after catching
    /// up) but not for answers without an append: a refusal or a no-op decided on a state not
    /// read from the log for this batch is decided again on a fresh one (another node may
    /// have changed the room). So a room only read by this node costs no read per batch.
    async fn decide_and_append_in(&mut self, mut batch: Vec<Job>) {
        // Whether the state was read from the log for this batch; whether it must be.
        let (mut fresh, mut reload) = (false, false);
        for _ in 0..MAX_ATTEMPTS {
            if self.loaded.is_none() || reload {
                if let Err(e) = self.load().await {
                    return answer_all(batch, &e);
                }
                fresh = true;
            }
            let Some(current) = &self.loaded else {
                return answer_all(batch, &ChatError::Internal("room not loaded".into()));
            };
            // Decide every command against the same state; answer refusals and no-ops now
            // (if the state is fresh: else decide everything again on a fresh one).
            let mut decided: Vec<(Job, Result<Vec<Event>>)> = Vec::with_capacity(batch.len());
            for job in batch {
                let peer = job.dm_sender.and_then(|sender| {
                    Some((sender, dm_peer(&current.state, &job.command, sender)?))
                });
                if let Some((sender, peer)) = peer {
                    let blocked = self
                        .models
                        .read(move |c| queries::blocked_either(c, sender, peer))
                        .await;
                    match blocked {
                        Ok(false) => {}
                        Ok(true) => {
                            let _ = job.reply.send(Err(DomainError::Blocked.into()));
                            continue;
                        }
                        Err(e) => {
                            let _ = job.reply.send(Err(e.into()));
                            continue;
                        }
                    }
                }
                let decision = current.state.decide(&job.command).map_err(ChatError::from);
                decided.push((job, decision));
            }
            let appends = |d: &Result<Vec<Event>>| d.as_ref().is_ok_and(|e| !e.is_empty());
            if !fresh && !decided.iter().all(|(_, d)| appends(d)) {
                (batch, reload) = (decided.into_iter().map(|(job, _)| job).collect(), true);
                continue;
            }
            let mut accepted: Vec<(Job, Vec<Event>)> = Vec::with_capacity(decided.len());
            for (job, decision) in decided {
                match decision {
                    Err(e) => {
                        let _ = job.reply.send(Err(e));
                    }
                    Ok(events) if events.is_empty() => {
                        // Nothing to write, but the state decided on must be visible to reads.
                        let _ = job.reply.send(Ok(Executed {
                            events,
                            append: None,
                            position: current.position,
                        }));
                    }
                    Ok(events) => accepted.push((job, events)),
                }
            }
            if accepted.is_empty() {
                return;
            }
            let groups = accepted
                .iter()
                .map(|(job, events)| to_new_with(events, job.traceparent.as_deref()))
                .collect();
            let expected = ExpectedVersion::at(current.version);
            match self.log.append_batch(&self.stream, expected, groups).await {
                Ok(answers) => {
                    // A log may write a batch's groups one after the other (JetStream R1):
                    // groups refused because the room moved in between are decided again.
                    let conflicted = |a: &eventlog::Result<AppendResult>| matches!(a, Err(e) if e.kind() == ErrorKind::VersionConflict);
                    let (mut done, mut again) = (Vec::new(), Vec::new());
                    for (job, answer) in accepted.into_iter().zip(answers) {
                        if conflicted(&answer) {
                            again.push(job.0);
                        } else {
                            done.push((job, answer));
                        }
                    }
                    let (jobs, answers) = done.into_iter().unzip();
                    self.settle(jobs, answers).await;
                    if again.is_empty() {
                        return;
                    }
                    tracing::debug!(stream = %self.stream, "version conflict within a batch; reloading");
                    (batch, reload) = (again, true);
                }
                Err(e) if e.kind() == ErrorKind::VersionConflict => {
                    tracing::debug!(stream = %self.stream, "version conflict; reloading");
                    batch = accepted.into_iter().map(|(job, _)| job).collect();
                    reload = true;
                }
                Err(e) => {
                    // The outcome is unknown: load the room again before the next command.
                    self.loaded = None;
                    let jobs = accepted.into_iter().map(|(job, _)| job);
                    return answer_all(jobs, &ChatError::Log(e));
                }
            }
        }
        answer_all(batch, &ChatError::Contention(self.stream.clone()));
    }

    /// Folds what the batch wrote into the state and answers each caller.
    async fn settle(
        &mut self,
        accepted: Vec<(Job, Vec<Event>)>,
        answers: Vec<eventlog::Result<AppendResult>>,
    ) {
        let mut duplicates = false;
        if let Some(current) = &mut self.loaded {
            for ((_, events), answer) in accepted.iter().zip(&answers) {
                match answer {
                    Ok(a) if !a.duplicate => {
                        for e in events {
                            current.state.evolve(e);
                        }
                        current.version = a.last_version;
                        current.position = a.last_position;
                    }
                    Ok(_) => duplicates = true,
                    Err(_) => {}
                }
            }
        }
        if duplicates {
            // A retry of something stored, perhaps by another node after what we hold (when
            // nothing new was written, the version was not checked): catch up.
            if let Err(e) = self.load().await {
                tracing::warn!(stream = %self.stream, error = %e, "catching up after a retried command");
                self.loaded = None;
            }
        }
        for ((job, events), answer) in accepted.into_iter().zip(answers) {
            let result = answer.map_err(ChatError::from).map(|append| Executed {
                events,
                append: Some(append),
                position: append.last_position,
            });
            let _ = job.reply.send(result);
        }
    }

    /// Brings the aggregate up to the stream's current version.
    async fn load(&mut self) -> Result<()> {
        let result = catch_up(self.log.as_ref(), &self.stream, &mut self.loaded).await;
        if result.is_err() {
            self.loaded = None;
        }
        result
    }
}

/// The other member of a direct room `sender` is sending to, whose blocks the send must
/// respect; `None` for group rooms and for a retry of a stored send (which gets its original
/// answer, as in the aggregate).
fn dm_peer(state: &RoomAggregate, command: &RoomCommand, sender: UserId) -> Option<UserId> {
    if let RoomCommand::Send { message_id, .. } = command
        && state
            .messages
            .get(message_id)
            .is_some_and(|m| m.sender_id == sender)
    {
        return None;
    }
    if state.created?.kind != RoomKind::Direct {
        return None;
    }
    state.members.iter().copied().find(|m| *m != sender)
}

/// Takes the longest prefix of `jobs` that can be decided against one state: a run of sends
/// of distinct messages, or one other command.
fn take_batch(jobs: &mut Vec<Job>) -> Vec<Job> {
    let mut ids = HashSet::new();
    let mut n = 0;
    for job in jobs.iter() {
        match &job.command {
            RoomCommand::Send { message_id, .. } if ids.insert(*message_id) => n += 1,
            _ => {
                if n == 0 {
                    n = 1;
                }
                break;
            }
        }
    }
    let rest = jobs.split_off(n.min(jobs.len()));
    std::mem::replace(jobs, rest)
}

/// Answers every job with `error` (the ways a batch as a whole fails).
fn answer_all(jobs: impl IntoIterator<Item = Job>, error: &ChatError) {
    for job in jobs {
        let copy = match error {
            ChatError::Log(e) => ChatError::Log(e.clone()),
            ChatError::Contention(s) => ChatError::Contention(s.clone()),
            other => ChatError::Internal(other.to_string()),
        };
        let _ = job.reply.send(Err(copy));
    }
}

#[cfg(test)]
mod tests {
    //! The actor against a real SQLite log, with the log's writer paused to line commands up
    //! in one mailbox.

    use std::time::Instant;

    use eventlog::sqlite::SqliteLog;
    use schema::events::RoomKind;
    use schema::{DomainError, MessageBody, MessageId, RoomName, UserId, Visibility};

    use super::*;

    struct World {
        _dir: tempfile::TempDir,
        log: SqliteLog,
        actors: Arc<RoomActors>,
        room: RoomId,
        alice: UserId,
        bob: UserId,
    }

    async fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteLog::open(dir.path().join("events.db")).await.unwrap();
        let models = ReadModels::open(dir.path().join("readmodels.db"), 0).unwrap();
        let actors = Arc::new(RoomActors::new(Arc::new(log.clone()), models, 10_000));
        let (room, alice, bob) = (RoomId::new(), UserId::new(), UserId::new());
        let create = RoomCommand::Create {
            room_id: room,
            kind: RoomKind::Group,
            name: Some(RoomName::parse("hot").unwrap()),
            visibility: Visibility::Private,
            creator: alice,
            members: vec![bob],
        };
        actors.execute(room, create, None).await.unwrap();
        World {
            _dir: dir,
            log,
            actors,
            room,
            alice,
            bob,
        }
    }

    fn send(sender: UserId, message_id: MessageId) -> RoomCommand {
        RoomCommand::Send {
            sender,
            message_id,
            body: MessageBody::parse("hi").unwrap(),
            client_msg_id: None,
            reply_to: None,
            online: vec![],
        }
    }

    async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn queued(actors: &RoomActors, room: RoomId) -> usize {
        lock(&actors.actors)
            .rooms
            .get(&room)
            .map_or(0, |s| s.tx.max_capacity() - s.tx.capacity())
    }

    /// Commands waiting while an append is in flight go out as one batch, in mailbox order,
    /// each answered as it would have been alone: a refused one is refused without holding
    /// up the others, a repeated message id is the same message.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_commands_are_appended_as_one_batch() {
        let w = world().await;
        let pause = w.log.pause_writer().await.unwrap();
        let before = w.log.stats();
        let first = tokio::spawn({
            let actors = w.actors.clone();
            let (room, alice) = (w.room, w.alice);
            async move {
                actors
                    .execute(room, send(alice, MessageId::new()), None)
                    .await
            }
        });
        // The actor took the first send and waits for the (paused) writer.
        eventually("the first append to be queued", || w.log.queued() == 1).await;
        let stranger = UserId::new();
        let repeated = MessageId::new();
        let commands = [
            send(w.alice, MessageId::new()),
            send(stranger, MessageId::new()),
            send(w.bob, repeated),
            send(w.alice, MessageId::new()),
            send(w.bob, repeated),
            send(w.bob, MessageId::new()),
        ];
        let mut waiting = Vec::new();
        for (i, command) in commands.into_iter().enumerate() {
            let actors = w.actors.clone();
            let room = w.room;
            waiting.push(tokio::spawn(async move {
                actors.execute(room, command, None).await
            }));
            eventually("the mailbox to fill", || queued(&w.actors, w.room) == i + 1).await;
        }
        drop(pause);
        let first = first.await.unwrap().unwrap();
        assert_eq!(first.append.unwrap().first_version, 2);
        let mut answers = Vec::new();
        for task in waiting {
            answers.push(task.await.unwrap());
        }
        let seq = |i: usize| -> (u64, bool) {
            let a = answers[i].as_ref().unwrap().append.unwrap();
            (a.first_version, a.duplicate)
        };
        assert_eq!(seq(0), (3, false));
        assert!(matches!(
            answers[1],
            Err(ChatError::Domain(DomainError::NotAMember))
        ));
        assert_eq!(seq(2), (4, false));
        assert_eq!(seq(3), (5, false));
        // The repeat could not join the batch its original was in: it went next, and the log
        // answered it with the original.
        assert_eq!(seq(4), (4, true));
        assert_eq!(seq(5), (6, false));
        let after = w.log.stats();
        assert_eq!(after.events - before.events, 5, "{after:?}");
        // The first send, the batch of four, and the repeat with the send behind it.
        assert_eq!(after.requests - before.requests, 3, "{after:?}");
        assert_eq!(
            w.log
                .read_stream(&streams::room(w.room), 1, 100)
                .await
                .unwrap()
                .len(),
            6
        );
    }

    /// Another writer (another node) appending to the room makes the actor's next batch
    /// conflict: it catches up and decides again, so the send lands after that event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_conflict_reloads_and_decides_again() {
        let w = world().await;
        let stream = streams::room(w.room);
        let elsewhere = Event::MemberLeft { user_id: w.bob };
        w.log
            .append(
                &stream,
                ExpectedVersion::Exact(1),
                to_new_with(&[elsewhere], None),
            )
            .await
            .unwrap();
        // Bob left on "another node": his send is refused now, Alice's lands at 3.
        let refused = w
            .actors
            .execute(w.room, send(w.bob, MessageId::new()), None)
            .await;
        assert!(
            matches!(refused, Err(ChatError::Domain(DomainError::NotAMember))),
            "{refused:?}"
        );
        let sent = w
            .actors
            .execute(w.room, send(w.alice, MessageId::new()), None)
            .await
            .unwrap();
        assert_eq!(sent.append.unwrap().first_version, 3);
    }

    /// A refusal is never decided on the state the actor holds from before: "another node"
    /// adds Carol, and her send, which that state would refuse, is decided on a fresh one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refusal_is_decided_on_a_fresh_state() {
        let w = world().await;
        let carol = UserId::new();
        let joined = Event::MemberJoined {
            user_id: carol,
            invited_by: None,
        };
        w.log
            .append(
                &streams::room(w.room),
                ExpectedVersion::Exact(1),
                to_new_with(&[joined], None),
            )
            .await
            .unwrap();
        let sent = w
            .actors
            .execute(w.room, send(carol, MessageId::new()), None)
            .await
            .unwrap();
        assert_eq!(sent.append.unwrap().first_version, 3);
    }

    /// Actors of rooms that do not exist stop at once; others stay while busy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn actors_of_unknown_rooms_do_not_stay() {
        let w = world().await;
        assert_eq!(w.actors.running(), 1);
        let nowhere = RoomId::new();
        let refused = w
            .actors
            .execute(nowhere, send(w.alice, MessageId::new()), None)
            .await;
        assert!(matches!(
            refused,
            Err(ChatError::Domain(DomainError::NotFound("room")))
        ));
        eventually("the unknown room's actor to stop", || {
            w.actors.running() == 1
        })
        .await;
        assert!(lock(&w.actors.actors).rooms.contains_key(&w.room));
    }

    /// No more actors than the capacity: a new room retires the least recently used one,
    /// whose task then ends; its room loads again on its next command, losing nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_least_recently_used_room_is_retired_beyond_the_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let log = SqliteLog::open(dir.path().join("events.db")).await.unwrap();
        let models = ReadModels::open(dir.path().join("readmodels.db"), 0).unwrap();
        let actors = RoomActors::new(Arc::new(log.clone()), models, 2);
        let alice = UserId::new();
        let rooms = [RoomId::new(), RoomId::new(), RoomId::new()];
        for room in rooms {
            let create = RoomCommand::Create {
                room_id: room,
                kind: RoomKind::Group,
                name: Some(RoomName::parse("lru").unwrap()),
                visibility: Visibility::Private,
                creator: alice,
                members: vec![],
            };
            actors.execute(room, create, None).await.unwrap();
        }
        let held = |actors: &RoomActors| {
            let running = lock(&actors.actors);
            let mut held: Vec<RoomId> = running.rooms.keys().copied().collect();
            held.sort_by_key(|r| running.rooms[r].used);
            held
        };
        assert_eq!(held(&actors), rooms[1..], "the first room was retired");
        eventually("the retired actor to stop", || actors.alive() == 2).await;

        // Using room 1 makes room 2 the least recently used: room 0 coming back retires it.
        actors
            .execute(rooms[1], send(alice, MessageId::new()), None)
            .await
            .unwrap();
        let sent = actors
            .execute(rooms[0], send(alice, MessageId::new()), None)
            .await
            .unwrap();
        assert_eq!(sent.append.unwrap().first_version, 2, "room 0 loaded again");
        assert_eq!(held(&actors), [rooms[1], rooms[0]]);
        eventually("the retired actor to stop", || actors.alive() == 2).await;
    }
}
