//! Unread counts, mention counts and read counts per message are a pure function of the log.
//!
//! Random interleavings of sends (some mentioning members, `@all` or nobody), edits, deletes,
//! joins, leaves and marker moves are decided by the real room aggregate and appended to a
//! real log while the projector runs live. The projected counts must equal
//! `schema::unread::UnreadModel` folded over the same events — every message's `unread_by`
//! against a brute-force count over the members' markers — and a rebuild from scratch must
//! give the same numbers again.
//!
//! Meanwhile users are watched and unwatched at random points (racing the projector), and each
//! watch's changes are taken after every step and folded into what a client would show: at
//! every settle point that view equals the SQL count (the oracle) of every watched user.

use std::sync::Arc;
use std::time::Duration;

use eventlog::sqlite::SqliteLog;
use eventlog::{EventLog, ExpectedVersion, NewEvent};
use std::collections::BTreeMap;

use projector::{Progress, ReadModels, UnreadWatch, features, queries};
use proptest::prelude::*;
use schema::events::RoomKind;
use schema::room::{RoomAggregate, RoomCommand};
use schema::unread::UnreadModel;
use schema::{
    Aggregate, Event, MessageBody, MessageId, RoomId, RoomName, UserId, Visibility, streams,
};
use tokio_util::sync::CancellationToken;

const USERS: usize = 4;
const ROOMS: usize = 2;
/// Message bodies: no mention, members by name (user0…user3), everyone.
const BODIES: [&str; 5] = [
    "hello",
    "hi @user1",
    "@user2 and @USER3.",
    "@all look",
    "@here @user0",
];

fn username(i: usize) -> schema::Username {
    schema::Username::parse(&format!("user{i}")).unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Send {
        room: usize,
        user: usize,
        /// Which body: see [`BODIES`].
        body: usize,
    },
    /// Edit the n-th message (mod count) of the room, by its sender, to another body.
    Edit {
        room: usize,
        nth: usize,
        body: usize,
    },
    /// Delete the n-th message (mod count) of the room, by its sender.
    Delete {
        room: usize,
        nth: usize,
    },
    Join {
        room: usize,
        user: usize,
    },
    Leave {
        room: usize,
        user: usize,
    },
    /// Read up to a fraction (in 1/8ths) of the room's current seq.
    Read {
        room: usize,
        user: usize,
        eighths: u64,
    },
    /// Watch the user's unread counts (another handle if already watched).
    Watch {
        user: usize,
    },
    /// Drop the n-th (mod count) live watch.
    Unwatch {
        nth: usize,
    },
    /// Wait for the projector to reach the head and compare every watch with SQL.
    Settle,
}

fn op() -> impl Strategy<Value = Op> {
    let room = 0..ROOMS;
    let user = 0..USERS;
    prop_oneof![
        4 => (room.clone(), user.clone(), 0..BODIES.len()).prop_map(|(room, user, body)| Op::Send { room, user, body }),
        1 => (room.clone(), 0..64usize, 0..BODIES.len()).prop_map(|(room, nth, body)| Op::Edit { room, nth, body }),
        1 => (room.clone(), 0..64usize).prop_map(|(room, nth)| Op::Delete { room, nth }),
        2 => (room.clone(), user.clone()).prop_map(|(room, user)| Op::Join { room, user }),
        1 => (room.clone(), user.clone()).prop_map(|(room, user)| Op::Leave { room, user }),
        3 => (room, user.clone(), 0..=8u64).prop_map(|(room, user, eighths)| Op::Read { room, user, eighths }),
        1 => user.prop_map(|user| Op::Watch { user }),
        1 => (0..8usize).prop_map(|nth| Op::Unwatch { nth }),
        2 => Just(Op::Settle),
    ]
}

fn encode(e: &Event, id: uuid::Uuid) -> NewEvent {
    NewEvent {
        event_id: id,
        event_type: e.type_name().into(),
        schema_version: e.schema_version(),
        data: e.encode(),
        metadata: vec![],
    }
}

