#![allow(clippy::unwrap_used)] // a benchmark reports failure by panicking
//! Unread-count costs at scale (run: `cargo bench -p projector --bench unread`).
//!
//! 1. Projecting sends into a 10,000-member room vs a 10-member room: the cost per send must
//!    not grow with the member count (no per-member writes); and the same room with 1,000 of
//!    its members watched (online), whose in-memory unread counts every send moves: catching
//!    up (big batches, where a burst of sends moves each count once) and live (each send
//!    appended, then projected on its own, as at a modest rate).
//! 2. `unread_counts` for a user in 500 rooms: one indexed query.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventlog::sqlite::SqliteLog;
use eventlog::{EventLog, ExpectedVersion, NewEvent};
use projector::{Progress, ReadModels, UnreadWatch, queries};
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
    _watches: Vec<UnreadWatch>,
}

/// Starts projecting with the unread counts of `watched` followed in memory.
async fn start(log: Arc<dyn EventLog>, path: std::path::PathBuf, watched: &[UserId]) -> Projection {
    let models = tokio::task::spawn_blocking(move || ReadModels::open(path))
        .await
        .unwrap()
        .unwrap();
    let mut watches = Vec::with_capacity(watched.len());
    for user in watched {
        watches.push(models.watch_unread(*user));
    }
    let (tx, progress) = Progress::new();
    let stop = CancellationToken::new();
    let task = tokio::spawn(projector::run(log, models.clone(), tx, stop.clone()));
    for watch in &watches {
        watch.loaded().await;
    }
    Projection {
        models,
        progress,
        stop,
        task,
        _watches: watches,
    }
}

impl Projection {
    async fn finish(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// A log with one room of `members` members, projected (with nothing watched).
async fn room_of(
    dir: &std::path::Path,
    members: usize,
) -> (Arc<dyn EventLog>, Vec<UserId>, String) {
    let log: Arc<dyn EventLog> = Arc::new(SqliteLog::open(dir.join("events.db")).await.unwrap());
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
    let p = start(log.clone(), dir.join("rm.db"), &[]).await;
    p.progress
        .wait_for(log.head().await.unwrap(), Duration::from_secs(600))
        .await
        .unwrap();
    p.finish().await;
    (log, users, stream)
}

/// Mean seconds from appending a send to its projection, one send at a time, in a room of
/// `members` members, `watched` of whom are watched.
async fn live_sends(members: usize, watched: usize, sends: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let (log, users, stream) = room_of(dir.path(), members).await;
    let p = start(log.clone(), dir.path().join("rm.db"), &users[..watched]).await;
    let t = Instant::now();
    for i in 0..sends {
        let pos = log
            .append(
                &stream,
                ExpectedVersion::Exact(1 + i as u64),
                vec![encode(&sent(users[i % members]))],
            )
            .await
            .unwrap()
            .first_position;
        p.progress
            .wait_for(pos, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let secs = t.elapsed().as_secs_f64() / sends as f64;
    p.finish().await;
    log.close().await;
    secs
}

/// Seconds to project `sends` messages into a room of `members` members, `watched` of whom
/// are watched.
async fn project_sends(members: usize, watched: usize, sends: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let (log, users, stream) = room_of(dir.path(), members).await;
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
    // The watches load before the clock starts (at the checkpoint, before the sends).
    let p = start(log.clone(), dir.path().join("rm.db"), &users[..watched]).await;
    let t = Instant::now();
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
) -> (Vec<Duration>, Vec<Duration>, String) {
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
    let p = start(log.clone(), dir.path().join("rm.db"), &[]).await;
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
    // Watching loads the same counts once, from a read connection.
    let mut watches = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let mut watch = p.models.watch_unread(me);
        watch.loaded().await;
        assert_eq!(watch.take().rooms.len(), rooms);
        watches.push(t.elapsed());
        drop(watch); // the last watch of the user: the next one loads afresh
    }
    p.finish().await;
    log.close().await;
    times.sort();
    watches.sort();
    (times, watches, plan)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; under `cargo test` this is a small smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let (big, online, sends, rooms, queries) = if full {
        (10_000, 1_000, 5_000, 500, 1_000)
    } else {
        (1_000, 100, 200, 50, 20)
    };
    println!("== projecting {sends} sends (3 runs each)");
    for (members, watched) in [(10, 0), (big, 0), (big, online)] {
        let mut rates: Vec<f64> = Vec::new();
        for _ in 0..3 {
            rates.push(sends as f64 / project_sends(members, watched, sends).await);
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "room of {members:>6} members, {watched:>5} watched: {:>8.0} sends projected/s (median; min {:.0}, max {:.0})",
            rates[1], rates[0], rates[2]
        );
    }
    let live = sends / 10;
    println!("== {live} sends appended and projected one at a time (3 runs each)");
    for watched in [0, online] {
        let mut ms: Vec<f64> = Vec::new();
        for _ in 0..3 {
            ms.push(live_sends(big, watched, live).await * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        println!(
            "room of {big:>6} members, {watched:>5} watched: {:>6.3} ms per send (median; min {:.3}, max {:.3})",
            ms[1], ms[0], ms[2]
        );
    }
    println!("== unread_counts for a user in {rooms} rooms × 20 messages ({queries} queries)");
    let (times, watches, plan) = unread_query(rooms, 20, queries).await;
    println!("query plan: {plan}");
    for (what, times) in [("query", times), ("watch (load)", watches)] {
        println!(
            "{what} latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
            pct(&times, 0.5),
            pct(&times, 0.9),
            pct(&times, 0.99),
            pct(&times, 1.0)
        );
    }
}
