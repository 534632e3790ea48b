#![allow(clippy::unwrap_used)] // a benchmark reports failure by panicking
//! Unread-count costs at scale (run: `cargo bench -p projector --bench unread`).
//!
//! 1. Projecting sends into a 10,000-member room vs a 10-member room: the cost per send must
//!    not grow with the member count (no per-member writes).
//! 2. `unread_counts` for a user in 500 rooms: one indexed query.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventlog::sqlite::SqliteLog;
use eventlog::{EventLog, ExpectedVersion, NewEvent};
use projector::{Progress, ReadModels, queries};
use schema::events::RoomKind;
use schema::{Event, MessageBody, MessageId, RoomId, RoomName, UserId, Visibility, streams};
use tokio_util::sync::CancellationToken;

fn encode(e: &Event) -> NewEvent {
    let id = match e {
        Event::MessageSent { message_id, .. } => message_id.0,
        _ => uuid::Uuid::now_v7(),
    };
    NewEvent {
        event_id: id,
        event_type: e.type_name().into(),
        schema_version: 1,
        data: e.encode(),
        metadata: vec![],
    }
}

fn created(room: RoomId, members: Vec<UserId>) -> Event {
    Event::RoomCreated {
        room_id: room,
        kind: RoomKind::Group,
        name: Some(RoomName::parse("bench").unwrap()),
        visibility: Visibility::Private,
        created_by: members[0],
        members,
    }
}

fn sent(sender: UserId) -> Event {
    Event::MessageSent {
        message_id: MessageId::new(),
        sender_id: sender,
        body: MessageBody::parse("a message of ordinary length, about sixty characters long")
            .unwrap(),
        client_msg_id: None,
        reply_to: None,
        mentions: vec![],
    }
}

struct Projection {
    models: ReadModels,
    progress: Progress,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<projector::Result<()>>,
}

async fn start(log: Arc<dyn EventLog>, path: std::path::PathBuf) -> Projection {
    let models = tokio::task::spawn_blocking(move || ReadModels::open(path))
        .await
        .unwrap()
        .unwrap();
    let (tx, progress) = Progress::new();
    let stop = CancellationToken::new();
    let task = tokio::spawn(projector::run(log, models.clone(), tx, stop.clone()));
    Projection {
        models,
        progress,
        stop,
        task,
    }
}

impl Projection {
    async fn finish(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Seconds to project `sends` messages into a room of `members` members.
async fn project_sends(members: usize, sends: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> =
        Arc::new(SqliteLog::open(dir.path().join("events.db")).await.unwrap());
    let users: Vec<UserId> = (0..members).map(|_| UserId::new()).collect();
    let room = RoomId::new();
    let stream = streams::room(room);
    log.append(
        &stream,
        ExpectedVersion::NoStream,
        vec![encode(&created(room, users.clone()))],
    )
    .await
    .unwrap();
    let p = start(log.clone(), dir.path().join("rm.db")).await;
    p.progress
        .wait_for(log.head().await.unwrap(), Duration::from_secs(600))
        .await
        .unwrap();
    p.finish().await;

    let mut version = 1;
    for chunk in 0..sends / 100 {
        let events: Vec<NewEvent> = (0..100)
            .map(|i| encode(&sent(users[(chunk * 100 + i) % members])))
            .collect();
        version = log
            .append(&stream, ExpectedVersion::Exact(version), events)
            .await
            .unwrap()
            .last_version;
    }
    let head = log.head().await.unwrap();
    let t = Instant::now();
    let p = start(log.clone(), dir.path().join("rm.db")).await;
    p.progress
        .wait_for(head, Duration::from_secs(600))
        .await
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    p.finish().await;
    log.close().await;
    secs
}

async fn unread_query(
    rooms: usize,
    messages_per_room: usize,
    iterations: usize,
) -> (Vec<Duration>, String) {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> =
        Arc::new(SqliteLog::open(dir.path().join("events.db")).await.unwrap());
    let me = UserId::new();
    for r in 0..rooms {
        let other = UserId::new();
        let room = RoomId::new();
        let mut events = vec![created(room, vec![other, me])];
        events.extend((0..messages_per_room).map(|_| sent(other)));
        log.append(
            &streams::room(room),
            ExpectedVersion::NoStream,
            events.iter().map(encode).collect(),
        )
        .await
        .unwrap();
        // Half the rooms partly read.
        if r % 2 == 0 {
            let read = Event::ReadMarkerMoved {
                room_id: room,
                user_id: me,
                seq: (messages_per_room / 2) as u64,
                previous_seq: None,
            };
            log.append(
                &streams::receipts(me),
                ExpectedVersion::Any,
                vec![encode(&read)],
            )
            .await
            .unwrap();
        }
    }
    let p = start(log.clone(), dir.path().join("rm.db")).await;
    p.progress
        .wait_for(log.head().await.unwrap(), Duration::from_secs(600))
        .await
        .unwrap();
    let plan = p
        .models
        .read(move |c| {
            let sql = "EXPLAIN QUERY PLAN SELECT me.room_id, (SELECT count(*) FROM messages x
                WHERE x.room_id = me.room_id AND x.seq > me.read_seq AND x.sender_id != me.user_id
                AND x.deleted = 0) FROM members me WHERE me.user_id = ?1";
            let mut stmt = c.prepare(sql)?;
            let rows = stmt.query_map([me.0], |r| r.get::<_, String>(3))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?.join("; "))
        })
        .await
        .unwrap();
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let counts = p
            .models
            .read(move |c| queries::unread_counts(c, me))
            .await
            .unwrap();
        times.push(t.elapsed());
        assert_eq!(counts.len(), rooms);
    }
    p.finish().await;
    log.close().await;
    times.sort();
    (times, plan)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; under `cargo test` this is a small smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let (big, sends, rooms, queries) = if full {
        (10_000, 5_000, 500, 1_000)
    } else {
        (1_000, 200, 50, 20)
    };
    println!("== projecting {sends} sends (3 runs each)");
    for members in [10, big] {
        let mut rates: Vec<f64> = Vec::new();
        for _ in 0..3 {
            rates.push(sends as f64 / project_sends(members, sends).await);
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "room of {members:>6} members: {:>8.0} sends projected/s (median; min {:.0}, max {:.0})",
            rates[1], rates[0], rates[2]
        );
    }
    println!("== unread_counts for a user in {rooms} rooms × 20 messages ({queries} queries)");
    let (times, plan) = unread_query(rooms, 20, queries).await;
    println!("query plan: {plan}");
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
        pct(&times, 0.5),
        pct(&times, 0.9),
        pct(&times, 0.99),
        pct(&times, 1.0)
    );
}
