//! Unread counts, mention counts and read counts per message are a pure function of the log.
//!
//! Random interleavings of sends (some mentioning members, `@all` or nobody), edits, deletes,
//! joins, leaves and marker moves are decided by the real room aggregate and appended to a
//! real log while the projector runs live. The projected counts must equal
//! `schema::unread::UnreadModel` folded over the same events — every message's `unread_by`
//! against a brute-force count over the members' markers — and a rebuild from scratch must
//! give the same numbers again.

use std::sync::Arc;
use std::time::Duration;

use eventlog::sqlite::SqliteLog;
use eventlog::{EventLog, ExpectedVersion, NewEvent};
use projector::{Progress, ReadModels, features, queries};
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
        3 => (room, user, 0..=8u64).prop_map(|(room, user, eighths)| Op::Read { room, user, eighths }),
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

    async fn apply(&mut self, op: &Op) {
        match *op {
            Op::Send { room, user, body } => {
                let command = RoomCommand::Send {
                    sender: self.users[user],
                    message_id: MessageId::new(),
                    body: MessageBody::parse(BODIES[body]).unwrap(),
                    client_msg_id: None,
                    reply_to: None,
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
        }
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
    let models = tokio::task::spawn_blocking(move || ReadModels::open(path))
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
        world.apply(op).await;
    }

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
