#![allow(clippy::unwrap_used)] // a benchmark reports failure by panicking
//! Unread-count costs at scale (run: `cargo bench -p projector --bench unread`).
//!
//! 1. Projecting sends into a 10,000-member room vs a 10-member room: the cost per send must
//!    not grow with the member count (no per-member writes); and the same room with 1,000 of
//!    its members watched (online), whose in-memory unread counts every send moves: catching
//!    up (big batches, where a burst of sends moves each count once) and live (each send
//!    appended, then projected on its own, as at a modest rate).
//! 2. Projecting sends spread over 100 rooms of 10 members, in live-sized batches: the
//!    projector's cost per message on a busy node (the throughput preset's shape).
//! 3. `unread_counts` for a user in 500 rooms: one indexed query.

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
    let models = tokio::task::spawn_blocking(move || ReadModels::open(path, 0))
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

/// The process's CPU time so far (every thread).
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU seconds spent projecting `sends` messages spread over `rooms` rooms of `members`
/// members (one message per room in turn, as the load generator's throughput preset), handed
/// to the projector `chunk` at a time: each chunk is appended in one transaction, then
/// projected, before the next; only the CPU time used while a chunk is
/// projected counts (the projector waits a few milliseconds to batch, so the wall time would
/// measure that wait). The shape of a busy node's live batches.
async fn project_many_rooms(rooms: usize, members: usize, sends: usize, chunk: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> =
        Arc::new(SqliteLog::open(dir.path().join("events.db")).await.unwrap());
    let mut all: Vec<(String, Vec<UserId>, u64)> = Vec::with_capacity(rooms);
    for _ in 0..rooms {
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
        all.push((stream, users, 1));
    }
    let p = start(log.clone(), dir.path().join("rm.db"), &[]).await;
    let mut projecting = Duration::ZERO;
    let mut next = 0;
    for _ in 0..sends / chunk {
        // Appended together, the chunk commits in one transaction of the log and reaches the
        // projector at once.
        let mut per_room: Vec<Vec<NewEvent>> = vec![Vec::new(); rooms];
        for i in next..next + chunk {
            let users = &all[i % rooms].1;
            per_room[i % rooms].push(encode(&sent(users[(i / rooms) % members])));
        }
        let log = &log;
        let appends = all
            .iter_mut()
            .zip(per_room)
            .filter(|(_, events)| !events.is_empty())
            .map(|((stream, _, version), events)| async move {
                *version = log
                    .append(stream, ExpectedVersion::Exact(*version), events)
                    .await
                    .unwrap()
                    .last_version;
            });
        futures::future::join_all(appends).await;
        next += chunk;
        let head = log.head().await.unwrap();
        let t = cpu_time();
        p.progress
            .wait_for(head, Duration::from_secs(600))
            .await
            .unwrap();
        projecting += cpu_time() - t;
    }
    p.finish().await;
    log.close().await;
    projecting.as_secs_f64()
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
    // `cargo bench -p projector --bench unread -- spread` runs only the sections whose title
    // has that word.
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let section = |title: String| {
        let run = only.as_deref().is_none_or(|w| title.contains(w));
        if run {
            println!("== {title}");
        }
        run
    };
    let (big, online, sends, rooms, queries) = if full {
        (10_000, 1_000, 5_000, 500, 1_000)
    } else {
        (1_000, 100, 200, 50, 20)
    };
    if section(format!(
        "projecting {sends} sends into one room (3 runs each)"
    )) {
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
    }
    let many = if full { 40_000 } else { 1_000 };
    if section(format!(
        "projecting {many} sends spread over 100 rooms × 10 members, in batches (3 runs each)"
    )) {
        // 50: a batch of 10,000 sends/s at the projector's shortest interval (5 ms, while
        // readers wait); 400 and 2,000: four and twenty sends per room per batch, to show what
        // a room's pages cost (2,000: the stretched interval at 9,000 sends/s).
        for chunk in [50, 400, 2000] {
            let mut costs: Vec<f64> = Vec::new();
            for _ in 0..3 {
                let projected = many / chunk * chunk;
                costs.push(
                    project_many_rooms(100, 10, projected, chunk).await * 1e6 / projected as f64,
                );
            }
            costs.sort_by(f64::total_cmp);
            println!(
                "batches of {chunk:>4}: {:>6.1} µs of CPU per send projected (median; min {:.1}, max {:.1})",
                costs[1], costs[0], costs[2]
            );
        }
    }
    let live = sends / 10;
    if section(format!(
        "{live} sends appended and projected one at a time (3 runs each)"
    )) {
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
    }
    if section(format!(
        "unread_counts for a user in {rooms} rooms × 20 messages ({queries} queries)"
    )) {
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
}