struct World {
    log: Arc<dyn EventLog>,
    model: UnreadModel,
    users: Vec<UserId>,
    rooms: Vec<(RoomId, RoomAggregate, u64)>,
    /// Per room: (message id, sender) in send order.
    sent: Vec<Vec<(MessageId, UserId)>>,
}

impl World {
    async fn room_command(&mut self, r: usize, command: RoomCommand) {
        let (room_id, state, version) = &mut self.rooms[r];
        let Ok(events) = state.decide(&command) else {
            return;
        };
        for event in events {
            let id = match &event {
                Event::MessageSent { message_id, .. } => message_id.0,
                _ => uuid::Uuid::now_v7(),
            };
            let result = self
                .log
                .append(
                    &streams::room(*room_id),
                    ExpectedVersion::at(*version),
                    vec![encode(&event, id)],
                )
                .await
                .unwrap();
            *version = result.last_version;
            state.evolve(&event);
            self.model.apply(Some((*room_id, *version)), &event);
            if let Event::MessageSent {
                message_id,
                sender_id,
                ..
            } = &event
            {
                self.sent[r].push((*message_id, *sender_id));
            }
        }
    }

    /// Whom an `@here` addresses: every other user (members or not; the aggregate keeps the
    /// members).
    fn online(&self) -> Vec<UserId> {
        self.users.iter().copied().step_by(2).collect()
    }

    async fn apply(&mut self, op: &Op) {
        match *op {
            Op::Send { room, user, body } => {
                let command = RoomCommand::Send {
                    sender: self.users[user],
                    message_id: MessageId::new(),
                    body: MessageBody::parse(BODIES[body]).unwrap(),
                    client_msg_id: None,
                    reply_to: None,
                    online: self.online(),
                };
                self.room_command(room, command).await;
            }
            Op::Edit { room, nth, body } => {
                if self.sent[room].is_empty() {
                    return;
                }
                let (message_id, sender) = self.sent[room][nth % self.sent[room].len()];
                let body = MessageBody::parse(BODIES[body]).unwrap();
                self.room_command(
                    room,
                    RoomCommand::Edit {
                        sender,
                        message_id,
                        body,
                        online: self.online(),
                    },
                )
                .await;
            }
            Op::Delete { room, nth } => {
                if self.sent[room].is_empty() {
                    return;
                }
                let (message_id, sender) = self.sent[room][nth % self.sent[room].len()];
                self.room_command(room, RoomCommand::Delete { sender, message_id })
                    .await;
            }
            Op::Join { room, user } => {
                let by = self.users[0];
                self.room_command(
                    room,
                    RoomCommand::Invite {
                        by,
                        users: vec![self.users[user]],
                        consent_needed: vec![],
                    },
                )
                .await;
            }
            Op::Leave { room, user } => {
                self.room_command(
                    room,
                    RoomCommand::Leave {
                        user: self.users[user],
                    },
                )
                .await;
            }
            Op::Read {
                room,
                user,
                eighths,
            } => {
                let (room_id, state, version) = &self.rooms[room];
                let user_id = self.users[user];
                // Readers who are not members are refused by the service; the log never
                // sees their reads.
                if !state.is_member(user_id) {
                    return;
                }
                let event = Event::ReadMarkerMoved {
                    room_id: *room_id,
                    user_id,
                    seq: version * eighths / 8,
                    previous_seq: None,
                };
                self.log
                    .append(
                        &streams::receipts(user_id),
                        ExpectedVersion::Any,
                        vec![encode(&event, uuid::Uuid::now_v7())],
                    )
                    .await
                    .unwrap();
                self.model.apply(None, &event);
            }
            Op::Watch { .. } | Op::Unwatch { .. } | Op::Settle => {}
        }
    }
}

/// A watch and what a client shows from its changes: the rooms with unread messages, and the
/// total.
struct Watcher {
    watch: UnreadWatch,
    rooms: BTreeMap<RoomId, u64>,
    total: u64,
}

impl Watcher {
    fn take(&mut self) {
        let changes = self.watch.take();
        self.total = changes.total;
        for (room, n) in changes.rooms {
            if n == 0 {
                self.rooms.remove(&room);
            } else {
                self.rooms.insert(room, n);
            }
        }
    }
}

/// Waits for the projector to reach the head, then holds every watcher to the SQL counts.
async fn settle(
    log: &dyn EventLog,
    progress: &Progress,
    models: &ReadModels,
    watchers: &mut [Watcher],
) {
    let head = log.head().await.unwrap();
    progress
        .wait_for(head, Duration::from_secs(30))
        .await
        .unwrap();
    for w in watchers {
        // Watching never waits; the counts are loaded (from a read snapshot) soon after.
        tokio::time::timeout(Duration::from_secs(30), w.watch.loaded())
            .await
            .expect("the counts are loaded");
        w.take();
        let user = w.watch.user();
        let sql: BTreeMap<RoomId, u64> = models
            .read(move |c| queries::unread_counts(c, user))
            .await
            .unwrap()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        assert_eq!(
            w.rooms, sql,
            "watched counts of {user} differ from SQL at {head}"
        );
        assert_eq!(
            w.total,
            sql.values().sum::<u64>(),
            "total of {user} at {head}"
        );
    }
}

async fn project(
    log: Arc<dyn EventLog>,
    path: &std::path::Path,
) -> (
    ReadModels,
    CancellationToken,
    Progress,
    tokio::task::JoinHandle<projector::Result<()>>,
) {
    let path = path.to_owned();
    let models = tokio::task::spawn_blocking(move || ReadModels::open(path, 0))
        .await
        .unwrap()
        .unwrap();
    let (tx, progress) = Progress::new();
    let stop = CancellationToken::new();
    let task = tokio::spawn(projector::run(log, models.clone(), tx, stop.clone()));
    (models, stop, progress, task)
}

async fn check(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> =
        Arc::new(SqliteLog::open(dir.path().join("events.db")).await.unwrap());
    // The projector runs live while the operations are appended.
    let (live, stop, progress, task) = project(log.clone(), &dir.path().join("live.db")).await;

    let users: Vec<UserId> = (0..USERS)
        .map(|i| UserId::for_username(&username(i)))
        .collect();
    let mut world = World {
        log: log.clone(),
        model: UnreadModel::default(),
        users: users.clone(),
        rooms: vec![],
        sent: vec![vec![]; ROOMS],
    };
    // Two users are watched from the start, so founding a room counts for them too.
    let watch = |user: UserId| Watcher {
        watch: live.watch_unread(user),
        rooms: BTreeMap::new(),
        total: 0,
    };
    let mut watchers = vec![watch(users[0]), watch(users[1])];
    for r in 0..ROOMS {
        world
            .rooms
            .push((RoomId::new(), RoomAggregate::default(), 0));
        let room_id = world.rooms[r].0;
        let create = RoomCommand::Create {
            room_id,
            kind: RoomKind::Group,
            name: Some(RoomName::parse("room").unwrap()),
            visibility: Visibility::Private,
            creator: users[0],
            members: users[1..=r + 1].to_vec(),
        };
        world.room_command(r, create).await;
    }
    for op in &ops {
        match *op {
            Op::Watch { user } => watchers.push(watch(users[user])),
            Op::Unwatch { nth } if !watchers.is_empty() => {
                watchers.remove(nth % watchers.len());
            }
            Op::Settle => settle(&*log, &progress, &live, &mut watchers).await,
            _ => world.apply(op).await,
        }
        // Changes are taken at whatever position the projector is at.
        for w in &mut watchers {
            w.take();
        }
    }
    settle(&*log, &progress, &live, &mut watchers).await;
    drop(watchers);

    let head = log.head().await.unwrap();
    progress
        .wait_for(head, Duration::from_secs(30))
        .await
        .unwrap();
    let projected = live.read(queries::all_unread_counts).await.unwrap();
    let expected = world.model.counts();
    assert_eq!(
        projected, expected,
        "live projection differs from the log's definition"
    );
    let mentions = world.model.mention_counts();
    assert_eq!(
        live.read(features::all_mention_counts).await.unwrap(),
        mentions,
        "mention counts differ from the log's definition"
    );
    // Per-user queries agree with the audit queries.
    for u in &users {
        let user = *u;
        for (room, n) in live
            .read(move |c| queries::unread_counts(c, user))
            .await
            .unwrap()
        {
            assert_eq!(expected.get(&(user, room)), Some(&n));
        }
        for (room, n) in live.read(move |c| features::counts(c, user)).await.unwrap() {
            assert_eq!(expected.get(&(user, room)), Some(&n.unread));
            assert_eq!(mentions.get(&(user, room)), Some(&n.mentions));
        }
    }
    // Every message's read count against the brute-force count over the markers.
    for (r, sent) in world.sent.iter().enumerate() {
        let room = world.rooms[r].0;
        for (message_id, _) in sent {
            let (id, viewer) = (*message_id, users[0]);
            let state = live
                .read(move |c| features::message_state(c, room, id, viewer))
                .await
                .unwrap()
                .expect("every sent message is projected");
            assert_eq!(
                Some(state.unread_by),
                world.model.unread_by(room, state.seq),
                "unread_by of seq {} in room {r}",
                state.seq
            );
        }
        assert_eq!(sent.len(), world.model.message_seqs(room).len());
    }
    stop.cancel();
    task.await.unwrap().unwrap();

    let (rebuilt, stop, progress, task) =
        project(log.clone(), &dir.path().join("rebuilt.db")).await;
    progress
        .wait_for(head, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        rebuilt.read(queries::all_unread_counts).await.unwrap(),
        expected,
        "rebuild differs"
    );
    stop.cancel();
    task.await.unwrap().unwrap();
    log.close().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn projected_unread_counts_equal_the_fold_over_the_log(ops in proptest::collection::vec(op(), 1..80)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(check(ops));
    }
}

/// Watches taken while the projector works through a backlog are loaded from read snapshots
/// the projector has already passed, and catch up from its journal to exactly its position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_taken_during_a_catch_up_follow_it_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> =
        Arc::new(SqliteLog::open(dir.path().join("events.db")).await.unwrap());
    const MEMBERS: usize = 16;
    let users: Vec<UserId> = (0..MEMBERS).map(|_| UserId::new()).collect();
    let room = RoomId::new();
    let state = RoomAggregate::default();
    let mut events = state
        .decide(&RoomCommand::Create {
            room_id: room,
            kind: RoomKind::Group,
            name: Some(RoomName::parse("room").unwrap()),
            visibility: Visibility::Private,
            creator: users[0],
            members: users[1..].to_vec(),
        })
        .unwrap();
    for i in 0..6_000 {
        events.push(Event::MessageSent {
            message_id: MessageId::new(),
            sender_id: users[i % 3],
            body: MessageBody::parse("hello").unwrap(),
            client_msg_id: None,
            reply_to: None,
            mentions: vec![],
        });
    }
    let mut version = 0;
    for (i, chunk) in events.chunks(20).enumerate() {
        let new = chunk
            .iter()
            .map(|e| {
                let id = match e {
                    Event::MessageSent { message_id, .. } => message_id.0,
                    _ => uuid::Uuid::now_v7(),
                };
                encode(e, id)
            })
            .collect();
        version = log
            .append(&streams::room(room), ExpectedVersion::at(version), new)
            .await
            .unwrap()
            .last_version;
        // Members take turns reading nearly to the end: counts are small and often moved.
        let reader = users[i % MEMBERS];
        let read = Event::ReadMarkerMoved {
            room_id: room,
            user_id: reader,
            seq: version - 3,
            previous_seq: None,
        };
        log.append(
            &streams::receipts(reader),
            ExpectedVersion::Any,
            vec![encode(&read, uuid::Uuid::now_v7())],
        )
        .await
        .unwrap();
    }
    let head = log.head().await.unwrap();
    let (live, stop, progress, task) = project(log.clone(), &dir.path().join("rm.db")).await;
    let mut watchers = Vec::new();
    let mut round = 0;
    while progress.position() < head {
        let watch = live.watch_unread(users[round % MEMBERS]);
        watchers.push(Watcher {
            watch,
            rooms: BTreeMap::new(),
            total: 0,
        });
        // Unwatch some again, so later watches load afresh.
        if round % 3 == 2 {
            watchers.remove(0);
        }
        for w in &mut watchers {
            w.take();
        }
        round += 1;
    }
    assert!(round > 1, "the catch-up was over before a second watch");
    settle(&*log, &progress, &live, &mut watchers).await;
    drop(watchers);
    stop.cancel();
    task.await.unwrap().unwrap();
    log.close().await;
}

/// Counts rows of the message features' tables (every room).
async fn feature_rows(models: &ReadModels) -> [i64; 4] {
    models
        .read(|c| {
            let n = |t: &str| -> projector::Result<i64> {
                Ok(c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))?)
            };
            Ok([
                n("reactions")?,
                n("pins")?,
                n("mentions")?,
                n("thread_participants")?,
            ])
        })
        .await
        .unwrap()
}

/// A deleted room leaves nothing of its reactions, pins, mentions or threads behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_room_leaves_no_feature_rows() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> =
        Arc::new(SqliteLog::open(dir.path().join("events.db")).await.unwrap());
    let (alice, bob) = (UserId::new(), UserId::new());
    let room = RoomId::new();
    let (root, reply) = (MessageId::new(), MessageId::new());
    let events = [
        Event::RoomCreated {
            room_id: room,
            kind: RoomKind::Group,
            name: Some(RoomName::parse("room").unwrap()),
            visibility: Visibility::Private,
            created_by: alice,
            members: vec![alice, bob],
        },
        Event::MessageSent {
            message_id: root,
            sender_id: alice,
            body: MessageBody::parse("root").unwrap(),
            client_msg_id: None,
            reply_to: None,
            mentions: vec![],
        },
        Event::MessageSent {
            message_id: reply,
            sender_id: bob,
            body: MessageBody::parse("@alice re").unwrap(),
            client_msg_id: None,
            reply_to: Some(root),
            mentions: vec![schema::mentions::Mention::User { user_id: alice }],
        },
        Event::ReactionAdded {
            message_id: root,
            user_id: bob,
            emoji: schema::Emoji::parse("👍").unwrap(),
            count: 1,
        },
        Event::MessagePinned {
            message_id: root,
            pinned_by: bob,
        },
    ];
    let new = events
        .iter()
        .map(|e| {
            let id = match e {
                Event::MessageSent { message_id, .. } => message_id.0,
                _ => uuid::Uuid::now_v7(),
            };
            encode(e, id)
        })
        .collect();
    let version = log
        .append(&streams::room(room), ExpectedVersion::at(0), new)
        .await
        .unwrap()
        .last_version;
    let (models, stop, progress, task) = project(log.clone(), &dir.path().join("rm.db")).await;
    let wait = |progress: &Progress| {
        let log = log.clone();
        let progress = progress.clone();
        async move {
            let head = log.head().await.unwrap();
            progress
                .wait_for(head, Duration::from_secs(30))
                .await
                .unwrap();
        }
    };
    wait(&progress).await;
    assert!(
        feature_rows(&models).await.iter().all(|n| *n > 0),
        "the room has every kind of row before"
    );
    let deleted = Event::RoomDeleted { by: alice };
    log.append(
        &streams::room(room),
        ExpectedVersion::at(version),
        vec![encode(&deleted, uuid::Uuid::now_v7())],
    )
    .await
    .unwrap();
    wait(&progress).await;
    assert_eq!(feature_rows(&models).await, [0; 4]);
    stop.cancel();
    task.await.unwrap().unwrap();
    log.close().await;
}
